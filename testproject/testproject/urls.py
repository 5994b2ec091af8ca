from django.urls import path

from django_pg_failover.views import health
from shop import views

urlpatterns = [
    path("orders/", views.orders, name="orders"),
    path("orders/<str:key>/", views.order, name="order"),
    path("transfer/", views.transfer, name="transfer"),
    path("health/", views.health, name="health"),
    # Every host's role and lag; 503 when no host suits the alias (docs/health.rst).
    path("health/db/", health, name="db-health"),
]
