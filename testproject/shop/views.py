import json

from django.db import connection, transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .models import Account, Order


def _server() -> dict:
    if connection.connection is None:  # a read routed to the replica alias only
        return {}
    info = connection.connection.info
    return {"host": info.host, "port": int(info.port)}


@csrf_exempt
@require_http_methods(["GET", "POST"])
def orders(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        payload = json.loads(request.body or b"{}")
        order = Order.objects.create(key=payload["key"], amount=payload.get("amount", 0))
        return JsonResponse({"id": order.pk, "key": order.key, **_server()}, status=201)
    count = Order.objects.count()
    latest = list(Order.objects.order_by("-id").values_list("key", flat=True)[:5])
    answer = {"count": count, "latest": latest, **_server()}
    if request.GET.get("server"):
        # Behind a proxy the connection's port is the proxy's: the server's own.
        with connection.cursor() as cursor:
            cursor.execute("SELECT inet_server_port()")
            answer["server_port"] = cursor.fetchone()[0]
    return JsonResponse(answer)


def order(request: HttpRequest, key: str) -> HttpResponse:
    found = Order.objects.filter(key=key).values("key", "amount").first()
    if found is None:
        return JsonResponse({"error": "not found"}, status=404)
    return JsonResponse({**found, **_server()})


@csrf_exempt
@require_http_methods(["POST"])
def transfer(request: HttpRequest) -> HttpResponse:
    payload = json.loads(request.body)
    with transaction.atomic():
        source = Account.objects.select_for_update().get(name=payload["from"])
        if source.balance < payload["amount"]:
            return JsonResponse({"error": "insufficient funds"}, status=409)
        Account.objects.filter(pk=source.pk).update(balance=F("balance") - payload["amount"])
        Account.objects.filter(name=payload["to"]).update(balance=F("balance") + payload["amount"])
    return JsonResponse({"ok": True, **_server()})


def health(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        (in_recovery,) = cursor.fetchone()
    return JsonResponse({"role": "standby" if in_recovery else "primary", **_server()})
