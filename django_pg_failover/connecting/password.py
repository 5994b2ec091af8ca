"""Connecting with a password provider's password (``OPTIONS["failover"]["password"]``).

Every physical connection of an alias that has a provider goes through
:func:`connect`: the backend's connect attempts (the calling thread's, a
pass's, the process's watcher's, those of Django's pool, :mod:`.attempt`),
the stall check's session check and ``manage.py pg_hosts``. Without a
provider none of it runs: the attempt calls the driver itself, and a
query never comes here.

The rules:

- the provider is asked for each connection, with the host about to be
  connected: nothing is cached here (a provider caches as it sees fit; an
  IAM token is valid for minutes, a Vault lease for its TTL);
- when the server refuses the password (SQLSTATE 28P01, ``password
  authentication failed``), the provider is asked once more, with
  ``refresh=True`` if it takes it, and the connect is tried once more: a
  password rotated since the provider cached it heals at once. A second
  refusal is that host's final answer, as a wrong fixed password is today;
- neither driver gives the SQLSTATE of a failed connect (libpq has no
  result to read it from), so the refusal is known by the server's English
  words (:func:`.verdicts.password_refused`). Under another ``lc_messages``
  it reads as any other refusal: final for that host, without the retry.

The password goes to the driver and nowhere else: it is not logged, and
libpq's messages do not repeat it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django_pg_failover.connecting.verdicts import password_refused
from django_pg_failover.drivers import Driver
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.password import PasswordProvider

logger = logging.getLogger("django_pg_failover")


def connect(driver: Driver, params: Mapping[str, Any], provider: PasswordProvider | None) -> Any:
    """A new connection to the one host ``params`` names, with the provider's password.

    Raises the driver's error, or :class:`~..settings.password.PasswordProviderError`.
    """
    if provider is None:
        return driver.connect(params)
    host = Host(params["host"], params["port"])
    user = params.get("user")
    try:
        return driver.connect({**params, "password": provider.password(host, user)})
    except driver.module.Error as exc:
        if not password_refused(driver.connect_failure_reason(exc)):
            raise
    logger.info(
        "database alias %r: %s refused the password from %r; asking the provider for a new one",
        provider.alias,
        host,
        provider.name,
    )
    return driver.connect({**params, "password": provider.password(host, user, refresh=True)})
