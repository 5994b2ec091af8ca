"""A Django database backend for PostgreSQL that survives a failover."""

__version__ = "0.1.0"
