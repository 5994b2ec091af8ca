"""Settings of the example project: a small shop on a PostgreSQL host list.

The database comes from ``DATABASE_URL``, libpq's multi-host URL, the
twelve-factor way::

    DATABASE_URL='postgresql://app:secret@db1:5432,db2:5432/app?retry_timeout=15'

When it is not set, from a lab started with
``python -m django_pg_failover.lab start``.
"""

import os

from django.core.exceptions import ImproperlyConfigured

import django_pg_failover


def lab_url() -> str:
    """The URL of the lab in the default folder, for when DATABASE_URL is not set."""
    from django_pg_failover.lab import LabError, load_lab
    from django_pg_failover.lab.common import default_lab_dir

    try:  # either kind of lab: python -m django_pg_failover.lab start [--patroni]
        return load_lab(default_lab_dir()).database_url()
    except LabError as exc:
        raise ImproperlyConfigured(
            f"{exc}. Set DATABASE_URL (e.g. 'postgresql://app:secret@db1,db2:5433/app'), "
            "or start a lab with: python -m django_pg_failover.lab start"
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
DATABASES = {
    "default": django_pg_failover.config(
        # The lab is looked up only when the environment names no database.
        default=None if os.environ.get("DATABASE_URL", "").strip() else lab_url(),
        # Defaults for this demo; the URL's own parameters win. DJANGO_DB_POOL=1:
        # Django's connection pool (psycopg 3, Django 5.1+).
        options={
            "connect_timeout": 2,
            "failover": {"retry_timeout": 15.0},
            **({"pool": True} if os.environ.get("DJANGO_DB_POOL") == "1" else {}),
        },
    )
}
# DJANGO_DB_REPLICA=1: the recipe of docs/replicas.rst. Reads go to a replica
# alias on the same servers (standbys first) and never miss what the same
# client wrote: read_your_writes, and its middleware for the next requests.
if os.environ.get("DJANGO_DB_REPLICA") == "1":
    _options = DATABASES["default"]["OPTIONS"]
    DATABASES["replica"] = {
        **DATABASES["default"],
        "OPTIONS": {
            **_options,
            "target_session_attrs": "prefer-standby",
            "load_balance_hosts": "random",
            "failover": {**_options.get("failover", {}), "read_your_writes": "default"},
        },
        "TEST": {"MIRROR": "default"},
    }
    DATABASE_ROUTERS = ["testproject.routers.PrimaryReplicaRouter"]
    MIDDLEWARE = ["django_pg_failover.middleware.ReadYourWritesMiddleware", *MIDDLEWARE]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_pg_failover": {"handlers": ["console"], "level": "INFO"}},
}
