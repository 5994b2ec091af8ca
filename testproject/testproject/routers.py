"""Reads from standbys, writes to the primary: the recipe from the docs."""

from django.db import connections


class PrimaryReplicaRouter:
    """Send reads to ``read_alias`` and everything else to ``write_alias``.

    ``read_alias`` lists the same hosts with ``target_session_attrs:
    "prefer-standby"``, so libpq falls back to the primary when no standby
    answers. Inside a transaction on the primary, reads stay there: they must
    see the transaction's own writes, and ``select_for_update()`` must lock rows
    on the primary. With ``read_your_writes`` on ``read_alias`` (and its
    middleware), reads outside transactions never miss what the same client
    wrote (docs/replicas.rst).
    """

    write_alias = "default"
    read_alias = "replica"

    def db_for_read(self, model, **hints):
        if connections[self.write_alias].in_atomic_block:
            return self.write_alias
        return self.read_alias

    def db_for_write(self, model, **hints):
        return self.write_alias

    def allow_relation(self, obj1, obj2, **hints):
        return True

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == self.write_alias
