"""Secrets out of error messages: the one way a setting's value is written in one.

A value a user put in the wrong place is echoed back so that they can find it,
but a password must never be: error messages end up in logs, in ``manage.py
check`` output, in CI transcripts and in bug reports. Two rules:

- :func:`redacted` writes any value (``repr``) with what its shape marks as a
  secret replaced by ``***``: the password of URL userinfo, in
  ``scheme://user:password@`` and ``user:password@host`` alike (everything
  from the first ``:`` to the last ``@``, so that a password holding an
  unencoded ``@`` does not show its tail), and the value of any key that names
  a secret (:func:`is_secret_key`) in a mapping, a libpq connection string
  (``password=...``), a URL query (``?password=...&``) or a quoted
  ``"password": ...``. Every settings error that quotes a value goes through
  it, and so do those of :mod:`.dburl`.
- :func:`scrub` cuts secrets that are known but have no such shape (an alias's
  ``PASSWORD`` written into ``PORT`` by mistake) out of a whole message, and
  any run of :data:`MIN_RUN` of their characters: a password that was cut
  apart (at a ``,`` of a host list, at a ``?`` of a URL) shows no piece either.

Which keys are secrets: any whose name contains ``password`` (libpq's
``password`` and ``sslpassword``), ``passwd``, ``secret`` (libpq 18's
``oauth_client_secret``), ``token``, ``passphrase``, ``credential`` or ``api_key``.
``passfile``, ``sslkey`` and ``sslcert`` are not: they name files, the path
helps whoever reads the error, and the secret is in the file.

A secret that is neither known nor marked by its shape (a bare password typed
into ``PORT`` while ``PASSWORD`` holds another) cannot be told from a typo and
is shown like one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

REDACTED = "***"
#: Words that make a key's value a secret (compared in lower case).
SECRET_WORDS = ("password", "passwd", "secret", "token", "passphrase", "credential", "api_key")
#: A known secret shorter than this is not scrubbed: it would blank out ordinary words.
MIN_SECRET = 3
#: Runs of this many characters of a known secret are scrubbed too (pieces of a cut secret).
MIN_RUN = 4

# The user name stops at what cannot be in one unencoded (or starts the text around
# it); the password runs to the last '@', which libpq (and urllib) would take as the
# host's start. An empty user name only right after "//".
_USERINFO = re.compile(
    r"(?P<user>(?<=//)[^\s'\"/:@]*|[^\s'\"/:@,;=\[\]{}()]+):(?!//)(?P<password>.*)@", re.DOTALL
)
# key=value (libpq), key=value& (URL query), 'key': value (a mapping or JSON in text),
# for the keys that name a secret. A quoted value ends at its closing quote; a bare one
# at white space or '&' (a quote that closes the text around it is left).
_KEY_VALUE = re.compile(
    rf"(?P<key>[\w%.-]*(?:{'|'.join(SECRET_WORDS)})[\w%.-]*)(?P<separator>['\"]?\s*[=:]\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&]*?(?=['\"]?(?:[\s&})\]]|$)))",
    re.DOTALL | re.IGNORECASE,
)


def is_secret_key(key: object) -> bool:
    """Whether a setting or parameter of this name holds a secret (see the module)."""
    name = unquote(str(key)).lower()
    return any(word in name for word in SECRET_WORDS)


class _Hidden:
    """Stands for a secret in a ``repr``."""

    def __repr__(self) -> str:
        return REDACTED


_HIDDEN = _Hidden()


def _masked(value: Any) -> Any:
    """``value`` with the values of secret keys, at any depth, hidden."""
    if isinstance(value, Mapping):
        return {
            key: _HIDDEN if is_secret_key(key) else _masked(item) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_masked(item) for item in value)
    return value


def redact(text: str) -> str:
    """``text`` (one value written out) with the secrets its shape shows replaced by ``***``."""
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m['user']}:{REDACTED}@", text)
    return _KEY_VALUE.sub(_hide_value, text)


def _hide_value(match: re.Match[str]) -> str:
    if match["value"].startswith(REDACTED):  # hidden already (a mapping's value)
        return match[0]
    return f"{match['key']}{match['separator']}{REDACTED}"


def redacted(value: Any) -> str:
    """``repr(value)`` for an error message, every secret in it replaced by ``***``."""
    return redact(repr(_masked(value)))


def scrub(message: str, secrets: Iterable[str]) -> str:
    """``message`` without any of ``secrets``, nor any run of :data:`MIN_RUN` characters of one."""
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True):
        for size in range(len(secret), min(MIN_RUN, len(secret)) - 1, -1):
            for start in range(len(secret) - size + 1):
                piece = secret[start : start + size]
                if piece in message:
                    message = message.replace(piece, REDACTED)
    return message


def settings_secrets(settings_dict: Mapping[str, Any]) -> list[str]:
    """The secrets a ``DATABASES`` entry holds: ``PASSWORD`` and the secret ``OPTIONS``."""
    found = [settings_dict.get("PASSWORD")]
    options = settings_dict.get("OPTIONS")
    if isinstance(options, Mapping):
        found.extend(value for key, value in options.items() if is_secret_key(key))
    return [secret for secret in found if isinstance(secret, str) and secret]
