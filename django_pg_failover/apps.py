from django.apps import AppConfig


class PgFailoverConfig(AppConfig):
    name = "django_pg_failover"
    verbose_name = "PostgreSQL failover"
