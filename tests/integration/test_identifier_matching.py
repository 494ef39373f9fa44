"""Identifiers are exactly what they say.

* Two recordings never map to one file name in an export package, whatever their keys (real S3).
* An email with non-ASCII capitals finds the same rows on SQLite as on PostgreSQL.
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

from connectors import contact_forms, orders_db
from connectors.call_recordings import FileNames
from connectors.sql_email import EmailMatch, spellings
from devkit.sampledata import SCHEMAS
from tests.conformance import MemoryExportWriter
from tests.integration.test_call_recordings import connector_for
from tests.integration.test_contact_forms import message
from tests.integration.test_sql_support import context, insert_rows
from worker.core.connector import Subject
from worker.core.errors import NeedsPersonError
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


# -- emails with non-ASCII capitals: SQLite and PostgreSQL agree ------------------------------------

NON_ASCII = ["ÉLODIE.CHÂTEAU@EXAMPLE.FR", " Élodie.Château@Example.fr", "élodie.château@example.fr\t"]


def test_contact_forms_match_non_ascii_capitals(db_url: str) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    SCHEMAS["contact_forms"].create_all(engine)
    rows = [message(n + 1, email, f"message {n}") for n, email in enumerate(NON_ASCII)]
    rows.append(message(10, "elodie.chateau@example.fr", "a different person: no accents"))
    insert_rows(engine, SCHEMAS["contact_forms"], {"contact_messages": rows})
    connector = contact_forms.create("contact_forms", {"url": db_url}, context())
    try:
        for asked in ("élodie.château@example.fr", "ÉLODIE.CHÂTEAU@EXAMPLE.FR"):
            writer = MemoryExportWriter()
            exported = connector.export(subject("C-none", asked), writer)
            assert exported.outcome == "exported" and exported.records == len(NON_ASCII)
            assert {r["message_id"] for r in json.loads(writer.files["contact_messages.json"])} == {1, 2, 3}
        assert connector.erase(subject("C-none", "Élodie.CHÂTEAU@example.FR")).outcome == "erased"
    finally:
        connector.close()
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT email FROM contact_messages")).scalars().all()
    assert left == ["elodie.chateau@example.fr"]
    engine.dispose()


def test_account_found_by_non_ascii_email_when_the_id_is_unknown(db_url: str) -> None:
    """orders_db's email fallback (``match_by_email``) folds case the same way."""
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    metadata = SCHEMAS["orders_db"]
    metadata.create_all(engine)
    account = {"email": "ÖZLEM.ÇELIK@EXAMPLE.COM", "classification": "individual", "created_at": NOW}
    insert_rows(engine, metadata, {"customers": [{"customer_id": "C-8008", **account}]})
    connector = orders_db.create("orders_db", {"url": db_url, "match_by_email": True}, context())
    try:
        writer = MemoryExportWriter()
        result = connector.export(subject("C-unknown", "özlem.çelik@example.com"), writer)
        assert result.outcome == "exported"
        assert [r["customer_id"] for r in json.loads(writer.files["customers.json"])] == ["C-8008"]
    finally:
        connector.close()
    engine.dispose()


@pytest.mark.postgres
def test_a_column_that_folds_only_ascii_refuses_non_ascii_emails(pg_url: str) -> None:
    """Under the "C" collation PostgreSQL's lower() leaves É alone: say so, never answer not_found."""
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    SCHEMAS["contact_forms"].create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text('ALTER TABLE contact_messages ALTER COLUMN email TYPE varchar(254) COLLATE "C"'))
    insert_rows(engine, SCHEMAS["contact_forms"], {"contact_messages": [message(1, NON_ASCII[0], "bonjour")]})
    connector = contact_forms.create("contact_forms", {"url": pg_url}, context())
    try:
        with pytest.raises(NeedsPersonError) as caught:
            connector.erase(subject("C-none", "élodie.château@example.fr"))
        assert caught.value.code == "email_case_unsupported" and "élodie" not in str(caught.value)
        assert connector.erase(subject("C-none", "ascii.only@example.fr")).outcome == "not_found"
    finally:
        connector.close()
    engine.dispose()


def test_sqlite_finds_every_spelling_through_the_email_index(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'forms.db'}", poolclass=sa.pool.NullPool)
    SCHEMAS["contact_forms"].create_all(engine)
    typed = ["ÉLODIE@X.FR", "élodie@x.fr", " Élodie@x.fr", "\u212aim@x.fr", "KIM@x.fr", "ΣΑΣ@x.gr", "elodie@x.fr"]
    rows = [message(n + 1, email, "-") for n, email in enumerate(typed)]
    insert_rows(engine, SCHEMAS["contact_forms"], {"contact_messages": rows})
    table = SCHEMAS["contact_forms"].tables["contact_messages"]
    emails = EmailMatch("contact_forms")
    with engine.connect() as conn:
        emails.prepare(conn)

        def found(*wanted: str) -> set[str]:
            condition = emails.condition(conn, table.c.email, wanted)
            return set(conn.execute(sa.select(table.c.email).where(condition)).scalars())

        assert found("élodie@x.fr") == {"ÉLODIE@X.FR", "élodie@x.fr", " Élodie@x.fr"}
        assert found("kim@x.fr") == {"\u212aim@x.fr", "KIM@x.fr"}  # the Kelvin sign lowers to k
        assert found("σας@x.gr") == {"ΣΑΣ@x.gr"}  # a contextual fold: scanned, still found
        condition = emails.condition(conn, table.c.email, ["ÉLODIE@x.fr"])
        sql = str(sa.select(table.c.message_id).where(condition).compile(conn, compile_kwargs={"literal_binds": True}))
        plan = " ".join(str(row) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    assert "ix_contact_messages_email_norm" in plan
    assert spellings(["σας@x.gr"]) is None and spellings(["k" * 7 + "@x.fr"]) is None
    engine.dispose()
