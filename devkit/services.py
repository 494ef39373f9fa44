"""Where the test suite finds the real parts that ``scripts/stack up`` starts.

A test that needs a service that is not reachable is skipped on a developer's machine and fails
when ``CI=true``: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

KAFKA_BOOTSTRAP = os.environ.get("OUBLI_TEST_KAFKA", "127.0.0.1:9092")
PG_URL = os.environ.get("OUBLI_TEST_PG_URL", "postgresql+psycopg://oubli:oubli@127.0.0.1:5432/oubli_test")
S3_ENDPOINT = os.environ.get("OUBLI_TEST_S3_ENDPOINT", "http://127.0.0.1:5000")
S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "eu-west-1"}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}; start it with `scripts/stack up`"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_kafka() -> str:
    host, port = KAFKA_BOOTSTRAP.split(",")[0].rsplit(":", 1)
    require("Kafka", host, int(port))
    return KAFKA_BOOTSTRAP


def require_postgres() -> str:
    parts = urlsplit(PG_URL)
    require("PostgreSQL", parts.hostname or "127.0.0.1", parts.port or 5432)
    return PG_URL


def require_s3() -> str:
    parts = urlsplit(S3_ENDPOINT)
    require("S3 (moto)", parts.hostname or "127.0.0.1", parts.port or 80)
    return S3_ENDPOINT
