"""What a failed connect says about a host: worth waiting for, or final.

Pure functions over libpq's reason for one host. The rule is written the safe
way round: only what is known to heal is retried (the host did not answer, or
the server said it cannot take this connection *now*); any other refusal by a
server is final for that host, whatever its wording or language.

libpq gives no SQLSTATE for an error during start-up, only text. Two things
in that text do not depend on the server's ``lc_messages``:

- whether the server said anything: libpq writes a server's error as
  ``SEVERITY:  message`` (two spaces), and its own errors (refused, timeout,
  name not resolved) without;
- libpq's own messages are English in the driver wheels (built without NLS).

The transient server states (starting up, shutting down, in recovery, too
many connections) are recognised by their English text (any server with
``lc_messages`` C or English, the default of most installations). Under
another language they read as final refusals for that host: the backend then
goes on to the other hosts at once instead of waiting for that one.
"""

from __future__ import annotations

import enum
import re

from django_pg_failover.settings.redact import redact


class Verdict(enum.Enum):
    #: The host did not answer (refused, timed out, name not resolved, link lost).
    UNREACHABLE = "unreachable"
    #: The server answered that it cannot take a connection now.
    BUSY = "busy"
    #: The server refused this connection for a reason waiting will not heal.
    REFUSED = "refused"

    @property
    def final(self) -> bool:
        return self is Verdict.REFUSED


# libpq's format for an error the server sent: "FATAL:  ..." (localised severity).
_SERVER_MESSAGE = re.compile(r"^[^:\n]{1,40}:  \S")

# 57P03 cannot_connect_now, 53300 too_many_connections, and the shutdown
# states a start-up can run into (57P01, 57P02), as every supported server
# version words them.
_SERVER_BUSY = re.compile(
    r"the database system is (?:starting up|shutting down|in recovery mode"
    r"|not yet accepting connections|not accepting connections)"
    r"|sorry, too many clients already"
    r"|too many connections for (?:role|database)"
    r"|remaining connection slots are reserved"
    r"|terminating connection (?:due to administrator command|because of crash)"
    r"|could not fork new process for connection"
    r"|out of memory",
    re.IGNORECASE,
)

# libpq's own messages that no amount of waiting changes.
_CLIENT_FINAL = re.compile(
    r"no password supplied"
    r"|password retrieved from file"
    r"|does not support SSL"
    r"|certificate"
    r"|GSSAPI"
    r"|channel binding"
    r"|authentication method requirement"
    r"|server requested .* authentication"
    r"|invalid \w+ value"
    r"|invalid connection option",
)


def connect_verdict(reason: str, timed_out: bool = False) -> Verdict:
    """Classify libpq's ``reason`` one host failed (its first line, preamble removed)."""
    if timed_out:
        return Verdict.UNREACHABLE
    if _SERVER_MESSAGE.match(reason):
        return Verdict.BUSY if _SERVER_BUSY.search(reason) else Verdict.REFUSED
    if _CLIENT_FINAL.search(reason):
        return Verdict.REFUSED
    return Verdict.UNREACHABLE


# 28P01 invalid_password, as the server words it (for a user it does not know too).
_PASSWORD_REFUSED = re.compile(r"password authentication failed")


def password_refused(reason: str) -> bool:
    """Whether the server refused the password (28P01): only its English words tell."""
    if _SERVER_MESSAGE.match(reason) is None:
        return False
    return _PASSWORD_REFUSED.search(reason) is not None


def server_message(reason: str) -> str:
    """The server's message without its severity (``FATAL:  x`` -> ``x``)."""
    match = _SERVER_MESSAGE.match(reason)
    return reason[match.end() - 1 :] if match else reason


def unexpected_failure(exc: BaseException) -> str:
    """Why an attempt failed on an exception that is not the driver's: its type and text.

    It is that host's failure, like no answer (psycopg 3 raises ``UnicodeError``
    from Python's IDNA codec for a name DNS cannot hold); never the caller's.
    """
    text = " ".join(str(exc).split())
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


# libpq's and psycopg 3's words when the client could not even try: the name did
# not resolve, no socket could be made, libpq could not start and said nothing.
# Nothing was learned about the server.
_CLIENT_SIDE = re.compile(
    r"no error details available"
    r"|could not translate host name"
    r"|failed to resolve host"
    r"|could not create socket"
    r"|could not set socket"
    r"|could not look up local user"
    r"|Too many open files"
    r"|Cannot assign requested address"
    r"|Temporary failure in name resolution",
    re.IGNORECASE,
)


def client_side(reason: str) -> bool:
    """Whether a failed connect never reached a server (a resolver or local failure)."""
    return _CLIENT_SIDE.search(reason) is not None
