"""The health of a database alias: is there a server it can use, now, and how is each host.

One look at every host, the one ``manage.py pg_hosts`` takes
(:func:`~django_pg_failover.management.commands.pg_hosts.look`): the view
(:mod:`django_pg_failover.views`), the django-health-check check
(:mod:`django_pg_failover.healthcheck`) and the command report the same data.

Rules, and why:

- **Healthy** when a host suits the alias's ``target_session_attrs`` (the one
  the backend would connect to now), and, with ``max_lag_seconds``, that host
  is not a standby further behind than that.
- **Its own short connections**, one per host, never the alias's Django
  connection: that connection belongs to the calling thread, and on a thread
  outside the request cycle (django-health-check runs its checks on an
  executor's threads) it may still be the one to the old primary, dead since
  the failover; Django's ``close_if_unusable_or_obsolete()`` closes it only
  after an error on it or past ``CONN_MAX_AGE``, so a check through it reports
  a healthy database down (django-health-check issue #755). It would also wait
  ``retry_timeout`` for a server, or a pool's ``timeout`` for a free
  connection: a health check must answer within its own bound.
- **Bounded**: every host is looked at in parallel, each with ``timeout`` as
  libpq's ``connect_timeout``; the answer comes within about ``timeout`` + 1 s
  (psycopg 3 waits at least 2 s for a silent host).
- **Lag** counts only when the standby has WAL left to replay (LAG BYTES not
  0): a caught-up standby's seconds since its last replayed commit grow while
  the primary commits nothing. With no primary to compare against, the
  seconds alone count: nothing says the standby is caught up.
- **No secret**: the report holds what ``pg_hosts --json`` prints (hosts,
  ports, roles, libpq's reason for a failure), never the password.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_pg_failover import ENGINE
from django_pg_failover.base import DatabaseWrapper
from django_pg_failover.management.commands.pg_hosts import DEFAULT_TIMEOUT, look
from django_pg_failover.management.hostreport import PRIMARY, STANDBY

# DEFAULT_TIMEOUT: libpq's connect_timeout for each host, pg_hosts' default (2 s).
__all__ = ["DEFAULT_TIMEOUT", "AliasHealth", "alias_health", "check_limits", "problem"]


@dataclass(frozen=True)
class AliasHealth:
    """What one look at an alias's hosts found."""

    #: The ``pg_hosts --json`` object.
    report: dict[str, Any]
    #: Why the alias is not healthy; None when it is.
    problem: str | None

    @property
    def healthy(self) -> bool:
        return self.problem is None

    def as_json(self) -> dict[str, Any]:
        """The report with the verdict first: what the view answers."""
        return {"healthy": self.healthy, "problem": self.problem, **self.report}


def alias_health(
    alias: str, timeout: int = DEFAULT_TIMEOUT, max_lag_seconds: float | None = None
) -> AliasHealth:
    """Look at every host of ``alias`` once and judge it (see the module's rules).

    Raises ImproperlyConfigured for an alias that is not in ``DATABASES``, not
    ``ENGINE = "django_pg_failover"``, or has bad settings, and for a bad
    ``timeout`` or ``max_lag_seconds``.
    """
    check_limits(timeout, max_lag_seconds)
    if alias not in connections.settings:
        raise ImproperlyConfigured(f"The database alias {alias!r} is not in DATABASES.")
    connection = connections[alias]
    if not isinstance(connection, DatabaseWrapper):
        raise ImproperlyConfigured(
            f"Database alias {alias!r} uses ENGINE {connection.settings_dict['ENGINE']!r}; "
            f"its health check needs ENGINE {ENGINE!r}."
        )
    report, _ = look(connection, timeout)
    return AliasHealth(report, problem(report, max_lag_seconds))


def check_limits(timeout: Any, max_lag_seconds: Any) -> None:
    if type(timeout) is not int or timeout < 1:
        # libpq reads 0 and below as "wait forever": a health check must not.
        raise ImproperlyConfigured(
            f"The health check's timeout must be a whole number of seconds >= 1, not {timeout!r}."
        )
    if max_lag_seconds is not None and (
        isinstance(max_lag_seconds, bool)
        or not isinstance(max_lag_seconds, (int, float))
        or max_lag_seconds < 0
    ):
        raise ImproperlyConfigured(
            "The health check's max_lag_seconds must be a number of seconds >= 0 or None, "
            f"not {max_lag_seconds!r}."
        )


def problem(report: Mapping[str, Any], max_lag_seconds: float | None = None) -> str | None:
    """Why the alias of this ``pg_hosts --json`` report is not healthy; None when it is."""
    chosen = next((host for host in report["hosts"] if host["would_connect"]), None)
    if chosen is None:
        seen = "; ".join(f"{_address(host)} {_state(host)}" for host in report["hosts"])
        return f"no host suits target_session_attrs={report['target_session_attrs']} ({seen})"
    if max_lag_seconds is None or chosen["role"] != STANDBY:
        return None
    lag = chosen["replay_lag_seconds"]
    if chosen["replay_lag_bytes"] == 0 or lag is None or lag <= max_lag_seconds:
        return None
    return (
        f"{_address(chosen)} is a standby {lag:.1f}s behind "
        f"(max_lag_seconds={max_lag_seconds:g}, {_lag_bytes(chosen)})"
    )


def _address(host: Mapping[str, Any]) -> str:
    return f"{host['host']}:{host['port']}"


def _state(host: Mapping[str, Any]) -> str:
    if not host["reachable"]:
        return host["error"]
    if host["role"] == PRIMARY and host["read_only"]:
        return "primary (read-only)"
    return host["role"]


def _lag_bytes(host: Mapping[str, Any]) -> str:
    behind = host["replay_lag_bytes"]
    return "no primary to measure from" if behind is None else f"{behind} bytes to replay"
