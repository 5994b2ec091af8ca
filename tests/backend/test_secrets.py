"""No password in logs, exception texts, signal arguments or repr(), through a real failover."""

from __future__ import annotations

import logging
import threading
import traceback

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import Error, connections

from django_pg_failover import signals
from django_pg_failover.checks import database_problems
from django_pg_failover.lab import Cluster
from shop.models import Order

pytestmark = pytest.mark.timeout(120)


def test_password_appears_nowhere(cluster: Cluster, make_alias, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, Django's SQL log included
    texts: list[str] = []

    def capture(**kwargs) -> None:
        texts.append(repr(kwargs))

    for signal in (
        signals.host_attempt_failed,
        signals.connection_established,
        signals.connection_lost,
    ):
        signal.connect(capture, weak=False)

    def attempt(work) -> None:
        try:
            work()
        except Error as exc:
            texts.append("".join(traceback.format_exception(exc)))
            texts.append(repr(exc))

    try:
        alias = make_alias(OPTIONS={"failover": {"retry_timeout": 10, "backoff_max": 0.2}})
        db = connections[alias]
        db.force_debug_cursor = True
        Order.objects.using(alias).create(key="secret-check-1")
        cluster.crash(cluster.primary)
        attempt(lambda: Order.objects.using(alias).create(key="lost"))  # connection lost
        promoter = threading.Timer(1.0, cluster.promote)
        promoter.start()
        attempt(lambda: Order.objects.using(alias).create(key="secret-check-2"))  # retries
        promoter.join()
        texts.append(repr(db))
        texts.extend(str(q) for q in db.queries)

        gives_up = make_alias(
            HOST=[f"127.0.0.1:{cluster.standbys[0].port}"],
            OPTIONS={"failover": {"retry_timeout": 0.3}},
        )
        attempt(lambda: connections[gives_up].ensure_connection())

        wrong = "Not-The-Password-42"
        bad_login = make_alias(PASSWORD=wrong)
        attempt(lambda: connections[bad_login].ensure_connection())
    finally:
        for signal in (
            signals.host_attempt_failed,
            signals.connection_established,
            signals.connection_lost,
        ):
            signal.disconnect(capture)

    texts.extend(record.getMessage() for record in caplog.records)
    texts.extend(
        "".join(traceback.format_exception(*record.exc_info))
        for record in caplog.records
        if record.exc_info
    )
    everything = "\n".join(texts)
    # The scenario did happen, so the texts cover it:
    assert "lost" in everything
    assert "waiting for a suitable server" in everything
    assert "retry_timeout reached" in everything
    assert "password authentication failed" in everything
    assert cluster.password not in everything
    assert wrong not in everything


def test_settings_errors_show_the_password_nowhere(cluster: Cluster, make_alias, caplog) -> None:
    """The lab's real password in the wrong settings: the first query's error, its
    traceback, the log and ``manage.py check`` name the setting, never the password."""
    caplog.set_level(logging.DEBUG)
    password, port = cluster.password, cluster.primary.port
    mistakes = [
        {"HOST": f"postgresql://app:{password}@127.0.0.1:{port}/app"},
        {"HOST": [f"app:{password}@127.0.0.1:{port}"]},
        {"PORT": password},
        {"OPTIONS": {"target_session_attrs": password}},
        {"OPTIONS": {"connect_timeout": f"password={password}"}},
        {"OPTIONS": {"failover": {"retry_timeout": password}}},
        {"OPTIONS": {"failover": {password: 1}}},
    ]
    texts: list[str] = []
    for mistake in mistakes:
        alias = make_alias(**mistake)
        with pytest.raises(ImproperlyConfigured) as caught:
            Order.objects.using(alias).count()
        texts.append("".join(traceback.format_exception(caught.value)))
        texts.append(str(caught.value))
        texts.extend(
            problem.msg for problem in database_problems({alias: connections[alias].settings_dict})
        )
    texts.extend(record.getMessage() for record in caplog.records)
    everything = "\n".join(texts)
    assert password not in everything
    assert everything.count("***") >= 2 * len(mistakes)  # the errors did quote the values
