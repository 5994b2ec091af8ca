"""Hides psycopg_pool with psycopg 3 (see psycopg.py beside this file)."""

raise ImportError("psycopg_pool is hidden: this test run uses psycopg2")
