"""Which store errors are an outage and which are the data's fault.

The split decides what happens to a consumed command: an outage pauses intake and retries the same
record later, while a store error caused by the record itself (a NUL byte PostgreSQL refuses, a
value out of a column's range, a string the driver cannot encode) would fail the same way forever,
so that record is poison and is dead-lettered as ``store_rejected``.
"""

from __future__ import annotations

import sqlalchemy as sa

# SQLSTATE classes that mean the server or the connection, not the statement's data, is at fault:
# 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown, cancel,
# statement or lock timeout), 58 system error, and 40 transaction rollback (deadlock, serialization),
# which succeeds when tried again.
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# lock_not_available: lock_timeout expired behind another transaction; contention, not the data.
# read_only_sql_transaction: the server became a standby (a failover demoted it) while the pool still points at it.
_OUTAGE_SQLSTATES = frozenset({"55P03", "25006"})


def is_outage(exc: BaseException) -> bool:
    """True when trying the same statement again later may succeed: the store, not the data, failed."""
    if isinstance(exc, sa.exc.TimeoutError):  # the connection pool had no connection to give
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES or sqlstate in _OUTAGE_SQLSTATES
    if isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError, sa.exc.ProgrammingError)):
        return False
    # No SQLSTATE: a driver-level failure to reach the server (psycopg before a connection exists,
    # SQLite's "database is locked" or a disk I/O error) is an OperationalError.
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))
