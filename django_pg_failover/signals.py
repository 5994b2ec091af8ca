"""Signals sent while the backend connects, fails over and loses connections.

Every signal is sent with ``sender`` set to the ``DatabaseWrapper`` class and
``alias`` the database alias. Receivers run in the thread that connects or
queries (Django's pool opens its connections in its own worker threads): keep
them quick, and never raise (an exception in a receiver reaches the caller).
"""

from django.dispatch import Signal

#: A host could not be used in one of the connecting thread's own passes over
#: the host list: once per host that failed in each pass (not for a host
#: overtaken while another server answered, and never for the probes of the
#: process's watcher while connections wait for a server). Arguments:
#: ``alias``, ``host`` and ``port`` (the ``HOST`` entry's, never None),
#: ``reason`` (the text of that host's line in the connect error: the driver's
#: text, e.g. "Connection refused" or "timeout expired", the server's message
#: without its severity, e.g. 'password authentication failed for user "app"',
#: or libpq's words for a server of the wrong kind, e.g. "session is
#: read-only") and ``attempt`` (the pass, 1 for the first).
host_attempt_failed = Signal()

#: A connection was opened. Arguments: ``alias``, ``host``, ``port``, ``role``
#: (always given, from what the server reported: "primary", "standby" or
#: "read-only primary" for a primary fenced with
#: ``default_transaction_read_only``), ``attempts`` (the passes over the host
#: list this connect made, 1 when the first worked) and ``elapsed`` (seconds
#: spent connecting, waiting for a suitable server included).
connection_established = Signal()

#: An open connection was found lost, or on a server that turned read-only
#: under a ``read-write`` or ``primary`` session, and was closed: an error that
#: shows the session gone, a call given up after ``stall_timeout``, a
#: connection kept between requests whose server hung up (seen before anything
#: was sent on it), a health check that failed on a dead session, a pooled
#: connection that failed its check at checkout. A health check that fails on
#: a live session (an aborted transaction) is no loss and sends nothing. The
#: next use reconnects, except inside an atomic block and after a loss with
#: autocommit off (the transaction was lost: see the docs). Arguments:
#: ``alias``, ``host`` and ``port`` (the server the connection had reached),
#: ``error`` (the driver's exception: the one the failed query, commit or
#: health check raised; for a connection found dead, or at a pool's checkout
#: of the wrong role, before use: the driver's error that showed it, or, where
#: the driver raised none, the driver's ``OperationalError`` saying what was
#: found), ``in_atomic_block`` (True: the transaction was lost with it) and
#: ``during_commit`` (True: the loss met a COMMIT, which the server may have
#: carried out before the session went: the transaction's outcome is unknown).
connection_lost = Signal()
