"""One ``DATABASES`` entry as this backend sees it: validated in one place, immutable.

The backend (every connect), ``manage.py check`` and ``dbshell`` all validate
through :meth:`FailoverSettings.from_settings_dict`; every problem is a
:class:`~.exceptions.SettingsError` naming the alias and the setting. Its
message shows no secret: values are written redacted (:mod:`.redact`), and the
entry's own ``PASSWORD`` (and secret ``OPTIONS``) are cut out of it here, the
one place that sees them beside the bad value: a password pasted into
``PORT`` by mistake has no shape to recognise it by.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from django_pg_failover.exceptions import SettingsError
from django_pg_failover.settings.hosts import Host, libpq_host_params, parse_hosts
from django_pg_failover.settings.options import (
    target_session_attrs,
    validate_options,
    validate_pool,
)
from django_pg_failover.settings.password import PasswordProvider, password_provider
from django_pg_failover.settings.policy import FailoverPolicy
from django_pg_failover.settings.redact import settings_secrets

if TYPE_CHECKING:
    from django_pg_failover.drivers import Driver


@dataclass(frozen=True)
class FailoverSettings:
    hosts: tuple[Host, ...]
    target_session_attrs: str
    policy: FailoverPolicy
    #: ``load_balance_hosts=random``: the backend shuffles the hosts itself.
    load_balance: bool = False
    #: ``OPTIONS["failover"]["password"]`` (:mod:`.password`); None: libpq's own.
    password: PasswordProvider | None = None

    @cached_property
    def libpq_host_params(self) -> dict[str, str]:
        """The host list as libpq's ``host`` and ``port`` (built once, read per connect)."""
        return libpq_host_params(self.hosts)

    @classmethod
    def from_settings_dict(
        cls, settings_dict: Mapping[str, Any], alias: str | None, driver: Driver | None = None
    ) -> FailoverSettings:
        """Validate HOST, PORT and OPTIONS; raise SettingsError naming the alias.

        Without ``driver`` (no usable driver installed) what needs libpq's
        knowledge is not checked.
        """
        try:
            return cls._validate(settings_dict, alias, driver)
        except SettingsError as exc:
            clean = exc.without(settings_secrets(settings_dict))
            if clean is exc:
                raise
            raise clean from None  # the original's message shows the secret

    @classmethod
    def _validate(
        cls, settings_dict: Mapping[str, Any], alias: str | None, driver: Driver | None
    ) -> FailoverSettings:
        options = settings_dict.get("OPTIONS") or {}
        hosts = parse_hosts(settings_dict.get("HOST", ""), settings_dict.get("PORT", ""), alias)
        validate_options(options, driver, alias)
        policy = FailoverPolicy.from_options(options.get("failover"), alias)
        if options.get("pool"):
            validate_pool(options["pool"], settings_dict, driver, alias)
        return cls(
            hosts,
            target_session_attrs(options),
            policy,
            load_balance=options.get("load_balance_hosts") == "random",
            password=password_provider(settings_dict, alias),
        )

    @staticmethod
    def problems(
        settings_dict: Mapping[str, Any], alias: str | None, driver: Driver | None = None
    ) -> list[SettingsError]:
        """Every problem of the entry, not only the first (for ``manage.py check``)."""
        options = settings_dict.get("OPTIONS") or {}
        checks: list[Callable[[], object]] = [
            lambda: parse_hosts(
                settings_dict.get("HOST", ""), settings_dict.get("PORT", ""), alias
            ),
            lambda: validate_options(options, driver, alias),
        ]
        if isinstance(options, Mapping):
            checks.append(lambda: FailoverPolicy.from_options(options.get("failover"), alias))
            checks.append(lambda: password_provider(settings_dict, alias))
            if options.get("pool"):
                checks.append(lambda: validate_pool(options["pool"], settings_dict, driver, alias))
        found = []
        for check in checks:
            try:
                check()
            except SettingsError as exc:
                found.append(exc.without(settings_secrets(settings_dict)))
        return found
