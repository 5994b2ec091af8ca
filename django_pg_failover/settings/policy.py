"""``OPTIONS["failover"]``: how long to keep trying, and how to space the tries."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from django_pg_failover.exceptions import SettingsError
from django_pg_failover.settings.redact import redact, redacted

FAILOVER_CHECK = "django_pg_failover.E003"
#: ``role_check``: believe the role a server reports, or ask it (connecting.trust).
ROLE_CHECKS = ("reported", "query")

# Bounds that catch typos (milliseconds given as seconds) without getting in the
# way of any sane deployment.
_LIMITS = {
    "retry_timeout": (0.0, 3600.0),
    "backoff_initial": (0.001, 60.0),
    "backoff_max": (0.001, 300.0),
    "host_recheck": (0.0, 86400.0),
    "attempt_delay": (0.01, 60.0),
    "stall_timeout": (0.1, 86400.0),
    "probe_interval": (0.005, 10.0),
    "read_your_writes_wait": (0.0, 10.0),
}
# Settings that None switches off.
_OPTIONAL = frozenset({"stall_timeout"})


@dataclass(frozen=True)
class FailoverPolicy:
    """When and how long :meth:`ensure_connection` retries a failed connect.

    ``retry_timeout``
        Seconds to keep trying to connect; 0 makes one pass over the hosts.
    ``backoff_initial``, ``backoff_max``
        While connections wait for a suitable server, the pause before the
        watcher's connect attempt *n* to a server that did not answer is
        ``min(backoff_max, backoff_initial * 2**(n-1))``, scaled by a random
        factor in [0.5, 1) so that many processes do not reconnect in lockstep.
    ``host_recheck``
        Seconds a host's last outcome (down, primary, standby) is remembered
        to order the hosts of later connections; 0 disables the memory.
    ``retry_reads``
        Re-run a plain ``SELECT`` that failed because the connection was lost,
        outside transactions only. Off by default.
    ``attempt_delay``
        Seconds a connect attempt may go unanswered before the next host is
        tried beside it (a hung host is overtaken, not waited for).
    ``probe_interval``
        While connections wait for a suitable server, how often the process's
        watcher asks each server it holds a connection to whether it now suits
        (a standby being promoted is found within this interval).
    ``stall_timeout``
        Seconds a call may wait on its server before the backend checks, with
        a new connection, that the server is alive; a server that does not
        answer has the call given up (:mod:`..losing.stall`). None: never.
    ``role_check``
        ``"reported"``: a new connection's server role is the one it reported
        at start-up (no round trip), except for a host whose report was once
        contradicted; ``"query"``: every new connection asks it with one query,
        for servers behind a pooler that replays stale reports
        (:mod:`..connecting.trust`).
    ``read_your_writes``
        On a replica alias: the primary alias whose committed writes its reads
        must show (:mod:`..causal`). None: reads go to standbys as they are.
    ``read_your_writes_wait``
        Seconds a read may wait for its standby to replay the scope's writes
        before it is served by the primary instead.
    """

    retry_timeout: float = 10.0
    backoff_initial: float = 0.05
    backoff_max: float = 1.0
    host_recheck: float = 10.0
    retry_reads: bool = False
    attempt_delay: float = 0.2
    # Longer than any statement of a web request should take (checks stay rare),
    # short enough that a frozen server fails a request well within the 30-60 s a
    # load balancer or a user waits: with connect_timeout (5 s), 15 s at worst.
    stall_timeout: float | None = 10.0
    # One cheap round trip per answering server per interval, per process, while
    # connections wait: a promotion is found within 25 ms.
    probe_interval: float = 0.025
    role_check: str = "reported"
    read_your_writes: str | None = None
    # Long enough for a standby that streams normally (it replays a commit within
    # a millisecond or two), short enough that a lagging one costs a read little.
    read_your_writes_wait: float = 0.02

    @classmethod
    def from_options(cls, options: Any, alias: str | None = None) -> FailoverPolicy:
        """Validate ``OPTIONS["failover"]`` (a mapping, or None for the defaults)."""
        keys = ("OPTIONS", "failover")
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise SettingsError(
                alias,
                keys,
                f"{redacted(options)} is not a dict of failover settings",
                FAILOVER_CHECK,
            )
        # "password" names the password provider, validated apart (.password).
        known = {f.name for f in fields(cls)} | {"password"}
        unknown = sorted(redact(str(k)) for k in options if k not in known)
        if unknown:
            raise SettingsError(
                alias,
                keys,
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                FAILOVER_CHECK,
            )
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name == "password":
                continue
            if name == "retry_reads":
                if not isinstance(value, bool):
                    raise SettingsError(
                        alias,
                        (*keys, name),
                        f"{redacted(value)} is not True or False",
                        FAILOVER_CHECK,
                    )
                values[name] = value
            elif name == "role_check":
                if value not in ROLE_CHECKS:
                    raise SettingsError(
                        alias,
                        (*keys, name),
                        f"{redacted(value)} is not one of {', '.join(map(repr, ROLE_CHECKS))}",
                        FAILOVER_CHECK,
                    )
                values[name] = value
            elif name == "read_your_writes":
                values[name] = _alias_name(value, alias, (*keys, name))
            elif value is None and name in _OPTIONAL:
                values[name] = None
            else:
                values[name] = _seconds(value, alias, (*keys, name))
        policy = cls(**values)
        if policy.backoff_initial > policy.backoff_max:
            raise SettingsError(
                alias,
                keys,
                f"backoff_initial ({policy.backoff_initial:g}) is larger than "
                f"backoff_max ({policy.backoff_max:g})",
                FAILOVER_CHECK,
            )
        return policy

    def backoff(self, attempt: int, jitter: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 32)
        ceiling = min(self.backoff_max, self.backoff_initial * 2**exponent)
        return ceiling * (0.5 + 0.5 * jitter())


def _alias_name(value: Any, alias: str | None, keys: tuple[str | int, ...]) -> str | None:
    """Another alias's name (that alias is checked against ``DATABASES`` elsewhere:
    :mod:`.causal`)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SettingsError(
            alias, keys, f"{redacted(value)} is not the name of a database alias", FAILOVER_CHECK
        )
    if value == alias:
        raise SettingsError(
            alias,
            keys,
            "names this alias itself: name the read-write alias of the same servers",
            FAILOVER_CHECK,
        )
    return value


def _seconds(value: Any, alias: str | None, keys: tuple[str | int, ...]) -> float:
    name = keys[-1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(
            alias, keys, f"{redacted(value)} is not a number of seconds", FAILOVER_CHECK
        )
    low, high = _LIMITS[str(name)]
    # math.isfinite() overflows on a huge int; ints are finite anyway.
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
        raise SettingsError(
            alias, keys, f"{redacted(value)} must be a finite, non-negative number", FAILOVER_CHECK
        )
    if not low <= value <= high:
        raise SettingsError(
            alias, keys, f"{redacted(value)} is outside {low:g}..{high:g} seconds", FAILOVER_CHECK
        )
    return float(value)
