"""Known outcomes that are not this backend's doing: the one list, each with its reason.

Nothing here is skipped: every test runs on both backends. An entry only lets
the comparison name the reason beside the outcome. Unless an entry says
``differs=True``, its tests must still come out the same on both backends,
and a difference fails the run like any other.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    #: A test id, or an fnmatch pattern of test ids.
    pattern: str
    reason: str
    #: Expected to differ between the backends (the reason says why that is not ours).
    differs: bool = False
    #: When the entry applies (for instance only as root); always when None.
    applies: Callable[[], bool] | None = None

    def matches(self, test: str) -> bool:
        return fnmatch.fnmatchcase(test, self.pattern) and (self.applies is None or self.applies())


def running_as_root() -> bool:
    return os.geteuid() == 0


AS_ROOT = (
    "run as root (CI runs as root): the test makes a file or folder unwritable and expects "
    "PermissionError, but root may write anyway; fails on both backends alike"
)
TESTPROJECT = (
    "admin_scripts puts the folder that holds a third-party backend on its subprocesses' "
    "path; imported from the repository root, that brings along this repository's "
    "testproject/, and `startproject testproject` then refuses the name as an existing "
    "module (ours failed, stock passed). The run imports the package from a folder of its "
    "own (.conformance/path/), where both backends pass"
)

KNOWN: list[Known] = [
    Known(
        "file_uploads.tests.DirectoryCreationTests.test_readonly_root",
        AS_ROOT,
        applies=running_as_root,
    ),
    Known(
        "i18n.test_compilation.PoFileTests.test_no_write_access", AS_ROOT, applies=running_as_root
    ),
    Known(
        "template_tests.test_loaders.FileSystemLoaderTests.test_permissions_error",
        AS_ROOT,
        applies=running_as_root,
    ),
    Known("admin_scripts.tests.StartProject.test_simple_project", TESTPROJECT),
    Known("admin_scripts.tests.StartProject.test_simple_project_different_directory", TESTPROJECT),
    Known("admin_scripts.tests.StartProject.test_honor_umask", TESTPROJECT),
]


def known_for(test: str) -> Known | None:
    return next((known for known in KNOWN if known.matches(test)), None)
