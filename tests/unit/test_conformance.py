"""The conformance run's reading of runtests.py output, and its comparison."""

from __future__ import annotations

from tests.conformance import known
from tests.conformance.compare import compare
from tests.conformance.known import KNOWN, Known
from tests.conformance.results import Outcome, parse

SEP1 = "=" * 70
SEP2 = "-" * 70

OUTPUT = f"""\
Creating test database for alias 'default' ('test_ours_default')...
Cloning test database for alias 'default' ('test_ours_default')...
test_ok (app.tests.A.test_ok) ... ok
test_doc (app.tests.A.test_doc)
A docstring's first line ... ok
test_skip (app.tests.A.test_skip) ... skipped 'Database has feature(s) x'
test_xfail (app.tests.A.test_xfail) ... expected failure
test_sub (app.tests.A.test_sub) ...
  test_sub (app.tests.A.test_sub) (value=1) ... FAIL
  test_sub (app.tests.A.test_sub) (value=2) ... ERROR
test_noisy (app.tests.A.test_noisy) ... something the test printed
ok
test_old (app.tests.B) ... FAIL
setUpClass (app.tests.C) ... ERROR

{SEP1}
ERROR: setUpClass (app.tests.C)
{SEP2}
Traceback (most recent call last):
RuntimeError: no
{SEP1}
FAIL: test_old (app.tests.B)
A docstring
{SEP2}
Traceback (most recent call last):
AssertionError: 1 != 2

{SEP2}
Ran 7 tests in 0.120s

FAILED (failures=2, errors=1, skipped=1, expected failures=1)
"""


def test_outcomes_of_each_kind_of_line() -> None:
    result = parse(OUTPUT)
    assert result.outcomes == {
        "app.tests.A.test_ok": Outcome.PASSED,
        "app.tests.A.test_doc": Outcome.PASSED,
        "app.tests.A.test_skip": Outcome.SKIPPED,
        "app.tests.A.test_xfail": Outcome.EXPECTED_FAILURE,
        # Its worst subtest.
        "app.tests.A.test_sub": Outcome.ERROR,
        "app.tests.A.test_noisy": Outcome.PASSED,
        # Python 3.10 writes the class only.
        "app.tests.B.test_old": Outcome.FAILED,
        "app.tests.C.setUpClass": Outcome.ERROR,
    }
    assert (result.ran, result.seconds) == (7, 0.12)
    assert result.completeness_problem() is None


def test_failure_reports_by_test() -> None:
    reports = parse(OUTPUT).reports
    assert reports["app.tests.B.test_old"].endswith("AssertionError: 1 != 2")
    assert reports["app.tests.C.setUpClass"].endswith("RuntimeError: no")


def test_a_run_cut_short_is_incomplete() -> None:
    cut = OUTPUT.split(SEP1)[0]
    assert parse(cut).completeness_problem() == ('the run ended before its "Ran N tests" line')
    lost_line = OUTPUT.replace("test_ok (app.tests.A.test_ok) ... ok\n", "")
    assert parse(lost_line).completeness_problem() == (
        "runtests ran 7 tests, 6 were read from its output"
    )


def test_the_last_ran_line_counts() -> None:
    # A test of the test runner may print the summary of a run of its own.
    inner = "Ran 1 test in 0.001s\n"
    assert parse(inner + OUTPUT).ran == 7


def test_differences_and_failures_on_both() -> None:
    stock = parse(OUTPUT)
    ours = parse(
        OUTPUT.replace(
            "test_ok (app.tests.A.test_ok) ... ok", "test_ok (app.tests.A.test_ok) ... ERROR"
        )
    )
    rows = {row.test: row for row in compare(stock, ours)}
    assert rows["app.tests.A.test_ok"].is_failure
    assert not rows["app.tests.B.test_old"].differs  # failed on both: listed, not a difference
    assert set(rows) == {
        "app.tests.A.test_ok",
        "app.tests.A.test_sub",
        "app.tests.B.test_old",
        "app.tests.C.setUpClass",
    }


def test_a_test_missing_from_one_run_differs() -> None:
    stock = parse(OUTPUT)
    ours = parse(OUTPUT.replace("test_ok (app.tests.A.test_ok) ... ok\n", ""))
    (row,) = (row for row in compare(stock, ours) if row.differs)
    assert (row.test, row.ours) == ("app.tests.A.test_ok", Outcome.MISSING)


def test_known_differences_need_a_reason_and_only_excuse_what_they_say() -> None:
    assert all(known.reason for known in KNOWN)
    same = Known("app.tests.A.*", "the same on both", differs=False)
    assert same.matches("app.tests.A.test_ok")
    assert not same.matches("app.tests.B.test_old")
    assert not Known("app.*", "never here", applies=lambda: False).matches("app.tests.A.test_ok")


def test_a_difference_the_known_list_expects_does_not_fail(monkeypatch) -> None:
    monkeypatch.setattr(known, "KNOWN", [Known("app.tests.A.test_ok", "not ours", differs=True)])
    stock = parse(OUTPUT)
    ours = parse(
        OUTPUT.replace(
            "test_ok (app.tests.A.test_ok) ... ok", "test_ok (app.tests.A.test_ok) ... FAIL"
        )
    )
    (row,) = (row for row in compare(stock, ours) if row.differs)
    assert row.known is not None
    assert not row.is_failure
