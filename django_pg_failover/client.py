"""``manage.py dbshell``: psql on the same host list, the password in the environment."""

from __future__ import annotations

from typing import Any

from django.core.management import CommandError
from django.db.backends.postgresql.client import DatabaseClient as PostgresDatabaseClient

from django_pg_failover.exceptions import SettingsError
from django_pg_failover.settings.hosts import libpq_host_params, parse_hosts
from django_pg_failover.settings.options import DEFAULT_CONNECT_TIMEOUT, target_session_attrs


class DatabaseClient(PostgresDatabaseClient):
    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: dict[str, Any], parameters: list[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        options = settings_dict["OPTIONS"]
        hosts = libpq_host_params(parse_hosts(settings_dict["HOST"], settings_dict["PORT"]))
        args, env = super().settings_to_cmd_args_env(
            {
                **settings_dict,
                "HOST": hosts["host"],
                "PORT": hosts["port"],
                "OPTIONS": {k: v for k, v in options.items() if k != "failover"},
            },
            parameters,
        )
        env = dict(env or {})
        # psql has no flags for these; libpq reads them from the environment.
        env["PGTARGETSESSIONATTRS"] = target_session_attrs(options)
        env["PGCONNECT_TIMEOUT"] = str(options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
        if options.get("application_name"):
            env["PGAPPNAME"] = str(options["application_name"])
        return args, env

    def runshell(self, parameters: list[str]) -> None:
        # Bad settings: one line naming the alias, before psql starts.
        try:
            self.connection.failover_settings  # noqa: B018 - validates every setting
        except SettingsError as exc:
            raise CommandError(str(exc)) from exc
        super().runshell(parameters)
