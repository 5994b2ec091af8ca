"""A picture of a failover: requests ok and failed per 100 ms, one panel per backend.

``make demo`` and ``make bench`` draw what their text timelines tell: each
backend's requests on the same time axis, the fault and the promotion marked.
Counting is pure (:func:`per_bucket`, tested without a server); drawing needs
matplotlib, the ``demo`` extra, imported only by :func:`draw` so that nothing
else in the lab or the package depends on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The width of a bar: short enough to show a failover of a second or two.
BUCKET = 0.1
#: Inches at 100 dots per inch: the PNG is 1000 x 560 pixels.
SIZE = (10.0, 5.6)
DPI = 100


@dataclass
class Timeline:
    """One backend's requests: when each ended (seconds from the start) and how."""

    label: str
    outcomes: list[tuple[float, bool]] = field(default_factory=list)
    #: (seconds from the start, what happened): the fault, the promotion, ...
    marks: list[tuple[float, str]] = field(default_factory=list)


def per_bucket(
    outcomes: Sequence[tuple[float, bool]], until: float, bucket: float = BUCKET
) -> tuple[list[int], list[int]]:
    """Requests ok and failed in each ``bucket`` from 0 to ``until`` (later ones dropped)."""
    count = max(1, math.ceil(until / bucket - 1e-9))
    ok, failed = [0] * count, [0] * count
    for at, succeeded in outcomes:
        index = math.floor(at / bucket)
        if 0 <= index < count:
            (ok if succeeded else failed)[index] += 1
    return ok, failed


class PictureUnavailable(RuntimeError):
    """matplotlib is not installed: the text timeline is all there is."""


def draw(timelines: Sequence[Timeline], title: str, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg; return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, none opened
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PictureUnavailable(
            "no picture: matplotlib is not installed (pip install 'django-pg-failover[demo]')"
        ) from exc

    until = max(
        [at for t in timelines for at, _ in t.outcomes]
        + [at for t in timelines for at, _ in t.marks],
        default=1.0,
    )
    counted = [per_bucket(t.outcomes, until) for t in timelines]
    peak = max([max(ok + failed) for ok, failed in counted] + [1])
    figure, axes = plt.subplots(
        len(timelines), 1, sharex=True, sharey=True, figsize=SIZE, dpi=DPI, squeeze=False
    )
    for axis, timeline, (ok, failed) in zip(axes[:, 0], timelines, counted, strict=True):
        starts = [i * BUCKET for i in range(len(ok))]
        axis.bar(starts, ok, width=BUCKET, align="edge", color="#2e7d32", label="ok")
        axis.bar(starts, failed, width=BUCKET, align="edge", color="#c62828", label="failed")
        for at, text in timeline.marks:
            axis.axvline(at, color="#455a64", linestyle="--", linewidth=1)
            axis.annotate(
                text,
                (at, peak * 1.05),
                xytext=(3, 0),
                textcoords="offset points",
                fontsize=8,
                rotation=90,
                va="top",
            )
        total_failed = sum(failed)
        axis.set_title(
            f"{timeline.label}: {sum(ok)} ok, {total_failed} failed", loc="left", fontsize=10
        )
        axis.set_ylabel(f"requests per {BUCKET * 1000:.0f} ms")
        axis.set_ylim(0, peak * 1.1)
        axis.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg"]
    for path in paths:
        # No timestamp in the SVG: the same run draws the same file.
        figure.savefig(path, dpi=DPI, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(figure)
    return paths
