from django.urls import path

from shop import views

urlpatterns = [
    path("orders/", views.orders, name="orders"),
    path("orders/<str:key>/", views.order, name="order"),
    path("transfer/", views.transfer, name="transfer"),
    path("health/", views.health, name="health"),
]
