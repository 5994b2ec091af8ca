"""Bad input tried as a new user would: each gets one clear error, never libpq's traceback.

Settings go through the paths users take (the first query, and ``manage.py
check``); environments are real (a Python without the driver, one with psycopg 3
installed, a lab without server binaries or without a user to run them as).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_pg_failover.base import DatabaseWrapper
from django_pg_failover.checks import database_problems

ROOT = Path(__file__).resolve().parents[2]

# (settings of the "orders" alias, the text the one error must contain)
BAD_SETTINGS = [
    ({"HOST": None}, "['HOST']: None is neither a list of hosts nor a comma-separated string"),
    ({"HOST": 5432}, "['HOST']: 5432 is neither a list of hosts"),
    ({"HOST": ""}, "['HOST']: no host given"),
    ({"HOST": []}, "['HOST']: the host list is empty"),
    ({"HOST": "db1,,db2"}, "['HOST']: entry 2 is empty"),
    ({"HOST": "db1;db2"}, "['HOST']: 'db1;db2' is not a valid host name"),
    ({"HOST": "db1 db2"}, "['HOST']: 'db1 db2' is not a valid host name"),
    ({"HOST": "db1|db2"}, "'db1|db2' is not a valid host name"),
    ({"HOST": "db1..example.com"}, "['HOST']: 'db1..example.com' is not a valid host name: it"),
    ({"HOST": ["db1", f"{'x' * 64}.example:5433"]}, "['HOST'][1]: 'xxxxxxxxxxxxxxxxxxxxxxxxx"),
    ({"HOST": ["db1", f"{'x' * 64}.example"]}, "label 1 is 64 characters long, DNS allows 63"),
    ({"HOST": "postgresql://app:s3cret@db1/app"}, "is a database URL, not a host: give the"),
    ({"HOST": "app:s3cret@db1"}, "'app:***@db1' is not a host: a user name and password go in"),
    ({"HOST": "db1", "PORT": "app:s3cret@db1"}, "['PORT']: 'app:***@db1' is not a port"),
    ({"HOST": "db1", "OPTIONS": {"target_session_attrs": "password=s3cret"}}, "'password=***'"),
    ({"HOST": ["db1", None]}, "['HOST'][1]: None is not a host"),
    ({"HOST": ["db1", "db1"]}, "db1:5432 is listed twice"),
    ({"HOST": "[::1"}, "'[::1' is not a valid [IPv6]:port entry"),
    ({"HOST": "db1:abc"}, "'abc' is not a port number"),
    ({"HOST": "db1:"}, "'db1:' has an empty port"),
    ({"HOST": "db1", "PORT": "abc"}, "['PORT']: 'abc' is not a port number"),
    ({"HOST": "db1", "PORT": 0}, "['PORT']: port 0 is outside 1..65535"),
    ({"HOST": "db1", "PORT": 70000}, "port 70000 is outside 1..65535"),
    ({"HOST": "db1", "PORT": -1}, "port -1 is outside 1..65535"),
    ({"HOST": "db1", "PORT": "5432;5433"}, "'5432;5433' is not a port number"),
    ({"HOST": "db1,db2", "PORT": [5432]}, "['PORT']: 1 ports given for 2 hosts"),
    ({"HOST": ["db1:5433"], "PORT": [5434]}, "'db1' is given port 5433 in HOST and 5434 in PORT"),
    ({"HOST": "db1", "PORT": "\u00b2"}, "['PORT']: '\u00b2' is not a port number"),
    ({"HOST": "db1:\u0665"}, "'\u0665' is not a port number"),
    ({"HOST": [{"host": "db1", "password": "s3cret"}]}, "unknown key(s) password in a host"),
    ({"HOST": [{"port": 5432}]}, "['HOST'][0]: this mapping has no 'host'"),
    ({"HOST": "db1", "OPTIONS": ["sslmode"]}, "['OPTIONS']: a list is not a dict"),
    ({"HOST": "db1", "OPTIONS": "password=s3cret"}, "['OPTIONS']: a str is not a dict"),
    ({"HOST": "db1", "OPTIONS": {"conect_timeout": 3}}, "['conect_timeout']: libpq has no such"),
    ({"HOST": "db1", "OPTIONS": {"target_session_attrs": "master"}}, "'master' is not one of"),
    ({"HOST": "db1", "OPTIONS": {"host": "db2"}}, "['OPTIONS']['host']: list the servers in HOST"),
    ({"HOST": "db1", "OPTIONS": {"hostaddr": "10.0.0.1"}}, "['hostaddr']: list the servers in"),
    ({"HOST": "db1", "OPTIONS": {"connect_timeout": 0}}, "0 would wait forever"),
    ({"HOST": "db1", "OPTIONS": {"connect_timeout": "ten"}}, "'ten' is not a whole number"),
    ({"HOST": "db1", "OPTIONS": {"connect_timeout": 86400}}, "86400 is not a whole number"),
    ({"HOST": "db1", "OPTIONS": {"connect_timeout": "\u00b3"}}, "is not a whole number"),
    ({"HOST": "db1", "OPTIONS": {"load_balance_hosts": True}}, "True is not one of disable"),
    ({"HOST": "db1", "OPTIONS": {"failover": "fast"}}, "'fast' is not a dict of failover"),
    ({"HOST": "db1", "OPTIONS": {"failover": {"retries": 3}}}, "unknown setting(s) retries"),
    ({"HOST": "db1", "OPTIONS": {"failover": {"retry_timeout": -5}}}, "-5 must be a finite"),
    ({"HOST": "db1", "OPTIONS": {"failover": {"retry_timeout": "10s"}}}, "'10s' is not a number"),
    ({"HOST": "db1", "OPTIONS": {"failover": {"retry_timeout": 1e9}}}, "is outside 0..3600"),
    ({"HOST": "db1", "OPTIONS": {"failover": {"retry_timeout": 10**400}}}, "is outside 0..3600"),
    (
        {"HOST": "db1", "OPTIONS": {"failover": {"backoff_initial": 5, "backoff_max": 1}}},
        "backoff_initial (5) is larger than backoff_max (1)",
    ),
    ({"HOST": "db1", "OPTIONS": {"failover": {"host_recheck": -1}}}, "-1 must be a finite"),
    ({"HOST": "db1", "OPTIONS": {"failover": {"retry_reads": "yes"}}}, "'yes' is not True or"),
]


def user_settings(settings: dict) -> dict:
    return {"ENGINE": "django_pg_failover", "NAME": "app", "USER": "app", **settings}


def first_query(wrapper: DatabaseWrapper) -> None:
    with wrapper.cursor() as cursor:  # what the ORM does first
        cursor.execute("SELECT 1")


@pytest.mark.parametrize(("settings", "message"), BAD_SETTINGS)
def test_first_query_raises_one_clear_error(settings, message, django_db_blocker) -> None:
    db = connections.configure_settings({"default": {}, "orders": user_settings(settings)})
    wrapper = DatabaseWrapper(db["orders"], "orders")
    with django_db_blocker.unblock(), pytest.raises(ImproperlyConfigured) as excinfo:
        first_query(wrapper)
    text = str(excinfo.value)
    assert text.startswith("DATABASES['orders']")
    assert message in text
    assert "s3cret" not in text  # a misplaced password is never echoed
    assert excinfo.value.__cause__ is None  # raised by us, not translated from libpq
    assert wrapper.connection is None  # nothing was attempted


@pytest.mark.parametrize(("settings", "message"), BAD_SETTINGS)
def test_manage_py_check_reports_it_once(settings, message) -> None:
    problems = database_problems({"orders": user_settings(settings)})
    assert len(problems) == 1
    assert message in problems[0].msg
    assert "s3cret" not in problems[0].msg
    assert problems[0].id.startswith("django_pg_failover.E")


def test_the_table_is_long_enough() -> None:
    assert len(BAD_SETTINGS) >= 25


# -- bad environments -------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import django
    from django.conf import settings
    settings.configure(
        DATABASES={"default": {"ENGINE": "django_pg_failover", "NAME": "app", "HOST": "db1"}},
        INSTALLED_APPS=["django_pg_failover"],
    )
    django.setup()
    from django.db import connection
    connection.ensure_connection()
    """
)


def run_python(
    code: str, path: list[str], isolated: bool, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    flags = ["-S", "-I"] if isolated else ["-I"]
    prelude = f"import sys; sys.path[:0] = {path!r}\n"
    return subprocess.run(
        [sys.executable, *flags, "-c", prelude + code],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
        env=None if env is None else {**os.environ, **env},
    )


def site_packages_without(tmp_path: Path, *hidden: str) -> list[str]:
    """A path with this environment's packages but ``hidden`` ones, like a fresh venv."""
    import django

    site = Path(django.__file__).resolve().parents[1]
    view = tmp_path / "site"
    view.mkdir()
    for entry in site.iterdir():
        name = entry.name.split("-")[0].split(".")[0].lower()
        if name not in hidden:
            (view / entry.name).symlink_to(entry)
    return [str(ROOT), str(view)]


def test_no_driver_installed(tmp_path) -> None:
    path = site_packages_without(
        tmp_path, "psycopg2", "psycopg2_binary", "psycopg", "psycopg_binary", "psycopg_pool"
    )
    result = run_python(SCRIPT, path, isolated=True)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "django.core.exceptions.ImproperlyConfigured: django_pg_failover needs a PostgreSQL "
        "driver: pip install 'django-pg-failover[psycopg]' (psycopg 3, with its connection "
        "pool) or 'django-pg-failover[psycopg2]'"
    )


def pip_install(target: Path, requirement: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), requirement],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.timeout(300)
def test_a_psycopg_older_than_we_support_is_refused(tmp_path) -> None:
    target = tmp_path / "old-psycopg"
    env = None
    pip = pip_install(target, "psycopg[binary]==3.1.16")
    if pip.returncode != 0 and "No matching distribution" in pip.stderr:
        # psycopg-binary 3.1.x has no wheel for Python 3.13+: the pure-Python package
        # on the system's libpq (Debian's libpq5, there with its PostgreSQL) instead.
        pip = pip_install(target, "psycopg==3.1.16")
        env = {"PSYCOPG_IMPL": "python"}
    assert pip.returncode == 0, pip.stderr
    result = run_python(SCRIPT, [str(target), str(ROOT)], isolated=False, env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "django.core.exceptions.ImproperlyConfigured: django_pg_failover needs psycopg >= "
        "3.1.17 (it tries every address of a host name); this environment has psycopg "
        "3.1.16: pip install --upgrade 'psycopg[binary]>=3.1.17'"
    )


LAB_SCRIPT = "from django_pg_failover.lab import Cluster\nCluster.create()\n"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PG_FAILOVER_PG_BINDIR": "/nonexistent"}, "is not a usable PostgreSQL bin folder"),
        ({"PG_FAILOVER_LAB_USER": "no-such-user"}, "there is no user 'no-such-user'"),
    ],
)
def test_lab_without_binaries_or_user(env, message) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "django_pg_failover.lab", "--dir", "/tmp/pgfo-bad-env", "start"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
