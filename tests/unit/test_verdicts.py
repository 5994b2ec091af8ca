"""Which connect failures are worth waiting for: libpq's reasons, in several languages."""

from __future__ import annotations

import pytest

from django_pg_failover.connecting.verdicts import Verdict, connect_verdict, server_message

UNREACHABLE = [
    "Connection refused",
    "timeout expired",
    'could not translate host name "db.example" to address: Name or service not known',
    "No such file or directory",
    "server closed the connection unexpectedly",
    "Network is unreachable",
]
BUSY = [
    "FATAL:  the database system is starting up",
    "FATAL:  the database system is shutting down",
    "FATAL:  the database system is in recovery mode",
    "FATAL:  the database system is not yet accepting connections",
    "FATAL:  the database system is not accepting connections",
    "FATAL:  sorry, too many clients already",
    'FATAL:  too many connections for role "app"',
    'FATAL:  too many connections for database "app"',
    "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
    "FATAL:  remaining connection slots are reserved for non-replication superuser connections",
    "FATAL:  terminating connection due to administrator command",
]
REFUSED = [
    'FATAL:  password authentication failed for user "app"',
    'FATAL:  role "app" is not permitted to log in',
    'FATAL:  pg_hba.conf rejects connection for host "127.0.0.1", user "app", database "app"',
    'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "app", database "app"',
    'FATAL:  permission denied for database "app"',
    'FATAL:  database "app" is not currently accepting connections',
    'FATAL:  database "gone" does not exist',
    'FATAL:  role "nobody" does not exist',
    # Another language: a server with lc_messages = 'de_DE.UTF-8' or 'fr_FR.UTF-8'.
    "FATAL:  Passwort-Authentifizierung für Benutzer »app« fehlgeschlagen",
    "FATAL:  Rolle »app« hat keine Berechtigung zum Einloggen",
    "FATAL:  l'authentification par mot de passe a échoué pour l'utilisateur « app »",
    'ВАЖНО:  роль "app" не имеет права входа',
    '致命的エラー:  ロール"app"はログインが許可されていません',
    # libpq's own, final whatever the server does.
    "fe_sendauth: no password supplied",
    "server does not support SSL, but SSL was required",
]


@pytest.mark.parametrize("reason", UNREACHABLE)
def test_no_answer_is_worth_waiting_for(reason: str) -> None:
    assert connect_verdict(reason) is Verdict.UNREACHABLE


def test_a_timeout_is_unreachable_whatever_the_text() -> None:
    assert connect_verdict("connection timeout expired", timed_out=True) is Verdict.UNREACHABLE


@pytest.mark.parametrize("reason", BUSY)
def test_a_server_that_cannot_take_connections_now_is_busy(reason: str) -> None:
    assert connect_verdict(reason) is Verdict.BUSY
    assert not Verdict.BUSY.final


@pytest.mark.parametrize("reason", REFUSED)
def test_any_other_refusal_is_final_in_any_language(reason: str) -> None:
    assert connect_verdict(reason) is Verdict.REFUSED
    assert Verdict.REFUSED.final


def test_server_message_drops_the_severity() -> None:
    assert server_message('FATAL:  role "x" does not exist') == 'role "x" does not exist'
    assert server_message("Connection refused") == "Connection refused"
