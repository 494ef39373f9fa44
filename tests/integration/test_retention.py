"""The retention sweeper on real PostgreSQL and Kafka: which subjects get an erasure, what the
commands look like, that sweeps repeat themselves exactly, and that the worker then erases the right data."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result
from confluent_kafka import Consumer, TopicPartition

from connectors import orders_db
from devkit.allsystems import RETENTION_RULES as RULES
from devkit.pipeline import Receipts, raw_settings, run_until, settings_from
from devkit.shop_schemas import contact_forms, loyalty, orders
from worker import config, messages
from worker.app import Worker
from worker.cli import cli
from worker.config import Settings
from worker.core.connector import ConnectorContext, Subject
from worker.core.errors import ConfigError
from worker.core.timefmt import iso
from worker.retention import commands, sources

AS_OF = datetime.now(UTC).replace(microsecond=0)  # the worker's connectors use the real clock too
SIGNING_SECRET = "retention-test-signing-secret"


def ago(days: int) -> datetime:
    return AS_OF - timedelta(days=days)


def due(days: int) -> date:
    return ago(days).date()


# Who is who. Personal values, so that the tests can check that none of them is ever printed.
CUSTOMERS = {  # customer id: (email, phone, last login (days ago) or None, created (days ago))
    "C-OLD-1": ("old.one@example.fr", "+33611111111", 1100, 2000),
    "C-OLD-2": ("old.two@example.fr", None, None, 800),  # never logged in: created_at counts
    "C-BADPHONE": ("bad.phone@example.fr", "06 12 34 56 78", 900, 1500),  # not E.164: left out of the command
    "C-LOYAL": ("loyal@example.fr", "+33633333333", 1000, 1500),  # active in the loyalty programme
    "C-BUYER": ("buyer@example.fr", "+33644444444", 1000, 1500),  # ordered recently (by phone)
    "C-FRESH": ("fresh@example.fr", "+33622222222", 10, 1500),
    "C-GONE": ("gone@example.fr", "+33655555555", 1400, 2000),  # erased a year ago; invoices retained
}
CONTACT_MESSAGES = [  # as typed in the form, days ago
    (" Old.Contact@Example.FR ", 400), ("old.contact@example.fr", 500),  # one subject, both expired
    ("mixed@example.fr", 450), ("Mixed@example.fr", 20),  # newest is recent: kept whole
    ("new@example.fr", 30),
    ("not-an-email", 600),  # expired, but no command can name it
]
EXPECTED = {
    "inactive-accounts": {"expired": 5, "kept": 2, "invalid": 0, "emitted": 3, "failed": 0,
                          "dropped_identifiers": 1, "limited": False, "error": None, "without_call": {}},
    "contact-messages": {"expired": 2, "kept": 0, "invalid": 1, "emitted": 1, "failed": 0,
                         "dropped_identifiers": 0, "limited": False, "error": None, "without_call": {}},
    "expired-invoices": {"expired": 3, "kept": 2, "invalid": 0, "emitted": 1, "failed": 0,
                         "dropped_identifiers": 0, "limited": False, "error": None, "without_call": {}},
}
PERSONAL = [*CUSTOMERS, *(e for e, *_ in CUSTOMERS.values()), *(p for _, p, *_ in CUSTOMERS.values() if p),
            "old.contact@example.fr", "Old.Contact", "mixed@example.fr", "new@example.fr", "not-an-email",
            "612345678", "Gone Person"]


def seed(urls: dict[str, str]) -> None:
    engines = {system: sa.create_engine(url, poolclass=sa.pool.NullPool) for system, url in urls.items()}
    orders.metadata.create_all(engines["orders_db"])
    loyalty.metadata.create_all(engines["loyalty"])
    contact_forms.metadata.create_all(engines["contact_forms"])
    money = {"currency": "EUR", "amount_excl_tax": 100, "vat_amount": 20, "amount_incl_tax": 120}
    with engines["orders_db"].begin() as conn:
        conn.execute(sa.insert(orders.customers), [
            {"customer_id": cid, "email": email, "phone": phone, "classification": "individual",
             "first_name": cid.title(), "created_at": ago(created),
             "last_login_at": ago(login) if login is not None else None}
            for cid, (email, phone, login, created) in CUSTOMERS.items()])
        conn.execute(sa.insert(orders.orders), [
            {"order_id": f"O-{cid}", "customer_id": cid, "placed_at": ago(days), "status": "delivered",
             "channel": "phone", "currency": "EUR", "subtotal": 100, "shipping_fee": 0, "total": 100,
             "email": CUSTOMERS[cid][0], "shipping_name": f"{cid} Name"}
            for cid, days in (("C-OLD-1", 1200), ("C-BUYER", 100))])
        conn.execute(sa.insert(orders.invoices), [
            {"invoice_number": f"F-{cid}-{days}", "kind": "invoice", "customer_id": cid, "issued_on": due(days),
             "due_on": due(days), "status": "paid", "billing_name": "Gone Person" if cid == "C-GONE" else cid,
             "email": CUSTOMERS[cid][0], **money}
            for cid, days in (("C-OLD-1", 1200), ("C-OLD-1", 400), ("C-FRESH", 1500),
                              ("C-GONE", 1300), ("C-GONE", 1000))])
    with engines["loyalty"].begin() as conn:
        conn.execute(sa.insert(loyalty.loyalty_accounts), [
            {"customer_id": cid, "card_number": f"VS-{cid}", "tier": "bronze", "points_balance": 10,
             "enrolled_at": ago(1500), "last_activity_at": ago(days)}
            for cid, days in (("C-OLD-1", 1100), ("C-LOYAL", 30))])
    with engines["contact_forms"].begin() as conn:
        conn.execute(sa.insert(contact_forms.contact_messages), [
            {"received_at": ago(days), "email": email, "topic": "other", "message": "Bonjour", "status": "closed"}
            for email, days in CONTACT_MESSAGES])
    for engine in engines.values():
        engine.dispose()
    # C-GONE asked to be forgotten 400 days ago: orders_db deleted the account and kept both invoices, then
    # still inside their 3 years. One of them is past its period now, and nothing else will ever touch it.
    connector = orders_db.create("orders_db", {"url": urls["orders_db"], "billing_retention_years": 3},
                                 ConnectorContext(now=lambda: ago(400)))
    try:
        result = connector.erase(Subject(request_id="earlier", subject_ref="-", customer_id="C-GONE"))
    finally:
        connector.close()
    assert result.outcome == "retained"


def systems_for(urls: dict[str, str]) -> dict[str, Any]:
    return {
        "orders_db": {"connector": "orders_db", "settings": {"url": urls["orders_db"], "billing_retention_years": 3}},
        "loyalty": {"connector": "loyalty", "settings": {"url": urls["loyalty"]}},
        "contact_forms": {"connector": "contact_forms", "settings": {"url": urls["contact_forms"]}},
    }


@dataclass
class World:
    urls: dict[str, str]
    raw: dict[str, Any]
    settings: Settings
    config_path: Path

    def sweep(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(self.config_path), "sweep", "--as-of", iso(AS_OF) or "",
                                        *args], catch_exceptions=False)

    def scalar(self, system: str, sql: str, **params: Any) -> Any:
        engine = sa.create_engine(self.urls[system], poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(sql), params).scalar()
        finally:
            engine.dispose()


def make_world(urls: dict[str, str], store_url: str, bootstrap: str, tmp_path: Path, *, topics: bool = True,
               **extra: Any) -> World:
    seed(urls)
    raw = raw_settings(store_url=store_url, bootstrap=bootstrap, systems=systems_for(urls),
                       retention={"rules": RULES}, **extra)
    path = tmp_path / "oubli.yaml"
    path.write_text(yaml.safe_dump(raw))
    settings = settings_from(raw) if topics else config.build(raw, env={})
    return World(urls, raw, settings, path)


@pytest.fixture
def world(pg_schema_urls: Callable[[], str], kafka_bootstrap: str, tmp_path: Path) -> World:
    urls = {system: pg_schema_urls() for system in ("orders_db", "loyalty", "contact_forms")}
    return make_world(urls, pg_schema_urls(), kafka_bootstrap, tmp_path, signing_secret=SIGNING_SECRET)


@dataclass(frozen=True)
class Published:
    key: bytes
    value: bytes
    command: dict[str, Any]
    headers: dict[str, bytes]


def read_commands(settings: Settings) -> list[Published]:
    """Every record of the commands topic, each validated against command.v1."""
    topic = settings.kafka.topics.commands
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"read-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = (low, high)
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
        found = []
        remaining = {p for p, (low, high) in ends.items()}
        while remaining:
            message = consumer.poll(10)
            assert message is not None, "timed out reading the commands topic"
            assert message.error() is None, message.error()
            command = json.loads(message.value())
            assert messages.schema_errors("command.v1", command) == [], command
            found.append(Published(message.key(), message.value(), command, dict(message.headers() or [])))
            if message.offset() + 1 >= ends[message.partition()][1]:
                remaining.discard(message.partition())
        return found
    finally:
        consumer.close()


def topic_size(settings: Settings, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"size-{uuid.uuid4()}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        marks = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions]
        return sum(high - low for low, high in marks)
    finally:
        consumer.close()


def counts(result: Result) -> dict[str, dict[str, Any]]:
    report = json.loads(result.stdout)
    # A subject no valid command can name ("not-an-email") is left for a person: the run says so by its exit code.
    assert result.exit_code == (1 if any(r["invalid"] for r in report["rules"]) else 0), result.output
    return {r.pop("rule"): r for r in report["rules"]}


def assert_nothing_personal(text: str) -> None:
    leaked = [value for value in PERSONAL if value.lower() in text.lower()]
    assert leaked == [], f"personal data in the output: {len(leaked)} values"


# --- against the real broker and PostgreSQL --------------------------------------------------------------


def test_sweep_emits_exactly_the_expired_subjects_and_a_second_run_the_same_commands(world: World) -> None:
    first = world.sweep("--json")
    assert counts(first) == EXPECTED
    published = read_commands(world.settings)
    by_customer = {p.command["subject"]["customer_id"]: p.command for p in published}
    assert len(published) == len(by_customer) == 5

    accounts = {cid: by_customer.pop(cid) for cid in ("C-OLD-1", "C-OLD-2", "C-BADPHONE")}
    # The subject's newest row (the last login) is its last activity as far as the rule knows.
    assert accounts["C-OLD-1"]["subject"].pop("last_activity_at") == iso(ago(1100))
    assert accounts["C-OLD-1"]["subject"] == {"customer_id": "C-OLD-1", "emails": ["old.one@example.fr"],
                                              "phones": ["+33611111111"]}
    assert accounts["C-OLD-2"]["subject"].pop("last_activity_at") == iso(ago(800))
    assert accounts["C-OLD-2"]["subject"] == {"customer_id": "C-OLD-2", "emails": ["old.two@example.fr"]}
    assert "phones" not in accounts["C-BADPHONE"]["subject"]
    for command in accounts.values():
        assert command["systems"] is None and command["kind"] == "erasure" and command["priority"] == "background"
        assert command["requested_by"] == "retention-sweeper"
        # Due from the rule (expiry + retention.grace_days), not one month after the sweep.
        assert command["due_at"] == iso(datetime.fromisoformat(command["requested_at"]) + timedelta(days=30))
    # requested_at is when the data expired: the last login (or the creation, never logged in) plus 2 years.
    assert accounts["C-OLD-1"]["requested_at"] == iso(sources.shift(ago(1100), (2, 0, 0), 1))
    assert accounts["C-OLD-2"]["requested_at"] == iso(sources.shift(ago(800), (2, 0, 0), 1))

    invoices = by_customer.pop("C-GONE")
    assert invoices["systems"] == ["orders_db"] and "emails" not in invoices["subject"]
    assert "last_activity_at" not in invoices["subject"]  # any_row: the oldest invoice is no activity
    assert invoices["requested_at"] == iso(datetime.combine(sources.shift(due(1300), (3, 0, 0), 1),
                                                            datetime.min.time(), UTC))

    ((pseudonym, contact),) = by_customer.items()  # the contact-form subject, known only by email
    assert pseudonym.startswith("anon-") and "contact" not in pseudonym
    assert contact["subject"].pop("last_activity_at") == iso(ago(400))
    assert contact["subject"] == {"customer_id": pseudonym, "emails": ["old.contact@example.fr"]}
    assert contact["systems"] == ["contact_forms"]
    assert contact["requested_at"] == iso(sources.shift(ago(400), (1, 0, 0), 1))  # its newest message + 1 year

    for record in published:  # keyed by customer id, signed like any other command
        assert record.key == record.command["subject"]["customer_id"].encode()
        assert messages.verify_signature(record.value, record.headers[messages.SIGNATURE_HEADER],
                                         SIGNING_SECRET.encode())
        assert uuid.UUID(record.command["request_id"]).version == 5

    second = world.sweep("--json")  # an overlapping or repeated run: the very same commands
    assert counts(second) == EXPECTED
    again = read_commands(world.settings)
    assert len(again) == 10
    assert sorted(p.value for p in again) == sorted([p.value for p in published] * 2)  # byte for byte

    human = world.sweep()
    assert human.exit_code == 1  # "not-an-email" is left for a person, every run, and the run says so
    assert "error: 1 expired subject(s) no valid command can name" in human.output
    assert "a rule failed" not in human.output
    assert "inactive-accounts" in human.output and "emitted" in human.output
    for result in (first, second, human):
        assert_nothing_personal(result.output)


def test_stored_values_no_command_can_carry_are_left_out_and_the_rule_carries_on(world: World) -> None:
    # Control characters the schema refuses: a customer id ("A-6" sorts first, so it is the run's first
    # command) and an email. Neither may cost the other subjects their erasure, nor reach the worker.
    engine = sa.create_engine(world.urls["orders_db"], poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.insert(orders.customers), [
            {"customer_id": cid, "email": email, "phone": phone, "classification": "individual",
             "first_name": "Odd", "created_at": ago(2000), "last_login_at": ago(1100)}
            for cid, email, phone in (("A-6\x7f", "a6@example.fr", None),
                                      ("C-CTRL", " h20\x01@x.fr ", "+33699999999"))])
    engine.dispose()
    result = world.sweep("--json")
    assert result.exit_code == 1  # a person must deal with A-6; everyone else was swept
    rule = counts(result)["inactive-accounts"]
    assert (rule["expired"], rule["kept"], rule["invalid"], rule["emitted"], rule["failed"], rule["error"]) == (
        7, 2, 1, 4, 0, None)
    assert rule["dropped_identifiers"] == 2  # C-BADPHONE's phone, C-CTRL's email
    assert "no valid command can name" in result.output
    published = read_commands(world.settings)  # each one checked against command.v1
    by_customer = {p.command["subject"]["customer_id"]: p.command for p in published}
    assert set(by_customer) >= {"C-OLD-1", "C-OLD-2", "C-BADPHONE", "C-CTRL"} and "A-6\x7f" not in by_customer
    assert "emails" not in by_customer["C-CTRL"]["subject"]
    assert by_customer["C-CTRL"]["subject"]["phones"] == ["+33699999999"]
    for record in published:  # what the worker's intake does with each: nothing dead-lettered
        messages.parse(record.command, value=record.value, signature=record.headers[messages.SIGNATURE_HEADER],
                       signing_secret=SIGNING_SECRET.encode(), known_systems=frozenset(world.settings.systems))
    assert_nothing_personal(result.output + result.stderr)
    assert "h20" not in result.output and "A-6" not in result.output


def test_dry_run_and_limit_publish_nothing_and_cap_each_rule(world: World) -> None:
    dry = world.sweep("--dry-run", "--json")
    assert counts(dry) == EXPECTED
    assert json.loads(dry.stdout)["dry_run"] is True
    limited = counts(world.sweep("--dry-run", "--limit", "1", "--json"))
    assert {rule: (c["emitted"], c["limited"]) for rule, c in limited.items()} == {
        "inactive-accounts": (1, True), "contact-messages": (1, False), "expired-invoices": (1, True)}
    human = world.sweep("--dry-run")
    assert "dry run: nothing published" in human.output and "would emit" in human.output
    future = CliRunner().invoke(cli, ["--config", str(world.config_path), "sweep", "--as-of", "2099-01-01"])
    assert future.exit_code != 0 and "only with --dry-run" in future.output  # nothing erased before its time
    ahead = CliRunner().invoke(cli, ["--config", str(world.config_path), "sweep", "--as-of", "2099-01-01",
                                     "--dry-run", "--json"])
    assert counts(ahead)["contact-messages"]["emitted"] == 3  # everyone's messages will have expired by then
    assert_nothing_personal(dry.output + human.output)
    assert topic_size(world.settings, world.settings.kafka.topics.commands) == 0


def test_a_delivery_failure_exits_non_zero(pg_schema_urls: Callable[[], str], tmp_path: Path) -> None:
    urls = {system: pg_schema_urls() for system in ("orders_db", "loyalty", "contact_forms")}
    world = make_world(urls, pg_schema_urls(), "127.0.0.1:9", tmp_path, topics=False)  # nothing listens there
    result = world.sweep("--timeout", "1", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [r["failed"] for r in report["rules"]] == [3, 1, 1]
    assert "not acknowledged" in result.output
    assert_nothing_personal(result.output)


def test_sweep_then_worker_erases_the_expired_and_leaves_the_fresh(world: World) -> None:
    assert world.scalar("orders_db", "SELECT billing_name FROM invoices WHERE invoice_number = 'F-C-GONE-1300'")
    assert counts(world.sweep("--json"))["expired-invoices"]["emitted"] == 1
    assert counts(world.sweep("--json"))["expired-invoices"]["emitted"] == 1  # two CronJob runs overlapped
    request_ids = {p.command["subject"]["customer_id"]: p.command["request_id"] for p in read_commands(world.settings)}
    assert len(request_ids) == 5

    worker = Worker(world.settings, migrate=True, serve_http=False)
    worker.start()
    receipts = Receipts(world.settings)
    try:
        done = {cid: receipts.wait(rid, {"completed"}, step=worker.run_once, timeout=60)
                for cid, rid in request_ids.items()}
        run_until(worker, lambda: worker.store.outbox.batch(1) == [], timeout=30)
        receipts.drain(0.5)
    finally:
        receipts.close()
        worker.close()

    # The repeated commands were duplicates of known requests: nothing rejected, nothing dead-lettered.
    assert [r for r in receipts.all if r["status"] == "rejected"] == []
    assert len({r["request_id"] for r in receipts.all}) == 5
    assert topic_size(world.settings, world.settings.kafka.topics.dlq) == 0
    assert {s["system"] for s in done["C-OLD-1"]["systems"]} == {"orders_db", "loyalty", "contact_forms"}
    orders_db_outcome = next(s for s in done["C-OLD-1"]["systems"] if s["system"] == "orders_db")
    assert orders_db_outcome["outcome"] == "retained"  # its 400-day-old invoice is still in its period
    gone = done["C-GONE"]["systems"]
    assert [(s["system"], s["outcome"]) for s in gone] == [("orders_db", "retained")]
    assert gone[0]["retained"][0]["until"] == sources.shift(due(1000), (3, 0, 0), 1).isoformat()

    def count(system: str, sql: str, **params: Any) -> int:
        return int(world.scalar(system, sql, **params))

    for cid in ("C-OLD-1", "C-OLD-2", "C-BADPHONE"):
        assert count("orders_db", "SELECT count(*) FROM customers WHERE customer_id = :c", c=cid) == 0
    assert count("loyalty", "SELECT count(*) FROM loyalty_accounts WHERE customer_id = 'C-OLD-1'") == 0
    for cid in ("C-FRESH", "C-LOYAL", "C-BUYER"):
        assert count("orders_db", "SELECT count(*) FROM customers WHERE customer_id = :c", c=cid) == 1
    assert count("loyalty", "SELECT count(*) FROM loyalty_accounts WHERE customer_id = 'C-LOYAL'") == 1
    assert count("orders_db", "SELECT count(*) FROM invoices WHERE customer_id = 'C-FRESH'") == 1
    # The second orders_db erasure of C-GONE anonymised the invoice whose period ended, and kept the other.
    assert count("orders_db", "SELECT count(*) FROM invoices WHERE invoice_number = 'F-C-GONE-1300' "
                              "AND customer_id IS NULL AND billing_name IS NULL") == 1
    assert count("orders_db", "SELECT count(*) FROM invoices WHERE invoice_number = 'F-C-GONE-1000' "
                              "AND customer_id = 'C-GONE'") == 1
    remaining = sorted(r[0] for r in _rows(world, "contact_forms", "SELECT email FROM contact_messages"))
    assert remaining == ["Mixed@example.fr", "mixed@example.fr", "new@example.fr", "not-an-email"]

    after = counts(world.sweep("--json"))  # nothing is left to emit: the loop closes
    assert {rule: c["emitted"] for rule, c in after.items()} == {
        "inactive-accounts": 0, "contact-messages": 0, "expired-invoices": 0}


def _rows(world: World, system: str, sql: str) -> list[Any]:
    engine = sa.create_engine(world.urls[system], poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)))
    finally:
        engine.dispose()


# --- without services ---------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    urls = {system: f"sqlite:///{tmp_path / system}.db" for system in ("orders_db", "loyalty", "contact_forms")}
    yield make_world(urls, f"sqlite:///{tmp_path / 'store.db'}", "127.0.0.1:9", tmp_path, topics=False)


def test_sqlite_sources_give_the_same_counts(sqlite_world: World) -> None:
    assert counts(sqlite_world.sweep("--dry-run", "--json")) == EXPECTED


def test_a_failing_rule_is_reported_and_the_others_still_run(sqlite_world: World) -> None:
    with sa.create_engine(sqlite_world.urls["contact_forms"]).begin() as conn:
        conn.execute(sa.text("DROP TABLE contact_replies"))
        conn.execute(sa.text("DROP TABLE contact_messages"))
    result = sqlite_world.sweep("--dry-run", "--json")
    assert result.exit_code == 1
    report = {r["rule"]: r for r in json.loads(result.stdout)["rules"]}
    assert report["contact-messages"]["error"] == (
        "contact_forms: reading table contact_messages: a configured table does not exist")
    assert report["inactive-accounts"]["emitted"] == 3 and report["expired-invoices"]["emitted"] == 1
    assert_nothing_personal(result.output)


def test_request_ids_are_deterministic_keyed_and_carry_no_personal_data() -> None:
    settings = config.build({"subject_key": "k" * 32, "systems": systems_for(dict.fromkeys(
        ("orders_db", "loyalty", "contact_forms"), "sqlite:///x.db")), "retention": {"rules": RULES}}, env={})
    accounts, contacts = settings.retention.rules[0], settings.retention.rules[1]

    def build(rule: Any, key: str, subject_key: bytes = b"k" * 32, days: int = 800) -> dict[str, Any]:
        at = ago(days)
        command, _ = commands.erasure(rule, subject_key=subject_key, key=key, expired_at=at,
                                      requested_at=sources.shift(at, (2, 0, 0), 1),
                                      emails=[key] if rule.key.email else ["a@example.fr"], phones=[])
        assert command is not None
        return command

    one = build(accounts, "C-1")
    assert one == build(accounts, "C-1")
    assert one["request_id"] != build(accounts, "C-2")["request_id"]
    assert one["request_id"] != build(accounts, "C-1", days=700)["request_id"]  # active again, expired again
    assert one["request_id"] != build(accounts, "C-1", subject_key=b"x" * 32)["request_id"]
    assert uuid.uuid5(uuid.NAMESPACE_OID, "C-1").hex != uuid.UUID(one["request_id"]).hex
    contact = build(contacts, "marie@example.fr")
    assert "marie" not in contact["request_id"] and "marie" not in contact["subject"]["customer_id"]
    assert contact["subject"]["customer_id"] == build(contacts, "marie@example.fr", days=900)["subject"][
        "customer_id"]


@pytest.mark.parametrize("expired_at", [datetime(1, 1, 1, tzinfo=UTC), datetime(998, 6, 1, tzinfo=UTC)])
def test_a_stored_date_no_command_can_carry_makes_no_command(expired_at: datetime) -> None:
    """A legacy sentinel date (0001-01-01, .NET's DateTime.MinValue) in a source row: the command passed
    command.v1, so the sweep counted it emitted, and the worker dead-lettered it as out_of_range at every sweep."""
    settings = config.build({"subject_key": "k" * 32, "systems": systems_for(dict.fromkeys(
        ("orders_db", "loyalty", "contact_forms"), "sqlite:///x.db")), "retention": {"rules": RULES}}, env={})
    accounts = settings.retention.rules[0]
    command, _ = commands.erasure(accounts, subject_key=b"k" * 32, key="C-1", expired_at=expired_at,
                                  requested_at=sources.shift(expired_at, (2, 0, 0), 1), emails=["a@example.fr"],
                                  phones=[])
    assert command is None  # counted as invalid: a person must look at this subject
    fine, _ = commands.erasure(accounts, subject_key=b"k" * 32, key="C-1", expired_at=datetime(1000, 1, 1, tzinfo=UTC),
                               requested_at=datetime(1002, 1, 1, tzinfo=UTC), emails=["a@example.fr"], phones=[])
    assert fine is not None and messages.parse(fine, value=b"", signature=None, signing_secret=None,
                                               known_systems=frozenset(settings.systems))


@pytest.mark.parametrize(("change", "message"), [
    ({"source": "billing"}, "billing is not a configured system"),
    ({"systems": ["nosto"]}, "unknown systems nosto"),
    ({"period": {"years": 0}}, "longer than zero"),
    ({"key": {"customer_id": "customer_id", "email": "email"}}, "exactly one"),
    ({"unless": [{"system": "crm", "table": "t", "key": "k"}]}, "crm is not a configured system"),
    ({"table": "customers; drop table x"}, "retention.rules.0.table"),
    ({"reason": "x" * 1001}, "retention.rules.0.reason"),
])
def test_config_refuses_rules_that_cannot_work(change: dict[str, Any], message: str) -> None:
    rule = {**RULES[0], **change}
    with pytest.raises(ConfigError, match=message.replace(";", ".")):
        config.build({"subject_key": "k", "systems": systems_for(dict.fromkeys(
            ("orders_db", "loyalty", "contact_forms"), "sqlite:///x.db")), "retention": {"rules": [rule]}}, env={})


def test_billing_period_follows_the_orders_db_setting() -> None:
    raw = {"subject_key": "k", "systems": systems_for(dict.fromkeys(("orders_db", "loyalty", "contact_forms"),
                                                                    "sqlite:///x.db")),
           "retention": {"rules": RULES}}
    raw["systems"]["orders_db"]["settings"]["billing_retention_years"] = 10
    settings = config.build(raw, env={})
    rule = settings.retention.rules[2]
    assert rule.period.resolve(settings.systems["orders_db"].settings) == (10, 0, 0)


def test_sweep_without_rules_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "oubli.yaml"
    path.write_text(yaml.safe_dump({"subject_key": "k"}))
    result = CliRunner().invoke(cli, ["--config", str(path), "sweep", "--dry-run"])
    assert result.exit_code != 0 and "no retention rules" in result.output


def test_max_per_run_spreads_a_sweep_and_the_report_prices_it_per_limited_system(sqlite_world: World) -> None:
    from worker import retention
    from worker.cli import format_sweep
    from worker.core.limits import Capacity

    ga_like = Capacity(daily_quota=10, per_second=None, background_share=0.5)
    report = retention.sweep(sqlite_world.settings, as_of=AS_OF, dry_run=True, max_per_run=2,
                             capacities={"orders_db": ga_like})
    assert [(r.rule, r.emitted, r.limited) for r in report.rules] == [
        ("inactive-accounts", 2, True), ("contact-messages", 0, True), ("expired-invoices", 0, True)]
    (cost,) = report.costs  # orders_db is the only limited system here; every account erasure targets it
    assert (cost.system, cost.tasks, cost.per_day, cost.days) == ("orders_db", 2, 5, 0.4)
    assert report.as_dict()["costs"] == [{"system": "orders_db", "tasks": 2, "per_day": 5, "days": 0.4,
                                          "without_call": 0}]
    text = format_sweep(report)
    assert "2 orders_db erasures, about 0.4 days at the reserved quota (5/day)" in text
    full = retention.sweep(sqlite_world.settings, as_of=AS_OF, dry_run=True, capacities={"orders_db": ga_like})
    assert full.costs[0].tasks == 4  # 3 accounts and 1 invoice holder; the contact-form rule targets contact_forms
    # A system that keeps data a year confirms the accounts inactive for longer without a call: they cost nothing.
    systems = {**sqlite_world.settings.systems,
               "orders_db": sqlite_world.settings.systems["orders_db"].model_copy(update={"keeps_data_days": 365})}
    keeping = sqlite_world.settings.model_copy(update={"systems": systems})
    (cost,) = retention.sweep(keeping, as_of=AS_OF, dry_run=True, capacities={"orders_db": ga_like}).costs
    assert (cost.tasks, cost.without_call) == (1, 3)  # the invoice holder's rule (any_row) carries no activity
    assert cost.describe() == ("1 orders_db erasures, about 0.2 days at the reserved quota (5/day); "
                               "3 more need no call (older than the data orders_db keeps)")
    result = sqlite_world.sweep("--dry-run", "--max-per-run", "4", "--json")
    assert sum(r["emitted"] for r in json.loads(result.stdout)["rules"]) == 4
