"""The failover lab: real PostgreSQL primaries and standbys on loopback.

Nothing here imports Django, and nothing touches a server binary until a
cluster is created.
"""

from .binaries import PgInstall, find_install, find_installs
from .blackhole import Blackhole
from .cluster import APP_DATABASE, APP_USER, Cluster, FailoverReport, NodeStatus
from .errors import LabError, LabTimeout
from .node import Node, State

__all__ = [
    "APP_DATABASE",
    "APP_USER",
    "Blackhole",
    "Cluster",
    "FailoverReport",
    "LabError",
    "LabTimeout",
    "Node",
    "NodeStatus",
    "PgInstall",
    "State",
    "find_install",
    "find_installs",
]
