"""``ReadYourWritesMiddleware``: a client's next requests read what its last one wrote.

A request that committed writes through a primary alias (one a replica alias
names in ``read_your_writes``) answers with a signed cookie holding the
scope's WAL positions; the client's next requests, whichever process or
server of the site serves them, resume those positions, so their reads
through the replica alias see those writes (:mod:`.causal.routing`).

- The cookie is signed (``django.core.signing``, with ``SECRET_KEY`` and a salt
  of its own) and lives ``max_age`` seconds: a forged, altered or expired
  cookie is ignored, never used to route a read or to wait. (A genuine cookie
  can only make reads fresher: the worst a client can do with its own is
  send its reads to the primary for ``max_age`` seconds.)
- Taking the position costs the writing request one round trip to the primary
  at its end, unless a read through the replica alias after its last write
  took it already: the next request may reach another process, which could
  not ask for it later.
- A request whose writes' primary cannot be asked at its end (a failover
  under way) still answers: its cookie carries the writes as pending, and
  the next request asks the primary of the moment, whose position covers
  them if they survived.
- A request that did not write leaves the cookie as it is: it expires by
  itself once the standbys have long replayed it.

Put it high in ``MIDDLEWARE`` (before anything that reads through the
replica alias), after ``SessionMiddleware`` or not: it needs no session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core import signing

from django_pg_failover import causal

logger = logging.getLogger("django_pg_failover")


class ReadYourWritesMiddleware:
    sync_capable = True
    async_capable = False

    cookie_name = "pg_failover_ryw"
    #: Seconds a position is carried: far above any replication lag that a site
    #: would still serve reads through its standbys with.
    max_age = 60
    salt = "django_pg_failover.read_your_writes"

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        causal.new_scope()  # as request_started does, should the app not be installed
        token = self.read_cookie(request)
        if token:
            causal.resume(token)
        response = self.get_response(request)
        if causal.wrote():
            response.set_signed_cookie(
                self.cookie_name,
                causal.carried(),
                salt=self.salt,
                max_age=self.max_age,
                httponly=True,
                samesite="Lax",
                secure=request.is_secure(),
            )
        return response

    def read_cookie(self, request: Any) -> str | None:
        """The cookie's token if it is genuine and fresh; None otherwise."""
        try:
            token = request.get_signed_cookie(
                self.cookie_name, salt=self.salt, max_age=self.max_age
            )
        except KeyError:
            return None
        except signing.BadSignature:  # forged, altered, or expired
            logger.debug("read_your_writes: a bad or stale cookie ignored")
            return None
        try:
            causal.lsn.decode(token)
        except ValueError:
            return None
        return str(token)
