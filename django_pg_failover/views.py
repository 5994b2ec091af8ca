"""``health``: a database alias's health as JSON, for a load balancer or an orchestrator.

    # urls.py
    from django.urls import path
    from django_pg_failover.views import health

    urlpatterns = [
        path("health/db/", health),                                   # "default"
        path("health/replica/", health, {"alias": "replica", "max_lag_seconds": 30}),
    ]

200 when the alias has a suitable server, 503 otherwise; the body is the
``pg_hosts --json`` object with ``healthy`` and ``problem`` first
(:mod:`django_pg_failover.health` says what is judged, and how).

- Only the URL configuration sets the alias, ``timeout`` and
  ``max_lag_seconds``: a caller cannot make the view wait longer or look at
  another alias.
- Never cached (``Cache-Control: no-cache, no-store...``): a cached answer
  would say a failover is over, or not, when it no longer is. A load balancer
  that polls often should be given a short cache in front (see the docs).
- Outside ``ATOMIC_REQUESTS``, for every alias (``transaction.non_atomic_requests``
  marks one): a request transaction would open the alias's own connection
  first, and wait ``retry_timeout`` for a server.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS
from django.http import HttpRequest, JsonResponse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_safe

from django_pg_failover.health import DEFAULT_TIMEOUT, alias_health


@require_safe
def health(
    request: HttpRequest,
    alias: str = DEFAULT_DB_ALIAS,
    timeout: int = DEFAULT_TIMEOUT,
    max_lag_seconds: float | None = None,
) -> JsonResponse:
    """200 with the alias's host report when a host suits it, 503 with it otherwise."""
    verdict = alias_health(alias, timeout, max_lag_seconds)
    response = JsonResponse(verdict.as_json(), status=200 if verdict.healthy else 503)
    add_never_cache_headers(response)
    return response


class _EveryAlias:
    """What ``transaction.non_atomic_requests`` marks, for every alias at once: Django's
    handler asks ``alias in view._non_atomic_requests`` of each ATOMIC_REQUESTS alias."""

    def __contains__(self, alias: object) -> bool:
        return True


health._non_atomic_requests = _EveryAlias()
