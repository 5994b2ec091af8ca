"""config() and parse(): DATABASE_URL with several hosts, read by libpq, checked like settings.

Every test runs once with each driver that is installed (psycopg 3, psycopg2):
the URL is read by that driver's libpq parser, and the round trips compare the
entry with what that same parser makes of the URL.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import django_pg_failover
from django_pg_failover import config, parse
from django_pg_failover.drivers import get_driver
from django_pg_failover.exceptions import DatabaseURLError
from django_pg_failover.settings import dburl
from django_pg_failover.settings.conf import FailoverSettings
from django_pg_failover.settings.hosts import DEFAULT_PORT, Host, libpq_host_params, parse_hosts
from django_pg_failover.settings.policy import FailoverPolicy

ROOT = Path(__file__).resolve().parents[2]
# In no other part of any URL below.
# Nothing of it (no run of 4 characters) in any key or message of the backend.
PASSWORD = "Zq7-xqjv-9wk"
FAILOVER_KEYS = [field.name for field in dataclasses.fields(FailoverPolicy)]
URL_PARAMS = ("host", "port", "dbname", "user", "password")


@pytest.fixture
def driver() -> str:
    """The driver whose libpq reads the URLs: this run's (``pytest --driver``)."""
    return get_driver().name


@pytest.fixture(autouse=True)
def no_service_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No pg_service.conf, PG* variable or DATABASE_URL of the machine leaks into a test."""
    for name in ("DATABASE_URL", "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PGSYSCONFDIR", str(tmp_path / "sysconf"))


def libpq_parse(url: str, driver: str) -> dict[str, str]:
    """What the driver's libpq parser itself makes of ``url``."""
    if driver == "psycopg":
        from psycopg.conninfo import conninfo_to_dict

        return {key: str(value) for key, value in conninfo_to_dict(url).items()}
    import psycopg2.extensions

    return psycopg2.extensions.parse_dsn(url)


def libpq_hosts(params: dict[str, str]) -> list[Host]:
    """libpq's host and port lists as the servers it would try (libpq's rules)."""
    names = params["host"].split(",")
    ports = params.get("port", "").split(",")
    if len(ports) == 1:
        ports *= len(names)
    return [Host(name, int(port or DEFAULT_PORT)) for name, port in zip(names, ports, strict=True)]


def backend_params(entry: dict[str, Any]) -> dict[str, Any]:
    """The connection parameters the backend derives from an entry (its pure functions)."""
    hosts = parse_hosts(entry["HOST"], entry["PORT"], "default")
    options = {k: v for k, v in entry["OPTIONS"].items() if k not in ("failover",)}
    params = {"dbname": entry["NAME"], **options, **libpq_host_params(hosts)}
    params.update({k.lower(): entry[k] for k in ("USER", "PASSWORD") if entry[k]})
    return params


def assert_round_trip(url: str, entry: dict[str, Any], driver: str) -> None:
    """The entry gives the backend what libpq itself reads in the URL."""
    ours = set(dburl._backend_keys())
    query = url.partition("?")[2]
    kept = [p for p in query.split("&") if p and p.partition("=")[0] not in ours]
    libpq = libpq_parse(url.partition("?")[0] + ("?" + "&".join(kept) if kept else ""), driver)
    params = backend_params(entry)
    # libpq's hosts as the backend normalises any HOST entry (IPv6 compressed).
    assert list(parse_hosts(entry["HOST"], entry["PORT"])) == [
        parse_hosts([{"host": h.host, "port": h.port}])[0] for h in libpq_hosts(libpq)
    ]
    for key, value in libpq.items():
        if key not in ("host", "port"):
            assert params[key] == value, key


# -- every URI form -------------------------------------------------------------------------

FORMS = [
    (
        "postgres://app:pw@db1:5432,db2:5433/shop?target_session_attrs=read-write",
        {
            "HOST": ["db1:5432", "db2:5433"],
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": "pw",
            "OPTIONS": {"target_session_attrs": "read-write"},
        },
    ),
    (
        "postgresql://db1,db2:5433,db3/shop",
        {"HOST": ["db1:5432", "db2:5433", "db3:5432"], "NAME": "shop", "USER": "", "OPTIONS": {}},
    ),
    (
        "postgresql://[::1]:5433,[2001:db8::7],10.0.0.5:6432/shop",
        {"HOST": ["[::1]:5433", "[2001:db8::7]:5432", "10.0.0.5:6432"]},
    ),
    (
        "postgresql://[0:0:0:0:0:0:0:1]/shop",  # normalised, as HOST is
        {"HOST": ["[::1]:5432"]},
    ),
    (
        "postgresql://%2Fvar%2Frun%2Fpostgresql/shop",
        {"HOST": [{"host": "/var/run/postgresql", "port": 5432}], "NAME": "shop"},
    ),
    (
        "postgresql://%2Frun%2Fpg:5433,db2/shop",
        {"HOST": [{"host": "/run/pg", "port": 5433}, "db2:5432"]},
    ),
    (
        "postgresql:///shop?host=db1,/tmp,db3&port=5433",  # one port for every host
        {"HOST": ["db1:5433", {"host": "/tmp", "port": 5433}, "db3:5433"]},
    ),
    (
        "postgresql:///shop?host=db1,db2&port=5433,",  # one per host; empty is the default
        {"HOST": ["db1:5433", "db2:5432"]},
    ),
    (
        "postgresql://db1/shop?user=app&password=pw&dbname=other",  # the query wins, as in libpq
        {"NAME": "other", "USER": "app", "PASSWORD": "pw"},
    ),
    (
        "postgresql://us%40er:p%40ss%3Aw%2Fo%25rd%20x@db1/sh%20op",
        {"USER": "us@er", "PASSWORD": "p@ss:w/o%rd x", "NAME": "sh op"},
    ),
    (
        "postgresql://app:p:a?s#s@db1/shop",  # libpq needs no encoding for these in a password
        {"PASSWORD": "p:a?s#s", "HOST": ["db1:5432"], "NAME": "shop"},
    ),
    (
        "postgresql://db1/shop?sslmode=verify-full&application_name=my%20app"
        "&options=-c%20search_path%3Dshop&connect_timeout=3&keepalives_idle=10",
        {
            "OPTIONS": {
                "sslmode": "verify-full",
                "application_name": "my app",
                "options": "-c search_path=shop",
                "connect_timeout": "3",
                "keepalives_idle": "10",
            }
        },
    ),
    (
        "postgresql://db1/shop?ssl=true",  # libpq's own JDBC spelling of sslmode=require
        {"OPTIONS": {"sslmode": "require"}},
    ),
    (
        "  postgresql://db1/shop  ",  # blanks around the value, as env files leave them
        {"HOST": ["db1:5432"], "NAME": "shop"},
    ),
]


@pytest.mark.parametrize(("url", "expected"), FORMS)
def test_uri_forms(url: str, expected: dict[str, Any], driver: str) -> None:
    entry = parse(url)
    assert entry["ENGINE"] == "django_pg_failover"
    assert entry["PORT"] == ""
    for key, value in expected.items():
        assert entry[key] == value, key
    assert_round_trip(url.strip(), entry, driver)


@pytest.mark.parametrize(("url", "expected"), FORMS)
def test_the_backend_takes_every_entry_as_it_is(url: str, expected: dict[str, Any]) -> None:
    entry = parse(url)
    settings = FailoverSettings.from_settings_dict(entry, "default", get_driver())
    assert [str(h) for h in settings.hosts] == [
        f"{h['host']}:{h['port']}" if isinstance(h, dict) else h for h in entry["HOST"]
    ]


def test_round_trip_through_the_backends_connection_params() -> None:
    """With the driver the backend runs on today, its own get_connection_params()."""
    from django.db import connections

    from django_pg_failover.base import DatabaseWrapper
    from django_pg_failover.connecting.memory import host_status

    host_status.clear()
    url = (
        f"postgresql://app:{quote(PASSWORD)}@db1:5433,[::1],%2Frun%2Fpg:6000/shop"
        "?sslmode=require&application_name=shop&retry_timeout=2&target_session_attrs=primary"
    )
    entry = parse(url)
    db = connections.configure_settings({"default": {}, "url": entry})["url"]
    params = DatabaseWrapper(db, "url").get_connection_params()
    libpq = libpq_parse(url.replace("&retry_timeout=2", ""), get_driver().name)
    assert params["host"] == libpq["host"] == "db1,::1,/run/pg"
    assert params["port"] == "5433,5432,6000"
    assert libpq["port"] == "5433,,6000"
    for key in ("dbname", "user", "password", "sslmode", "application_name"):
        assert params[key] == libpq[key], key
    assert params["target_session_attrs"] == "primary"
    assert params["connect_timeout"] == 5  # the backend's default: the URL named none
    assert "failover" not in params


# -- this backend's own options -------------------------------------------------------------


def test_failover_settings_and_load_balancing_in_the_query_string() -> None:
    entry = parse(
        "postgresql://db1,db2/shop?retry_timeout=30&host_recheck=0&backoff_initial=0.1"
        "&backoff_max=2.5&retry_reads=true&load_balance_hosts=random&connect_timeout=2"
    )
    assert entry["OPTIONS"] == {
        "load_balance_hosts": "random",
        "connect_timeout": "2",
        "failover": {
            "retry_timeout": 30.0,
            "host_recheck": 0.0,
            "backoff_initial": 0.1,
            "backoff_max": 2.5,
            "retry_reads": True,
        },
    }
    failover = entry["OPTIONS"]["failover"]
    assert type(failover["retry_timeout"]) is float
    assert type(failover["retry_reads"]) is bool
    assert FailoverPolicy.from_options(failover).retry_timeout == 30.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("true", True), ("TRUE", True), ("on", True), ("1", True), ("yes", True)],
        *[("false", False), ("off", False), ("0", False), ("No", False)],
    ],
)
def test_retry_reads_spellings(text: str, expected: bool) -> None:
    entry = parse(f"postgresql://db1/shop?retry_reads={text}")
    assert entry["OPTIONS"]["failover"]["retry_reads"] is expected


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(FailoverPolicy)])
def test_every_failover_setting_is_read_from_the_url(field: str) -> None:
    default = getattr(FailoverPolicy(), field)
    text = str(default).lower()
    entry = parse(f"postgresql://db1/shop?{field}={text}")
    value = entry["OPTIONS"]["failover"][field]
    assert value == default
    assert type(value) is type(default)


def test_new_failover_settings_are_read_by_their_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings added to FailoverPolicy later work in URLs without touching dburl."""

    @dataclasses.dataclass(frozen=True)
    class Grown(FailoverPolicy):
        stall_timeout: float | None = None
        attempt_delay: float = 0.25
        probe_interval: int = 5
        label: str = "x"

        @classmethod
        def from_options(cls, options: Any, alias: str | None = None) -> Grown:
            return cls(**(options or {}))

    monkeypatch.setattr(dburl, "FailoverPolicy", Grown)
    failover = parse(
        "postgresql://db1/shop?stall_timeout=2&attempt_delay=1&probe_interval=7&label=a%20b"
    )["OPTIONS"]["failover"]
    assert failover == {
        "stall_timeout": 2.0,
        "attempt_delay": 1.0,
        "probe_interval": 7,
        "label": "a b",
    }
    assert type(failover["attempt_delay"]) is float
    assert type(failover["probe_interval"]) is int
    none = parse("postgresql://db1/shop?stall_timeout=none")["OPTIONS"]["failover"]
    assert none == {"stall_timeout": None}


def test_no_failover_setting_shadows_a_libpq_parameter() -> None:
    for field in dataclasses.fields(FailoverPolicy):
        assert not dburl._is_uri_param(field.name), field.name
    assert dburl._is_uri_param("target_session_attrs")


# -- options=, and Django's settings as keyword arguments -----------------------------------


def test_options_are_defaults_the_url_overrides() -> None:
    defaults = {
        "connect_timeout": 2,
        "application_name": "shop",
        "isolation_level": 1,
        "failover": {"retry_timeout": 15.0, "host_recheck": 5},
    }
    entry = parse("postgresql://db1/shop?connect_timeout=4&retry_timeout=30", options=defaults)
    assert entry["OPTIONS"] == {
        "connect_timeout": "4",
        "application_name": "shop",
        "isolation_level": 1,
        "failover": {"retry_timeout": 30.0, "host_recheck": 5},
    }
    assert defaults["failover"] == {"retry_timeout": 15.0, "host_recheck": 5}  # not changed


def test_django_settings_from_keyword_arguments() -> None:
    entry = parse(
        "postgresql://db1/shop",
        conn_max_age=600,
        conn_health_checks=True,
        disable_server_side_cursors=True,
        test_options={"NAME": "test_shop"},
    )
    assert entry["CONN_MAX_AGE"] == 600
    assert entry["CONN_HEALTH_CHECKS"] is True
    assert entry["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert entry["TEST"] == {"NAME": "test_shop"}
    plain = parse("postgresql://db1/shop")
    assert (plain["CONN_MAX_AGE"], plain["CONN_HEALTH_CHECKS"]) == (0, False)
    assert "TEST" not in plain
    assert parse("postgresql://db1/shop", conn_max_age=None)["CONN_MAX_AGE"] is None


@pytest.mark.parametrize(
    ("url", "sslmode"),
    [
        ("postgresql://db1/shop", "require"),
        ("postgresql://db1/shop?sslmode=prefer", "require"),
        ("postgresql://db1/shop?sslmode=disable", "require"),
        ("postgresql://db1/shop?sslmode=verify-full", "verify-full"),  # never weakened
        ("postgresql://db1/shop?sslmode=verify-ca", "verify-ca"),
    ],
)
def test_ssl_require_raises_sslmode_to_require_at_least(url: str, sslmode: str) -> None:
    assert parse(url, ssl_require=True)["OPTIONS"]["sslmode"] == sslmode
    assert "sslmode" not in parse("postgresql://db1/shop")["OPTIONS"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conn_max_age": -1}, "conn_max_age: -1 is not None or a whole number of seconds >= 0"),
        ({"conn_max_age": True}, "conn_max_age: True is not None"),
        ({"conn_max_age": "600"}, "conn_max_age: '600' is not None"),
        ({"conn_health_checks": "yes"}, "conn_health_checks: 'yes' is not True or False"),
        ({"ssl_require": 1}, "ssl_require: 1 is not True or False"),
        ({"test_options": ["x"]}, "test_options: a list is not a dict"),
        ({"options": "sslmode=require"}, "options: a str is not a dict"),
        ({"options": {"conect_timeout": 2}}, "options['conect_timeout']: libpq has no such"),
        (
            {"options": {"failover": {"retry_timeout": "10"}}},
            "options['failover']['retry_timeout']: '10' is not a number of seconds",
        ),
    ],
)
def test_bad_keyword_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        parse("postgresql://db1/shop", **kwargs)
    assert str(caught.value).startswith(message)


# -- config(): where the URL comes from -------------------------------------------------------


def test_config_reads_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db1,db2/shop")
    entry = config(conn_max_age=60)
    assert entry["HOST"] == ["db1:5432", "db2:5432"]
    assert entry["CONN_MAX_AGE"] == 60
    assert django_pg_failover.config is config


def test_config_reads_another_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db1/shop")
    monkeypatch.setenv("REPLICA_URL", "postgresql://db2,db3/shop?target_session_attrs=standby")
    entry = config("REPLICA_URL")
    assert entry["HOST"] == ["db2:5432", "db3:5432"]
    assert entry["OPTIONS"]["target_session_attrs"] == "standby"


def test_config_url_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db1/shop")
    assert config(url="postgresql://db9/other")["HOST"] == ["db9:5432"]


@pytest.mark.parametrize("value", [None, "", "  "])
def test_config_default_when_the_variable_is_unset_or_blank(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is not None:
        monkeypatch.setenv("DATABASE_URL", value)
    assert config(default="postgresql://localhost/shop")["HOST"] == ["localhost:5432"]
    with pytest.raises(ImproperlyConfigured) as caught:
        config()
    assert str(caught.value).startswith("DATABASE_URL: not set, and config() was given no default")
    with pytest.raises(ImproperlyConfigured, match=r"^OTHER_URL: not set"):
        config("OTHER_URL")


def test_config_errors_name_where_the_url_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICA_URL", "postgresql://db1:0/shop")
    with pytest.raises(DatabaseURLError, match=r"^REPLICA_URL: host 1 of 1: port 0 is outside"):
        config("REPLICA_URL")
    with pytest.raises(DatabaseURLError, match=r"^config\(url=\.\.\.\): host 1 of 1: port 0"):
        config(url="postgresql://db1:0/shop")
    with pytest.raises(
        DatabaseURLError, match=r"^config\(default=\.\.\.\), used as DATABASE_URL is not set: "
    ):
        config(default="postgresql://db1:0/shop")
    with pytest.raises(DatabaseURLError, match=r"^database URL: host 1 of 1"):
        parse("postgresql://db1:0/shop")


# -- pg_service.conf --------------------------------------------------------------------------

SERVICES = """\
# a comment
[other]
host=elsewhere

[shop]
host=db1,db2,/run/pg
port=5432,5433,6000
  dbname=shop
user=app
password=svc-Secret-42
target_session_attrs=primary
sslmode=require
dbname=ignored (libpq keeps the first value)

[shopping]
host=never
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_service_with_several_hosts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGSERVICEFILE", str(write(tmp_path / "services.conf", SERVICES)))
    for url in ("postgresql:///?service=shop", "postgresql://?service=shop"):
        entry = parse(url)
        assert entry["HOST"] == ["db1:5432", "db2:5433", {"host": "/run/pg", "port": 6000}]
        assert (entry["NAME"], entry["USER"], entry["PASSWORD"]) == ("shop", "app", "svc-Secret-42")
        # Resolved here, so not passed on: libpq would read the file again on connect.
        assert entry["OPTIONS"] == {"target_session_attrs": "primary", "sslmode": "require"}


def test_the_urls_own_parameters_win_over_the_services(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGSERVICEFILE", str(write(tmp_path / "services.conf", SERVICES)))
    entry = parse("postgresql://me@db9:5439/mine?service=shop&sslmode=verify-full&retry_timeout=3")
    assert entry["HOST"] == ["db9:5439"]
    assert (entry["NAME"], entry["USER"], entry["PASSWORD"]) == ("mine", "me", "svc-Secret-42")
    assert entry["OPTIONS"] == {
        "target_session_attrs": "primary",
        "sslmode": "verify-full",
        "failover": {"retry_timeout": 3.0},
    }


def test_a_host_from_the_url_takes_the_services_ports_as_in_libpq(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGSERVICEFILE", str(write(tmp_path / "services.conf", SERVICES)))
    with pytest.raises(DatabaseURLError, match="3 ports for 1 host; give one port, or one per"):
        parse("postgresql://db9/mine?service=shop")
    # With several hosts libpq's URL parser always fills in a port list (",,"), so
    # the service's ports no longer apply: each host takes the default.
    assert parse("postgresql://db8,db9,db10/mine?service=shop")["HOST"] == [
        "db8:5432",
        "db9:5432",
        "db10:5432",
    ]


def test_pgservice_names_the_service_as_in_libpq(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGSERVICEFILE", str(write(tmp_path / "services.conf", SERVICES)))
    monkeypatch.setenv("PGSERVICE", "other")
    assert parse("postgresql:///db")["HOST"] == ["elsewhere:5432"]
    assert parse("postgresql:///db?service=shop")["HOST"][0] == "db1:5432"


def test_service_files_in_libpqs_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    system = write(tmp_path / "sysconf" / "pg_service.conf", "[a]\nhost=sys\ndbname=x\n[b]\n")
    write(system, system.read_text() + "host=sys-b\ndbname=x\n")
    # Without a user file, the system-wide file.
    assert parse("postgresql://?service=a")["HOST"] == ["sys:5432"]
    # ~/.pg_service.conf first; a service it lacks still comes from the system file.
    write(home / ".pg_service.conf", "[a]\nhost=mine\ndbname=x\n")
    assert parse("postgresql://?service=a")["HOST"] == ["mine:5432"]
    assert parse("postgresql://?service=b")["HOST"] == ["sys-b:5432"]
    # PGSERVICEFILE replaces ~/.pg_service.conf.
    monkeypatch.setenv("PGSERVICEFILE", str(write(tmp_path / "env.conf", "[a]\nhost=env\n")))
    assert parse("postgresql:///x?service=a")["HOST"] == ["env:5432"]


def test_servicefile_parameter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not dburl._is_uri_param("servicefile"):
        pytest.skip("this driver's libpq has no servicefile parameter (new in PostgreSQL 19)")
    path = write(tmp_path / "svc.conf", "[a]\nhost=from-file\ndbname=x\n")
    monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "missing.conf"))
    entry = parse(f"postgresql://?service=a&servicefile={quote(str(path), safe='')}")
    assert entry["HOST"] == ["from-file:5432"]
    assert "servicefile" not in entry["OPTIONS"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[shop]\npassword={pw}\nhost\n", "services.conf, line 3: syntax error (not key=value)"),
        ("[shop]\nservice=other\n", "line 2: nested 'service' specifications are not supported"),
        ("[shop]\npassword={pw}\nhots=db1\n", "line 3: 'hots' is not a libpq connection parame"),
        ("[shop]\nhost =db1\n", "line 2: 'host ' is not a libpq connection parameter"),
        ("[shop]\nldap://ldap.example.com/x\n", "line 2: LDAP service lookups are not supported"),
        ("[shop]\npassword={pw}\ndbname=shop\n", "no host given (nor does service 'shop')"),
        ("[shop]\npassword={pw}\nhost=db1\n", "no database name (nor does service 'shop')"),
        ("[shop]\npassword={pw}\nhost=db1:5\ndbname=x\n", "host 1 of 1: give the port of 'db1:5'"),
        ("[shopping]\npassword={pw}\nhost=db1\n", "service 'shop' is not defined; looked in "),
        ("[shop]\nhost=db1\ndbname=x\nretry_timeout=1\n", "'retry_timeout' is not a libpq"),
    ],
)
def test_bad_service_files(
    text: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path / "services.conf", text.format(pw=PASSWORD))
    monkeypatch.setenv("PGSERVICEFILE", str(path))
    with pytest.raises(DatabaseURLError) as caught:
        parse("postgresql:///?service=shop")
    assert message in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_syntax_errors_in_a_service_never_quote_the_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = f"[shop]\nhost=db1\npassword {PASSWORD}\n"
    monkeypatch.setenv("PGSERVICEFILE", str(write(tmp_path / "services.conf", text)))
    with pytest.raises(DatabaseURLError) as caught:
        parse("postgresql:///?service=shop")
    assert str(caught.value).endswith("line 3: syntax error (not key=value)")
    assert PASSWORD not in str(caught.value)


def test_a_missing_service_file_named_by_pgservicefile_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "nowhere.conf"))
    with pytest.raises(DatabaseURLError, match=r"service file .*nowhere\.conf not found"):
        parse("postgresql:///?service=shop")


def test_undefined_service_lists_the_files_looked_in(tmp_path: Path) -> None:
    write(tmp_path / "home" / ".pg_service.conf", "[other]\nhost=x\n")
    with pytest.raises(DatabaseURLError) as caught:
        parse("postgresql:///?service=shop")
    assert str(caught.value) == (
        f"database URL: service 'shop' is not defined; looked in "
        f"{tmp_path}/home/.pg_service.conf (not there), "
        f"{tmp_path}/sysconf/pg_service.conf (no such file); "
        "PGSERVICEFILE and PGSYSCONFDIR choose the files"
    )


# -- bad input: one clear error, never the password --------------------------------------------

BAD_URLS = [
    ("mysql://u:{pw}@db1/shop", "mysql:// is not postgresql:// or postgres://"),
    ("db1,db2/shop", "not a URL: it must start with postgresql:// or postgres://"),
    ("host=db1 password={pw}", "not a URL"),
    ("postgresql://u:{pw}@/shop", "no host given: list the servers after '//'"),
    ("postgresql:///shop?password={pw}", "no host given"),
    ("postgresql://u:{pw}@db1/", "no database name: add it after the hosts"),
    ("postgresql://u:{pw}@db1,,db2/shop", "host 2 of 3 is empty (libpq would use its default"),
    ("postgresql://u:{pw}@db1,/shop", "host 2 of 2 is empty"),
    ("postgresql://u:{pw}@db1:abc/shop", "host 1 of 1: 'abc' is not a port number"),
    ("postgresql://u:{pw}@db1,db2:70000/shop", "host 2 of 2: port 70000 is outside 1..65535"),
    ("postgresql://u:{pw}@db1,db1:5432/shop", "db1:5432 is listed twice"),
    ("postgresql://u:{pw}@db%3B1/shop", "host 1 of 1: 'db;1' is not a valid host name"),
    ("postgresql://u:{pw}@db1..example.com/shop", "host 1 of 1: 'db1..example.com' is not a va"),
    ("postgresql://u:{pw}@db1,db2..x/shop", "host 2 of 2: 'db2..x' is not a valid host name: it"),
    (f"postgresql://u:{{pw}}@{'x' * 64}.example/shop", "label 1 is 64 characters long, DNS al"),
    ("postgresql://u:{pw}@b%C3%BCcher.example/shop", "'bücher.example' is not a valid host na"),
    ("postgresql://u:{pw}@/shop?host=db1:5433", "give the port of 'db1:5433' in 'port'"),
    ("postgresql://u:{pw}@/shop?host=a,b&port=1,2,3", "3 ports for 2 hosts; give one port"),
    ("postgresql://u:{pw}@db1/shop?hostaddr=10.0.0.1", "hostaddr is not supported"),
    ("postgresql://u:{pw}@[::1/shop", "libpq cannot read it: end of string reached when"),
    ("postgresql://u:{pw}@db1/shop?sslmode", 'missing key/value separator "=" in URI query'),
    ("postgresql://u:{pw}@db1/shop?target_session_attrs=master", "target_session_attrs: 'master'"),
    ("postgresql://u:{pw}@db1/shop?connect_timeout=0", "connect_timeout: '0' is not a whole"),
    ("postgresql://u:{pw}@db1/shop?load_balance_hosts=yes", "load_balance_hosts: 'yes' is not"),
    ("postgresql://u:{pw}@db1/shop?retry_timeout=36000", "retry_timeout: 36000.0 is outside"),
    ("postgresql://u:{pw}@db1/shop?retry_timeout=10s", "retry_timeout: '10s' is not a number"),
    ("postgresql://u:{pw}@db1/shop?retry_timeout=-1", "retry_timeout: -1.0 must be a finite, no"),
    ("postgresql://u:{pw}@db1/shop?retry_timeout=nan", "retry_timeout: 'nan' is not a number"),
    ("postgresql://u:{pw}@db1/shop?retry_reads=maybe", "retry_reads: 'maybe' is not True or"),
    ("postgresql://u:{pw}@db1/shop?backoff_initial=2", "backoff_initial (2) is larger than"),
    ("postgresql://u:{pw}@db1/shop?retry_timeout=1&retry_timeout=2", "retry_timeout is given tw"),
    ("postgresql://u:{pw}@db1/shop?retry_reads", "retry_reads has no value (retry_reads=...)"),
    (
        "postgresql://u:{pw}@db1/shop?retry_timout=5",
        "'retry_timout' is neither a libpq connection parameter nor one of this backend's "
        f"({', '.join(sorted([*FAILOVER_KEYS, 'load_balance_hosts']))}); "
        "did you mean retry_timeout?",
    ),
    ("postgresql://u:{pw}@db1/shop?Target_Session_Attrs=any", "did you mean target_session_at"),
    # The password written without percent-encoding: libpq would cut it apart.
    ("postgresql://u:{pw}@x@db1/shop", "more than one '@' before the hosts: write an '@' in"),
    ("postgresql://u:{pw}/x@db1/shop", "an '@' comes after a '/': write a '/' in the user"),
    ("postgresql://u:{pw}%zz@db1/shop", 'libpq cannot read it: invalid percent-encoded token: "…"'),
    ("postgresql://u@db1/shop?password={pw}&x", "a parameter after password= is not one: write"),
    ("postgresql://u@db1/shop?password={pw}&ab=1", "a parameter after password= is not one"),
    ("postgresql://u@db1/shop?password={pw}=x", 'extra key/value separator "=" in URI query'),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_bad_urls_get_one_clear_error_without_the_password(
    url: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", url.format(pw=PASSWORD))
    with pytest.raises(DatabaseURLError) as caught:
        config()
    text = str(caught.value)
    assert text.startswith("DATABASE_URL: ")
    assert message in text
    assert isinstance(caught.value, ImproperlyConfigured)
    # Nor anywhere in the traceback a user would see (the driver's error is not chained).
    shown = "".join(traceback.format_exception(caught.value))
    assert PASSWORD not in shown
    assert PASSWORD[3:-3] not in shown


# Greek letters never occur in messages; URL delimiters are what users forget to encode.
GREEK = "αβγδεζηθικλμνξοπρστυφχψω"
secret_text = st.text(alphabet=GREEK + "@/:?&=%#[],;+ !'\"\\", min_size=4, max_size=24)


def leaked_runs(password: str, message: str) -> list[str]:
    """Runs of 4 characters of the password (with a Greek letter, so no message word) shown."""
    runs = {password[i : i + 4] for i in range(len(password) - 3)}
    return sorted(run for run in runs if any(c in GREEK for c in run) and run in message)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    password=secret_text, breakage=st.sampled_from([b for b, _ in BAD_URLS]), encode=st.booleans()
)
def test_no_error_shows_the_password_or_a_piece_of_it(
    password: str, breakage: str, encode: bool
) -> None:
    """Any password, encoded or written raw (as users do by mistake), in any bad URL."""
    assume(password.strip() == password)
    written = quote(password, safe="") if encode else password
    error: DatabaseURLError | None = None
    try:
        parse(breakage.format(pw=written))
    except DatabaseURLError as exc:
        error = exc
    if error is None:
        return  # the password itself repaired the URL
    message = str(error)
    assert leaked_runs(password, message) == []
    # Percent-encoded, a Greek letter is %CE%.. or %CF%..: no run of one may show.
    assert not re.search(r"%C[EF]%[0-9A-F]{2}", message)
    # The driver's error (its message quotes the URL) is not chained.
    assert error.__cause__ is None
    assert error.__suppress_context__


# -- generated URLs: the entry is what was written, and what libpq reads ------------------------

host_names = st.from_regex(
    r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z][a-z0-9]{0,6}){0,2}", fullmatch=True
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
folders = st.from_regex(r"(/[A-Za-z0-9_. -]{1,8}){1,3}", fullmatch=True)
ports = st.none() | st.integers(min_value=1, max_value=65535)
hosts = st.lists(
    st.tuples(st.one_of(host_names, ipv4, ipv6, folders), ports),
    min_size=1,
    max_size=5,
    unique_by=lambda h: h[0],
)
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
libpq_options = st.fixed_dictionaries(
    {},
    optional={
        "sslmode": st.sampled_from(["disable", "prefer", "require", "verify-full"]),
        "application_name": texts,
        "connect_timeout": st.integers(min_value=1, max_value=3600).map(str),
        "target_session_attrs": st.sampled_from(["any", "read-write", "primary", "standby"]),
        "keepalives_idle": st.integers(min_value=1, max_value=600).map(str),
    },
)
failover_options = st.fixed_dictionaries(
    {},
    optional={
        "retry_timeout": st.integers(min_value=0, max_value=3600),
        "host_recheck": st.floats(min_value=0, max_value=86400).map(lambda f: round(f, 3)),
        "retry_reads": st.booleans(),
    },
)


def netloc_entry(host: str, port: int | None) -> str:
    text = f"[{host}]" if ":" in host else quote(host, safe="") if host.startswith("/") else host
    return text if port is None else f"{text}:{port}"


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    servers=hosts,
    user=texts,
    password=texts,
    dbname=texts.filter(bool),
    options=libpq_options,
    failover=failover_options,
    in_query=st.booleans(),
    scheme=st.sampled_from(["postgresql://", "postgres://"]),
)
def test_generated_urls(
    driver: str,
    servers: list[tuple[str, int | None]],
    user: str,
    password: str,
    dbname: str,
    options: dict[str, str],
    failover: dict[str, Any],
    in_query: bool,
    scheme: str,
) -> None:
    userinfo = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    query = {**options, **{k: str(v).lower() for k, v in failover.items()}}
    if in_query:  # the ?host=...&port=... form
        netloc = ""
        query["host"] = ",".join(h for h, _ in servers)
        query["port"] = ",".join("" if p is None else str(p) for _, p in servers)
    else:
        netloc = ",".join(netloc_entry(h, p) for h, p in servers)
    at = f"{userinfo}@" if userinfo else ""
    encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    url = f"{scheme}{at}{netloc}/{quote(dbname, safe='')}" + (f"?{encoded}" if encoded else "")

    entry = parse(url)

    expected_hosts = parse_hosts([{"host": h, "port": p} for h, p in servers])
    assert parse_hosts(entry["HOST"], entry["PORT"]) == expected_hosts
    assert (entry["NAME"], entry["USER"], entry["PASSWORD"]) == (dbname, user, password)
    assert {k: v for k, v in entry["OPTIONS"].items() if k != "failover"} == options
    assert entry["OPTIONS"].get("failover", {}) == failover
    assert_round_trip(url, entry, driver)


# -- the package stays light ------------------------------------------------------------------


def test_importing_the_package_and_config_load_neither_django_db_nor_a_driver() -> None:
    code = (
        "import sys, django_pg_failover\n"
        "loaded = [m for m in sys.modules if m.startswith(('django', 'psycopg'))]\n"
        "assert loaded == ['django_pg_failover'], loaded\n"
        "from django_pg_failover import config\n"
        "assert not [m for m in sys.modules if m.startswith(('django.db', 'psycopg'))]\n"
        "config(url='postgresql://db1,db2/app')  # reads the URL with the driver's libpq\n"
        "assert not [m for m in sys.modules if m.startswith('django.db')]\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
