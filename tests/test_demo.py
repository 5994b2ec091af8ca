"""The README's main job: the demo runs end to end and its report shows the failover."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "testproject/demo.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
    )


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (its IHDR chunk comes first)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.timeout(150)
def test_demo_end_to_end(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_demo("--seconds", "9", "--picture", str(tmp_path / "timeline"))
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert elapsed < 120
    for event in ("kill -9 n0 (primary)", "promoted n", "n0 back as a standby (pg_rewind)"):
        assert event in out
    ours = re.search(r"django_pg_failover +requests ok +(\d+) +failed +(\d+)", out)
    stock = re.search(r"Django's postgresql backend +requests ok +(\d+) +failed +(\d+)", out)
    assert ours, out
    assert stock, out
    assert int(ours.group(1)) > 0
    assert int(ours.group(2)) <= 4  # at most the requests in flight at the crash
    assert int(stock.group(2)) > int(ours.group(2))
    # After the promotion, requests are served by the new primary.
    assert re.search(r"served by n[12]:\d+", out)
    assert "Everything the demo started has been stopped." in out
    # The picture of the same runs, beside the text.
    assert f"Picture: {tmp_path / 'timeline.png'}, {tmp_path / 'timeline.svg'}" in out
    assert png_size(tmp_path / "timeline.png") == (1000, 560)
    svg = (tmp_path / "timeline.svg").read_text()
    assert svg.startswith("<?xml")
    assert "kill -9 n0 (primary)" in svg


@pytest.mark.timeout(300)
def test_demo_on_patroni() -> None:
    """``make demo ORCHESTRATOR=patroni``: Patroni alone fails over, ours fails nothing after."""
    result = run_demo("--orchestrator", "patroni")
    out = result.stdout
    print(out)
    assert result.returncode == 0, out + result.stderr
    for event in (
        "kill -9 n0 (leader: Patroni agent and PostgreSQL)",
        "Patroni: leader n",
        "n0 streams from the new leader",
    ):
        assert event in out
    pattern = (
        r"{} +requests ok +(\d+) +failed +(\d+) .*"
        r"Patroni's new leader took writes (\d+\.\d+)s after it\)"
    )
    ours = re.search(pattern.format("django_pg_failover"), out)
    stock = re.search(pattern.format("Django's postgresql backend"), out)
    assert ours, out
    assert stock, out
    assert int(ours.group(2)) <= 4  # at most the requests in flight at the crash
    assert int(stock.group(2)) > 10 * int(ours.group(2))
    # A dead node's lock outlives it: Patroni waits for its ttl (20 s).
    assert float(ours.group(3)) > 15
    assert "Everything the demo started has been stopped." in out
