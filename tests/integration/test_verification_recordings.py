"""Call recordings' verification and sightings on a real (moto) versioned bucket."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_call_recordings import connector_for, seed_customer, subject

pytestmark = pytest.mark.s3


def test_verification_counts_what_an_erasure_left_and_the_scan_sees_every_customer(s3_client: Any,
                                                                                   s3_bucket: str) -> None:
    keys = seed_customer(s3_client, s3_bucket, "C-1")
    seed_customer(s3_client, s3_bucket, "C-2")
    connector = connector_for(s3_bucket)
    assert {r.table: r.count for r in connector.verify(subject("C-1"))} == {"versions": 3, "delete_markers": 1}
    assert connector.erase(subject("C-1")).outcome == "erased"
    assert all(r.count == 0 for r in connector.verify(subject("C-1")))
    assert {v for s in connector.sightings() for _, v in s.identifiers} == {"C-2"}
    s3_client.put_object(Bucket=s3_bucket, Key=keys[0], Body=b"RIFF restored from a backup")
    assert {r.table: r.count for r in connector.verify(subject("C-1"))} == {"versions": 1, "delete_markers": 0}
    assert sorted(v for s in connector.sightings() for _, v in s.identifiers) == ["C-1", "C-2"]
    connector.close()
