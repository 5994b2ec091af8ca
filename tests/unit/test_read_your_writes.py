"""read_your_writes without a server: positions, tokens, the scope, settings, the cookie."""

from __future__ import annotations

import time

import pytest
from django.core import signing
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory
from hypothesis import given
from hypothesis import strategies as st

from django_pg_failover import causal
from django_pg_failover.causal import lsn
from django_pg_failover.causal.scope import current
from django_pg_failover.checks import database_problems
from django_pg_failover.middleware import ReadYourWritesMiddleware
from django_pg_failover.settings.causal import READ_YOUR_WRITES_CHECK
from django_pg_failover.settings.policy import FAILOVER_CHECK, FailoverPolicy


@pytest.fixture(autouse=True)
def fresh_scope():
    causal.new_scope()
    yield
    causal.new_scope()


# -- positions and tokens -------------------------------------------------------------------


def test_positions_parse_as_postgresql_writes_them() -> None:
    assert lsn.parse_lsn("0/0") == 0
    assert lsn.parse_lsn("0/3000060") == 0x3000060
    assert lsn.parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert lsn.parse_lsn("16/b374d848") == lsn.parse_lsn("16/B374D848")
    # Compared as numbers, not as text: "9/0" < "10/0" although "9" > "1".
    assert lsn.parse_lsn("9/FFFFFFFF") < lsn.parse_lsn("A/0") < lsn.parse_lsn("10/0")


@pytest.mark.parametrize(
    "text", ["", "0", "0/", "/0", "x/0", "0/0/0", "123456789/0", " 0/0", "0/0\n", "-1/0", None, 5]
)
def test_anything_else_is_not_a_position(text) -> None:
    with pytest.raises(ValueError, match="not a WAL position"):
        lsn.parse_lsn(text)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_format_and_parse_round_trip(position: int) -> None:
    assert lsn.parse_lsn(lsn.format_lsn(position)) == position


def test_tokens_round_trip_and_keep_the_highest_position() -> None:
    token = lsn.encode({"default": (1, 0x3000060), "other": (12, 5 << 32)})
    assert token == "default@1:0/3000060,other@12:5/0"
    assert lsn.decode(token) == {"default": (1, 0x3000060), "other": (12, 5 << 32)}
    assert lsn.decode("a@1:0/10,a@1:0/5") == {"a": (1, 0x10)}
    # A later timeline supersedes, even at a lower LSN (the rest was lost with the old one).
    assert lsn.decode("a@1:0/10,a@2:0/8") == {"a": (2, 0x8)}
    assert lsn.decode("") == {}


def test_pending_writes_travel_in_a_token_and_supersede_a_position() -> None:
    assert lsn.encode({"a": None, "b": (1, 16)}) == "a@pending,b@1:0/10"
    assert lsn.decode("a@pending,b@1:0/10") == {"a": None, "b": (1, 16)}
    assert lsn.decode("a@1:0/10,a@pending,a@1:0/20") == {"a": None}
    causal.resume("a@1:0/10,b@pending")
    assert current().positions == {"a": (1, 16)}
    assert current().written == {"b"}  # asked of b's primary when a read needs it


def test_a_server_covers_a_position_on_its_timeline_or_a_later_one() -> None:
    assert lsn.covers((1, 100), (1, 100))
    assert lsn.covers((2, 100), (1, 90))  # an older timeline's position: common history
    assert not lsn.covers((1, 99), (1, 100))
    # Timeline-blind LSNs would say yes: a standby that diverged on timeline 1 beyond
    # the switch point has not replayed the new primary's timeline 2.
    assert not lsn.covers((1, 500), (2, 100))
    assert lsn.timeline_of_walfile("0000000A000000000000002B") == 10


@pytest.mark.parametrize(
    "token",
    [
        "default",
        "@1:0/1",
        "default@",
        "default@0/1",
        "default@0:0/1",
        "default@-1:0/1",
        "default@1:0/1,",
        "a@1:1/x",
        "a@@",
        "a@1:",
    ],
)
def test_a_token_is_parsed_strictly(token: str) -> None:
    with pytest.raises(ValueError, match=r"not alias@timeline:position|not a WAL position"):
        lsn.decode(token)


def test_a_token_names_a_few_aliases_at_most() -> None:
    with pytest.raises(ValueError, match="too many"):
        lsn.decode(",".join(f"a{i}@1:0/1" for i in range(17)))


# -- the scope and the public API -----------------------------------------------------------


def test_resume_merges_and_a_block_scope_restores_the_previous_one() -> None:
    causal.resume("default@1:0/10")
    causal.resume("default@1:0/5")
    assert current().positions == {"default": (1, 0x10)}
    assert not causal.wrote()  # resumed, not written
    assert causal.position() == "default@1:0/10"
    with causal.scope("default@1:0/20,replica_of@1:1/0"):
        assert current().positions == {"default": (1, 0x20), "replica_of": (1, 1 << 32)}
        with causal.scope():
            assert causal.position() == ""
    assert current().positions == {"default": (1, 0x10)}
    causal.new_scope()
    assert causal.position() == ""


def test_resume_refuses_what_is_not_a_token() -> None:
    with pytest.raises(ValueError, match="not a WAL position"):
        causal.resume("default@1:yesterday")
    assert current().positions == {}


# -- settings ---------------------------------------------------------------------------------


def entry(**options) -> dict:
    return {
        "ENGINE": "django_pg_failover",
        "NAME": "app",
        "HOST": ["db1", "db2"],
        "OPTIONS": options,
    }


def replica(target: str = "default", **options) -> dict:
    options = {"target_session_attrs": "prefer-standby", **options}
    return entry(failover={"read_your_writes": target}, **options)


STOCK = {**entry(), "ENGINE": "django.db.backends.postgresql"}


def test_the_policy_takes_an_alias_name() -> None:
    policy = FailoverPolicy.from_options({"read_your_writes": "default"}, "replica")
    assert policy.read_your_writes == "default"
    assert policy.read_your_writes_wait == 0.02
    assert FailoverPolicy.from_options({}, "replica").read_your_writes is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (5, "5 is not the name of a database alias"),
        ("", "'' is not the name of a database alias"),
        ("replica", "names this alias itself"),
    ],
)
def test_the_policy_refuses_what_is_not_another_alias(value, problem: str) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        FailoverPolicy.from_options({"read_your_writes": value}, "replica")
    message = str(caught.value)
    assert message.startswith("DATABASES['replica']['OPTIONS']['failover']['read_your_writes']: ")
    assert problem in message
    assert caught.value.check_id == FAILOVER_CHECK


def test_the_wait_is_bounded() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"outside 0\.\.10 seconds"):
        FailoverPolicy.from_options({"read_your_writes_wait": 30}, "replica")


def errors(databases: dict) -> list[tuple[str, str]]:
    return [(m.id, m.msg) for m in database_problems(databases)]


def test_a_pair_of_aliases_has_no_problem() -> None:
    assert errors({"default": entry(), "replica": replica()}) == []
    # The same servers in another order (load_balance_hosts shuffles them anyway).
    other_order = replica()
    other_order["HOST"] = ["db2", "db1"]
    assert errors({"default": entry(), "replica": other_order}) == []


@pytest.mark.parametrize(
    ("databases", "problem"),
    [
        ({"replica": replica("primary")}, "'primary' is not an alias of DATABASES"),
        (
            {
                "default": {**entry(), "ENGINE": "django.db.backends.postgresql"},
                "replica": replica(),
            },
            "'default' does not use django_pg_failover",
        ),
        (
            {"default": entry(target_session_attrs="standby"), "replica": replica()},
            "'default' is not a read-write alias (its target_session_attrs is 'standby')",
        ),
        (
            {"default": entry(), "replica": replica(target_session_attrs="read-write")},
            "this alias connects to the primary (target_session_attrs read-write)",
        ),
        (
            {"default": {**entry(), "HOST": ["db3"]}, "replica": replica()},
            "'default' lists other servers",
        ),
    ],
)
def test_manage_py_check_names_alias_key_and_check(databases: dict, problem: str) -> None:
    found = errors(databases)
    assert len(found) == 1, found
    check_id, message = found[0]
    assert check_id == READ_YOUR_WRITES_CHECK
    assert message.startswith("DATABASES['replica']['OPTIONS']['failover']['read_your_writes']: ")
    assert problem in message


def test_a_self_reference_is_reported_once() -> None:
    found = errors({"default": entry(), "replica": replica("replica")})
    assert [check for check, _ in found] == [FAILOVER_CHECK]


# -- the middleware's cookie ------------------------------------------------------------------


def cookie_of(response: HttpResponse) -> str:
    return response.cookies[ReadYourWritesMiddleware.cookie_name].value


def run(cookie: str | None = None, wrote: str | None = None) -> tuple[HttpResponse, dict]:
    seen: dict = {}

    def view(request) -> HttpResponse:
        seen.update(current().positions)
        if wrote:
            # What a real write leaves: a taken position (the lab tests take it for real).
            scope = current()
            scope.took = True
            scope.merge(lsn.decode(wrote))
        return HttpResponse()

    request = RequestFactory().get("/")
    if cookie is not None:
        request.COOKIES[ReadYourWritesMiddleware.cookie_name] = cookie
    return ReadYourWritesMiddleware(view)(request), seen


def test_a_writing_request_sets_a_signed_short_lived_cookie() -> None:
    response, _ = run(wrote="default@1:0/10")
    morsel = response.cookies[ReadYourWritesMiddleware.cookie_name]
    assert morsel["max-age"] == ReadYourWritesMiddleware.max_age
    assert morsel["httponly"]
    assert morsel["samesite"] == "Lax"
    _, seen = run(cookie_of(response))
    assert seen == {"default": (1, 0x10)}


def test_a_request_that_did_not_write_sets_no_cookie() -> None:
    response, _ = run()
    assert ReadYourWritesMiddleware.cookie_name not in response.cookies


def test_forged_altered_or_stale_cookies_are_ignored(monkeypatch) -> None:
    genuine = cookie_of(run(wrote="default@1:0/10")[0])
    value, _, signature = genuine.rpartition(":")
    bad_signature = f"{value}:{'A' * len(signature)}"
    altered = genuine.replace("1:0/10", "1:FF/0")
    unsigned = "default@1:FF/0"
    other_salt = signing.get_cookie_signer(salt=ReadYourWritesMiddleware.cookie_name).sign(
        "default@1:FF/0"
    )
    for cookie in (bad_signature, altered, unsigned, other_salt, ""):
        assert run(cookie)[1] == {}, cookie
    # Stale: signed longer ago than max_age.
    signed_at = time.time() - ReadYourWritesMiddleware.max_age - 5
    monkeypatch.setattr(signing.time, "time", lambda: signed_at)
    stale = cookie_of(run(wrote="default@1:0/10")[0])
    monkeypatch.undo()
    assert run(stale)[1] == {}
    assert run(genuine)[1] == {"default": (1, 0x10)}
