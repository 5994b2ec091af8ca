"""The compatibility matrix: Django x Python x PostgreSQL x driver (psycopg 3, psycopg2).

    nox -l                               # the sessions
    nox                                  # the whole matrix (every cell runs the full suite
                                         # on every PostgreSQL the lab finds: 15 and 18 here)
    nox -s "psycopg(python='3.13', django='6.1')" -- tests/unit   # one cell, some tests

Each cell installs one driver's versions and runs the suite on that driver
(``pytest --driver``); psycopg 3 cells with Django 5.1+ run the pool tests too.
Interpreters come from PATH (``python3.10`` ...) or from pyenv's versions.
"""

from __future__ import annotations

import glob
import os

import nox

# Django's own support: 4.2 up to Python 3.12, 5.2 up to 3.13, 6.x from 3.12.
PYTHONS = {"4.2": ["3.10", "3.11", "3.12"], "5.2": ["3.10", "3.11", "3.12", "3.13"]}
PYTHONS["6.1"] = ["3.12", "3.13"]
# The oldest releases the backend supports (see drivers/ and options.py for why),
# and the newest.
PSYCOPG2 = {"oldest": "2.9.9", "newest": "2.9.13"}
PSYCOPG = {
    "oldest": ["psycopg[binary]==3.1.17", "psycopg_pool==3.3.0"],
    "newest": ["psycopg[binary]==3.3.9", "psycopg_pool==3.3.3"],
}
# psycopg 3.1.17's wheels stop at Python 3.12.
PSYCOPG_OLDEST_CELLS = [("3.12", "4.2"), ("3.12", "5.2"), ("3.12", "6.1")]
PSYCOPG_NEWEST_CELLS = [("3.12", "4.2"), ("3.13", "5.2"), ("3.13", "6.1")]

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

# pyenv keeps each interpreter in its own bin folder; nox looks on PATH.
pyenv_bins = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin")))
os.environ["PATH"] = os.pathsep.join([*pyenv_bins, os.environ.get("PATH", "")])

REPORT = (
    "import django; from django_pg_failover.drivers import get_driver; "
    "print('Django', django.__version__, '|', get_driver().label())"
)


def run_suite(session: nox.Session, driver: str, *packages: str) -> None:
    # The test extra installs both drivers; --driver hides psycopg 3 from a psycopg2 cell.
    session.install("-e", ".[test]", *packages)
    env = {"PYTHONPATH": "tests/hidden_psycopg"} if driver == "psycopg2" else {}
    session.run("python", "-c", REPORT, env=env)
    # `python -m`: the suite's driver plugin is loaded from the project folder.
    session.run("python", "-m", "pytest", "--driver", driver, *session.posargs)


@nox.session
@nox.parametrize(
    ("python", "django"),
    [(python, django) for django, pythons in PYTHONS.items() for python in pythons],
)
def psycopg2(session: nox.Session, django: str) -> None:
    """The suite on the newest psycopg2-binary."""
    run_suite(session, "psycopg2", f"django=={django}.*", f"psycopg2-binary=={PSYCOPG2['newest']}")


@nox.session
@nox.parametrize(("python", "django"), [("3.10", "4.2"), ("3.12", "6.1")])
def psycopg2_oldest(session: nox.Session, django: str) -> None:
    """The suite on the oldest psycopg2-binary we support."""
    run_suite(session, "psycopg2", f"django=={django}.*", f"psycopg2-binary=={PSYCOPG2['oldest']}")


@nox.session
@nox.parametrize(("python", "django"), PSYCOPG_NEWEST_CELLS)
def psycopg(session: nox.Session, django: str) -> None:
    """The suite on the newest psycopg 3 and psycopg_pool (the pool from Django 5.1)."""
    run_suite(session, "psycopg", f"django=={django}.*", *PSYCOPG["newest"])


@nox.session
@nox.parametrize(("python", "django"), PSYCOPG_OLDEST_CELLS)
def psycopg_oldest(session: nox.Session, django: str) -> None:
    """The suite on the oldest psycopg 3 and psycopg_pool we support."""
    run_suite(session, "psycopg", f"django=={django}.*", *PSYCOPG["oldest"])
