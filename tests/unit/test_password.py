"""``OPTIONS["failover"]["password"]`` validated, and a provider's failures, without a server."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_pg_failover import config
from django_pg_failover.checks import database_problems
from django_pg_failover.connecting.verdicts import connect_verdict, password_refused
from django_pg_failover.drivers import get_driver
from django_pg_failover.exceptions import DatabaseURLError
from django_pg_failover.settings.conf import FailoverSettings
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.password import PasswordProviderError

PW = "Zq9xHunter2Wv"
HOST = Host("db1", 5433)
CALLS: list[dict[str, Any]] = []


def token(host: str, port: int, user: str | None) -> str:
    CALLS.append({"host": host, "port": port, "user": user})
    return PW


def cached_token(*, host: str, port: int, user: str | None, refresh: bool = False) -> str:
    CALLS.append({"host": host, "port": port, "user": user, "refresh": refresh})
    return PW


def flexible_token(**kwargs: Any) -> str:
    CALLS.append(kwargs)
    return PW


def failing_token(host: str, port: int, user: str | None) -> str:
    raise RuntimeError(f"vault sealed: password={PW}")


def number_token(host: str, port: int, user: str | None) -> Any:
    return 42


def no_keywords(host: str) -> str:
    return PW


NOT_CALLABLE = "a string"


def entry(password: Any, **overrides: Any) -> dict[str, Any]:
    options = overrides.pop("OPTIONS", {})
    return {
        "ENGINE": "django_pg_failover",
        "NAME": "app",
        "USER": "app",
        "PASSWORD": "",
        "HOST": "db1",
        "PORT": "5433",
        "OPTIONS": {"failover": {"password": password}, **options},
        **overrides,
    }


def settings(password: Any, **overrides: Any) -> FailoverSettings:
    return FailoverSettings.from_settings_dict(entry(password, **overrides), "orders", get_driver())


@pytest.fixture(autouse=True)
def _calls() -> None:
    CALLS.clear()


# -- accepted forms ------------------------------------------------------------------------


def test_a_dotted_path_is_imported_and_called_with_host_port_and_user() -> None:
    provider = settings(f"{__name__}.token").password
    assert provider is not None
    assert provider.name == f"{__name__}.token"
    assert provider.password(HOST, "app") == PW
    assert provider.password(HOST, "app", refresh=True) == PW  # no refresh keyword: not given
    assert CALLS == [{"host": "db1", "port": 5433, "user": "app"}] * 2


def test_a_callable_is_taken_as_it_is() -> None:
    provider = settings(token).password
    assert provider is not None
    assert provider.name == f"{__name__}.token"
    assert provider.function is token


@pytest.mark.parametrize("function", [cached_token, flexible_token])
def test_refresh_is_given_to_a_provider_that_takes_it(function: Any) -> None:
    provider = settings(function).password
    assert provider is not None
    assert provider.takes_refresh
    provider.password(HOST, None)
    provider.password(HOST, None, refresh=True)
    assert [call.get("refresh", False) for call in CALLS] == [False, True]
    assert CALLS[0]["user"] is None


def test_no_provider_by_default() -> None:
    db = entry(None)
    db["OPTIONS"] = {}
    assert FailoverSettings.from_settings_dict(db, "orders", get_driver()).password is None


def test_repr_names_the_provider_only() -> None:
    secret_holder = _SecretHolder()
    shown = repr(settings(secret_holder))
    assert "_SecretHolder" in shown
    assert PW not in shown


class _SecretHolder:
    """A callable object whose own repr would show its secret."""

    def __call__(self, *, host: str, port: int, user: str | None) -> str:
        return PW

    def __repr__(self) -> str:
        return f"_SecretHolder(key={PW!r})"


# -- refused settings ------------------------------------------------------------------------

BAD = [
    ({"password": "nosuchmodule_xyz.token"}, "cannot import 'nosuchmodule_xyz' (ModuleNotFound"),
    ({"password": f"{__name__}.nothing"}, f"{__name__!r} has no 'nothing'"),
    ({"password": f"{__name__}.NOT_CALLABLE"}, "is a str object, not callable"),
    ({"password": f"{__name__}.no_keywords"}, "cannot be called as provider(host=..., port=..."),
    ({"password": 42}, "a int object is neither a dotted path to a callable"),
    # A password put here by mistake: not echoed.
    ({"password": PW}, "not a dotted path to a callable ('package.module.function'); the value"),
    ({"password": f"x{PW}!"}, "not a dotted path to a callable"),
]


@pytest.mark.parametrize(("failover", "message"), BAD)
def test_bad_providers_are_refused_naming_the_alias_and_key(
    failover: dict[str, Any], message: str
) -> None:
    db = entry(failover["password"])
    with pytest.raises(ImproperlyConfigured) as caught:
        FailoverSettings.from_settings_dict(db, "orders", get_driver())
    text = str(caught.value)
    assert text.startswith("DATABASES['orders']['OPTIONS']['failover']['password']: ")
    assert message in text
    assert PW not in "".join(traceback.format_exception(caught.value))
    [problem] = database_problems({"orders": db})
    assert problem.id == "django_pg_failover.E003"
    assert message in problem.msg


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"PASSWORD": PW}, "DATABASES['orders']['PASSWORD']: set beside"),
        ({"OPTIONS": {"password": PW}}, "DATABASES['orders']['OPTIONS']['password']: set beside"),
    ],
)
def test_a_fixed_password_beside_a_provider_is_an_error(
    overrides: dict[str, Any], where: str
) -> None:
    db = entry(f"{__name__}.token", **overrides)
    with pytest.raises(ImproperlyConfigured) as caught:
        FailoverSettings.from_settings_dict(db, "orders", get_driver())
    assert str(caught.value).startswith(where)
    assert PW not in str(caught.value)
    [problem] = database_problems({"orders": db})
    assert PW not in problem.msg


def test_config_takes_a_provider_and_refuses_it_beside_the_urls_password() -> None:
    provider = {"failover": {"password": f"{__name__}.token"}}
    db = config(url="postgresql://app@db1,db2/app?retry_timeout=3", options=provider)
    assert db["OPTIONS"]["failover"] == {"password": f"{__name__}.token", "retry_timeout": 3.0}
    with pytest.raises(DatabaseURLError) as caught:
        config(url=f"postgresql://app:{PW}@db1,db2/app", options=provider)
    assert "PASSWORD: set beside OPTIONS['failover']['password']" in str(caught.value)
    assert PW not in "".join(traceback.format_exception(caught.value))
    with pytest.raises(DatabaseURLError, match=r"password: 'nosuchmodule_xyz\.token': cannot"):
        config(
            url="postgresql://app@db1/app",
            options={"failover": {"password": "nosuchmodule_xyz.token"}},
        )


# -- a provider that fails -----------------------------------------------------------------


def test_a_provider_that_raises_names_alias_provider_and_host_not_the_secret() -> None:
    provider = settings(failing_token).password
    assert provider is not None
    with pytest.raises(PasswordProviderError) as caught:
        provider.password(HOST, "app")
    text = "".join(traceback.format_exception(caught.value))
    assert str(caught.value) == (
        f"database alias 'orders': the password provider '{__name__}.failing_token' raised "
        "RuntimeError: vault sealed: password=*** (connecting to db1:5433)"
    )
    assert PW not in text
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_provider_must_return_a_string() -> None:
    provider = settings(number_token).password
    assert provider is not None
    with pytest.raises(PasswordProviderError, match="returned a int object, not a password string"):
        provider.password(HOST, "app")


# -- the server's refusal --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "refused"),
    [
        ('FATAL:  password authentication failed for user "app"', True),
        ('FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "app"', False),
        ("fe_sendauth: no password supplied", False),
        ("Connection refused", False),
        # Another lc_messages: not recognised, final as any refusal.
        ("FATAL:  la autentificación password falló para el usuario «app»", False),
    ],
)
def test_a_refused_password_is_known_by_the_servers_words(reason: str, refused: bool) -> None:
    assert password_refused(reason) is refused
    if refused:
        assert connect_verdict(reason).final
