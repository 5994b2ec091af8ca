"""Signals sent while the backend connects, fails over and loses connections.

Every signal is sent with ``sender`` set to the ``DatabaseWrapper`` class and
``alias`` the database alias. Receivers run in the thread that connects: keep
them quick, and never raise (an exception in a receiver reaches the caller).
"""

from django.dispatch import Signal

#: A host could not be used during a connection attempt. Arguments: ``alias``,
#: ``host`` and ``port`` (None when libpq's message does not say: a host name
#: that did not resolve, an unnamed socket), ``reason``
#: (libpq's text for that host, e.g. "Connection refused", "timeout expired",
#: "session is read-only") and ``attempt`` (1 for the first pass over the hosts).
host_attempt_failed = Signal()

#: A connection was opened. Arguments: ``alias``, ``host``, ``port``, ``role``
#: ("primary", "standby" or None when the server does not say), ``attempts``
#: (passes over the host list, 1 when the first worked) and ``elapsed``
#: (seconds spent connecting, retries and pauses included).
connection_established = Signal()

#: An open connection was found lost (server gone, link broken, a failed health
#: check) or on a server that turned read-only under a read-write session; the
#: connection was closed. The next use reconnects, except inside an atomic
#: block and after a loss with autocommit off (the transaction was lost: see
#: the docs). Arguments: ``alias``, ``host``, ``port``, ``error`` (the driver
#: exception) and ``in_atomic_block`` (True: the transaction was lost with it).
connection_lost = Signal()
