"""A Django database backend for PostgreSQL that survives a failover."""

# Light on purpose: Django imports this package for ENGINE, and settings modules
# import it for config(). Nothing here imports django.db or a driver.
from .dburl import config, parse

__version__ = "0.1.0"

__all__ = ["config", "parse"]
