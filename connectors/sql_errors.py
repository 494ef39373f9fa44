"""Maps database failures onto the error tree.

The driver's message is never copied: PostgreSQL puts row values in it (a unique violation quotes
the key, for example an email). A message names the system, the step, the SQLSTATE or the error
class, and nothing else.
"""

from __future__ import annotations

import sqlalchemy.exc as sa_exc

from worker.core.errors import ConnectorError, PermanentError, RetryableError

# SQLSTATE classes worth retrying: connection exception, transaction rollback (serialization,
# deadlock), insufficient resources, operator intervention (shutdown, cannot connect now), system error.
_RETRYABLE_CLASSES = {"08", "40", "53", "57", "58"}
# lock not available, object in use, a lost insert race, and read_only_sql_transaction: a primary demoted in a
# failover (or a standby a pool still points at) refuses every write until the connections move on.
_RETRYABLE_STATES = {"55P03", "55006", "23505", "25006"}
# Connection failures that come before the server assigns an SQLSTATE (libpq, sqlite3).
_PERMANENT_HINTS = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
    "no such table",
    "no such column",
    "readonly database",
    "unable to open database",
    "ssl is required",
    "certificate",
)
_RETRYABLE_HINTS = (
    "connection refused",
    "timeout",
    "timed out",
    "database is locked",
    "server closed",
    "could not connect",
    "connection reset",
    "terminating connection",
    "disk i/o error",
)


def db_error(system: str, what: str, exc: BaseException) -> ConnectorError:
    if isinstance(exc, ConnectorError):
        return exc
    prefix = f"{system}: {what}"
    if isinstance(exc, sa_exc.NoSuchTableError):
        return PermanentError(f"{prefix}: a configured table does not exist", code="sql_config")
    if isinstance(exc, sa_exc.TimeoutError):
        return RetryableError(f"{prefix}: no free database connection", code="sql_unavailable")
    if isinstance(exc, sa_exc.ArgumentError | sa_exc.NoSuchModuleError):
        return PermanentError(f"{prefix}: database URL or driver unusable", code="sql_config")
    if isinstance(exc, sa_exc.DBAPIError):
        return _dbapi_error(prefix, exc)
    if isinstance(exc, sa_exc.StatementError):  # failed before reaching the database: a value or rule is wrong
        return PermanentError(f"{prefix}: statement could not be built ({type(exc.orig).__name__})", code="sql_config")
    if isinstance(exc, OSError):
        return RetryableError(f"{prefix}: database unreachable ({type(exc).__name__})", code="sql_unavailable")
    return RetryableError(f"{prefix}: unexpected {type(exc).__name__}", code="sql_unexpected")


def _dbapi_error(prefix: str, exc: sa_exc.DBAPIError) -> ConnectorError:
    original = exc.orig
    state = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    kind = type(original).__name__ if original is not None else type(exc).__name__
    label = f"SQLSTATE {state}" if state else kind
    if exc.connection_invalidated:
        return RetryableError(f"{prefix}: database connection lost ({label})", code="sql_unavailable")
    if state:
        if state[:2] in _RETRYABLE_CLASSES or state in _RETRYABLE_STATES:
            return RetryableError(f"{prefix}: database busy or unavailable ({label})", code="sql_unavailable")
        return PermanentError(f"{prefix}: database refused the statement ({label})", code="sql_rejected")
    text = str(original if original is not None else exc).lower()
    if any(hint in text for hint in _PERMANENT_HINTS):
        return PermanentError(f"{prefix}: database refused access or schema ({label})", code="sql_config")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or any(h in text for h in _RETRYABLE_HINTS):
        return RetryableError(f"{prefix}: database unavailable ({label})", code="sql_unavailable")
    return PermanentError(f"{prefix}: database error ({label})", code="sql_rejected")
