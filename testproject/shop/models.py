from django.db import models


class Order(models.Model):
    """One order per unique key: a write the failover tests can count."""

    key = models.CharField(max_length=64, unique=True)
    amount = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.key


class Account(models.Model):
    """Balances moved inside transactions: a transfer commits whole or not at all."""

    name = models.CharField(max_length=32, unique=True)
    balance = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}: {self.balance}"
