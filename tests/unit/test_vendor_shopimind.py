"""Shopimind connector: single and bulk deletes by customer id, export via getCustomer."""

from __future__ import annotations

import json

import pytest

from devkit.standins.harness import FakeClock, MemoryIdentity, build, fresh_limiters, make_subject  # noqa: F401
from devkit.standins.shopimind import ShopimindStandIn
from tests.conformance import MemoryExportWriter
from worker.core.connector import Result
from worker.core.errors import PermanentError, RetryableError

pytestmark = pytest.mark.timeout(30)
spm = ShopimindStandIn.fixture()


def test_one_id_is_deleted_with_delete(spm: ShopimindStandIn) -> None:
    spm.seed("cust_1")
    connector = build("shopimind", spm, FakeClock())
    result = connector.erase(make_subject(identifiers={"shopimind_customer_id": ["cust_1"]}))
    assert isinstance(result, Result) and result.outcome == "requested"
    assert spm.count("delete") == 1 and not spm.holds("cust_1")
    connector.close()


def test_many_ids_go_through_bulk_delete_in_chunks_of_twenty(spm: ShopimindStandIn) -> None:
    identity = MemoryIdentity()
    subject = make_subject(identifiers={"shopimind_customer_id": ["cust_0"]})
    identity.add(subject.customer_id, "shopimind_customer_id", *[f"cust_{i}" for i in range(1, 25)])
    for i in range(25):
        spm.seed(f"cust_{i}")
    connector = build("shopimind", spm, FakeClock(), identity)
    result = connector.erase(subject)
    assert isinstance(result, Result) and result.outcome == "requested" and "25" in (result.detail or "")
    assert spm.count("bulk-delete") == 2 and not spm.customers
    connector.close()


def test_rejected_items_are_a_permanent_error(spm: ShopimindStandIn) -> None:
    connector = build("shopimind", spm, FakeClock())
    spm.fail_next(1, status=200, body={"statusCode": 200, "sent_count": 0, "rejected_count": 1,
                                       "rejected_items": [{"index": 0, "item": {"customer_id": "cust_9"}}]})
    with pytest.raises(PermanentError) as caught:
        connector.erase(make_subject(identifiers={"shopimind_customer_id": ["cust_9"]}))
    assert "rejected 1" in str(caught.value) and "cust_9" not in str(caught.value)
    connector.close()


def test_export_writes_the_customer_records(spm: ShopimindStandIn) -> None:
    spm.seed("cust_1", email="marie@example.fr")
    spm.seed("cust_2", email="marie@example.fr")
    connector = build("shopimind", spm, FakeClock())
    writer = MemoryExportWriter()
    subject = make_subject(identifiers={"shopimind_customer_id": ["cust_1", "cust_2", "cust_gone"]})
    result = connector.export(subject, writer)
    assert isinstance(result, Result) and result.outcome == "exported" and result.records == 2
    rows = json.loads(writer.files["shopimind_customers.json"])
    assert [row["customer_id"] for row in rows] == ["cust_1", "cust_2"]
    assert spm.holds("cust_1")
    connector.close()


def test_export_of_unknown_ids_is_not_found(spm: ShopimindStandIn) -> None:
    connector = build("shopimind", spm, FakeClock())
    result = connector.export(make_subject(identifiers={"shopimind_customer_id": ["x"]}), MemoryExportWriter())
    assert isinstance(result, Result) and result.outcome == "not_found"
    connector.close()


@pytest.mark.parametrize("bad", ["..", "a/b", "x" * 200, "id with space"])
def test_ids_that_could_escape_the_path_are_refused_before_any_call(spm: ShopimindStandIn, bad: str) -> None:
    connector = build("shopimind", spm, FakeClock())
    with pytest.raises(PermanentError) as caught:
        connector.erase(make_subject(identifiers={"shopimind_customer_id": [bad]}))
    assert bad not in str(caught.value) and spm.count() == 0
    connector.close()


@pytest.mark.parametrize("customer_id", ["88", "dupont", "Jean_Martin"])
@pytest.mark.parametrize(("status", "kind"), [(400, PermanentError), (503, RetryableError)])
def test_an_error_body_echoing_the_customer_id_never_reaches_the_message(
        spm: ShopimindStandIn, customer_id: str, status: int, kind: type[Exception]) -> None:
    connector = build("shopimind", spm, FakeClock())
    for echo in (customer_id, customer_id.upper(), f"unknown_{customer_id}"):
        spm.fail_next(1, status=status, body={"statusCode": status, "error": echo, "message": echo})
        with pytest.raises(kind) as caught:
            connector.erase(make_subject(identifiers={"shopimind_customer_id": [customer_id]}))
        assert f"HTTP {status}" in str(caught.value)
        assert customer_id.lower() not in str(caught.value).lower()
    connector.close()


@pytest.mark.parametrize("body", [b"<html><body>Welcome</body></html>", b"",
                                  {"statusCode": 200, "sent_count": 1, "rejected_count": "lots"},
                                  {"statusCode": 200}, [1, 2]])
def test_a_2xx_without_the_documented_counts_is_no_acknowledgement(spm: ShopimindStandIn, body: object) -> None:
    connector = build("shopimind", spm, FakeClock())
    for ids in (["cust_1"], ["cust_1", "cust_2"]):  # DELETE, then bulk-delete
        spm.fail_next(1, status=200, body=body)
        with pytest.raises(PermanentError) as caught:
            connector.erase(make_subject(identifiers={"shopimind_customer_id": ids}))
        assert caught.value.code == "vendor_protocol" and "cust_" not in str(caught.value)
    connector.close()


def test_an_export_answered_without_data_is_no_empty_record(spm: ShopimindStandIn) -> None:
    spm.seed("cust_1")
    connector = build("shopimind", spm, FakeClock())
    spm.fail_next(1, status=200, body=b"<html>maintenance</html>")
    with pytest.raises(PermanentError) as caught:
        connector.export(make_subject(identifiers={"shopimind_customer_id": ["cust_1"]}), MemoryExportWriter())
    assert caught.value.code == "vendor_protocol"
    connector.close()
