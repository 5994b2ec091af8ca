"""The settings contract: connection parameters and every bad setting, before any connect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import django
import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_pg_failover.base import DatabaseWrapper
from django_pg_failover.checks import database_problems
from django_pg_failover.client import DatabaseClient
from django_pg_failover.drivers import get_driver
from tests.markers import needs_pool

ROOT = Path(__file__).resolve().parents[2]


def wrapper(alias: str = "default", **settings) -> DatabaseWrapper:
    db = {"ENGINE": "django_pg_failover", "NAME": "app", "USER": "app", **settings}
    db = connections.configure_settings({"default": {}, alias: db})[alias]
    return DatabaseWrapper(db, alias)


def test_host_list_becomes_libpq_multi_host_params() -> None:
    params = wrapper(
        HOST=["db1", "db2:5433", "[2001:db8::7]:5434", "/run/postgresql"],
        PORT=5432,
        PASSWORD="s3cret",
    ).get_connection_params()
    assert params["host"] == "db1,db2,2001:db8::7,/run/postgresql"
    assert params["port"] == "5432,5433,5434,5432"
    assert params["target_session_attrs"] == "read-write"
    assert params["connect_timeout"] == 5
    assert params["dbname"] == "app"
    assert params["password"] == "s3cret"
    assert "failover" not in params


def test_other_options_pass_through_and_django_keys_are_djangos() -> None:
    params = wrapper(
        HOST="db1,db2",
        OPTIONS={
            "sslmode": "require",
            "application_name": "shop",
            "keepalives_idle": 10,
            "target_session_attrs": "prefer-standby",
            "connect_timeout": 3,
            "isolation_level": 2,
            "assume_role": "owner",
            "failover": {"retry_timeout": 2},
        },
    ).get_connection_params()
    assert params["sslmode"] == "require"
    assert params["application_name"] == "shop"
    assert params["keepalives_idle"] == 10
    assert params["target_session_attrs"] == "prefer-standby"
    assert params["connect_timeout"] == 3
    for key in ("isolation_level", "assume_role", "failover", "load_balance_hosts"):
        assert key not in params


def test_load_balance_is_done_by_the_backend() -> None:
    db = wrapper(HOST="a,b,c,d", OPTIONS={"load_balance_hosts": "random"})
    assert "load_balance_hosts" not in db.get_connection_params()
    orders = {",".join(h.host for h in db.connector.ordered_hosts()) for _ in range(200)}
    assert len(orders) > 1
    assert all(sorted(o.split(",")) == ["a", "b", "c", "d"] for o in orders)


BAD_SETTINGS = [
    ({"HOST": ""}, "['HOST']: no host given", "E001"),
    ({"HOST": []}, "['HOST']: the host list is empty", "E001"),
    ({"HOST": "db1,,db2"}, "entry 2 is empty", "E001"),
    ({"HOST": "db1", "PORT": 70000}, "port 70000 is outside 1..65535", "E002"),
    ({"HOST": "db1", "PORT": "five"}, "'five' is not a port number", "E002"),
    ({"HOST": "db1,db2", "PORT": [5432]}, "1 ports given for 2 hosts", "E002"),
    (
        {"HOST": ["db1:5433", "db2"], "PORT": [5434, 5432]},
        "given port 5433 in HOST and 5434",
        "E002",
    ),
    (
        {"HOST": "db1", "OPTIONS": {"failover": {"retries": 3}}},
        "unknown setting(s) retries",
        "E003",
    ),
    (
        {"HOST": "db1", "OPTIONS": {"failover": {"retry_timeout": -1}}},
        "['retry_timeout']: -1 must be a finite, non-negative number",
        "E003",
    ),
    (
        {"HOST": "db1", "OPTIONS": {"failover": {"role_check": "always"}}},
        "['OPTIONS']['failover']['role_check']: 'always' is not one of 'reported', 'query'",
        "E003",
    ),
    (
        {"HOST": "db1", "OPTIONS": {"target_session_attrs": "master"}},
        "['target_session_attrs']: 'master' is not one of",
        "E004",
    ),
    ({"HOST": "db1", "OPTIONS": {"connect_timeout": 0}}, "0 would wait forever", "E004"),
    ({"HOST": "db1", "OPTIONS": {"connect_timeout": -2}}, "-2 is not a whole number", "E004"),
    (
        {"HOST": "db1", "OPTIONS": {"load_balance_hosts": "yes"}},
        "'yes' is not one of disable, random",
        "E004",
    ),
]


@pytest.mark.parametrize(("settings", "message", "check_id"), BAD_SETTINGS)
def test_bad_setting_raises_improperly_configured(settings, message, check_id) -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        wrapper("orders", **settings).get_connection_params()
    assert str(excinfo.value).startswith("DATABASES['orders']")
    assert message in str(excinfo.value)


@pytest.mark.parametrize(("settings", "message", "check_id"), BAD_SETTINGS)
def test_bad_setting_is_reported_by_system_checks(settings, message, check_id) -> None:
    databases = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "orders": {"ENGINE": "django_pg_failover", "NAME": "app", **settings},
    }
    found = database_problems(databases)
    assert [m.id for m in found] == [f"django_pg_failover.{check_id}"]
    assert found[0].level == checks.ERROR
    assert message in found[0].msg
    assert "DATABASES['orders']" in found[0].msg


def test_good_settings_pass_the_checks() -> None:
    databases = {
        "default": {
            "ENGINE": "django_pg_failover",
            "NAME": "app",
            "HOST": ["db1", "db2:5433"],
            "OPTIONS": {"failover": {"retry_timeout": 3}, "target_session_attrs": "primary"},
        }
    }
    assert database_problems(databases) == []


def test_manage_py_check_reports_bad_hosts_before_connecting(tmp_path: Path) -> None:
    # config() refuses such hosts in a URL itself: the bad HOST is set in the settings.
    (tmp_path / "bad_hosts.py").write_text(
        "from testproject.settings import *\n"
        "DATABASES['default']['HOST'] = '127.0.0.1:5432,,127.0.0.1:99999'\n"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT / "testproject",
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "bad_hosts",
            "PYTHONPATH": str(tmp_path),
            "DATABASE_URL": "postgresql://app@127.0.0.1:5432/app",
        },
    )
    assert result.returncode == 1
    assert "django_pg_failover.E001" in result.stderr
    assert "DATABASES['default']['HOST']: entry 2 is empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_dbshell_arguments_carry_hosts_and_no_password() -> None:
    args, env = DatabaseClient.settings_to_cmd_args_env(
        {
            "NAME": "app",
            "USER": "app",
            "PASSWORD": "s3cret",
            "HOST": ["db1", "db2:5433"],
            "PORT": "",
            "OPTIONS": {"target_session_attrs": "primary", "failover": {"retry_timeout": 1}},
        },
        ["-c", "select 1"],
    )
    assert args == [
        "psql",
        "-U",
        "app",
        "-h",
        "db1,db2",
        "-p",
        "5432,5433",
        "-c",
        "select 1",
        "app",
    ]
    assert "s3cret" not in " ".join(args)
    assert env["PGPASSWORD"] == "s3cret"
    assert env["PGTARGETSESSIONATTRS"] == "primary"
    assert env["PGCONNECT_TIMEOUT"] == "5"


def test_repr_and_settings_errors_hold_no_password() -> None:
    db = wrapper(HOST="db1,,db2", PASSWORD="s3cret")
    assert "s3cret" not in repr(db)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        db.get_connection_params()
    assert "s3cret" not in str(excinfo.value)


def test_test_mirror_uses_its_primarys_hosts_and_role() -> None:
    primary = wrapper(HOST=["db1", "db2"], PORT=5433)
    replica = wrapper(
        "replica",
        HOST=["db2", "db1"],
        OPTIONS={"target_session_attrs": "prefer-standby", "load_balance_hosts": "random"},
    )
    replica.creation.set_as_test_mirror(primary.settings_dict)
    params = replica.get_connection_params()
    assert (params["host"], params["port"]) == ("db1,db2", "5433,5433")
    assert params["target_session_attrs"] == "read-write"
    assert replica.settings_dict["NAME"] == primary.settings_dict["NAME"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            'connection to server at "127.0.0.1", port 5432 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?\n",
            "Connection refused",
        ),
        (
            'connection failed: connection to server at "db2.example" (10.0.0.2), port 5433 '
            "failed: FATAL:  the database system is starting up",
            "FATAL:  the database system is starting up",
        ),
        (
            'connection to server on socket "/run/postgresql/.s.PGSQL.5434" failed: '
            "No such file or directory\n",
            "No such file or directory",
        ),
        # psycopg 3 before 3.2
        ("connection failed: Connection refused", "Connection refused"),
        (
            'connection failed: FATAL:  password authentication failed for user "app"',
            'FATAL:  password authentication failed for user "app"',
        ),
        (
            'could not translate host name "db-gone.example" to address: Name or service not '
            "known\n",
            'could not translate host name "db-gone.example" to address: Name or service not known',
        ),
    ],
)
def test_the_reason_one_host_failed(message: str, reason: str) -> None:
    from django_pg_failover.drivers import get_driver

    driver = get_driver()
    assert driver.connect_failure_reason(driver.module.OperationalError(message)) == reason


# -- OPTIONS["pool"] --------------------------------------------------------------------------

BAD_POOLS = [
    ({"pool": "yes"}, "['OPTIONS']['pool']: 'yes' is neither True nor a dict of pool options"),
    ({"pool": {"min_size": -1}}, "['pool']['min_size']: -1 is not a whole number >= 0"),
    ({"pool": {"max_size": 0}}, "['pool']['max_size']: 0 is not a whole number >= 1"),
    ({"pool": {"min_size": 4, "max_size": 2}}, "['max_size']: 2 is smaller than min_size (4)"),
    ({"pool": {"timeout": "30"}}, "['pool']['timeout']: '30' is not a positive number of sec"),
    ({"pool": {"reconnect_timeout": 0}}, "0 is not a positive number of seconds"),
    ({"pool": {"kwargs": {}}}, "['pool']['kwargs']: not an option this backend's pool takes"),
    ({"pool": {"min_sise": 2}}, "['pool']['min_sise']: not an option this backend's pool takes"),
    ({"pool": {"reset": "yes"}}, "['pool']['reset']: 'yes' is not callable"),
]


@needs_pool
@pytest.mark.parametrize(("options", "message"), BAD_POOLS)
def test_bad_pool_options_are_reported_with_the_alias(options, message) -> None:
    db = {"ENGINE": "django_pg_failover", "NAME": "app", "HOST": "db1", "OPTIONS": options}
    problems = database_problems({"orders": db})
    assert [p.id for p in problems] == ["django_pg_failover.E006"]
    assert problems[0].msg.startswith("DATABASES['orders']")
    assert message in problems[0].msg


@needs_pool
def test_a_pool_with_persistent_connections_is_reported() -> None:
    db = {"ENGINE": "django_pg_failover", "NAME": "app", "HOST": "db1", "CONN_MAX_AGE": 60}
    problems = database_problems({"orders": {**db, "OPTIONS": {"pool": True}}})
    assert [p.msg for p in problems] == [
        "DATABASES['orders']['CONN_MAX_AGE']: Pooling doesn't support persistent connections. "
        "Set it to 0 to use OPTIONS['pool']."
    ]


@needs_pool
def test_the_pools_check_is_djangos_before_61() -> None:
    db = {"ENGINE": "django_pg_failover", "NAME": "app", "HOST": "db1"}
    problems = database_problems({"orders": {**db, "OPTIONS": {"pool": {"check": print}}}})
    if django.VERSION >= (6, 1):
        assert problems == []
    else:
        assert [p.msg for p in problems] == [
            "DATABASES['orders']['OPTIONS']['pool']['check']: not an option this backend's "
            "pool takes (Django sets it); known: " + problems[0].msg.split("known: ")[1]
        ]


@pytest.mark.skipif(get_driver().name != "psycopg2", reason="the psycopg2 run's own check")
def test_a_pool_on_psycopg2_is_reported() -> None:
    db = {"ENGINE": "django_pg_failover", "NAME": "app", "HOST": "db1"}
    problems = database_problems({"orders": {**db, "OPTIONS": {"pool": True}}})
    assert [p.msg for p in problems] == [
        "DATABASES['orders']['OPTIONS']['pool']: Database pooling requires psycopg >= 3 "
        "(Django's connection pool), and Django uses psycopg2 here: "
        "pip install 'django-pg-failover[psycopg]'"
    ]
