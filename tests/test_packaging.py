"""The wheel and the sdist build, install in a fresh virtualenv, and work there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import django_pg_failover
from django_pg_failover.drivers import get_driver

ROOT = Path(__file__).resolve().parents[1]

SMOKE = textwrap.dedent(
    """
    import importlib.metadata, subprocess, sys
    import django
    from django.conf import settings
    import django_pg_failover

    settings.configure(
        INSTALLED_APPS=["django_pg_failover"],
        DATABASES={"default": {"ENGINE": "django_pg_failover", "NAME": "app",
                               "HOST": ["db1", "[::1]:5433"], "PASSWORD": "x"}},
    )
    django.setup()
    from django.core.management import call_command
    from django.db import connection
    params = connection.get_connection_params()
    assert params["host"] == "db1,::1" and params["port"] == "5432,5433", params
    assert params["target_session_attrs"] == "read-write"
    call_command("check")
    from django_pg_failover.drivers import get_driver
    print("driver", get_driver().name)
    plugins = [e.value for e in importlib.metadata.entry_points(group="pytest11")]
    assert "django_pg_failover.lab.pytest_plugin" in plugins, plugins
    lab = subprocess.run([sys.executable, "-m", "django_pg_failover.lab", "--help"],
                         capture_output=True, text=True, check=True)
    assert "start" in lab.stdout
    print("version", django_pg_failover.__version__)
    """
)


POOL_CHECK = textwrap.dedent(
    """
    import django
    from django.conf import settings
    from django.core import checks

    settings.configure(
        INSTALLED_APPS=["django_pg_failover"],
        DATABASES={"default": {"ENGINE": "django_pg_failover", "NAME": "app", "HOST": "db1",
                               "OPTIONS": {"pool": {"min_sise": 2}}}},
    )
    django.setup()
    for message in checks.run_checks():
        print(message.id, message.msg)
    import psycopg_pool
    """
)


def run(*args: str | Path, cwd: Path = ROOT) -> str:
    # A fresh environment: nothing of this run's path (which may hide psycopg 3).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.timeout(900)
@pytest.mark.skipif(
    get_driver().name != "psycopg",
    reason="installs each driver's extra itself: run once, in the psycopg 3 run",
)
def test_wheel_and_sdist_install_and_work_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    version = django_pg_failover.__version__
    wheel = dist / f"django_pg_failover-{version}-py3-none-any.whl"
    sdist = dist / f"django_pg_failover-{version}.tar.gz"
    assert sorted(p.name for p in dist.iterdir()) == sorted([wheel.name, sdist.name])

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"django_pg_failover-{version}.dist-info/METADATA").decode()
    assert all(n.startswith(("django_pg_failover/", "django_pg_failover-")) for n in names)
    assert "django_pg_failover/lab/pytest_plugin.py" in names
    assert "Description-Content-Type: text/markdown" in metadata
    assert "# django-pg-failover" in metadata  # the README is the long description
    assert "Requires-Python: >=3.10" in metadata
    # Metrics are optional: the API in an extra of its own, never a runtime dependency.
    assert "Provides-Extra: otel" in metadata
    assert [r for r in metadata.splitlines() if "opentelemetry-api" in r] == [
        'Requires-Dist: opentelemetry-api>=1.27; extra == "otel"',
        'Requires-Dist: opentelemetry-api>=1.27; extra == "test"',
    ]

    # Each artifact with one driver's extra: psycopg 3 with its pool, and psycopg2.
    for artifact, extra, driver in ((wheel, "psycopg", "psycopg"), (sdist, "psycopg2", "psycopg2")):
        venv = tmp_path / f"venv-{artifact.suffixes[-1].strip('.')}"
        run(sys.executable, "-m", "venv", venv)
        python = venv / "bin" / "python"
        run(python, "-m", "pip", "install", "--quiet", f"{artifact}[{extra}]")
        out = run(python, "-c", SMOKE, cwd=tmp_path)
        assert out.splitlines() == [
            "System check identified no issues (0 silenced).",
            f"driver {driver}",
            f"version {version}",
        ]
        if driver == "psycopg":  # Django's pool is there, and its options are checked
            pool = run(python, "-c", POOL_CHECK, cwd=tmp_path)
            assert "django_pg_failover.E006" in pool
            assert "['pool']['min_sise']" in pool
