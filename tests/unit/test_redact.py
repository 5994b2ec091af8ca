"""No secret in a settings error: every path that quotes a value, and ``manage.py check``.

A password lands in the wrong setting in two ways: with its shape (a
``DATABASE_URL`` pasted into ``HOST``, ``user:password@host``,
``password=...``, a mapping with a ``password`` key), or bare (the alias's
``PASSWORD`` written into ``PORT``). Each error path below is given one; the
message, the traceback a user would see and ``manage.py check``'s output must
show no piece of it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_pg_failover import config
from django_pg_failover.checks import database_problems
from django_pg_failover.drivers import get_driver
from django_pg_failover.exceptions import DatabaseURLError
from django_pg_failover.settings.conf import FailoverSettings
from django_pg_failover.settings.redact import is_secret_key, redacted, scrub
from tests.markers import needs_pool

ROOT = Path(__file__).resolve().parents[2]
# A valid host name label too: it must get through the checks that come before the
# one each case aims at.
PW = "Zq9xHunter2Wv"
GOOD_URL = "postgresql://app@db1,db2/app"


def leaks(text: str, secret: str = PW) -> list[str]:
    """The pieces of ``secret`` (5 characters or more) that ``text`` shows."""
    runs = {secret[i : i + 5] for i in range(len(secret) - 4)}
    return sorted(run for run in runs if run in text)


# -- the redaction itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("postgresql://app:pw@db/app", "'postgresql://app:***@db/app'"),
        ("postgres://:pw@db", "'postgres://:***@db'"),
        ("app:pw@db1", "'app:***@db1'"),
        ("app:p@ss:w@rd@db1", "'app:***@db1'"),  # an unencoded '@': its tail hidden too
        ("db1,app:pw@db2,db3", "'db1,app:***@db2,db3'"),
        ("app:it's@db", '"app:***@db"'),
        ("password=pw host=db1", "'password=*** host=db1'"),
        ("password='p w' host=db1", '"password=*** host=db1"'),
        ("postgresql://db1/app?sslpassword=pw&sslmode=require", "sslpassword=***&sslmode="),
        ("oauth_client_secret=pw", "'oauth_client_secret=***'"),
        ('{"Password": "pw"}', "'{\"Password\": ***}'"),
        ({"password": "pw", "port": 5432}, "{'password': ***, 'port': 5432}"),
        ([{"token": b"pw"}, ("api_key", {"x": {"secret": 1}})], "'secret': ***"),
        ({"host": "app:pw@db1"}, "{'host': 'app:***@db1'}"),
        # Nothing secret: the value as repr() writes it.
        ("db1:5432", "'db1:5432'"),
        ("app@db1", "'app@db1'"),
        ("[::1]:5432", "'[::1]:5432'"),
        ({"passfile": "/home/app/.pgpass", "sslkey": "k.pem"}, "'/home/app/.pgpass'"),
        (5432, "5432"),
        (None, "None"),
    ],
)
def test_redacted_values(value: Any, shown: str) -> None:
    text = redacted(value)
    assert shown in text
    assert "pw" not in text.replace("password", "").replace("Password", "")


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("sslpassword", True),
        ("PGPASSWORD", True),
        ("oauth_client_secret", True),
        ("token", True),
        ("passfile", False),  # a path: the secret is in the file
        ("sslkey", False),
        ("sslcert", False),
        ("user", False),
    ],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_scrub_takes_out_a_known_secret_and_its_pieces() -> None:
    assert scrub(f"'{PW}' is not a port number", [PW]) == "'***' is not a port number"
    assert leaks(scrub(f"{PW[:7]} and {PW[7:]}", [PW])) == []
    assert scrub("'ab' is not a port number", ["ab"]) == "'ab' is not a port number"  # too short


# -- every settings error that quotes a value ----------------------------------------------

# (settings of the alias, PASSWORD, a piece of the message that shows the path was taken)
URL = f"postgresql://app:{PW}@db1/app"
SHAPED = [
    ({"HOST": URL}, "['HOST']: 'postgresql://app:***@db1/app' is a database URL"),
    ({"HOST": f"db1,app:{PW}@db2"}, "['HOST']: 'db1,app:***@db2' is not a host"),
    ({"HOST": f"db1,app:{PW},x@db2"}, "['HOST']: 'db1,app:***@db2' is not a host"),  # a comma
    ({"HOST": ["db1", URL]}, "['HOST'][1]: 'postgresql://app:***@db1/app' is a database URL"),
    ({"HOST": [{"host": f"app:{PW}@db1"}]}, "['HOST'][0]: 'app:***@db1' is not a host"),
    ({"HOST": {"password": PW}}, "{'password': ***} is neither a list of hosts"),
    ({"HOST": f"app:{PW}@db1".encode()}, "b'app:***@db1' is neither a list of hosts"),
    ({"HOST": [f"app:{PW}@db1".encode()]}, "b'app:***@db1' is not a host"),
    ({"HOST": [f"/run/pg,password={PW}"]}, "'/run/pg,password=***': a folder name may not"),
    ({"HOST": [f"password={PW}"]}, "'password=***' is not a valid host name"),
    ({"HOST": [{"host": "db1", f"app:{PW}@x": 1}]}, "unknown key(s) app:***@x in a host"),
    ({"HOST": [{"host": "db1", "port": f"app:{PW}@x"}]}, "'app:***@x' is not a port number"),
    ({"HOST": "db1", "PORT": f"app:{PW}@db1"}, "['PORT']: 'app:***@db1' is not a port number"),
    ({"HOST": "db1", "PORT": f"{URL}:5432"}, "['PORT']: 'postgresql://app:***@db1/app:5432'"),
    ({"HOST": ["db1"], "PORT": [f"password={PW}"]}, "['PORT'][0]: 'password=***' is not a"),
    ({"HOST": "db1", "PORT": {"password": PW}}, "['PORT']: {'password': ***} is not a port"),
    ({"OPTIONS": {"target_session_attrs": URL}}, "'postgresql://app:***@db1/app' is not one"),
    ({"OPTIONS": {"connect_timeout": f"password={PW}"}}, "'password=***' is not a whole number"),
    ({"OPTIONS": {"load_balance_hosts": {"token": PW}}}, "{'token': ***} is not one of disable"),
    ({"OPTIONS": {f"app:{PW}@x": 1}}, "['OPTIONS']['app:***@x']: libpq has no such connection"),
    ({"OPTIONS": {"failover": f"password={PW}"}}, "'password=***' is not a dict of failover"),
    ({"OPTIONS": {"failover": {f"app:{PW}@x": 1}}}, "unknown setting(s) app:***@x; known:"),
    ({"OPTIONS": {"failover": {"retry_timeout": URL}}}, "['retry_timeout']: 'postgresql://app"),
    ({"OPTIONS": {"failover": {"retry_reads": {"secret": PW}}}}, "{'secret': ***} is not True"),
]
# The value bare: only the alias's own PASSWORD (or a secret OPTIONS key) tells it.
BARE = [
    ({"HOST": "db1", "PORT": PW}, "['PORT']: '***' is not a port number"),
    ({"HOST": [f"[{PW}"]}, "'[***' is not a valid [IPv6]:port entry"),
    ({"HOST": [f"{PW};x"]}, "'***;x' is not a valid host name: ';' is not"),
    ({"HOST": [f"{PW}-"]}, "is not a valid host name: label '***-' starts or ends with '-'"),
    ({"HOST": [f"fe80::{PW}"]}, "'fe80::***' is neither a host name nor an IPv6 address"),
    ({"HOST": [f"{PW}:5433"], "PORT": [5434]}, "host '***' is given port 5433 in HOST"),
    ({"HOST": [PW, f"{PW}:5432"]}, "***:5432 is listed twice"),
    ({"HOST": [f"{PW}:"]}, "'***:' has an empty port"),
    ({"HOST": [{"host": f"{PW}:5433"}]}, "give the port of '***:5433' in 'port'"),
    ({"HOST": [{"host": "db1", "port": PW}]}, "['HOST'][0]['port']: '***' is not a port number"),
    ({"OPTIONS": {"target_session_attrs": PW}}, "'***' is not one of any, read-write"),
    ({"OPTIONS": {"connect_timeout": PW}}, "'***' is not a whole number of seconds"),
    ({"OPTIONS": {"load_balance_hosts": PW}}, "'***' is not one of disable, random"),
    ({"OPTIONS": {PW: 1}}, "['OPTIONS']['***']: libpq has no such connection option"),
    ({"OPTIONS": {"failover": PW}}, "'***' is not a dict of failover settings"),
    ({"OPTIONS": {"failover": {PW: 1}}}, "unknown setting(s) ***; known:"),
    ({"OPTIONS": {"failover": {"retry_timeout": PW}}}, "'***' is not a number of seconds"),
    ({"OPTIONS": {"failover": {"retry_reads": PW}}}, "'***' is not True or False"),
]
POOL = [
    ({"pool": f"password={PW}"}, "'password=***' is neither True nor a dict of pool options"),
    ({"pool": {"min_size": f"password={PW}"}}, "'password=***' is not a whole number >= 0"),
    ({"pool": {"max_size": URL}}, "'postgresql://app:***@db1/app' is not a whole number >= 1"),
    ({"pool": {"timeout": {"password": PW}}}, "{'password': ***} is not a positive number"),
    ({"pool": {"reset": f"app:{PW}@x"}}, "'app:***@x' is not callable"),
    ({"pool": {"name": f"password={PW}".encode()}}, "b'password=***' is not a string"),
    ({"pool": {f"app:{PW}@x": 1}}, "['pool']['app:***@x']: not an option this backend's pool"),
    ({"pool": PW}, "'***' is neither True nor a dict of pool options"),
    ({"pool": {"min_size": PW}}, "'***' is not a whole number >= 0"),
]
CASES = [
    *((settings, "", message) for settings, message in SHAPED),
    *((settings, PW, message) for settings, message in BARE),
]


def entry(settings: dict[str, Any], password: str) -> dict[str, Any]:
    return {
        "ENGINE": "django_pg_failover",
        "NAME": "app",
        "USER": "app",
        "PASSWORD": password,
        "HOST": "db1",
        "PORT": "",
        **settings,
    }


def assert_hidden(settings: dict[str, Any], password: str, message: str) -> None:
    """The first connect's error and manage.py check's report: the path, and no secret."""
    db = entry(settings, password)
    with pytest.raises(ImproperlyConfigured) as caught:
        FailoverSettings.from_settings_dict(db, "orders", get_driver())
    shown = "".join(traceback.format_exception(caught.value))  # the chain too
    assert message in str(caught.value)
    assert leaks(shown) == []
    [problem] = database_problems({"orders": db})
    assert message in problem.msg
    assert leaks(problem.msg) == []


@pytest.mark.parametrize(("settings", "password", "message"), CASES)
def test_no_settings_error_shows_a_secret(
    settings: dict[str, Any], password: str, message: str
) -> None:
    assert_hidden(settings, password, message)


@needs_pool
@pytest.mark.parametrize(("options", "message"), POOL)
def test_no_pool_settings_error_shows_a_secret(options: dict[str, Any], message: str) -> None:
    assert_hidden({"OPTIONS": options}, PW, message)


def test_a_secret_options_key_is_known_too() -> None:
    assert_hidden(
        {"PORT": PW, "OPTIONS": {"sslpassword": PW}}, "", "['PORT']: '***' is not a port number"
    )


def test_every_value_in_these_modules_is_written_redacted() -> None:
    """A new error path that writes a value with repr() would escape the table above."""
    package = ROOT / "django_pg_failover"
    modules = [
        *(
            f"settings/{name}"
            for name in ("hosts", "options", "policy", "conf", "dburl", "password")
        ),
        "exceptions",
        "checks",
    ]
    found = [
        f"{name}.py:{number}: {line.strip()}"
        for name in modules
        for number, line in enumerate((package / f"{name}.py").read_text().splitlines(), 1)
        if re.search(r"!r\b|\brepr\(|%r", line)
    ]
    assert found == []


# -- config() ------------------------------------------------------------------------------

URL_CASES = [
    ({"conn_max_age": f"password={PW}"}, "conn_max_age: 'password=***' is not None or a whole"),
    ({"ssl_require": URL}, "ssl_require: 'postgresql://app:***@db1/app' is not True or False"),
    ({"conn_health_checks": {"token": PW}}, "conn_health_checks: {'token': ***} is not True"),
    ({"options": {f"app:{PW}@x": 1}}, "options['app:***@x']: libpq has no such connection"),
    ({"options": {"failover": {"retry_timeout": URL}}}, "options['failover']['retry_timeout']"),
    (
        {"options": {"sslpassword": PW, "target_session_attrs": PW}},
        "options['target_session_attrs']: '***' is not one of",
    ),
    # The URL's own password given to another argument.
    ({"url": f"postgresql://app:{PW}@db1/app", "conn_max_age": PW}, "conn_max_age: '***' is"),
]


@pytest.mark.parametrize(("kwargs", "message"), URL_CASES)
def test_no_config_error_shows_a_secret(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DatabaseURLError) as caught:
        config(**{"url": GOOD_URL, **kwargs})
    assert message in str(caught.value)
    assert leaks("".join(traceback.format_exception(caught.value))) == []


# -- manage.py check ---------------------------------------------------------------------


def test_manage_py_check_shows_no_secret(tmp_path: Path) -> None:
    """Every case above as an alias of one project: check reports each, and no secret."""
    aliases = {f"bad_{n}": entry(s, p) for n, (s, p, _) in enumerate(CASES)}
    (tmp_path / "secret_settings.py").write_text(
        f"from testproject.settings import *\nDATABASES.update({aliases!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT / "testproject",
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "secret_settings",
            "PYTHONPATH": str(tmp_path),
            "DATABASE_URL": "postgresql://app@127.0.0.1:5432/app",
        },
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in output
    for alias, (_, _, message) in zip(aliases, CASES, strict=True):
        assert f"DATABASES['{alias}']" in output
        assert message.replace("\\", "") in output.replace("\\", "")
    assert leaks(output) == []
