"""Outcomes of one ``runtests.py -v 2`` run, test by test, read from its output.

Django's runtests has no machine-readable report, so the verbose lines of
unittest's TextTestResult are the record::

    test_x (app.tests.Class.test_x) ... ok
    test_y (app.tests.Class.test_y)
    First line of the docstring ... skipped 'reason'
      test_z (app.tests.Class.test_z) (param=1) ... FAIL      <- a subtest
    setUpClass (app.tests.Class) ... ERROR                     <- a class that could not start

With ``--parallel`` the workers send their events to the main process, which
writes every line, so lines are not interleaved with each other; output of
the tests themselves can still land between a test's `` ... `` and its status,
which is why a pending test takes the next line that is a status. The number
of tests read is checked against runtests' own "Ran N tests".
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"
    EXPECTED_FAILURE = "expected failure"
    UNEXPECTED_SUCCESS = "unexpected success"
    #: Not in this run's output at all (the other run has it).
    MISSING = "missing"


# When a test reports several statuses (its subtests and itself), the worst one is its outcome.
SEVERITY = [
    Outcome.PASSED,
    Outcome.SKIPPED,
    Outcome.EXPECTED_FAILURE,
    Outcome.UNEXPECTED_SUCCESS,
    Outcome.FAILED,
    Outcome.ERROR,
]

# "method (where)": where is module.Class.method from Python 3.11, module.Class before.
HEADER = re.compile(r"^(?P<indent>  )?(?P<method>\w+) \((?P<where>[\w.]+)\)(?P<rest>.*)$")
SEPARATOR = " ... "
RAN = re.compile(r"^Ran (?P<count>\d+) tests? in (?P<seconds>[\d.]+)s$", re.M)
# The report of each failure and error after the run.
FAILURE_BLOCK = re.compile(
    r"^={70}\n(?:FAIL|ERROR): (?P<title>[^\n]*)\n"  # the test, and maybe its docstring
    r"(?:[^\n]*\n)??-{70}\n(?P<body>.*?)(?=^={70}$|^-{70}$)",
    re.M | re.S,
)
# unittest's placeholders for a class or module whose set-up or tear-down failed:
# reported like tests, not counted in "Ran N tests".
FIXTURES = {"setUpClass", "tearDownClass", "setUpModule", "tearDownModule"}


def parse_status(text: str) -> Outcome | None:
    text = text.strip()
    if text == "ok":
        return Outcome.PASSED
    if text == "FAIL":
        return Outcome.FAILED
    if text == "ERROR":
        return Outcome.ERROR
    if text.startswith("skipped"):
        return Outcome.SKIPPED
    if text == "expected failure":
        return Outcome.EXPECTED_FAILURE
    if text == "unexpected success":
        return Outcome.UNEXPECTED_SUCCESS
    return None


def test_id(method: str, where: str) -> str:
    return where if where.endswith(f".{method}") else f"{where}.{method}"


@dataclass
class RunResult:
    """What one runtests.py run reported."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    #: The "Ran N tests in S" line, if the run got that far.
    ran: int | None = None
    seconds: float | None = None
    #: The traceback report of each failing test, by test id.
    reports: dict[str, str] = field(default_factory=dict)

    def record(self, test: str, outcome: Outcome) -> None:
        previous = self.outcomes.get(test)
        if previous is None or SEVERITY.index(outcome) > SEVERITY.index(previous):
            self.outcomes[test] = outcome

    def counts(self) -> dict[Outcome, int]:
        counts = dict.fromkeys(SEVERITY, 0)
        for outcome in self.outcomes.values():
            counts[outcome] += 1
        return counts

    @property
    def tests_read(self) -> int:
        return sum(1 for test in self.outcomes if test.rsplit(".", 1)[-1] not in FIXTURES)

    def completeness_problem(self) -> str | None:
        """Why these outcomes cannot be trusted as the whole run, if they cannot."""
        if self.ran is None:
            return 'the run ended before its "Ran N tests" line'
        if self.tests_read != self.ran:
            return f"runtests ran {self.ran} tests, {self.tests_read} were read from its output"
        return None


def parse(output: str) -> RunResult:
    result = RunResult()
    pending: str | None = None
    for line in output.splitlines():
        header = HEADER.match(line)
        if header:
            test = test_id(header["method"], header["where"])
            _, separator, status = header["rest"].rpartition(SEPARATOR)
            outcome = parse_status(status) if separator else None
            if outcome is None:
                # Its docstring or the test's own output comes first: the status follows.
                pending = test
            else:
                result.record(test, outcome)
                pending = None
        elif pending is not None:
            # A docstring line ends with " ... status"; a status alone is on its own line.
            _, _, status = line.rpartition(SEPARATOR)
            outcome = parse_status(status)
            if outcome is not None:
                result.record(pending, outcome)
                pending = None
    # The last one: a test of the test runner may print its own.
    ran = next(reversed(list(RAN.finditer(output))), None)
    if ran:
        result.ran = int(ran["count"])
        result.seconds = float(ran["seconds"])
    result.reports = dict(failure_reports(output))
    return result


def failure_reports(output: str) -> Iterable[tuple[str, str]]:
    for block in FAILURE_BLOCK.finditer(output):
        header = HEADER.match(block["title"])
        if header:
            yield test_id(header["method"], header["where"]), block["body"].strip()
