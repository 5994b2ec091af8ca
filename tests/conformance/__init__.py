"""Django's own test suite as a conformance run: ``python -m tests.conformance``."""
