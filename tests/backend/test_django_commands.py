"""Django's tools with a host list: migrate, test, dbshell, and pytest-django, for real."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import django
import pytest

from django_pg_failover.drivers import get_driver
from django_pg_failover.lab import Cluster
from django_pg_failover.lab.cluster import free_port
from tests.markers import needs_pool

pytestmark = pytest.mark.timeout(180)

TESTPROJECT = Path(__file__).resolve().parents[2] / "testproject"


@pytest.fixture(params=[False, pytest.param(True, marks=needs_pool)], ids=["", "pool"])
def pool(request: pytest.FixtureRequest) -> dict[str, str]:
    """The project's environment with Django's connection pool, or without."""
    return {"DJANGO_DB_POOL": "1"} if request.param else {}


def project_env(cluster: Cluster, dbname: str = "app", **extra: str) -> dict[str, str]:
    """testproject's environment: DATABASE_URL with a dead host and the standbys first."""
    hosts = [
        f"127.0.0.1:{free_port()}",
        *(f"127.0.0.1:{n.port}" for n in cluster.standbys),
        f"127.0.0.1:{cluster.primary.port}",
    ]
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/"),
        # `pytest --driver=psycopg2` hides psycopg 3 through the path: keep it so.
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": cluster.database_url(hosts, dbname),
        **extra,
    }


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=TESTPROJECT, env=env, capture_output=True, text=True
    )


def test_the_project_runs_on_this_runs_driver(cluster: Cluster) -> None:
    code = "from django_pg_failover.drivers import get_driver; print(get_driver().name)"
    result = run(["manage.py", "shell", "-c", code], project_env(cluster))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == get_driver().name


def test_migrate_runs_on_the_primary(cluster: Cluster, pool) -> None:
    cluster.execute("CREATE DATABASE migrate_check OWNER app")  # the lab is reset after
    result = run(
        ["manage.py", "migrate", "-v", "1"], project_env(cluster, dbname="migrate_check", **pool)
    )
    assert result.returncode == 0, result.stderr
    assert "Applying shop.0001_initial... OK" in result.stdout
    cluster.wait_replayed()
    for node in cluster.nodes:
        tables = node.scalar(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'shop_order'", dbname="migrate_check"
        )
        assert tables == 1


def test_manage_py_test_creates_the_test_database_on_the_primary(cluster: Cluster, pool) -> None:
    result = run(
        ["manage.py", "test", "shop", "--noinput", "-v", "2"], project_env(cluster, **pool)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 4 tests" in result.stderr
    assert "Creating test database for alias 'default' ('test_app')" in result.stderr
    assert (
        cluster.primary.scalar("SELECT count(*) FROM pg_database WHERE datname = 'test_app'") == 0
    )


def test_pytest_django_runs_the_same_tests(cluster: Cluster, pool) -> None:
    result = run(
        ["-m", "pytest", "-q", "shop/tests.py", "-p", "no:cacheprovider"],
        project_env(cluster, **pool),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_dbshell_opens_psql_on_the_primary(cluster: Cluster) -> None:
    result = run(
        [
            "manage.py",
            "dbshell",
            "--",
            "-At",
            "-c",
            "SELECT inet_server_port(), pg_is_in_recovery()",
        ],
        project_env(cluster),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{cluster.primary.port}|f"


def test_dbshell_reports_bad_hosts_with_the_alias(cluster: Cluster, tmp_path: Path) -> None:
    # config() refuses such a URL itself: the bad HOST is set in the settings.
    (tmp_path / "bad_hosts.py").write_text(
        "from testproject.settings import *\nDATABASES['default']['HOST'] = '127.0.0.1:5432,,'\n"
    )
    env = project_env(cluster, DJANGO_SETTINGS_MODULE="bad_hosts")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env["PYTHONPATH"]]))
    result = run(["manage.py", "dbshell"], env)
    assert result.returncode != 0
    assert result.stderr.strip() == "CommandError: DATABASES['default']['HOST']: entry 2 is empty"


def test_bad_database_url_stops_manage_py_with_one_line_and_no_password(cluster: Cluster) -> None:
    env = project_env(cluster)
    env["DATABASE_URL"] = f"postgresql://app:Zq7%40pw-{cluster.password}@127.0.0.1:5432,,/app"
    result = run(["manage.py", "check"], env)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "django_pg_failover.exceptions.DatabaseURLError: DATABASE_URL: host 2 of 3 is empty "
        "(libpq would use its default socket folder, which this backend never guesses); "
        "name it, e.g. %2Fvar%2Frun%2Fpostgresql"
    )
    assert cluster.password not in result.stderr + result.stdout
    assert "Zq7" not in result.stderr + result.stdout


# A model whose system checks ask the server's version (Django's feature flags):
# a virtual GeneratedField (PostgreSQL 18's, Django 6.1) and nulls_distinct
# (PostgreSQL 15's, Django 5.0 to 6.0).
VERSIONED_MODELS = """
from django.db import models


class Priced(models.Model):
    net = models.IntegerField()
    gross = models.GeneratedField(
        expression=models.F("net") * 2, output_field=models.IntegerField(), db_persist=False
    )

    class Meta:
        app_label = "versioned"
        constraints = [
            models.UniqueConstraint(fields=["net"], name="net_once", nulls_distinct=False)
        ]
"""


@pytest.mark.skipif(django.VERSION < (5, 0), reason="GeneratedField and nulls_distinct: Django 5.0")
def test_check_with_every_host_down_waits_one_pass_not_retry_timeout(
    tmp_path: Path, pg_blackhole
) -> None:
    """Django 6.1's ``check`` asks every alias its server's version (before it, ``check
    --database``): with every host down it fails within about connect_timeout, like
    Django's own backend, instead of waiting retry_timeout."""
    app = tmp_path / "versioned"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(VERSIONED_MODELS)
    hosts = f"127.0.0.1:{free_port()},{pg_blackhole.address}"  # refused, then hung
    (tmp_path / "down_settings.py").write_text(
        "SECRET_KEY = 'x'\n"
        "INSTALLED_APPS = ['versioned']\n"
        "DATABASES = {'default': {'ENGINE': 'django_pg_failover', 'NAME': 'app',\n"
        f"    'USER': 'app', 'HOST': {hosts!r},\n"
        "    'OPTIONS': {'connect_timeout': 2, 'failover': {'retry_timeout': 60}}}}\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "DJANGO_SETTINGS_MODULE": "down_settings",
    }
    args = ["check"] if django.VERSION >= (6, 1) else ["check", "--database", "default"]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "could not connect to database alias 'default'" in result.stderr, result.stderr
    assert "no suitable host in one pass" in result.stderr
    assert elapsed < 15, elapsed  # one connect_timeout (2 s) and Django's start, not 60 s
