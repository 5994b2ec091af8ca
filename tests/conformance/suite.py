"""Django's own test suite: the tests/ tree of the installed Django's sdist, and what it needs."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import django

#: Packages some of the chosen apps need, with Django's own bounds
#: (tests/requirements/py3.txt): without them tests are skipped, or fail to import.
EXTRAS = {
    # Tracebacks of failures in --parallel workers (without it, runtests warns and
    # reports a failure without its traceback).
    "tblib": "tblib>=1.5.0",
    # ImageField tests (model_fields, bulk_create).
    "PIL": "Pillow>=6.2.1",
}


def django_version() -> str:
    return django.__version__


def fetch_sdist(cache: Path, version: str) -> Path:
    """The sdist of Django ``version``, downloaded once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sdist_in(cache, version)
    if found is None:
        # pip, not a URL: it follows the user's index configuration (mirrors, proxies).
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary=django",
                "--dest",
                str(cache),
                f"django=={version}",
            ],
            check=True,
        )
        found = sdist_in(cache, version)
        if found is None:
            raise RuntimeError(f"pip download left no sdist of Django {version} in {cache}")
    return found


def sdist_in(folder: Path, version: str) -> Path | None:
    # Django's sdists were named Django-X before PEP 625, django-X since.
    for name in (f"django-{version}.tar.gz", f"Django-{version}.tar.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def extract_tests(sdist: Path, destination: Path) -> Path:
    """Django's tests/ folder from ``sdist``, extracted once under ``destination``."""
    tests = destination / "tests"
    if (tests / "runtests.py").is_file():
        return tests
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.split("/")[1:2] == ["tests"]]
        for member in members:
            member.name = member.name.split("/", 1)[1]
        # The "data" filter refuses links and paths out of the folder (Python 3.12+,
        # and security releases of 3.10 and 3.11).
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(partial, members=members, **kwargs)
    shutil.rmtree(destination, ignore_errors=True)
    partial.rename(destination)
    return tests


def install_extras() -> list[str]:
    """Install the missing :data:`EXTRAS` into this interpreter's environment."""
    missing = [spec for module, spec in EXTRAS.items() if importlib.util.find_spec(module) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)
    return missing
