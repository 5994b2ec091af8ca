"""Django settings for the test suite; tests/conftest.py points the aliases at the lab."""

SECRET_KEY = "django-pg-failover-tests"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_pg_failover",
    "shop",
]
DATABASES = {
    "default": {
        "ENGINE": "django_pg_failover",
        "NAME": "app",
        # Replaced by the lab's hosts before any test touches the database.
        "HOST": ["127.0.0.1:9"],
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "testproject.urls"
