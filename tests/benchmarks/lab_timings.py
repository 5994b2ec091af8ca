"""How long the lab takes here: build, failover, reset (medians over several runs).

    python -m tests.benchmarks.lab_timings [--runs 5]

For each PostgreSQL installation found: build a 1 primary + 2 standby cluster,
then repeat a crash failover (promote, follow, rejoin with pg_rewind) and a
reset to the snapshot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from django_pg_failover.lab import Cluster, find_installs


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.lab_timings")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results = {}
    for install in find_installs():
        builds, failovers, promotions, rejoins, resets = [], [], [], [], []
        for _ in range(args.runs):
            started = time.monotonic()
            cluster = Cluster.create(install=install)
            builds.append(time.monotonic() - started)
            try:
                for _ in range(args.runs):
                    started = time.monotonic()
                    report = cluster.failover(fault="crash", rejoin=True)
                    failovers.append(time.monotonic() - started)
                    promotions.append(report.promote_seconds)
                    rejoins.append(report.rejoin_seconds)
                    started = time.monotonic()
                    cluster.reset()
                    resets.append(time.monotonic() - started)
            finally:
                cluster.close()
        results[install.label] = {
            name: round(statistics.median(values), 3)
            for name, values in (
                ("build_s", builds),
                ("failover_with_rejoin_s", failovers),
                ("promote_s", promotions),
                ("rejoin_s", rejoins),
                ("reset_s", resets),
            )
        }
        print(install.label, results[install.label], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
