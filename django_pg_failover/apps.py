from django.apps import AppConfig
from django.core import checks


class PgFailoverConfig(AppConfig):
    name = "django_pg_failover"
    verbose_name = "PostgreSQL failover"

    def ready(self) -> None:
        from django_pg_failover.checks import check_failover_databases

        checks.register(check_failover_databases)
