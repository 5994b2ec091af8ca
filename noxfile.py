"""The compatibility matrix: Django x Python x PostgreSQL x psycopg2.

    nox -l                               # the sessions
    nox                                  # the whole matrix (every cell runs the full suite
                                         # on every PostgreSQL the lab finds: 15 and 18 here)
    nox -s "tests(python='3.13', django='6.1')" -- tests/unit   # one cell, some tests

Interpreters come from PATH (``python3.10`` ...) or from pyenv's versions.
"""

from __future__ import annotations

import glob
import os

import nox

# Django's own support: 4.2 up to Python 3.12, 5.2 up to 3.13, 6.x from 3.12.
PYTHONS = {"4.2": ["3.10", "3.11", "3.12"], "5.2": ["3.10", "3.11", "3.12", "3.13"]}
PYTHONS["6.1"] = ["3.12", "3.13"]
# The oldest psycopg2 we support (Django 6 requires it; it bundles libpq 16.0),
# and the newest: tested on the oldest and the newest Django that run them.
PSYCOPG2 = {"oldest": "2.9.9", "newest": "2.9.13"}

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

# pyenv keeps each interpreter in its own bin folder; nox looks on PATH.
pyenv_bins = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin")))
os.environ["PATH"] = os.pathsep.join([*pyenv_bins, os.environ.get("PATH", "")])


def install(session: nox.Session, django: str, psycopg2: str) -> None:
    session.install("-e", ".[test]", f"django=={django}.*", f"psycopg2-binary=={psycopg2}")
    session.run(
        "python",
        "-c",
        "import django, psycopg2, psycopg2.extensions as e; "
        "print('Django', django.__version__, '| psycopg2', psycopg2.__version__.split()[0], "
        "'| libpq', e.libpq_version())",
    )


@nox.session
@nox.parametrize(
    ("python", "django"),
    [(python, django) for django, pythons in PYTHONS.items() for python in pythons],
)
def tests(session: nox.Session, django: str) -> None:
    """The suite with the newest psycopg2-binary."""
    install(session, django, PSYCOPG2["newest"])
    session.run("pytest", *session.posargs)


@nox.session
@nox.parametrize(("python", "django"), [("3.10", "4.2"), ("3.12", "6.1")])
def oldest_driver(session: nox.Session, django: str) -> None:
    """The suite with the oldest psycopg2-binary we support."""
    install(session, django, PSYCOPG2["oldest"])
    session.run("pytest", *session.posargs)
