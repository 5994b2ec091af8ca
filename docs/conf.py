"""Sphinx configuration for the django-pg-failover documentation.

No extensions and no network: the reference is written by hand, so building
the docs imports neither Django nor a PostgreSQL driver.
"""

import re
from pathlib import Path

_INIT = Path(__file__).resolve().parent.parent / "django_pg_failover" / "__init__.py"

project = "django-pg-failover"
author = "the django-pg-failover authors"
project_copyright = "the django-pg-failover authors"
release = re.search(r'^__version__ = "([^"]+)"', _INIT.read_text(), re.MULTILINE).group(1)
version = release

extensions: list[str] = []
exclude_patterns = ["_build"]
highlight_language = "python"

html_theme = "alabaster"
html_title = f"{project} {release}"
html_theme_options = {
    "description": "A PostgreSQL backend for Django that follows the primary through a failover.",
    "fixed_sidebar": True,
}
