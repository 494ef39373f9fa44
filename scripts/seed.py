#!/usr/bin/env python3
"""Seeds the sample internal systems (and call recordings) with generated customers.

Examples:
    .venv/bin/python scripts/seed.py --sqlite-dir .cache/demo --customers 1000
    .venv/bin/python scripts/seed.py --orders-url postgresql+psycopg://oubli:oubli@127.0.0.1:5432/orders \\
        --loyalty-url ... --newsletter-url ... --contact-forms-url ... \\
        --s3-endpoint http://127.0.0.1:5000 --recordings-bucket callcenter-recordings --create-bucket

Deterministic from ``--seed`` and ``--as-of``: the same pair gives the same rows. Customer ids are
C-100000 upwards; C-100234 (Marie Dupont, the contract's example) is in every system.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from devkit.sampledata import DEFAULT_KEY_TEMPLATE, SCHEMAS, seed_systems  # noqa: E402

URL_OPTIONS = {
    "orders_db": "orders_url",
    "loyalty": "loyalty_url",
    "newsletter": "newsletter_url",
    "contact_forms": "contact_forms_url",
}


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=None,
        help="reference date (default: today, UTC); dates are generated before it",
    )
    parser.add_argument("--sqlite-dir", type=Path, help="one SQLite file per system in this folder")
    for system, option in URL_OPTIONS.items():
        parser.add_argument(f"--{option.replace('_', '-')}", dest=option, help=f"SQLAlchemy URL of {system}")
    parser.add_argument("--reset", action="store_true", help="drop the sample tables first")
    parser.add_argument("--batch-rows", type=int, default=20_000)
    parser.add_argument("--s3-endpoint", help="S3 endpoint for the recordings (omit for AWS)")
    parser.add_argument("--recordings-bucket", help="bucket for call recordings (omit to skip them)")
    parser.add_argument("--create-bucket", action="store_true", help="create the bucket, versioned, if missing")
    parser.add_argument("--key-template", default=DEFAULT_KEY_TEMPLATE)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def urls_from(args: argparse.Namespace) -> dict[str, str]:
    urls = {system: getattr(args, option) for system, option in URL_OPTIONS.items() if getattr(args, option)}
    if args.sqlite_dir:
        args.sqlite_dir.mkdir(parents=True, exist_ok=True)
        for system in URL_OPTIONS:
            urls.setdefault(system, f"sqlite:///{args.sqlite_dir.resolve() / f'{system}.db'}")
    return urls


def s3_client(args: argparse.Namespace) -> Any:
    local = bool(args.s3_endpoint) and "AWS_ACCESS_KEY_ID" not in os.environ
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"} if local else {}
    client = boto3.client(
        "s3", endpoint_url=args.s3_endpoint, region_name=os.environ.get("AWS_REGION", "eu-west-1"), **credentials
    )
    if args.create_bucket:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if args.recordings_bucket not in existing:
            client.create_bucket(
                Bucket=args.recordings_bucket, CreateBucketConfiguration={"LocationConstraint": client.meta.region_name}
            )
        client.put_bucket_versioning(Bucket=args.recordings_bucket, VersioningConfiguration={"Status": "Enabled"})
    return client


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    urls = urls_from(args)
    if not urls and not args.recordings_bucket:
        print("nothing to seed: give --sqlite-dir, a --*-url or --recordings-bucket", file=sys.stderr)
        return 2
    if args.reset:
        for system, url in urls.items():
            engine = sa.create_engine(url, hide_parameters=True)
            SCHEMAS[system].drop_all(engine)
            engine.dispose()
    as_of = datetime.combine(args.as_of or datetime.now(UTC).date(), time(0), tzinfo=UTC)
    s3 = s3_client(args) if args.recordings_bucket else None
    report = seed_systems(
        urls,
        customers=args.customers,
        seed=args.seed,
        as_of=as_of,
        batch_rows=args.batch_rows,
        s3=s3,
        bucket=args.recordings_bucket,
        key_template=args.key_template,
    )
    summary = {
        "customers": report.customers,
        "seed": args.seed,
        "as_of": as_of.date().isoformat(),
        "seconds": round(report.seconds, 2),
        "total_rows": report.total_rows,
        "recordings": report.recordings,
        "rows": report.rows,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"seeded {report.customers} customers (seed {args.seed}, as of {summary['as_of']}): "
            f"{report.total_rows} rows, {report.recordings} recordings in {report.seconds:.1f} s"
        )
        for system, tables in report.rows.items():
            print(f"  {system}: " + ", ".join(f"{t}={n}" for t, n in tables.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
