"""Test database creation: Django's, with a host list that can be hashed."""

from __future__ import annotations

from django.db.backends.postgresql.creation import DatabaseCreation as PostgresDatabaseCreation

from .hosts import parse_hosts


class DatabaseCreation(PostgresDatabaseCreation):
    def test_db_signature(self) -> tuple:
        # Django's signature holds HOST as given, and a list cannot be a dict key
        # in the test runner's bookkeeping.
        settings_dict = self.connection.settings_dict
        return (
            parse_hosts(settings_dict["HOST"], settings_dict["PORT"], self.connection.alias),
            settings_dict["ENGINE"],
            self._get_test_db_name(),
        )
