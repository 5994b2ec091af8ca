"""The failover lab: real PostgreSQL primaries and standbys on loopback.

Two modes: :class:`Cluster` promotes and rewinds its servers itself;
:class:`PatroniCluster` runs them under Patroni and etcd. Nothing here
imports Django, and nothing touches a server binary until a cluster is created.
"""

from .binaries import PgInstall, find_install, find_installs
from .blackhole import Blackhole
from .cluster import APP_DATABASE, APP_USER, Cluster, FailoverReport, NodeStatus
from .common import free_port
from .errors import LabError, LabTimeout
from .node import Node, State
from .patroni import LeaderChange, LeaderWatch, PatroniCluster, load_lab
from .patroni_member import Member
from .relay import Relay

__all__ = [
    "APP_DATABASE",
    "APP_USER",
    "Blackhole",
    "Cluster",
    "FailoverReport",
    "LabError",
    "LabTimeout",
    "LeaderChange",
    "LeaderWatch",
    "Member",
    "Node",
    "NodeStatus",
    "PatroniCluster",
    "PgInstall",
    "Relay",
    "State",
    "find_install",
    "find_installs",
    "free_port",
    "load_lab",
]
