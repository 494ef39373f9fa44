"""Maps S3 client failures onto the error tree, without keys or bucket contents in the message.

Object keys can embed a customer id, so a message names only the operation, the S3 error code and
the HTTP status.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

from worker.core.errors import ConnectorError, PermanentError, RetryableError

# Codes S3 documents as "try again"; everything else in 4xx means the request cannot succeed as sent.
RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "OperationAborted",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
    }
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_retryable_code(code: str, status: int = 0) -> bool:
    return code in RETRYABLE_CODES or status >= 500 or status == 429


def s3_error(exc: Exception, what: str) -> ConnectorError:
    """The error to raise for ``exc`` raised by an S3 call doing ``what`` (a PII-free phrase)."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        message = f"{what}: S3 {code} (HTTP {status})"
        if is_retryable_code(code, status):
            return RetryableError(message, code="s3_unavailable")
        return PermanentError(message, code="s3_rejected")
    if isinstance(exc, NoCredentialsError | ParamValidationError):
        return PermanentError(f"{what}: S3 client misconfigured ({type(exc).__name__})", code="s3_config")
    if isinstance(exc, BotoCoreError | OSError):
        return RetryableError(f"{what}: S3 unreachable ({type(exc).__name__})", code="s3_unavailable")
    return RetryableError(f"{what}: unexpected {type(exc).__name__}")
