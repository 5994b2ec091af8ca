"""pytest plugin: placeholder."""
