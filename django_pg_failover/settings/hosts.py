"""The ``HOST`` and ``PORT`` settings as a tuple of hosts, and back to libpq.

Pure functions: no driver, no I/O. Every problem is a :class:`SettingsError`
naming the alias and the offending value (secrets redacted).

Accepted ``HOST`` forms: a list/tuple of entries, or one comma-separated
string. An entry is ``host``, ``host:port``, ``[ipv6]``, ``[ipv6]:port``, a
bare IPv6 address, a Unix-socket folder (starting with ``/``), or a mapping
``{"host": ..., "port": ...}``. ``PORT`` is one port for the entries that
name none, or a list with one port per entry.

A host name is held to DNS's rules (RFC 1035, RFC 1123) here, before anything
connects: labels of 1 to 63 letters, digits, ``-`` (not first or last) and
``_`` (service and container names use it), at most 253 characters in all, and
one final ``.`` allowed (an absolute name). A name outside them can never
resolve, and the drivers do not even fail it the same way: psycopg 3 raises a
bare ``UnicodeError`` from Python's IDNA codec (an empty label, a label over
63), psycopg2's libpq a "could not translate host name". An
internationalised name is given in its ASCII form (``xn--...``, as DNS holds
it): psycopg 3 would encode a Unicode name with IDNA 2003 and psycopg2's libpq
not at all, so the two drivers would look up different names (and IDNA 2003
and 2008 disagree on some, ``ß`` for one).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from django_pg_failover.exceptions import SettingsError
from django_pg_failover.settings.redact import redact, redacted

DEFAULT_PORT = 5432
HOST_CHECK = "django_pg_failover.E001"
PORT_CHECK = "django_pg_failover.E002"

MAX_LABEL = 63
MAX_NAME = 253
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")
_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_BRACKETED = re.compile(r"^\[(?P<address>[^\]]*)\](?::(?P<port>[^:]*))?$")


class Host(NamedTuple):
    """One server to try: a host name, an IP address or a Unix-socket folder.

    A named tuple: it keys the process's dictionaries of hosts, looked up on
    every connect, and its hash is computed in C.
    """

    host: str
    port: int = DEFAULT_PORT

    @property
    def is_socket(self) -> bool:
        return self.host.startswith("/")

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host and not self.is_socket

    def __str__(self) -> str:
        if self.is_ipv6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _problem(alias: str | None, keys: tuple[str | int, ...], message: str, check_id: str):
    return SettingsError(alias, keys, message, check_id)


def _port(value: Any, alias: str | None, keys: tuple[str | int, ...]) -> int:
    """A port from an int or a numeric string, within 1..65535."""
    if isinstance(value, bool):
        raise _problem(alias, keys, f"{redacted(value)} is not a port number", PORT_CHECK)
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise _problem(alias, keys, f"{redacted(value)} is not a port number", PORT_CHECK)
        value = int(text)
    if not isinstance(value, int):
        raise _problem(alias, keys, f"{redacted(value)} is not a port number", PORT_CHECK)
    if not 1 <= value <= 65535:
        raise _problem(alias, keys, f"port {redacted(value)} is outside 1..65535", PORT_CHECK)
    return value


def _refuse_credentials(text: str, alias: str | None, keys: tuple[str | int, ...]) -> None:
    """A URL or ``user:password@host`` where a host belongs: said so, the password hidden."""
    if "://" in text:
        raise _problem(
            alias,
            keys,
            f"{redacted(text)} is a database URL, not a host: give the URL to "
            "django_pg_failover.config(), or list its hosts in HOST and its user name "
            "and password in USER and PASSWORD",
            HOST_CHECK,
        )
    if "@" in text:
        raise _problem(
            alias,
            keys,
            f"{redacted(text)} is not a host: a user name and password go in USER and "
            "PASSWORD, not in HOST",
            HOST_CHECK,
        )


def _split_entry(
    entry: str, alias: str | None, keys: tuple[str | int, ...]
) -> tuple[str, str | None]:
    """``"host:port"`` and friends into (host, port text or None)."""
    if entry.startswith("/"):
        if "," in entry:
            raise _problem(
                alias, keys, f"{redacted(entry)}: a folder name may not hold a comma", HOST_CHECK
            )
        return entry, None
    _refuse_credentials(entry, alias, keys)
    if entry.startswith("["):
        match = _BRACKETED.match(entry)
        if not match:
            raise _problem(
                alias, keys, f"{redacted(entry)} is not a valid [IPv6]:port entry", HOST_CHECK
            )
        return _ipv6(match.group("address"), entry, alias, keys), match.group("port")
    if entry.count(":") >= 2:
        return _ipv6(entry, entry, alias, keys), None
    host, _, port = entry.partition(":")
    problem = host_name_problem(host)
    if problem is not None:
        raise _problem(
            alias, keys, f"{redacted(entry)} is not a valid host name: {problem}", HOST_CHECK
        )
    return host, (port if ":" in entry else None)


def host_name_problem(name: str) -> str | None:
    """What DNS's rules (see the module) find wrong with a host name; None if nothing."""
    if not name:
        return "the name is empty"
    if not name.isascii():
        return "write an internationalised name in its ASCII form (xn--..., IDNA), as DNS holds it"
    bad = _NOT_IN_A_NAME.search(name)
    if bad is not None:
        return f"{redacted(bad.group())} is not a letter, digit, '-', '_' or '.'"
    absolute = name.removesuffix(".")
    if len(absolute) > MAX_NAME:
        return f"it is {len(absolute)} characters long, DNS allows {MAX_NAME}"
    for number, label in enumerate(absolute.split("."), 1):
        if not label:
            return "it has an empty label (a dot first, or two in a row)"
        if len(label) > MAX_LABEL:
            return f"label {number} is {len(label)} characters long, DNS allows {MAX_LABEL}"
        if not _LABEL.fullmatch(label):
            return f"label {redacted(label)} starts or ends with '-'"
    return None


def _ipv6(address: str, entry: str, alias: str | None, keys: tuple[str | int, ...]) -> str:
    try:
        return str(ipaddress.IPv6Address(address))
    except ValueError:
        raise _problem(
            alias,
            keys,
            f"{redacted(entry)} is neither a host name nor an IPv6 address "
            "(write IPv6 with a port as [address]:port)",
            HOST_CHECK,
        ) from None


def _entries(host_setting: Any, alias: str | None) -> list[Any]:
    keys = ("HOST",)
    if isinstance(host_setting, str):
        if not host_setting.strip():
            raise _problem(
                alias,
                keys,
                "no host given; list at least one (a Unix-socket folder such as "
                "'/var/run/postgresql' for a local server)",
                HOST_CHECK,
            )
        entries = host_setting.split(",")
        if any(not entry.strip().startswith("/") for entry in entries):
            # Before the string is cut at its commas: a password may hold one.
            _refuse_credentials(host_setting.strip(), alias, keys)
        return entries
    if isinstance(host_setting, (list, tuple)):
        if not host_setting:
            raise _problem(alias, keys, "the host list is empty", HOST_CHECK)
        return list(host_setting)
    raise _problem(
        alias,
        keys,
        f"{redacted(host_setting)} is neither a list of hosts nor a comma-separated string",
        HOST_CHECK,
    )


def _port_list(port_setting: Any, count: int, alias: str | None) -> list[int | None]:
    """One port (or None: not given) per host entry."""
    keys: tuple[str | int, ...] = ("PORT",)
    if port_setting is None or port_setting == "":
        return [None] * count
    as_list = isinstance(port_setting, (list, tuple))
    if as_list or (isinstance(port_setting, str) and "," in port_setting):
        parts = list(port_setting) if as_list else port_setting.split(",")
        if len(parts) != count:
            raise _problem(
                alias,
                keys,
                f"{len(parts)} ports given for {count} hosts; give one port, or one per host",
                PORT_CHECK,
            )
        return [_port(p, alias, (*keys, i) if as_list else keys) for i, p in enumerate(parts)]
    return [_port(port_setting, alias, keys)] * count


def parse_hosts(
    host_setting: Any, port_setting: Any = None, alias: str | None = None
) -> tuple[Host, ...]:
    """Turn ``HOST`` and ``PORT`` into the hosts to try, in order."""
    entries = _entries(host_setting, alias)
    list_ports = _port_list(port_setting, len(entries), alias)
    port_is_list = isinstance(port_setting, (list, tuple)) or (
        isinstance(port_setting, str) and "," in port_setting
    )
    hosts: list[Host] = []
    for index, (entry, list_port) in enumerate(zip(entries, list_ports, strict=True)):
        keys = ("HOST", index) if not isinstance(host_setting, str) else ("HOST",)
        host, entry_port = _parse_entry(entry, index, alias, keys)
        if port_is_list and entry_port is not None and entry_port != list_port:
            raise _problem(
                alias,
                ("PORT",),
                f"host {redacted(host)} is given port {entry_port} in HOST and {list_port} in PORT",
                PORT_CHECK,
            )
        port = entry_port or list_port or DEFAULT_PORT
        candidate = Host(host, port)
        if candidate in hosts:
            raise _problem(alias, ("HOST",), f"{candidate} is listed twice", HOST_CHECK)
        hosts.append(candidate)
    return tuple(hosts)


def _parse_entry(
    entry: Any, index: int, alias: str | None, keys: tuple[str | int, ...]
) -> tuple[str, int | None]:
    if isinstance(entry, Mapping):
        unknown = set(entry) - {"host", "port"}
        if unknown:
            raise _problem(
                alias,
                keys,
                # Keys only: a misplaced 'password' must not be echoed.
                f"unknown key(s) {', '.join(sorted(redact(str(key)) for key in unknown))} "
                "in a host mapping; "
                "use 'host' and 'port'",
                HOST_CHECK,
            )
        host = entry.get("host")
        if not isinstance(host, str) or not host.strip():
            raise _problem(alias, keys, "this mapping has no 'host'", HOST_CHECK)
        host_text, port_text = _split_entry(host.strip(), alias, keys)
        if port_text is not None:
            raise _problem(
                alias,
                keys,
                f"give the port of {redacted(host)} in 'port', not in 'host'",
                HOST_CHECK,
            )
        port = entry.get("port")
        return host_text, (None if port in (None, "") else _port(port, alias, (*keys, "port")))
    if not isinstance(entry, str):
        raise _problem(alias, keys, f"{redacted(entry)} is not a host", HOST_CHECK)
    text = entry.strip()
    if not text:
        where = "empty entry" if len(keys) > 1 else f"entry {index + 1} is empty"
        raise _problem(alias, keys, where, HOST_CHECK)
    host, port_text = _split_entry(text, alias, keys)
    if port_text is None:
        return host, None
    if not port_text:
        raise _problem(alias, keys, f"{redacted(text)} has an empty port", PORT_CHECK)
    return host, _port(port_text, alias, keys)


def libpq_host_params(hosts: Sequence[Host]) -> dict[str, str]:
    """libpq's multi-host ``host`` and ``port`` lists (no spaces: libpq keeps them)."""
    return {
        "host": ",".join(h.host for h in hosts),
        "port": ",".join(str(h.port) for h in hosts),
    }


def hosts_from_libpq_params(params: dict[str, object]) -> tuple[Host, ...]:
    """The inverse of :func:`libpq_host_params`."""
    names = str(params["host"]).split(",")
    ports = str(params["port"]).split(",")
    return tuple(Host(name, int(port)) for name, port in zip(names, ports, strict=True))


def host_setting(hosts: Sequence[Host]) -> list[str | dict[str, Any]]:
    """A ``HOST`` value that parses back to ``hosts`` (sockets as mappings)."""
    return [{"host": h.host, "port": h.port} if h.is_socket else str(h) for h in hosts]
