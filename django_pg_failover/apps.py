from django.apps import AppConfig
from django.core import checks


class PgFailoverConfig(AppConfig):
    name = "django_pg_failover"
    verbose_name = "PostgreSQL failover"

    def ready(self) -> None:
        from django.core.signals import request_started

        from django_pg_failover.causal.scope import new_request_scope
        from django_pg_failover.checks import check_failover_databases

        checks.register(check_failover_databases)
        # Each request starts a new read_your_writes scope (django_pg_failover.causal).
        request_started.connect(new_request_scope, dispatch_uid="django_pg_failover.causal")
