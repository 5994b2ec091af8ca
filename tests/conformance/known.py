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
        return fnmatch.fnmatchcase(test, self.pattern) and (
            self.applies is None or self.applies()
        )


def running_as_root() -> bool:
    return os.geteuid() == 0


KNOWN: list[Known] = []


def known_for(test: str) -> Known | None:
    return next((known for known in KNOWN if known.matches(test)), None)
