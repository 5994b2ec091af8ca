"""Hides psycopg 3 from a test run that uses psycopg2 (``pytest --driver=psycopg2``).

Django uses psycopg 3 whenever ``import psycopg`` works; this folder, first on
the path of the test process and of every process it starts, makes the import
fail as if psycopg 3 were not installed.
"""

raise ImportError("psycopg 3 is hidden: this test run uses psycopg2")
