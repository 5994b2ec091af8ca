"""``DATABASE_URL`` with several hosts: libpq's connection URI as a ``DATABASES`` entry.

    DATABASES = {"default": django_pg_failover.config(conn_max_age=600)}

    DATABASE_URL=postgresql://app:pw@db1:5432,db2:5433/app?sslmode=require&retry_timeout=30

Who reads what:

- libpq itself reads the URL (``PQconninfoParse``, through the driver Django
  uses: psycopg 3's ``conninfo_to_dict`` or psycopg2's ``parse_dsn``): hosts and
  ports, ``[IPv6]``, percent-decoding, ``?host=``/``?port=``, and every libpq
  parameter of the query string. Nothing here re-implements that grammar.
- This module only takes out of the query string what libpq does not know: this
  backend's own settings (the fields of :class:`~.policy.FailoverPolicy`, read
  from the dataclass, and ``load_balance_hosts``), and turns libpq's host and
  port lists into this backend's ``HOST``.
- The entry is then validated by the code that validates ``DATABASES``
  (:mod:`.hosts`, :mod:`.options`, :mod:`.policy`), so a URL is held to exactly
  the rules of a hand-written entry.
- ``service=`` (and ``PGSERVICE``): libpq reads ``pg_service.conf`` only while
  connecting, and neither driver exposes that reading, but the backend needs
  the service's hosts before it connects (to order and retry them). So the
  service file is read here, by libpq's rules (below), once, and the service's
  parameters are copied into the entry; ``service`` itself is not passed on, so
  what connects is exactly what ``config()`` returned and validated.

Service files, as libpq finds them: ``servicefile=`` (newer libpq) or
``$PGSERVICEFILE`` (which must exist), otherwise ``~/.pg_service.conf`` if it
exists; then ``$PGSYSCONFDIR/pg_service.conf``, where ``PGSYSCONFDIR`` defaults
to ``/etc/postgresql-common`` (what the psycopg2 and psycopg binary wheels' libpq
and Debian's use; set ``PGSYSCONFDIR`` for another libpq). The first file that
defines the service wins; within it, the first value of a key wins; a parameter
given in the URL wins over the service's.

Errors: one :class:`~.exceptions.DatabaseURLError` (an ``ImproperlyConfigured``)
that starts with where the URL came from (``DATABASE_URL: ...``). It never
contains the password: a URL that libpq would cut inside a password (an
unencoded '@', '/', '?' or '&') is refused without quoting it, messages quote
only what comes after the user name and password, libpq's own messages are cut
at the first thing they quote that is not a keyword, values are quoted
redacted (:func:`.redact.redacted`), and every message is scrubbed
(:func:`.redact.scrub`) of anything that may be the password or another secret
parameter (:func:`.redact.is_secret_key`: ``password``, ``sslpassword``,
``oauth_client_secret``...) and of any run of four of its characters. The
driver's own exception (its text quotes the URL) is not chained.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from django_pg_failover import ENGINE
from django_pg_failover.exceptions import DatabaseURLError, SettingsError
from django_pg_failover.settings.hosts import Host, host_setting, parse_hosts
from django_pg_failover.settings.options import validate_options
from django_pg_failover.settings.password import password_provider
from django_pg_failover.settings.policy import FailoverPolicy
from django_pg_failover.settings.redact import is_secret_key, redacted, scrub, settings_secrets

if TYPE_CHECKING:
    from django_pg_failover.drivers import Driver

DEFAULT_ENV = "DATABASE_URL"
SCHEMES = ("postgresql://", "postgres://")

# OPTIONS keys the backend applies itself: never handed to libpq's parser (libpq
# before 16 does not know load_balance_hosts).
_BACKEND_OPTIONS = ("load_balance_hosts",)
# libpq's compiled-in SYSCONFDIR in the psycopg2-binary and psycopg-binary wheels,
# and in Debian's and Ubuntu's libpq.
_SYSCONFDIR = "/etc/postgresql-common"
_WEAKER_THAN_REQUIRE = frozenset({"", "disable", "allow", "prefer"})
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_KEYWORD = re.compile(r"[a-z_]+")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_QUOTED = re.compile(r'"([^"]*)"')
_NO_HOST_HINT = (
    "list the servers after '//' (postgresql://db1,db2:5433/app), or give a Unix-socket "
    "folder percent-encoded (postgresql://%2Fvar%2Frun%2Fpostgresql/app)"
)


class _Problem(Exception):
    """What is wrong, worded for the user; :func:`parse` adds where the URL came from."""


def config(
    env: str = DEFAULT_ENV,
    default: str | None = None,
    *,
    url: str | None = None,
    conn_max_age: int | None = 0,
    conn_health_checks: bool = False,
    disable_server_side_cursors: bool = False,
    ssl_require: bool = False,
    test_options: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``DATABASES`` entry for this backend from the environment variable ``env``.

    ``url`` is used instead of the environment when given. ``default`` is used
    when the variable is unset or blank; with neither, the variable is required
    (an error, not an empty entry that would fail later). The other arguments
    are those of :func:`parse`.
    """
    settings: dict[str, Any] = {
        "conn_max_age": conn_max_age,
        "conn_health_checks": conn_health_checks,
        "disable_server_side_cursors": disable_server_side_cursors,
        "ssl_require": ssl_require,
        "test_options": test_options,
        "options": options,
    }
    if url is not None:
        return parse(url, source="config(url=...)", **settings)
    value = os.environ.get(env, "")
    if value.strip():
        return parse(value, source=env, **settings)
    if default is not None:
        return parse(default, source=f"config(default=...), used as {env} is not set", **settings)
    raise DatabaseURLError(
        env,
        "not set, and config() was given no default; set it to the database's URL, "
        "e.g. postgresql://app:password@db1,db2:5433/app",
    )


def parse(
    url: str,
    *,
    source: str = "database URL",
    conn_max_age: int | None = 0,
    conn_health_checks: bool = False,
    disable_server_side_cursors: bool = False,
    ssl_require: bool = False,
    test_options: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``DATABASES`` entry for this backend from libpq's connection URI ``url``.

    ``source`` names the URL in error messages. ``conn_max_age``,
    ``conn_health_checks`` and ``disable_server_side_cursors`` become Django's
    ``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS`` and ``DISABLE_SERVER_SIDE_CURSORS``,
    and ``test_options`` its ``TEST``. ``ssl_require`` raises ``sslmode`` to
    ``require`` unless the URL asks for as much or more (``verify-ca``,
    ``verify-full``). ``options`` are ``OPTIONS`` that the URL's parameters
    override (``failover`` merged key by key): defaults kept in code.
    """
    secrets = _secrets(url) if isinstance(url, str) else []
    try:
        entry = _django_settings(
            conn_max_age, conn_health_checks, disable_server_side_cursors, ssl_require, test_options
        )
        base = _base_options(options)
    except DatabaseURLError as exc:
        # The URL's password given to the wrong argument is cut out too.
        raise DatabaseURLError(exc.source, scrub(exc.problem, secrets)) from None
    try:
        entry = {**_entry(url, base, ssl_require, secrets), **entry}
    except _Problem as exc:
        raise DatabaseURLError(source, scrub(str(exc), secrets)) from None
    except ImportError:
        raise DatabaseURLError(
            source,
            "reading it needs a PostgreSQL driver: pip install 'django-pg-failover[binary]'",
        ) from None
    return entry


# -- the URL ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Uri:
    """A URI cut where libpq cuts it; every part raw (still percent-encoded)."""

    prefix: str
    userinfo: str | None
    hosts_and_path: str
    query: str | None

    def __str__(self) -> str:
        userinfo = "" if self.userinfo is None else f"{self.userinfo}@"
        query = "" if self.query is None else f"?{self.query}"
        return f"{self.prefix}{userinfo}{self.hosts_and_path}{query}"


def _split_uri(text: str) -> _Uri:
    """Cut ``text`` as libpq does, refusing what libpq would cut inside a password."""
    prefix = next((p for p in SCHEMES if text.startswith(p)), None)
    if prefix is None:
        scheme = text.partition("://")[0] if "://" in text else ""
        if _SCHEME.fullmatch(scheme):
            raise _Problem(f"{scheme}:// is not postgresql:// or postgres://")
        raise _Problem("not a URL: it must start with postgresql:// or postgres://")
    rest = text[len(prefix) :]
    # libpq's user name and password end at the first '@', if it comes before any '/'.
    stop = re.search(r"[@/]", rest)
    userinfo = None
    if stop and stop.group() == "@":
        userinfo, rest = rest[: stop.start()], rest[stop.end() :]
    hosts_and_path, mark, query = rest.partition("?")
    # A second '@' means libpq would take the rest of a password as a host name,
    # and ours would be quoted in errors: refuse it without quoting anything.
    if "@" in hosts_and_path:
        if userinfo is None:
            raise _Problem(
                "an '@' comes after a '/': write a '/' in the user name or password as %2F "
                "(and an '@' in the database name as %40)"
            )
        raise _Problem(
            "more than one '@' before the hosts: write an '@' in the user name or password as %40"
        )
    return _Uri(prefix, userinfo, hosts_and_path, query if mark else None)


def _backend_keys() -> dict[str, Callable[[str], Any]]:
    """The query parameters that are this backend's, each with its string converter."""
    keys: dict[str, Callable[[str], Any]] = {key: str for key in _BACKEND_OPTIONS}
    keys.update(_failover_converters())
    return keys


def _take_backend_params(uri: _Uri) -> tuple[dict[str, str], _Uri]:
    """Take this backend's parameters out of the query string; leave libpq's."""
    if uri.query is None:
        return {}, uri
    ours = _backend_keys()
    taken: dict[str, str] = {}
    kept: list[str] = []
    after_secret = False
    for part in uri.query.split("&"):
        raw_key, equals, raw_value = part.partition("=")
        key = unquote(raw_key)
        if after_secret and (not equals or not _is_uri_param(key)) and key not in ours:
            # Most likely the rest of a password: name nothing.
            raise _Problem("a parameter after password= is not one: write an '&' in it as %26")
        if key in ours:
            if not equals:
                raise _Problem(f"{key} has no value ({key}=...)")
            if key in taken:
                raise _Problem(f"{key} is given twice")
            taken[key] = unquote(raw_value)
        else:
            if equals and not _NAME.fullmatch(key):
                # Not a name: most likely a piece of a password libpq would cut at a '?'.
                raise _Problem(
                    "a query parameter has no valid name: write '/', '?', '@' and '&' in a "
                    "user name or password as %2F, %3F, %40 and %26"
                )
            if equals and not _is_uri_param(key):
                raise _Problem(_unknown_parameter(key, ours))
            kept.append(part)
        after_secret = is_secret_key(key)
    query = "&".join(kept) if kept or not taken else None
    return taken, dataclasses.replace(uri, query=query)


def _unknown_parameter(key: str, ours: Mapping[str, object]) -> str:
    known = sorted(ours)
    close = difflib.get_close_matches(key.lower(), [*known, "target_session_attrs"], n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return (
        f"{redacted(key)} is neither a libpq connection parameter nor one of this backend's "
        f"({', '.join(known)}){hint}"
    )


def _libpq_problem(message: str) -> str:
    """libpq's message, cut at the first thing it quotes that may be a secret.

    libpq quotes keywords, but also the whole URI or the part of it it choked
    on; a quote inside a password would make any finer cut unreliable.
    """
    text = " ".join(message.split())
    for match in _QUOTED.finditer(text):
        quoted = match.group(1)
        if not (_is_libpq_keyword(quoted) or re.fullmatch(r"[^\w\s]", quoted)):
            return f'libpq cannot read it: {text[: match.start()]}"…"'
    return f"libpq cannot read it: {text}"


# -- the entry ----------------------------------------------------------------------------


def _entry(url: Any, base: dict[str, Any], ssl_require: bool, secrets: list[str]) -> dict[str, Any]:
    if not isinstance(url, str):
        raise _Problem(f"a {type(url).__name__} is not a URL")
    uri = _split_uri(url.strip())
    ours, uri = _take_backend_params(uri)
    try:
        params = _parse_conninfo(str(uri))
    except ValueError as exc:
        raise _Problem(_libpq_problem(str(exc))) from None
    secrets.extend(value for key, value in params.items() if is_secret_key(key))

    service = params.pop("service", "") or os.environ.get("PGSERVICE", "")
    servicefile = params.pop("servicefile", "")
    if service:
        from_service = _read_service(service, servicefile)
        secrets.extend(value for key, value in from_service.items() if is_secret_key(key))
        for key, value in from_service.items():
            params.setdefault(key, value)  # the URL's own parameters win, as in libpq
    if "hostaddr" in params:
        raise _Problem(
            "hostaddr is not supported: this backend orders and retries its hosts by "
            "name, so give the addresses as hosts"
        )

    hosts = _hosts(params.pop("host", ""), params.pop("port", ""), service)
    name = params.pop("dbname", "")
    if not name:
        where = f" (nor does service {redacted(service)})" if service else ""
        raise _Problem(f"no database name{where}: add it after the hosts, as in //db1,db2/app")
    user = params.pop("user", "")
    password = params.pop("password", "")

    options = {key: value for key, value in base.items() if key != "failover"}
    options.update(params)
    options.update((key, ours.pop(key)) for key in _BACKEND_OPTIONS if key in ours)
    if ours or "failover" in base:
        converters = _failover_converters()
        from_url = {key: converters[key](value) for key, value in ours.items()}
        options["failover"] = {**(base.get("failover") or {}), **from_url}
    if ssl_require and options.get("sslmode", "") in _WEAKER_THAN_REQUIRE:
        options["sslmode"] = "require"
    _validate(lambda: validate_options(options, _driver()))
    _validate(lambda: FailoverPolicy.from_options(options.get("failover")))
    _validate(lambda: password_provider({"PASSWORD": password, "OPTIONS": options}, None))
    return {
        "ENGINE": ENGINE,
        "NAME": name,
        "USER": user,
        "PASSWORD": password,
        "HOST": host_setting(hosts),
        "PORT": "",
        "OPTIONS": options,
    }


def _hosts(host_list: str, port_list: str, service: str) -> tuple[Host, ...]:
    """libpq's ``host`` and ``port`` lists as the hosts to try, by the backend's rules."""
    if not host_list:
        where = f" (nor does service {redacted(service)})" if service else ""
        raise _Problem(f"no host given{where}: {_NO_HOST_HINT}")
    names = host_list.split(",")
    ports = port_list.split(",")
    # libpq: one port for every host, or one per host (an empty one is the default).
    if len(ports) == 1:
        ports *= len(names)
    elif len(ports) != len(names):
        raise _Problem(
            f"{len(ports)} ports for {len(names)} host{'s' * (len(names) > 1)}; "
            "give one port, or one per host"
        )
    entries: list[dict[str, Any]] = []
    for number, (name, port) in enumerate(zip(names, ports, strict=True), 1):
        if not name.strip():
            raise _Problem(
                f"host {number} of {len(names)} is empty (libpq would use its default "
                "socket folder, which this backend never guesses); name it, e.g. "
                "%2Fvar%2Frun%2Fpostgresql"
            )
        entry = {"host": name, "port": port.strip() or None}
        try:
            parse_hosts([entry])
        except SettingsError as exc:
            raise _Problem(f"host {number} of {len(names)}: {exc.problem}") from None
        entries.append(entry)
    try:
        return parse_hosts(entries)
    except SettingsError as exc:
        raise _Problem(exc.problem) from None


def _validate(check: Callable[[], object]) -> None:
    """Run a settings check; word its error for the URL (the key, not the settings path)."""
    try:
        check()
    except SettingsError as exc:
        name = next((str(k) for k in reversed(exc.keys) if k not in ("OPTIONS", "failover")), "")
        raise _Problem(f"{name}: {exc.problem}" if name else exc.problem) from None


# -- this backend's settings in the query string -------------------------------------------


def _failover_converters() -> dict[str, Callable[[str], Any]]:
    """``OPTIONS["failover"]``'s keys, each with a converter from the field's type.

    Read from the dataclass, so that new settings work in URLs as they are added.
    A value that does not convert is kept as text, for the policy to refuse in
    its own words.
    """
    try:
        hints = typing.get_type_hints(FailoverPolicy)
    except (NameError, TypeError):
        hints = {}
    return {
        field.name: _converter(hints.get(field.name, type(field.default)))
        for field in dataclasses.fields(FailoverPolicy)
    }


def _converter(kind: Any) -> Callable[[str], Any]:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        choices = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        inner = _converter(choices[0]) if len(choices) == 1 else str
        if len(choices) == len(typing.get_args(kind)):
            return inner
        return lambda text: None if text.strip().lower() in ("", "none") else inner(text)
    if kind is bool:
        return _to_bool
    if kind is int:
        return _to_int
    if kind is float:
        return _to_float
    return str


def _to_bool(text: str) -> bool | str:
    word = text.strip().lower()
    return True if word in _TRUE else False if word in _FALSE else text


def _to_int(text: str) -> int | str:
    return int(text) if _INTEGER.fullmatch(text.strip()) else text


def _to_float(text: str) -> float | str:
    # Only plain decimals: float() would also take "1_0", "inf" and "nan".
    return float(text) if _DECIMAL.fullmatch(text.strip()) else text


# -- pg_service.conf ----------------------------------------------------------------------


def _service_files(servicefile: str) -> list[tuple[Path, bool]]:
    """The files libpq looks a service up in, in order, each with: must it exist?"""
    files: list[tuple[Path, bool]] = []
    user_file = servicefile or os.environ.get("PGSERVICEFILE", "")
    if user_file:
        files.append((Path(user_file), True))
    else:
        home = os.path.expanduser("~")
        if home != "~":
            files.append((Path(home) / ".pg_service.conf", False))
    sysconfdir = os.environ.get("PGSYSCONFDIR") or _SYSCONFDIR
    files.append((Path(sysconfdir) / "pg_service.conf", False))
    return files


def _read_service(name: str, servicefile: str) -> dict[str, str]:
    """The parameters of service ``name``, from the first file that defines it."""
    looked_in: list[str] = []
    for path, required in _service_files(servicefile):
        if not path.is_file():
            if required:
                raise _Problem(f"service file {path} not found")
            looked_in.append(f"{path} (no such file)")
            continue
        values = _service_section(path, name)
        if values is not None:
            return values
        looked_in.append(f"{path} (not there)")
    raise _Problem(
        f"service {redacted(name)} is not defined; looked in {', '.join(looked_in)}; "
        "PGSERVICEFILE and PGSYSCONFDIR choose the files"
    )


def _service_section(path: Path, name: str) -> dict[str, str] | None:
    """Service ``name``'s ``key=value`` lines in ``path`` (libpq's syntax), or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise _Problem(f"cannot read service file {path}: {reason}") from None
    values: dict[str, str] = {}
    found = False
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if found:
                break
            # libpq compares the name, then wants ']' right after it.
            found = line[1 : 1 + len(name)] == name and line[1 + len(name) : 2 + len(name)] == "]"
            continue
        if not found:
            continue
        where = f"service file {path}, line {number}"
        if line.startswith("ldap"):
            raise _Problem(f"{where}: LDAP service lookups are not supported")
        # No line is quoted in errors: it may hold the password.
        key, equals, value = line.partition("=")
        if not equals:
            raise _Problem(f"{where}: syntax error (not key=value)")
        if key in ("service", "servicefile"):
            raise _Problem(f"{where}: nested {redacted(key)} specifications are not supported")
        if key not in _BACKEND_OPTIONS and not _is_libpq_keyword(key):
            raise _Problem(f"{where}: {redacted(key)} is not a libpq connection parameter")
        values.setdefault(key, value)  # libpq keeps the first value
    return values if found else None


# -- Django's settings from the keyword arguments ------------------------------------------


def _django_settings(
    conn_max_age: Any,
    conn_health_checks: Any,
    disable_server_side_cursors: Any,
    ssl_require: Any,
    test_options: Any,
) -> dict[str, Any]:
    if conn_max_age is not None and (
        isinstance(conn_max_age, bool) or not isinstance(conn_max_age, int) or conn_max_age < 0
    ):
        raise DatabaseURLError(
            "conn_max_age",
            f"{redacted(conn_max_age)} is not None or a whole number of seconds >= 0",
        )
    flags = {
        "conn_health_checks": conn_health_checks,
        "disable_server_side_cursors": disable_server_side_cursors,
        "ssl_require": ssl_require,
    }
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise DatabaseURLError(name, f"{redacted(value)} is not True or False")
    settings = {
        "CONN_MAX_AGE": conn_max_age,
        "CONN_HEALTH_CHECKS": conn_health_checks,
        "DISABLE_SERVER_SIDE_CURSORS": disable_server_side_cursors,
    }
    if test_options is not None:
        if not isinstance(test_options, Mapping):
            raise DatabaseURLError("test_options", f"a {type(test_options).__name__} is not a dict")
        settings["TEST"] = dict(test_options)
    return settings


def _base_options(options: Any) -> dict[str, Any]:
    """``options=`` checked like ``OPTIONS``, with its own copy of ``failover``."""
    if options is None:
        return {}
    try:
        validate_options(options, _driver())
        FailoverPolicy.from_options(options.get("failover"))
    except SettingsError as exc:
        exc = exc.without(settings_secrets({"OPTIONS": options}))
        path = "".join(f"[{redacted(key)}]" for key in exc.keys[1:])
        raise DatabaseURLError(f"options{path}", exc.problem) from None
    except ImportError:
        raise DatabaseURLError(
            "options", "checking them needs a PostgreSQL driver: pip install psycopg2-binary"
        ) from None
    base = dict(options)
    if base.get("failover") is None:
        base.pop("failover", None)
    else:
        base["failover"] = dict(base["failover"])
    return base


# -- secrets ------------------------------------------------------------------------------


def _secrets(url: str) -> list[str]:
    """Every piece of ``url`` that may be a password, raw and percent-decoded.

    Generous on purpose (it runs on URLs libpq may refuse): whatever lies between
    the user name and any '@', and the value of any secret parameter.
    """
    rest = url.partition("://")[2] or url
    found: list[str] = []
    for at in (m.start() for m in re.finditer("@", rest)):
        found.append(rest[:at].partition(":")[2])
    for part in re.split(r"[?&]", rest):
        key, _, value = part.partition("=")
        if is_secret_key(key):
            found.append(value)
    return [text for raw in found for text in (raw, unquote(raw))]


# -- the driver ---------------------------------------------------------------------------


def _driver() -> Driver:
    from django_pg_failover.drivers import get_driver

    return get_driver()


def _parse_conninfo(conninfo: str) -> dict[str, str]:
    """libpq's own reading of a connection string or URI, through the driver Django uses.

    No defaults, no environment, no service file: only what the text says.
    Raises ValueError with libpq's message.
    """
    return _driver().parse_conninfo(conninfo)


def _is_libpq_keyword(key: str) -> bool:
    """Whether libpq knows this connection keyword (asks libpq's parser)."""
    if not _KEYWORD.fullmatch(key):
        return False
    try:
        _parse_conninfo(f"{key}=x")
    except ValueError:
        return False
    return True


def _is_uri_param(key: str) -> bool:
    """Whether libpq takes this query parameter in a URI (``ssl=true`` too)."""
    if not _KEYWORD.fullmatch(key):
        return False
    try:
        _parse_conninfo(f"postgresql://?{key}=true")
    except ValueError:
        return False
    return True
