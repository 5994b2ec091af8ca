"""Stock against ours, test by test."""

from __future__ import annotations

from dataclasses import dataclass

from .known import Known, known_for
from .results import SEVERITY, Outcome, RunResult

BAD = {Outcome.FAILED, Outcome.ERROR, Outcome.UNEXPECTED_SUCCESS, Outcome.MISSING}


@dataclass(frozen=True)
class Row:
    test: str
    stock: Outcome
    ours: Outcome
    known: Known | None

    @property
    def differs(self) -> bool:
        return self.stock is not self.ours

    @property
    def is_failure(self) -> bool:
        """A difference the known list does not expect."""
        return self.differs and not (self.known and self.known.differs)


def compare(stock: RunResult, ours: RunResult) -> list[Row]:
    """Every test that differs, or that failed on both."""
    rows = []
    for test in sorted(stock.outcomes.keys() | ours.outcomes.keys()):
        row = Row(
            test,
            stock.outcomes.get(test, Outcome.MISSING),
            ours.outcomes.get(test, Outcome.MISSING),
            known_for(test),
        )
        if row.differs or row.stock in BAD:
            rows.append(row)
    return rows


def format_counts(result: RunResult) -> str:
    counts = result.counts()
    parts = [f"{counts[outcome]} {outcome.value}" for outcome in SEVERITY]
    return f"{len(result.outcomes)} tests: " + ", ".join(parts)


def format_row(row: Row) -> str:
    line = f"{row.test}: stock {row.stock.value}, ours {row.ours.value}"
    if row.known is not None:
        line += f" (known, reason: {row.known.reason})"
    return line
