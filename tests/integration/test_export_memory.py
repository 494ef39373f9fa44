"""A package of more than 200 MB of recordings is staged and built without holding it in memory.

The staging and packaging run in a fresh subprocess, which reports its peak resident set size
(``VmHWM``) after imports, after staging and after packaging. The package is then downloaded
through its presigned url, streamed to disk, and its sha256 checked.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit import services

pytestmark = pytest.mark.s3

RECORDINGS = 11
RECORDING_MB = 20  # 220 MiB in all
PEAK_LIMIT_MB = 120

CHILD = r"""
import io, json, os, resource, sys
from datetime import UTC, datetime
import boto3
from worker.export import ExportStore

endpoint, bucket, count, size_mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def rss():
    # VmHWM: this process's own peak. ru_maxrss would include the parent's RSS at fork time,
    # because Linux carries the old address space's high-water mark across exec.
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) // 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

class Audio(io.RawIOBase):
    # An endless-looking recording: size_mb of bytes, produced 1 MiB at a time.
    def __init__(self, seed):
        self.left, self.block = size_mb << 20, (bytes([seed]) + os.urandom(4095)) * 256
    def readable(self):
        return True
    def read(self, n=-1):
        n = min(self.left, len(self.block) if n is None or n < 0 else n)
        self.left -= n
        return self.block[:n]

client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="eu-west-1")
store = ExportStore.from_settings(client, {"bucket": bucket})
after_imports = rss()
writer = store.writer("big-request", "call_recordings")
for i in range(count):
    writer.write_stream(f"recordings/call-{i:02d}.wav", Audio(i), content_type="audio/wav")
store.writer("big-request", "orders_db").write_rows("orders", [{"order_id": f"O-{i}", "total": i} for i in range(5000)])
after_staging = rss()
info = store.build_package("big-request", {"call_recordings": count, "orders_db": 5000}, datetime.now(UTC))
print(json.dumps({"after_imports_mb": after_imports, "after_staging_mb": after_staging, "peak_mb": rss(),
                  "url": info.url, "sha256": info.sha256, "size_bytes": info.size_bytes}))
"""


def test_a_200mb_package_is_streamed_with_bounded_memory(s3_client: Any, s3_bucket: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", CHILD, services.S3_ENDPOINT, s3_bucket, str(RECORDINGS), str(RECORDING_MB)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"\nexport memory: {json.dumps({k: v for k, v in report.items() if k != 'url'})}")

    assert report["size_bytes"] > RECORDINGS * RECORDING_MB * 1024 * 1024 > 200 * 1024 * 1024
    assert report["peak_mb"] < PEAK_LIMIT_MB, report
    assert report["peak_mb"] - report["after_imports_mb"] < 60, report

    target = tmp_path / "package.zip"
    digest = hashlib.sha256()
    with httpx.stream("GET", report["url"], timeout=120) as response, target.open("wb") as out:
        assert response.status_code == 200
        for chunk in response.iter_bytes(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    assert digest.hexdigest() == report["sha256"]
    assert target.stat().st_size == report["size_bytes"]
    with zipfile.ZipFile(target) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        files = manifest["systems"]["call_recordings"]["files"]
        assert len(files) == RECORDINGS and all(f["size_bytes"] == RECORDING_MB << 20 for f in files)
        with archive.open(files[0]["name"]) as entry:
            check = hashlib.sha256()
            while chunk := entry.read(1 << 20):
                check.update(chunk)
        assert check.hexdigest() == files[0]["sha256"]
    for prefix in ("exports/",):  # free the in-memory S3 server
        listed = s3_client.list_object_versions(Bucket=s3_bucket, Prefix=prefix)
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in listed.get("Versions", [])]
        if objects:
            s3_client.delete_objects(Bucket=s3_bucket, Delete={"Objects": objects, "Quiet": True})
