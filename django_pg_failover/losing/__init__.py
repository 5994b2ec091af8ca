"""Losing connections: the loss of a session, calls on a frozen server, idle connections, fork()."""
