"""The README's main job: the demo runs end to end and its report shows the failover."""

from __future__ import annotations

import os
import re
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


@pytest.mark.timeout(150)
def test_demo_end_to_end() -> None:
    started = time.monotonic()
    result = run_demo("--seconds", "9")
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
