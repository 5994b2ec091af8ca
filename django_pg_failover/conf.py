"""One ``DATABASES`` entry as this backend sees it: validated, immutable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .hosts import Host, parse_hosts
from .options import target_session_attrs, validate_options
from .policy import FailoverPolicy


@dataclass(frozen=True)
class FailoverSettings:
    hosts: tuple[Host, ...]
    target_session_attrs: str
    policy: FailoverPolicy

    @classmethod
    def from_settings_dict(
        cls,
        settings_dict: Mapping[str, Any],
        alias: str | None,
        libpq_version: int,
        is_libpq_keyword: Callable[[str], bool] | None = None,
    ) -> FailoverSettings:
        """Validate HOST, PORT and OPTIONS; raise SettingsError naming the alias."""
        options = settings_dict["OPTIONS"]
        hosts = parse_hosts(settings_dict["HOST"], settings_dict["PORT"], alias)
        validate_options(options, libpq_version, alias, is_libpq_keyword)
        policy = FailoverPolicy.from_options(options.get("failover"), alias)
        return cls(hosts, target_session_attrs(options), policy)
