"""HOST/PORT parsing: pure logic, no server."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import given
from hypothesis import strategies as st

from django_pg_failover.settings.hosts import (
    Host,
    host_setting,
    hosts_from_libpq_params,
    libpq_host_params,
    parse_hosts,
)

LABEL_63 = "a" * 63
NAME_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("db1", None, [Host("db1", 5432)]),
        ("db1", 5433, [Host("db1", 5433)]),
        ("db1", "5433", [Host("db1", 5433)]),
        ("db1, db2:5433 ,db3", 6000, [Host("db1", 6000), Host("db2", 5433), Host("db3", 6000)]),
        (["db1", "db2:5433"], None, [Host("db1", 5432), Host("db2", 5433)]),
        (("db1", "db2"), [5433, "5434"], [Host("db1", 5433), Host("db2", 5434)]),
        (["db1:5433", "db2"], [5433, 5434], [Host("db1", 5433), Host("db2", 5434)]),
        ("db1,db2", "5433,5434", [Host("db1", 5433), Host("db2", 5434)]),
        (["[2001:db8::7]:5433"], None, [Host("2001:db8::7", 5433)]),
        (["[::1]"], 5440, [Host("::1", 5440)]),
        (["2001:db8::7"], None, [Host("2001:db8::7", 5432)]),
        (["0:0:0:0:0:0:0:1"], None, [Host("::1", 5432)]),
        (["/run/postgresql"], 5433, [Host("/run/postgresql", 5433)]),
        ([{"host": "db1", "port": 5433}, {"host": "db2"}], None, [Host("db1", 5433), Host("db2")]),
        ([{"host": "/tmp", "port": "6000"}], None, [Host("/tmp", 6000)]),
        ([" db1 ", "\tdb2:1 "], "", [Host("db1", 5432), Host("db2", 1)]),
        ("127.0.0.1:65535", None, [Host("127.0.0.1", 65535)]),
        ("db_1.internal-net", None, [Host("db_1.internal-net", 5432)]),
        # DNS's limits, reached but not passed; an absolute name; IDNA's ASCII form.
        (f"{LABEL_63}.example", None, [Host(f"{LABEL_63}.example", 5432)]),
        ([NAME_253], None, [Host(NAME_253, 5432)]),
        ([f"{NAME_253}.:5433"], None, [Host(f"{NAME_253}.", 5433)]),
        ("db1.example.com.", None, [Host("db1.example.com.", 5432)]),
        ("xn--bcher-kva.example", None, [Host("xn--bcher-kva.example", 5432)]),
        ("_pg._tcp.db-1.a-b", None, [Host("_pg._tcp.db-1.a-b", 5432)]),
    ],
)
def test_accepted_forms(host, port, expected) -> None:
    assert list(parse_hosts(host, port, "default")) == expected


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("", None, "no host given"),
        ("   ", None, "no host given"),
        ([], None, "the host list is empty"),
        ("db1,,db2", None, "entry 2 is empty"),
        (["db1", " "], None, "['HOST'][1]: empty entry"),
        ("db1:0", None, "port 0 is outside 1..65535"),
        ("db1:65536", None, "port 65536 is outside 1..65535"),
        ("db1:http", None, "'http' is not a port number"),
        ("db1:", None, "has an empty port"),
        ("db1", "abc", "'abc' is not a port number"),
        ("db1", -5, "port -5 is outside"),
        ("db1", True, "True is not a port number"),
        ("db1", 5432.0, "5432.0 is not a port number"),
        ("db1,db2", [5432], "1 ports given for 2 hosts"),
        ("db1,db2", "1,2,3", "3 ports given for 2 hosts"),
        (["db1:5433"], [5434], "given port 5433 in HOST and 5434 in PORT"),
        (["[::1"], None, "not a valid [IPv6]:port"),
        (["[db1]:5432"], None, "neither a host name nor an IPv6 address"),
        (["fe80::zz"], None, "neither a host name nor an IPv6 address"),
        (["db1;db2"], None, "'db1;db2' is not a valid host name"),
        (["db1 db2"], None, "not a valid host name"),
        (["db1,db2"], None, "not a valid host name: ',' is not a letter, digit"),
        # DNS's rules: psycopg 3 raised a bare UnicodeError at every connect for these.
        ("db1..example.com", None, "'db1..example.com' is not a valid host name: it has an empty"),
        (".db1", None, "'.db1' is not a valid host name: it has an empty label"),
        ("db1.example.com..", None, "it has an empty label (a dot first, or two in a row)"),
        (["."], None, "'.' is not a valid host name: it has an empty label"),
        ([f"db1.{LABEL_63}x:5433"], None, "label 2 is 64 characters long, DNS allows 63"),
        ([f"{NAME_253}x"], None, "is not a valid host name: it is 254 characters long, DNS allo"),
        ([{"host": "db1..example.com"}], None, "['HOST'][0]: 'db1..example.com' is not a valid"),
        (["bücher.example"], None, "write an internationalised name in its ASCII form (xn--"),
        (["-db1"], None, "'-db1' is not a valid host name: label '-db1' starts or ends with '-'"),
        (["db1-.example:5433"], None, "label 'db1-' starts or ends with '-'"),
        ([":5433"], None, "':5433' is not a valid host name: the name is empty"),
        # A user name and password, or a whole URL: said so, the password not shown.
        (["app:pw@db1"], None, "'app:***@db1' is not a host: a user name and password go in"),
        ("postgresql://app:pw@db1/app", None, "'postgresql://app:***@db1/app' is a database URL"),
        ("db1, app:p,w@db2", None, "['HOST']: 'db1, app:***@db2' is not a host"),
        (["/bad,folder"], None, "may not hold a comma"),
        (["db1", "db1:5432"], None, "db1:5432 is listed twice"),
        ([{"hostname": "db1"}], None, "unknown key(s) hostname"),
        ([{"port": 5432}], None, "has no 'host'"),
        ([{"host": "db1:5433"}], None, "not in 'host'"),
        ([5432], None, "5432 is not a host"),
        (None, None, "neither a list of hosts nor a comma-separated string"),
        ({"host": "db1"}, None, "neither a list of hosts"),
    ],
)
def test_rejected_forms_name_alias_and_value(host, port, message) -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        parse_hosts(host, port, "replica")
    text = str(excinfo.value)
    assert text.startswith("DATABASES['replica']")
    assert message in text


def test_libpq_params_have_no_spaces_and_invert() -> None:
    hosts = parse_hosts("db1 , [::1]:5433, /run/pg", None)
    params = libpq_host_params(hosts)
    assert params == {"host": "db1,::1,/run/pg", "port": "5432,5433,5432"}
    assert hosts_from_libpq_params(params) == hosts


def test_str_is_an_entry() -> None:
    assert str(Host("::1", 5433)) == "[::1]:5433"
    assert str(Host("db1", 5433)) == "db1:5433"


# -- properties ---------------------------------------------------------------------

label = r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?"
hostnames = st.from_regex(rf"\A{label}(\.{label}){{0,2}}\Z")
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
sockets = st.from_regex(r"\A/[a-z]{1,8}(/[a-z]{1,8}){0,2}\Z")
ports = st.integers(min_value=1, max_value=65535)
hosts = st.builds(Host, st.one_of(hostnames, ipv4, ipv6, sockets), ports)
host_lists = st.lists(hosts, min_size=1, max_size=6, unique=True)


@given(host_lists)
def test_setting_round_trip(expected) -> None:
    assert list(parse_hosts(host_setting(expected))) == expected


@given(host_lists)
def test_libpq_round_trip(expected) -> None:
    assert list(hosts_from_libpq_params(libpq_host_params(expected))) == expected


@given(
    st.lists(st.one_of(hostnames, ipv4), min_size=1, max_size=6, unique=True),
    st.data(),
)
def test_string_and_list_forms_agree(names, data) -> None:
    port_list = data.draw(st.lists(ports, min_size=len(names), max_size=len(names)))
    spaces = data.draw(st.lists(st.sampled_from(["", " ", "  "]), min_size=2, max_size=2))
    as_string = ",".join(f"{spaces[0]}{n}{spaces[1]}" for n in names)
    assert parse_hosts(as_string, port_list) == parse_hosts(names, port_list)
    assert parse_hosts(names, port_list) == tuple(
        Host(n, p) for n, p in zip(names, port_list, strict=True)
    )


@given(host_lists, ports)
def test_scalar_port_only_fills_entries_without_one(expected, default) -> None:
    entries = [
        h.host if h.port == default and not h.is_socket else host_setting([h])[0] for h in expected
    ]
    assert list(parse_hosts(entries, default)) == expected


labels = st.from_regex(r"\A[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


@given(st.lists(labels, min_size=1, max_size=4), st.booleans())
def test_names_within_dnss_rules_are_accepted(parts, absolute) -> None:
    name = ".".join(parts) + ("." if absolute else "")
    assert parse_hosts([name]) == (Host(name, 5432),)


@given(st.lists(labels, min_size=1, max_size=3), st.integers(0, 3), st.data())
def test_a_label_dns_cannot_hold_is_refused(parts, position, data) -> None:
    """Too long or empty, anywhere in the name: refused, whatever else is right."""
    bad = data.draw(st.sampled_from(["", "x" * 64, "a" * data.draw(st.integers(64, 80))]))
    # An empty label last is no label: a final dot (an absolute name).
    parts.insert(min(position, len(parts) - (bad == "")), bad)
    name = ".".join(parts)
    with pytest.raises(ImproperlyConfigured, match="is not a valid host name"):
        parse_hosts([name], None, "default")
