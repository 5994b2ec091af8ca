"""A Python interpreter that can run Patroni as the server user.

Patroni starts PostgreSQL itself, so it runs as the server user (``postgres``
when the lab runs as root). The interpreter running the lab may be out of that
user's reach: a virtualenv made from a Python under ``/root`` is. Then the lab
makes a small virtualenv for Patroni from an interpreter the server user can
run (``/usr/bin/python3`` on Debian) in the temporary folder, once, with the
Patroni and driver versions installed here, and reuses it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import LabError
from .system import ServerUser, readable_by_all

PYTHON_ENV = "PG_FAILOVER_PATRONI_PYTHON"
# What Patroni needs besides itself: its etcd v3 client and a PostgreSQL driver.
PROBE = "from patroni.__main__ import check_psycopg; check_psycopg(); import patroni.dcs.etcd3"
BASE_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3")

HOW_TO_GET_PATRONI = (
    "Patroni is not installed (the orchestrated lab runs real Patroni agents): "
    "pip install 'django-pg-failover[patroni]'"
)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def patroni_version() -> str:
    version = _version("patroni")
    if version is None:
        raise LabError(HOW_TO_GET_PATRONI)
    return version


def can_run_patroni(user: ServerUser, python: str) -> bool:
    try:
        return user.run([python, "-c", PROBE], timeout=60, check=False).returncode == 0
    except (OSError, LabError):
        return False


def requirements() -> list[str]:
    """What the Patroni virtualenv installs: the versions installed here."""
    driver = "psycopg2-binary"
    for name in ("psycopg2-binary", "psycopg2"):
        if version := _version(name):
            driver = f"psycopg2-binary=={version}"
            break
    return [f"patroni[etcd3]=={patroni_version()}", driver]


def _base_interpreter(user: ServerUser) -> str:
    """An interpreter the server user can run and make a virtualenv from."""
    candidates = [getattr(sys, "_base_executable", ""), *BASE_CANDIDATES]
    check = "import sys, venv; sys.exit(sys.version_info < (3, 8))"
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            try:
                if user.run([candidate, "-c", check], timeout=60, check=False).returncode == 0:
                    return candidate
            except (OSError, LabError):
                continue
    raise LabError(
        f"Patroni runs as {user.name!r}, and no Python 3.8+ interpreter with venv is "
        f"runnable by that user (tried {sys.executable}, {', '.join(BASE_CANDIDATES)}). "
        f"Install one (Debian: apt-get install python3-venv) or set {PYTHON_ENV} to an "
        f"interpreter that user can run and that has patroni[etcd3] and psycopg2 installed."
    )


def _make_virtualenv(base: str, target: Path, wanted: list[str]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        subprocess.run([base, "-m", "venv", "--without-pip", str(staging)], check=True)
        # This environment's pip installs into the new one (pip --python, pip 22.3+).
        pip = [sys.executable, "-m", "pip", "--python", str(staging / "bin" / "python")]
        proc = subprocess.run(
            [*pip, "install", "--quiet", "--disable-pip-version-check", *wanted],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise LabError(
                f"could not install {' '.join(wanted)} for the server user's Python "
                f"({base}): {proc.stderr.strip()[-2000:]}\nInstall them yourself into a "
                f"virtualenv that user can run and set {PYTHON_ENV} to its python."
            )
        readable_by_all(staging)
        try:
            staging.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def patroni_python(user: ServerUser) -> str:
    """The interpreter to run Patroni with, as ``user``; made once when needed.

    ``$PG_FAILOVER_PATRONI_PYTHON`` wins; otherwise this interpreter when the
    server user can run it with Patroni; otherwise the lab's own virtualenv.
    """
    explicit = os.environ.get(PYTHON_ENV)
    if explicit:
        if not can_run_patroni(user, explicit):
            raise LabError(
                f"{PYTHON_ENV}={explicit!r}: user {user.name!r} cannot run Patroni with it "
                f"(it needs patroni[etcd3] and psycopg2 or psycopg installed)"
            )
        return explicit
    patroni_version()
    if can_run_patroni(user, sys.executable):
        return sys.executable
    base = _base_interpreter(user)
    wanted = requirements()
    digest = hashlib.sha256(f"{os.path.realpath(base)} {' '.join(wanted)}".encode()).hexdigest()
    target = Path(tempfile.gettempdir()) / f"django-pg-failover-patroni-{digest[:12]}"
    python = target / "bin" / "python"
    if not python.exists():
        _make_virtualenv(base, target, wanted)
    if not can_run_patroni(user, str(python)):
        raise LabError(f"user {user.name!r} cannot run Patroni with {python}: remove {target}")
    return str(python)
