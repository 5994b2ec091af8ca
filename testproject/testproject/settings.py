"""Settings of the example project: a small shop on a PostgreSQL host list.

The database comes from the environment (``PG_FAILOVER_HOSTS`` and friends)
or, when that is not set, from a lab started with
``python -m django_pg_failover.lab start``.
"""

import os

from django.core.exceptions import ImproperlyConfigured


def database_from_environment() -> dict:
    hosts = os.environ.get("PG_FAILOVER_HOSTS")
    if hosts:
        return {
            "ENGINE": "django_pg_failover",
            "HOST": hosts,
            "NAME": os.environ.get("PG_FAILOVER_NAME", "app"),
            "USER": os.environ.get("PG_FAILOVER_USER", "app"),
            "PASSWORD": os.environ.get("PG_FAILOVER_PASSWORD", ""),
            "OPTIONS": {"connect_timeout": 2, "failover": {"retry_timeout": 15.0}},
        }
    from django_pg_failover.lab import LabError, load_lab
    from django_pg_failover.lab.common import default_lab_dir

    try:  # either kind of lab: python -m django_pg_failover.lab start [--patroni]
        return load_lab(default_lab_dir()).django_database(
            OPTIONS={"connect_timeout": 2, "failover": {"retry_timeout": 15.0}}
        )
    except LabError as exc:
        raise ImproperlyConfigured(
            f"{exc}. Set PG_FAILOVER_HOSTS (e.g. 'db1:5432,db2:5432'), or start a lab "
            "with: python -m django_pg_failover.lab start"
        ) from None


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "testproject-is-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_pg_failover",
    "shop",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "testproject.urls"
DATABASES = {"default": database_from_environment()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_pg_failover": {"handlers": ["console"], "level": "INFO"}},
}
