"""Recovery in seconds: the chaos scenario of ``tests/e2e/test_chaos.py``, sized at will.

``oubli worker`` processes in two slots are SIGKILLed at random instants (one every 0.2-1.0 s,
uniform) while erasures and exports run across all ten systems (sample SQL databases on
PostgreSQL, call recordings in S3, the five vendor stand-ins). Each is restarted at once, mostly
under the same worker_id (it reclaims its leases at start), sometimes under another (the dead one's
5 s leases must expire). Printed: how many kills, the time from a kill to the next claim of each task
the killed worker held, and from a kill to the completion of each request it held (median and max).
Every request must complete and every effect be applied once (``devkit/chaos.py``), or it fails.

Usage: .venv/bin/python bench/chaos.py [--kills 200] [--requests 60] [--seed 7]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import uuid
from pathlib import Path

import boto3
from _common import pg_schema, require_stack

from devkit import services
from devkit.chaos import Chaos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    require_stack()
    s3 = boto3.client("s3", endpoint_url=services.require_s3(), **services.S3_CREDENTIALS)
    bucket = f"chaos-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as workdir:
        store = stack.enter_context(pg_schema("chaos_store"))

        def new_schema() -> str:
            return stack.enter_context(pg_schema("chaos_sys"))

        chaos = Chaos(store_url=store, new_schema=new_schema, kafka=services.KAFKA_BOOTSTRAP, s3=s3, bucket=bucket,
                      workdir=Path(workdir), seed=args.seed)
        try:
            report = chaos.run(kills=args.kills, requests=args.requests)
            print(report.summary())
            chaos.verify(report)
            print("verified: every request completed once, every effect applied once")
        finally:
            chaos.close()


if __name__ == "__main__":
    main()
