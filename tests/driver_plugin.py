"""``pytest --driver=psycopg|psycopg2``: the driver Django uses in this test run.

Loaded with ``-p`` (pytest.ini) so that it acts before pytest-django sets
Django up: Django picks its driver when it first loads the backend, which
happens during ``django.setup()``. With ``psycopg2``, a folder whose
``psycopg`` module fails to import goes first on the path of this process and
of every process it starts, as if psycopg 3 were not installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path

import pytest

HIDDEN_PSYCOPG = Path(__file__).parent / "hidden_psycopg"
DRIVERS = ("psycopg", "psycopg2")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--driver",
        choices=DRIVERS,
        default=None,
        help="the driver Django uses in this run: psycopg (psycopg 3, Django's choice when "
        "installed: the default) or psycopg2 (psycopg 3 is then hidden, in this process "
        "and in every process it starts)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> Generator[None, None, None]:
    if early_config.known_args_namespace.driver == "psycopg2":
        if "django.db.backends.postgresql.psycopg_any" in sys.modules:
            raise pytest.UsageError("--driver=psycopg2: Django has chosen its driver already")
        sys.path.insert(0, str(HIDDEN_PSYCOPG))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(HIDDEN_PSYCOPG), os.environ.get("PYTHONPATH")])
        )
    return (yield)


def pytest_report_header(config: pytest.Config) -> str:
    from django_pg_failover.drivers import get_driver

    return f"driver: {get_driver().label()}"
