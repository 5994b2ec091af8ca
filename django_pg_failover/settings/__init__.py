"""One ``DATABASES`` entry validated: hosts, options, policy, database URLs, redaction."""
