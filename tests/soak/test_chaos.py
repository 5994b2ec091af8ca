"""Chaos soak: seeded, mixed faults under load; no acknowledged write lost, nothing run twice.

Two variants: the lab's own failovers, and Patroni's on a Patroni cluster. A
bounded run of each (at least one of each fault; for Patroni one dead leader,
whose failover waits out the ttl) is part of the suite; run longer with
``pytest tests/soak --soak-seconds 600``, and replay a run with ``--soak-seed N``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import Error, IntegrityError, connections, transaction
from django.db.models import F

from django_pg_failover.lab import Cluster, Node, PatroniCluster, State
from shop.models import Account, Order
from tests.aliases import add_alias, remove_alias
from tests.markers import needs_pool

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]

WORKERS = 8
ACCOUNTS = [f"acct{i}" for i in range(10)]
OPENING_BALANCE = 1000
FAULTS = ("crash_primary", "hang_primary", "switchover", "crash_standby", "crash_in_atomic")
PATRONI_BOUNDED = (
    "kill_postmaster",
    "switchover",
    "failover",
    "kill_replica",
    "postmaster_in_atomic",
    "kill_leader_node",
)
PATRONI_FAULTS = (*PATRONI_BOUNDED, "freeze_leader")
# A unit may wait out a failover (retry_timeout) but must never hang past this.
UNIT_BOUND = 45.0


@dataclass
class Workload:
    alias: str
    seed: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    units: int = 0
    failures: Counter = field(default_factory=Counter)
    acknowledged: set[str] = field(default_factory=set)  # the call returned success
    rolled_back: set[str] = field(default_factory=set)  # raised before COMMIT was sent
    missing_reads: list[str] = field(default_factory=list)
    writes: list[tuple[float, float]] = field(default_factory=list)  # (began, acknowledged)
    longest_unit: float = 0.0
    # The driver's request for a unit that is inside an atomic block at the fault.
    atomic_wanted: threading.Event = field(default_factory=threading.Event)
    atomic_inside: threading.Event = field(default_factory=threading.Event)
    atomic_proceed: threading.Event = field(default_factory=threading.Event)
    atomic_done: threading.Event = field(default_factory=threading.Event)
    atomic_outcome: dict = field(default_factory=dict)

    # -- units ------------------------------------------------------------------------

    def insert(self, key: str) -> None:
        began = time.monotonic()
        Order.objects.using(self.alias).create(key=key)
        with self.lock:
            self.acknowledged.add(key)
            self.writes.append((began, time.monotonic()))

    def read(self, rng: random.Random) -> None:
        with self.lock:
            known = rng.choice(sorted(self.acknowledged)) if self.acknowledged else None
        if known and not Order.objects.using(self.alias).filter(key=known).exists():
            with self.lock:
                self.missing_reads.append(known)

    def transfer(self, rng: random.Random, marker: str) -> None:
        began = time.monotonic()
        source, target = sorted(rng.sample(ACCOUNTS, 2))  # one lock order: no deadlocks
        accounts = Account.objects.using(self.alias)
        reached_commit = False
        try:
            with transaction.atomic(using=self.alias):
                accounts.filter(name=source).update(balance=F("balance") - 1)
                accounts.filter(name=target).update(balance=F("balance") + 1)
                Order.objects.using(self.alias).create(key=marker)
                reached_commit = True
        except Error:
            if not reached_commit:  # COMMIT never sent: nothing of it may survive
                with self.lock:
                    self.rolled_back.add(marker)
            raise
        with self.lock:
            self.acknowledged.add(marker)
            self.writes.append((began, time.monotonic()))

    def held_open_at_fault(self, marker: str) -> None:
        """Sit inside an atomic block while the driver fails the primary over."""
        error, reached_commit, server = None, False, None
        try:
            with transaction.atomic(using=self.alias):
                Order.objects.using(self.alias).create(key=marker + "-a")
                server = connections[self.alias].server
                self.atomic_inside.set()
                self.atomic_proceed.wait(60)
                Order.objects.using(self.alias).create(key=marker + "-b")
                reached_commit = True
        except Error as exc:
            error = f"{type(exc).__name__}: {str(exc).strip()[:120]}"
        self.atomic_outcome = {
            "keys": [marker + "-a", marker + "-b"],
            "error": error,
            # A COMMIT whose answer is lost may have committed: only a block that
            # failed before it must have left nothing behind.
            "reached_commit": reached_commit,
            "server": str(server),
        }
        self.atomic_done.set()

    # -- workers ----------------------------------------------------------------------

    def worker(self, number: int) -> None:
        rng = random.Random(self.seed * 100 + number)
        count = 0
        while not self.stop.is_set():
            count += 1
            key = f"w{number}-{count}"
            started = time.monotonic()
            request_started.send(sender=None)
            try:
                if self.atomic_wanted.is_set() and self._claim_atomic():
                    self.held_open_at_fault(key)
                    continue
                kind = rng.choices(("insert", "read", "transfer"), weights=(5, 3, 2))[0]
                if kind == "insert":
                    self.insert(key)
                elif kind == "read":
                    self.read(rng)
                else:
                    self.transfer(rng, f"tx-{key}")
            except IntegrityError:
                with self.lock:
                    self.failures["IntegrityError (duplicate)"] += 1
            except Error as exc:
                with self.lock:
                    self.failures[type(exc).__name__] += 1
                time.sleep(0.02)
            finally:
                request_finished.send(sender=None)
                with self.lock:
                    self.units += 1
                    self.longest_unit = max(self.longest_unit, time.monotonic() - started)
            time.sleep(0.005)
        connections.close_all()

    def _claim_atomic(self) -> bool:
        with self.lock:
            if self.atomic_wanted.is_set():
                self.atomic_wanted.clear()
                return True
            return False

    def first_write_after(self, moment: float) -> float | None:
        """When the first write that began after ``moment`` was acknowledged."""
        with self.lock:
            later = [done for began, done in self.writes if began > moment]
        return min(later) if later else None

    def recovery_after(self, moment: float, fault: str) -> float:
        """Seconds from ``moment`` until a write that began after it was acknowledged."""
        deadline = time.monotonic() + 60
        while (recovered := self.first_write_after(moment)) is None:
            assert time.monotonic() < deadline, f"no write succeeded after {fault}"
            time.sleep(0.05)
        return recovered - moment

    def fault_inside_atomic(self, fault: Callable[[], object]) -> tuple[float, dict]:
        """Hold a worker inside an atomic block while ``fault`` runs; (when it hit, outcome)."""
        self.atomic_done.clear()
        self.atomic_inside.clear()
        self.atomic_proceed.clear()
        self.atomic_wanted.set()
        assert self.atomic_inside.wait(30), "no worker entered the atomic block"
        started = time.monotonic()
        fault()
        self.atomic_proceed.set()
        assert self.atomic_done.wait(UNIT_BOUND)
        return started, dict(self.atomic_outcome)


class FaultDriver:
    def __init__(self, cluster: Cluster, load: Workload, rng: random.Random) -> None:
        self.cluster, self.load, self.rng = cluster, load, rng
        self.recoveries: list[tuple[str, float]] = []
        self.atomic_checks: list[dict] = []

    def healthy(self) -> None:
        for node in self.cluster.nodes:
            if node.state is not State.UP:
                self.cluster.rejoin(node)
        self.cluster.wait_streaming(self.cluster.standbys, timeout=60)

    def inject(self, fault: str) -> None:
        cluster, delay = self.cluster, self.rng.uniform(0.3, 1.5)
        self.healthy()
        started = time.monotonic()  # the fault hits within milliseconds of this
        if fault == "crash_primary":
            old = cluster.primary
            cluster.failover("crash", promote_delay=delay)
            cluster.rejoin(old)
        elif fault == "hang_primary":
            old = cluster.primary
            cluster.failover("hang", promote_delay=delay)
            cluster.rejoin(old)  # fences the hung node (kill -9), never resumes it
        elif fault == "switchover":
            cluster.switchover()
        elif fault == "crash_standby":
            standby = self.rng.choice(cluster.standbys)
            cluster.crash(standby)
            time.sleep(delay)
            cluster.start(standby)
        elif fault == "crash_in_atomic":
            old = cluster.primary
            started, outcome = self.load.fault_inside_atomic(
                lambda: cluster.failover("crash", promote_delay=delay)
            )
            assert outcome["error"], outcome  # every process of the server was killed
            self.atomic_checks.append(outcome)
            cluster.rejoin(old)
        self.recoveries.append((fault, self.load.recovery_after(started, fault)))


class PatroniFaultDriver:
    """Faults on a Patroni cluster; Patroni alone decides who leads after each."""

    def __init__(self, cluster: PatroniCluster, load: Workload, rng: random.Random) -> None:
        self.cluster, self.load, self.rng = cluster, load, rng
        self.recoveries: list[tuple[str, float]] = []
        self.atomic_checks: list[dict] = []

    def inject(self, fault: str) -> None:
        cluster = self.cluster
        leader = cluster.heal(timeout=120)
        replica = self.rng.choice([m for m in cluster.members if m is not leader])
        started = time.monotonic()  # the fault hits within milliseconds of this
        if fault == "kill_postmaster":
            cluster.kill_postmaster(leader)
        elif fault in ("switchover", "failover"):
            getattr(cluster, fault)()
        elif fault == "kill_replica":
            cluster.kill_node(replica)
            time.sleep(self.rng.uniform(0.3, 1.5))  # how long the machine stays down
            cluster.rejoin(replica)
        elif fault == "kill_leader_node":
            cluster.kill_node(leader)
            cluster.wait_leader(other_than=leader, timeout=cluster.ttl * 3)
            cluster.rejoin(leader)
        elif fault == "freeze_leader":
            cluster.freeze(leader)
            try:
                cluster.wait_leader(other_than=leader, timeout=cluster.ttl * 3)
            finally:
                cluster.thaw(leader)
        elif fault == "postmaster_in_atomic":
            started, outcome = self.load.fault_inside_atomic(
                lambda: cluster.kill_postmaster(leader)
            )
            self.atomic_checks.append(outcome)
        self.recoveries.append((fault, self.load.recovery_after(started, fault)))


def open_accounts(alias: str) -> None:
    Account.objects.using(alias).all().delete()
    Account.objects.using(alias).bulk_create(
        Account(name=name, balance=OPENING_BALANCE) for name in ACCOUNTS
    )
    connections[alias].close()


def seeded(request) -> tuple[int, random.Random, float]:
    seed = request.config.getoption("--soak-seed") or random.SystemRandom().randrange(10**6)
    print(f"\nsoak seed: {seed} (replay with --soak-seed {seed})")
    return seed, random.Random(seed), request.config.getoption("--soak-seconds")


def soak(
    load: Workload,
    driver: FaultDriver | PatroniFaultDriver,
    plan: list[str],
    faults: tuple[str, ...],
    rng: random.Random,
    seconds: float,
) -> list[str]:
    """Run the workload through ``plan`` (shuffled), then random ``faults`` while time remains.

    Returns the workers that did not stop.
    """
    threads = [threading.Thread(target=load.worker, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    plan = list(plan)
    rng.shuffle(plan)
    began = time.monotonic()
    try:
        time.sleep(1.0)
        while plan or time.monotonic() - began < seconds:
            driver.inject(plan.pop() if plan else rng.choice(faults))
            time.sleep(rng.uniform(0.5, 1.5))
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(UNIT_BOUND + 30)
    return [t.name for t in threads if t.is_alive()]


def atomic_outcome_holds(check: dict, present: list[str]) -> bool:
    """All of the block or nothing; nothing when it failed before COMMIT; all when it committed."""
    if check["error"] is None:
        return present == check["keys"]
    if not check["reached_commit"]:
        return present == []
    return present in ([], check["keys"])  # the COMMIT's outcome was unknown


def check(
    load: Workload,
    driver: FaultDriver | PatroniFaultDriver,
    final: Node,
    seed: int,
    stuck: list[str],
    planned: int,
) -> None:
    """No acknowledged write lost, nothing rolled back present, nothing run twice."""
    keys = {row[0] for row in final.query("SELECT key FROM shop_order", dbname="app")}
    balance = final.scalar("SELECT sum(balance) FROM shop_account", dbname="app")
    lost = load.acknowledged - keys
    resurrected = load.rolled_back & keys
    atomic_breaches = [
        {**check, "present": present}
        for check in driver.atomic_checks
        if not atomic_outcome_holds(check, present := [k for k in check["keys"] if k in keys])
    ]
    duplicates = load.failures["IntegrityError (duplicate)"]
    report = {
        "seed": seed,
        "faults survived": [fault for fault, _ in driver.recoveries],
        "units run": load.units,
        "units failed by kind": dict(load.failures),
        "writes acknowledged": len(load.acknowledged),
        "writes lost": len(lost),
        "rolled-back writes present": len(resurrected),
        "duplicates": duplicates,
        "worst recovery (s)": round(max(r for _, r in driver.recoveries), 2),
        "longest unit (s)": round(load.longest_unit, 2),
        "atomic blocks at a fault": driver.atomic_checks,
    }
    print("soak report:", report)

    assert stuck == []
    assert len(driver.recoveries) >= planned
    assert lost == set()
    assert resurrected == set()
    assert atomic_breaches == []
    assert duplicates == 0
    assert load.missing_reads == []
    assert balance == OPENING_BALANCE * len(ACCOUNTS)  # transfers are all-or-nothing
    assert load.longest_unit < UNIT_BOUND
    assert load.acknowledged  # the workload did run


@pytest.mark.parametrize("pool", [False, pytest.param(True, marks=needs_pool)], ids=["", "pool"])
def test_chaos_soak(request, cluster: Cluster, pg_cluster_factory, make_alias, pool) -> None:
    seed, rng, seconds = seeded(request)
    lab = pg_cluster_factory(standbys=2, synchronous=True)
    alias = make_alias(
        lab=lab,
        OPTIONS={
            "connect_timeout": 2,
            "failover": {"retry_timeout": 30, "backoff_max": 0.25},
            **({"pool": {"min_size": 4, "max_size": WORKERS}} if pool else {}),
        },
    )
    call_command("migrate", database=alias, verbosity=0)
    open_accounts(alias)

    load = Workload(alias, seed)
    driver = FaultDriver(lab, load, rng)
    stuck = soak(load, driver, list(FAULTS), FAULTS, rng, seconds)  # every kind at least once
    driver.healthy()
    check(load, driver, lab.primary, seed, stuck, planned=len(FAULTS))


def test_chaos_soak_patroni(request, patroni_lab: PatroniCluster) -> None:
    """The same workload on a Patroni cluster in synchronous mode, Patroni's own failovers."""
    seed, rng, seconds = seeded(request)
    patroni_lab.set_synchronous(True)
    alias = add_alias(
        patroni_lab.django_database(
            OPTIONS={
                "connect_timeout": 2,
                # Longer than a dead leader's ttl + loop_wait, with a margin.
                "failover": {
                    "retry_timeout": patroni_lab.ttl + patroni_lab.loop_wait + 9,
                    "backoff_max": 0.25,
                },
            }
        )
    )
    try:
        open_accounts(alias)
        load = Workload(alias, seed)
        driver = PatroniFaultDriver(patroni_lab, load, rng)
        # In a bounded run every fast fault once and one dead leader (the ttl,
        # 20 s); longer runs draw from all of them, the frozen leader too.
        stuck = soak(load, driver, list(PATRONI_BOUNDED), PATRONI_FAULTS, rng, seconds)
        final = patroni_lab.heal()
        check(load, driver, final.pg, seed, stuck, planned=len(PATRONI_BOUNDED))
    finally:
        remove_alias(alias)
