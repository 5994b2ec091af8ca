"""The shop's own tests: run by ``manage.py test`` and by pytest-django alike."""

import json

from django.db import connection
from django.test import TestCase

from .models import Account, Order


class ShopTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        Account.objects.create(name="alice", balance=100)
        Account.objects.create(name="bob", balance=0)

    def test_test_database_lives_on_the_primary(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_database(), pg_is_in_recovery()")
            name, in_recovery = cursor.fetchone()
        self.assertTrue(name.startswith("test_"))
        self.assertFalse(in_recovery)

    def test_create_and_list_orders(self):
        response = self.client.post(
            "/orders/", json.dumps({"key": "k1", "amount": 5}), content_type="application/json"
        )
        self.assertEqual(response.status_code, 201)
        listing = self.client.get("/orders/").json()
        self.assertEqual(listing["count"], 1)
        self.assertEqual(listing["latest"], ["k1"])
        self.assertEqual(Order.objects.get(key="k1").amount, 5)

    def test_transfer_moves_money_atomically(self):
        ok = self.client.post(
            "/transfer/",
            json.dumps({"from": "alice", "to": "bob", "amount": 30}),
            content_type="application/json",
        )
        self.assertEqual(ok.status_code, 200)
        refused = self.client.post(
            "/transfer/",
            json.dumps({"from": "bob", "to": "alice", "amount": 31}),
            content_type="application/json",
        )
        self.assertEqual(refused.status_code, 409)
        balances = dict(Account.objects.values_list("name", "balance"))
        self.assertEqual(balances, {"alice": 70, "bob": 30})

    def test_health_reports_the_primary(self):
        self.assertEqual(self.client.get("/health/").json()["role"], "primary")
