"""Identifiers are exactly what they say.

* Two recordings never map to one file name in an export package, whatever their keys (real S3).
* An email matches up to whitespace and ASCII case, nothing else, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from connectors import contact_forms, orders_db, sql_email
from connectors.call_recordings import FileNames
from devkit.sampledata import SCHEMAS
from tests.conformance import MemoryExportWriter
from tests.integration.test_call_recordings import connector_for
from tests.integration.test_contact_forms import message
from tests.integration.test_sql_support import context, insert_rows
from worker.core.connector import Subject
from worker.export import ExportStore

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

# Relative keys under one customer's prefix that the old flattening sent to the same name, or
# that look like another key's versioned or hashed name.
COLLIDING = [
    "2026/01/call.wav",
    "2026_01_call.wav",
    "2026/01_call.wav",
    "2026/01/appel é.wav",
    "2026/01/appel è.wav",
    "2026/01/appel_.wav",
    "_2026_01_call.wav",
    "call.wav",
    "call.v2.wav",
    "x" * 90 + "-a.wav",
    "x" * 90 + "-b.wav",
]


def subject(customer_id: str, *emails: str) -> Subject:
    return Subject(request_id=str(uuid.uuid4()), subject_ref="hmac-sha256:x", customer_id=customer_id, emails=emails)


@pytest.mark.s3
def test_colliding_recording_keys_get_distinct_files_in_the_package(s3_client: Any, s3_bucket: str) -> None:
    customer = "C-7007"
    bodies: dict[str, bytes] = {}
    for n, relative in enumerate(COLLIDING):
        key = f"recordings/{customer}/{relative}"
        bodies[key] = f"RIFF {n}".encode()
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bodies[key], Metadata={"customer-id": customer})
    # A second version of "call.wav": its ".v2" name must not fall on the key "call.v2.wav".
    latest = f"recordings/{customer}/call.wav"
    s3_client.put_object(Bucket=s3_bucket, Key=latest, Body=b"RIFF newer", Metadata={"customer-id": customer})

    store = ExportStore.from_settings(s3_client, {"bucket": s3_bucket, "prefix": "exports/"})
    request_id = str(uuid.uuid4())
    result = connector_for(s3_bucket).export(subject(customer), store.writer(request_id, "call_recordings"))
    assert result.outcome == "exported" and result.records == len(COLLIDING) + 1
    info = store.build_package(request_id, {"call_recordings": result.records or 0}, NOW)

    body = s3_client.get_object(Bucket=s3_bucket, Key=info.object_key)["Body"].read()
    archive = zipfile.ZipFile(io.BytesIO(body))
    rows = json.loads(archive.read("call_recordings/recordings.json"))
    files = [row["file"] for row in rows]
    assert len(set(files)) == len(rows) == len(COLLIDING) + 1
    audio = {name for name in archive.namelist() if name.startswith("call_recordings/recordings/")}
    assert audio == {f"call_recordings/{f}" for f in files}
    for row in rows:  # each file holds exactly its own recording version
        expected = s3_client.get_object(Bucket=s3_bucket, Key=row["key"], VersionId=row["version_id"])["Body"].read()
        assert archive.read(f"call_recordings/{row['file']}") == expected
    newest = next(r["file"] for r in rows if r["key"] == latest and r["is_latest"])
    assert archive.read(f"call_recordings/{newest}") == b"RIFF newer"
    assert "call_recordings/recordings/call.wav" in audio  # a plain key keeps its plain name


def test_file_names_stay_one_to_one_even_for_keys_that_mimic_tagged_names() -> None:
    names = FileNames()
    first = names.name("a/b.wav", "v1", 1)
    mimic = names.name(first.removeprefix("recordings/"), "v1", 1)  # a key spelled like the hashed name
    older = names.name("b.wav", "v1", 2)
    mimic_older = names.name("b.v2.wav", "v1", 1)
    chosen = [first, mimic, older, mimic_older]
    assert len(set(chosen)) == 4
    assert all(len(n.rsplit("/", 1)[1]) <= 120 for n in chosen)


# -- emails: whitespace and ASCII case folded, nothing else, on SQLite and PostgreSQL ------------------

KELVIN = "\u212aevin.other@x.fr"  # U+212A KELVIN SIGN, which str.lower() and PostgreSQL's lower() make a k
STORED = {1: "kevin.other@x.fr", 2: KELVIN, 3: " \u212aEVIN.other@X.fr ", 4: "ÉLODIE@X.FR", 5: "élodie@x.fr",
          6: "Élodie@x.fr\t"}


def contact_forms_with(db_url: str) -> sa.Engine:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    SCHEMAS["contact_forms"].create_all(engine)
    insert_rows(engine, SCHEMAS["contact_forms"],
                {"contact_messages": [message(n, email, f"message {n}") for n, email in STORED.items()]})
    return engine


@pytest.mark.parametrize(("asked", "own"), [
    (KELVIN, {2, 3}), ("\u212aEVIN.OTHER@x.fr", {2, 3}), ("Kevin.Other@x.fr", {1}),
    ("élodie@x.fr", {5}), ("ÉLODIE@x.fr", {4, 6}), ("Élodie@X.FR", {4, 6}),  # É stays É, the rest folds
])
def test_an_email_selects_only_its_own_rows_up_to_ascii_case(db_url: str, asked: str, own: set[int]) -> None:
    """An export for the Kelvin-sign address included kevin.other@x.fr's message, and its erasure
    deleted it: a letter outside ASCII now matches only itself, whatever its case."""
    engine = contact_forms_with(db_url)
    connector = contact_forms.create("contact_forms", {"url": db_url}, context())
    try:
        writer = MemoryExportWriter()
        exported = connector.export(subject("C-none", asked), writer)
        assert {r["message_id"] for r in json.loads(writer.files["contact_messages.json"])} == own
        assert exported.records == len(own)
        assert connector.erase(subject("C-none", asked)).outcome == "erased"
        assert connector.erase(subject("C-none", asked)).outcome == "not_found"
    finally:
        connector.close()
    with engine.connect() as conn:
        left = set(conn.execute(sa.text("SELECT message_id FROM contact_messages")).scalars())
    assert left == set(STORED) - own
    engine.dispose()


def test_verification_finds_the_subjects_rows_and_not_the_neighbours(db_url: str) -> None:
    engine = contact_forms_with(db_url)
    connector = contact_forms.create("contact_forms", {"url": db_url}, context())
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM contact_messages WHERE message_id IN (2, 3)"))
        left = {r.table: r.count for r in connector.verify(subject("C-none", KELVIN))}
        assert left.get("contact_messages", 0) == 0  # kevin.other@x.fr's message is not theirs
        left = {r.table: r.count for r in connector.verify(subject("C-none", "kevin.other@x.fr"))}
        assert left["contact_messages"] == 1
    finally:
        connector.close()
    engine.dispose()


def test_account_found_by_email_when_the_id_is_unknown_is_never_the_ascii_neighbour(db_url: str) -> None:
    """orders_db's email fallback (``match_by_email``) follows the same rule."""
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    metadata = SCHEMAS["orders_db"]
    metadata.create_all(engine)
    account = {"classification": "individual", "created_at": NOW}
    insert_rows(engine, metadata, {"customers": [{"customer_id": "C-8008", "email": "Kevin.Other@X.fr", **account},
                                                 {"customer_id": "C-8009", "email": "ÖZLEM@X.FR", **account}]})
    connector = orders_db.create("orders_db", {"url": db_url, "match_by_email": True}, context())
    try:
        for asked, expected in (("kevin.other@x.fr", ["C-8008"]), (KELVIN, None), ("ÖZLEM@x.fr", ["C-8009"]),
                                ("özlem@x.fr", None)):
            writer = MemoryExportWriter()
            result = connector.export(subject("C-unknown", asked), writer)
            found = [r["customer_id"] for r in json.loads(writer.files["customers.json"])] if expected else None
            assert (result.outcome, found) == ("exported" if expected else "not_found", expected), asked
    finally:
        connector.close()
    engine.dispose()


def test_the_email_index_serves_the_match(db_url: str) -> None:
    engine = contact_forms_with(db_url)
    table = SCHEMAS["contact_forms"].tables["contact_messages"]
    with engine.connect() as conn:
        query = sa.select(table.c.message_id).where(sql_email.condition(table.c.email, [KELVIN]))
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            plan = " ".join(str(row) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = " ".join(str(row) for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))
    assert "ix_contact_messages_email_norm" in plan
    engine.dispose()
