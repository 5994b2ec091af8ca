"""Test database creation: Django's, with a host list that can be hashed."""

from __future__ import annotations

from django.db.backends.postgresql.creation import DatabaseCreation as PostgresDatabaseCreation

from django_pg_failover.settings.hosts import parse_hosts
from django_pg_failover.settings.options import target_session_attrs


class DatabaseCreation(PostgresDatabaseCreation):
    def set_as_test_mirror(self, primary_settings_dict: dict) -> None:
        """Make a ``TEST: {"MIRROR": ...}`` alias use its primary's hosts and role.

        Django copies only NAME; a replica alias (prefer-standby) would then read
        the test database from a standby that lags behind its writes.
        """
        super().set_as_test_mirror(primary_settings_dict)
        settings_dict = self.connection.settings_dict
        settings_dict["HOST"] = primary_settings_dict["HOST"]
        settings_dict["PORT"] = primary_settings_dict["PORT"]
        settings_dict["OPTIONS"] = {
            **settings_dict["OPTIONS"],
            "target_session_attrs": target_session_attrs(primary_settings_dict["OPTIONS"]),
        }
        settings_dict["OPTIONS"].pop("load_balance_hosts", None)

    def test_db_signature(self) -> tuple:
        # Django's signature holds HOST as given, and a list cannot be a dict key
        # in the test runner's bookkeeping.
        settings_dict = self.connection.settings_dict
        return (
            parse_hosts(settings_dict["HOST"], settings_dict["PORT"], self.connection.alias),
            settings_dict["ENGINE"],
            self._get_test_db_name(),
        )
