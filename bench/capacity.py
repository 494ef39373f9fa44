"""Capacity: erasures per second through one worker, end to end, against the floor the parts allow.

A run publishes a burst of erasures, each for ``--systems`` no-op systems (``bench.noop``), to fresh
topics, and times it from the first publish until this client has read every ``completed`` receipt.
The store is PostgreSQL with ``fsync`` on (``--pg-url``, see bench/README.md for the durable cluster),
a fresh schema per run. It reports requests/s, task transitions/s (audit rows of a system),
SQL statements (pg_stat_statements, without BEGIN/COMMIT) and commits (pg_stat_database) per request,
the worker's CPU ms per request, and p50/p99 publish → completed latency.

The floor, in the same run: a bare loop (``--floor-worker``, a child process) that consumes the same
burst in batches, writes one request row and one row per system per command with COPY in one
durable transaction per batch, and produces one receipt per command. No orchestration.

``--write-floor``: the write-set floor, also in the same run. The same bare loop on oubli's own tables and
indexes writes per command every row the worker writes for it (the request row inserted and updated twice,
ten task rows inserted, claimed and confirmed, 23 audit rows, two outbox rows inserted and deleted), in
set-based SQL, four durable transactions per batch. What PostgreSQL alone costs for the work the
invariants require, with no orchestration in Python.

``--lone N``: N requests one at a time (publish → completed receipt), after the burst.
``--soak N``: N requests in bursts of ``--requests``; prints the worker's RSS after each burst.
``--soak-clear``: with ``--soak``, empties the store's request, task, audit and outbox tables after each burst
(``TRUNCATE``, with the worker idle), so that a million-request soak measures the worker's memory at the pace
of a fresh store, not PostgreSQL's growth to ten million task rows.
``--tree DIR``: run the worker from another checkout (a git worktree), for before/after tables.

Usage: .venv/bin/python bench/capacity.py [--requests 20000] [--systems 10] [--workers 1] [--lone 20]
       [--no-floor] [--write-floor] [--soak 1000000 [--soak-clear]] [--tree /tmp/oubli-before] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _common import pg_schema  # noqa: E402  (bench/ is this script's own folder on sys.path)

from worker import config, kafka  # noqa: E402
from worker.store import schema as store_schema  # noqa: E402
from worker.support import build_command  # noqa: E402

KAFKA = os.environ.get("OUBLI_TEST_KAFKA", "127.0.0.1:9092")
PG_URL = os.environ.get("OUBLI_BENCH_PG_URL", "postgresql+psycopg://oubli:oubli@127.0.0.1:5433/oubli_bench")
TERMINAL = {b"completed", b"completed_with_exceptions", b"failed", b"rejected", b"cancelled"}


# --- plumbing -------------------------------------------------------------------------------------




class DbCounters:
    """Statements and commits of the benchmark database, from PostgreSQL's own statistics."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with self.engine.connect() as conn:
            self.statements_ok = conn.execute(sa.text(
                "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")).scalar_one() > 0

    def reset(self) -> None:
        with self.engine.begin() as conn:
            if self.statements_ok:
                conn.execute(sa.text("SELECT pg_stat_statements_reset()"))

    def read(self) -> tuple[float, float, float]:
        """Statements, commits, and the cluster's WAL syncs (the durable commits: a read-only statement outside a
        transaction counts as a commit in ``pg_stat_database`` but syncs nothing)."""
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            commits = conn.execute(sa.text(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")).scalar_one()
            syncs = conn.execute(sa.text("SELECT wal_sync FROM pg_stat_wal")).scalar_one()
            statements = float("nan")
            if self.statements_ok:
                statements = conn.execute(sa.text(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                    "WHERE d.datname = current_database() AND s.query !~* '^\\s*(begin|commit|rollback)' "
                    "AND s.query !~* 'pg_stat'")).scalar_one()
        return float(statements), float(commits), float(syncs)

    def dispose(self) -> None:
        self.engine.dispose()


class Watch:
    """Reads receipts by key and the ``x-oubli-status`` header only: no JSON, so it costs little CPU."""

    def __init__(self, topic: str) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": KAFKA, "group.id": f"capacity-{uuid.uuid4()}", "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            # A client that wants its answer soon: the broker may hold a read_committed fetch until this.
            "fetch.wait.max.ms": 10,
        })
        self.consumer.subscribe([topic])
        self.completed: dict[bytes, float] = {}
        self.accepted: set[bytes] = set()
        self.terminal: dict[bytes, set[bytes]] = {}
        self.receipts = 0

    def drain(self, timeout: float) -> None:
        for message in self.consumer.consume(5000, timeout):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                continue
            self.receipts += 1
            key = message.key() or b""
            status = next((v for k, v in (message.headers() or []) if k == "x-oubli-status"), b"")
            if status == b"accepted":
                self.accepted.add(key)
            elif status in TERMINAL:
                self.terminal.setdefault(key, set()).add(message.value() or b"")
                if status == b"completed":
                    self.completed.setdefault(key, time.monotonic())

    def wait(self, keys: Sequence[bytes], timeout: float, *, any_end: bool = False) -> bool:
        """Until every key is ``completed``; with ``any_end``, until each has any terminal receipt (a failed
        request then ends the wait, not the timeout)."""
        deadline = time.monotonic() + timeout
        wanted = set(keys)
        while time.monotonic() < deadline:
            self.drain(0.01)
            if wanted <= (self.terminal if any_end else self.completed).keys():
                return True
        return False

    def close(self) -> None:
        self.consumer.close()


class Publisher:
    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": KAFKA, "linger.ms": 5, "enable.idempotence": True,
                                  "partitioner": "murmur2_random", "log_level": 4})
        self.producer.list_topics(topic, timeout=10)

    def publish(self, commands: Sequence[dict[str, Any]]) -> dict[bytes, float]:
        sent: dict[bytes, float] = {}
        payloads = [(c["subject"]["customer_id"].encode(), json.dumps(c).encode(), c["request_id"].encode())
                    for c in commands]
        for key, value, request_id in payloads:
            while True:
                try:
                    self.producer.produce(self.topic, key=key, value=value)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            sent[request_id] = time.monotonic()
            self.producer.poll(0)
        if self.producer.flush(60):
            raise KafkaException("commands not acknowledged within 60 s")
        return sent


def commands(n: int, systems: int) -> list[dict[str, Any]]:
    names = [f"s{i:02d}" for i in range(systems)]
    return [build_command(kind="erasure", customer_id=f"C-{uuid.uuid4().hex[:12]}", emails=["a@example.org"],
                          requested_by="bench", systems=names) for _ in range(n)]


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """A process's CPU seconds, or one of its threads' (the main thread's id is the process's)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of_named(names: tuple[str, ...]) -> float:
    """CPU seconds of every live process whose command name is in ``names`` (``postgres`` for PostgreSQL's
    backends and its own processes, ``java`` for the broker)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        if text[text.index("(") + 1:text.rindex(")")] in names:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, summed over its cores."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    clock = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks[:8]) - idle) / clock, sum(ticks[:8]) / clock


class CpuSplit:
    """Where a burst's CPU went, in ms per request: the worker, PostgreSQL, the broker, this benchmark, and
    the machine as a whole (with how busy its cores were). Shows whether the machine, not the loop, is full."""

    def __init__(self, workers: Sequence[int]) -> None:
        self.workers = list(workers)
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        busy, everything = machine_cpu()
        own = os.times()
        return {"worker": sum(cpu_seconds(pid) for pid in self.workers),
                "loop": sum(cpu_seconds(pid, thread=pid) for pid in self.workers),
                "postgres": cpu_of_named(("postgres",)), "kafka": cpu_of_named(("java",)),
                "bench": own.user + own.system, "machine": busy,
                "all": everything}

    def per_request(self, requests: int) -> dict[str, float]:
        end = self._read()
        spent = {name: end[name] - self.start[name] for name in end}
        split = {name: spent[name] * 1000 / max(requests, 1) for name in spent if name != "all"}
        split["busy_pct"] = 100 * spent["machine"] / max(spent["all"], 1e-9)
        return split


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def loop_seconds(ports: Sequence[int]) -> dict[tuple[str, str], float]:
    """The workers' ``oubli_loop_seconds_total`` by (step, clock), summed; empty from a tree without it."""
    total: dict[tuple[str, str], float] = {}
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
                text = response.read().decode()
        except OSError:
            return {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "oubli_loop_seconds_total":
                    key = (sample.labels["step"], sample.labels["clock"])
                    total[key] = total.get(key, 0.0) + sample.value
    return total


def loop_split(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float],
               requests: int) -> dict[str, tuple[float, float]]:
    """ms per request of each loop step: (wall, the loop thread's CPU)."""
    def spent(step: str, clock: str) -> float:
        return (after.get((step, clock), 0.0) - before.get((step, clock), 0.0)) * 1000 / max(requests, 1)

    steps = sorted({step for step, _ in after}, key=LOOP_STEPS.index)
    return {step: (spent(step, "wall"), spent(step, "cpu")) for step in steps}


LOOP_STEPS = ["poll", "intake", "results", "claim", "relay"]


def show_where_time_went(result: Mapping[str, Any]) -> None:
    """Prints a burst's ``cpu_split`` (CpuSplit) and ``loop_steps`` (loop_split), those it has."""
    if "cpu_split" in result:
        split = result["cpu_split"]
        print(f"          CPU ms/req: worker {split['worker']:.2f} (its loop thread {split['loop']:.2f}), "
              f"PostgreSQL {split['postgres']:.2f}, Kafka {split['kafka']:.2f}, this benchmark {split['bench']:.2f}; "
              f"the machine {split['machine']:.2f} "
              f"({split['busy_pct']:.0f} % of its {os.cpu_count()} cores busy)")
    if result.get("loop_steps"):
        print("          loop ms/req, wall (its CPU): " + ", ".join(
            f"{step} {wall:.2f} ({cpu:.2f})" for step, (wall, cpu) in result["loop_steps"].items()))


def rss_mb(pid: int) -> float:
    return _status(pid, "VmRSS") / 1024


# A thread's stack is an anonymous mapping of the default 8 MiB (its guard page is a mapping of its own).
STACK_KIB = 8192


def memory_split(pid: int) -> dict[str, float]:
    """A process's resident MB by kind of mapping, from ``/proc/PID/smaps``: the main malloc heap
    (``[heap]``), the call threads' stacks, other anonymous memory (pymalloc's arenas, the threads' malloc
    arenas, librdkafka's buffers) and files (code, shared libraries)."""
    split = dict.fromkeys(("heap", "stacks", "anon", "files"), 0.0)
    kind = "files"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping: range perms offset dev inode [path]
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            path = fields[5] if len(fields) > 5 else ""
            kind = ("heap" if path == "[heap]" else "files" if path
                    else "stacks" if (end - start) // 1024 == STACK_KIB else "anon")
        elif fields[0] == "Rss:":
            split[kind] += int(fields[1]) / 1024
    return split


def threads(pid: int) -> int:
    return int(_status(pid, "Threads"))


def _status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def run_topics(prefix: str) -> Iterator[tuple[dict[str, Any], Any]]:
    """A run's own topics, deleted when it ends, so that a broker that serves many runs does not keep hundreds of
    compacted partitions (log cleaner work in the background) from the earlier ones."""
    raw = {"bootstrap_servers": KAFKA, "group_id": f"{prefix}-workers", "session_timeout_ms": 6000,
           "commit_interval_seconds": 0.2,
           "topics": {"commands": f"{prefix}.commands", "receipts": f"{prefix}.receipts", "dlq": f"{prefix}.dlq"}}
    settings = config.build({"store_url": "sqlite://", "subject_key": "k" * 32, "kafka": raw, "systems": {}},
                            env={})
    kafka.ensure_topics(settings.kafka)
    try:
        yield raw, settings.kafka.topics
    finally:
        topics = settings.kafka.topics
        admin = kafka.admin(settings.kafka)  # kept until the futures resolve: destroyed, it fails them (_DESTROY)
        futures = admin.delete_topics([topics.commands, topics.receipts, topics.dlq], operation_timeout=30)
        for name, future in futures.items():
            try:
                future.result(timeout=60)
            except KafkaException as exc:
                print(f"  (topic {name} not deleted: {exc.args[0].name()})", file=sys.stderr)


# --- the worker under test ---------------------------------------------------------------------------


def start_worker(raw: dict[str, Any], directory: Path, name: str,
                 tree: Path | None) -> tuple[subprocess.Popen[bytes], Path]:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    log_path = directory / f"{name}.log"
    code = "import sys; from worker.cli import main; sys.exit(main())"
    pythonpath = os.pathsep.join([str(tree), str(ROOT)] if tree else [str(ROOT)])
    process = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", code, "--config", str(path), "worker", "--migrate"],
        stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": pythonpath},
        cwd=str(tree or ROOT),  # `python -c` puts the working directory first on sys.path
    )
    return process, log_path


def wait_started(process: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if '"partitions_assigned"' in line and json.loads(line).get("partitions"):
                    return
        if process.poll() is not None:
            sys.exit(f"the worker exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    sys.exit(f"the worker did not get partitions within {timeout} s")


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all (they drain at once, together), then up to 30 s each before a SIGKILL."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def worker_run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    prefix = f"cap{uuid.uuid4().hex[:8]}"
    with run_topics(prefix) as (kafka_raw, topics), pg_schema("cap_store", args.pg_url) as url:
        systems = {f"s{i:02d}": {"connector": "bench.noop", "concurrency": args.concurrency, "max_attempts": 4}
                   for i in range(args.systems)}
        raw = {"store_url": url, "subject_key": "bench-subject-key-" + "0" * 32, "kafka": kafka_raw,
               "systems": systems, "retry": {"base_seconds": 0.05, "max_seconds": 0.5},
               "worker": {"poll_seconds": args.poll_seconds, "lease_seconds": 30, "drain_seconds": 5,
                          "http_port": 0, "http_host": "127.0.0.1", "max_in_flight": args.max_in_flight}}
        ports = [free_port() for _ in range(args.workers)]
        watch = Watch(topics.receipts)
        publisher = Publisher(topics.commands)
        counters = DbCounters(args.pg_url)
        workers = [start_worker({**raw, "worker": {**raw["worker"], "worker_id": f"{prefix}-w{i}",
                                                   "http_port": ports[i]}}, directory,
                                f"{prefix}-w{i}", args.tree) for i in range(args.workers)]
        try:
            for process, log_path in workers:
                wait_started(process, log_path)
            warm = commands(20, args.systems)
            sent = publisher.publish(warm)
            if not watch.wait(list(sent), 120):
                sys.exit("the warm-up did not complete within 120 s")
            result: dict[str, Any] = {"config": "worker", "workers": args.workers}
            rounds = max(1, args.soak // args.requests) if args.soak else 1
            rss: list[float] = []
            for round_ in range(rounds):
                burst = commands(args.requests, args.systems)
                counters.reset()
                statements0, commits0, syncs0 = counters.read()
                cpu0 = sum(cpu_seconds(p.pid) for p, _ in workers)
                split = CpuSplit([p.pid for p, _ in workers])
                steps0 = loop_seconds(ports)
                started = time.monotonic()
                sent = publisher.publish(burst)
                complete = watch.wait(list(sent), args.timeout)
                done = [watch.completed[k] for k in sent if k in watch.completed]
                elapsed = (max(done) if complete else time.monotonic()) - started
                cpu = sum(cpu_seconds(p.pid) for p, _ in workers) - cpu0
                cpu_split = split.per_request(len(done))
                steps = loop_split(steps0, loop_seconds(ports), len(done))
                statements1, commits1, syncs1 = counters.read()
                latencies = [watch.completed[k] - t for k, t in sent.items() if k in watch.completed]
                rss.append(sum(rss_mb(p.pid) for p, _ in workers))
                if args.soak:
                    split_mb = memory_split(workers[0][0].pid)
                    print(f"  soak round {round_ + 1}/{rounds}: {len(done) / elapsed:.0f} req/s, worker RSS "
                          f"{rss[-1]:.1f} MB, {sum(threads(p.pid) for p, _ in workers)} threads; the first worker's "
                          + ", ".join(f"{kind} {mb:.1f}" for kind, mb in split_mb.items()) + " MB", flush=True)
                    if args.soak_clear and round_ + 1 < rounds:
                        clear_store(url)
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
            with engine.connect() as conn:
                transitions = conn.execute(sa.text(
                    "SELECT count(*) FROM audit_events a JOIN requests r USING (request_id) "
                    "WHERE a.system IS NOT NULL AND r.request_id = ANY(:ids)"),
                    {"ids": [k.decode() for k in sent]}).scalar_one()
                pending = conn.execute(sa.text("SELECT count(*) FROM outbox")).scalar_one()
            engine.dispose()
            n = len(done)
            result.update(
                requests=args.requests, completed=n, elapsed=elapsed, rate=n / elapsed,
                transitions=transitions / elapsed, statements=(statements1 - statements0) / max(n, 1),
                commits=(commits1 - commits0) / max(n, 1), syncs=(syncs1 - syncs0) / max(n, 1),
                cpu_ms=cpu * 1000 / max(n, 1),
                p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99), rss=rss, cpu_split=cpu_split,
                loop_steps=steps,
                no_accepted=sum(1 for k in sent if k not in watch.accepted),
                two_ends=sum(1 for k in sent if len(watch.terminal.get(k, ())) > 1), outbox_left=pending,
            )
            if args.lone:
                lone: list[float] = []
                lone_ids: list[str] = []
                for _ in range(args.lone):
                    sent = publisher.publish(commands(1, args.systems))
                    if not watch.wait(list(sent), 30):
                        sys.exit("a lone request did not complete within 30 s")
                    key = next(iter(sent))
                    lone.append(watch.completed[key] - sent[key])
                    lone_ids.append(key.decode())
                result["lone"] = statistics.median(lone)
                result["lone_max"] = max(lone)
                engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
                with engine.connect() as conn:  # the store's own view: accepted -> completed
                    spans = conn.execute(sa.text(
                        "SELECT extract(epoch FROM completed_at - created_at) FROM requests "
                        "WHERE request_id = ANY(:ids)"), {"ids": lone_ids}).scalars().all()
                engine.dispose()
                result["lone_store"] = statistics.median(float(v) for v in spans)
        finally:
            stop_processes([process for process, _ in workers])
            watch.close()
            counters.dispose()
    return result


def clear_store(url: str) -> None:
    """Empties what a burst wrote. The worker is idle (every receipt was read), so it waits at most for
    the lock of its next claim."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE audit_events, outbox, tasks, requests"))
    engine.dispose()


# --- the floor ---------------------------------------------------------------------------------------


def floor_run(args: argparse.Namespace, directory: Path, *, writes: bool = False) -> dict[str, Any]:
    """The bare loop's run. ``writes``: the write-set floor, on oubli's own tables (see ``write_set_floor``)."""
    prefix = f"floor{uuid.uuid4().hex[:8]}"
    with run_topics(prefix) as (kafka_raw, topics), pg_schema("cap_floor", args.pg_url) as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            if writes:
                store_schema.metadata.create_all(conn)
            else:
                conn.execute(sa.text("CREATE TABLE floor_requests (seq bigserial PRIMARY KEY, request_id text UNIQUE, "
                                     "status text, subject_json text)"))
                conn.execute(sa.text("CREATE TABLE floor_tasks (request_id text, system text, state text, "
                                     "PRIMARY KEY (request_id, system))"))
        engine.dispose()
        spec = {"url": url.replace("postgresql+psycopg://", "postgresql://"), "commands": topics.commands,
                "receipts": topics.receipts, "group": kafka_raw["group_id"], "systems": args.systems,
                "writes": writes}
        log_path = directory / f"{prefix}.log"
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, __file__, "--floor-worker", json.dumps(spec)],
            stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
        watch = Watch(topics.receipts)
        publisher = Publisher(topics.commands)
        counters = DbCounters(args.pg_url)
        try:
            warm = publisher.publish(commands(20, args.systems))
            if not watch.wait(list(warm), 60):
                sys.exit(f"the floor did not answer:\n{log_path.read_text(errors='replace')[-2000:]}")
            counters.reset()
            statements0, commits0, syncs0 = counters.read()
            cpu0 = cpu_seconds(process.pid)
            split = CpuSplit([process.pid])
            started = time.monotonic()
            sent = publisher.publish(commands(args.requests, args.systems))
            complete = watch.wait(list(sent), args.timeout)
            done = [watch.completed[k] for k in sent if k in watch.completed]
            elapsed = (max(done) if complete else time.monotonic()) - started
            cpu = cpu_seconds(process.pid) - cpu0
            cpu_split = split.per_request(len(done))
            statements1, commits1, syncs1 = counters.read()
            latencies = [watch.completed[k] - t for k, t in sent.items() if k in watch.completed]
        finally:
            process.terminate()
            process.wait(30)
            watch.close()
            counters.dispose()
    n = len(done)
    return {"config": "writes" if writes else "floor", "requests": args.requests, "completed": n,
            "elapsed": elapsed, "rate": n / elapsed,
            "transitions": float("nan"), "statements": (statements1 - statements0) / max(n, 1),
            "commits": (commits1 - commits0) / max(n, 1), "syncs": (syncs1 - syncs0) / max(n, 1),
            "cpu_ms": cpu * 1000 / max(n, 1),
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "cpu_split": cpu_split}


def floor_worker(spec: dict[str, Any]) -> None:
    """The bare loop: consume a batch, COPY its rows in one durable transaction, produce, store offsets."""
    import signal

    import psycopg

    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": spec["group"], "enable.auto.commit": False,
                         "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    consumer.subscribe([spec["commands"]])
    producer = Producer({"bootstrap.servers": KAFKA, "linger.ms": 2, "enable.idempotence": True})
    systems = [f"s{i:02d}" for i in range(spec["systems"])]
    last_commit = time.monotonic()
    write = write_set_floor if spec.get("writes") else insert_floor
    with psycopg.connect(spec["url"]) as conn:
        while not stop:
            batch = [m for m in consumer.consume(1000, 0.02) if m.error() is None]
            if batch:
                docs = [json.loads(m.value()) for m in batch]
                for key, value, status in write(conn, docs, systems, spec["receipts"]):
                    while True:
                        try:
                            producer.produce(spec["receipts"], key=key, value=value,
                                             headers=[("x-oubli-status", status)])
                            break
                        except BufferError:
                            producer.poll(0.01)
                for message in batch:
                    consumer.store_offsets(message)
            producer.poll(0)
            if time.monotonic() - last_commit > 0.2:
                with contextlib.suppress(KafkaException):
                    consumer.commit(asynchronous=True)
                last_commit = time.monotonic()
    producer.flush(10)
    consumer.close()


Receipts = list[tuple[bytes, bytes, bytes]]  # key, value, the x-oubli-status header


def receipt(request_id: str, status: str) -> tuple[bytes, bytes, bytes]:
    return (request_id.encode(), json.dumps({"request_id": request_id, "status": status}).encode(),
            status.encode())


def insert_floor(conn: Any, docs: list[dict[str, Any]], systems: list[str], _topic: str) -> Receipts:
    """One request row and a row per system per command, in one durable COPY transaction; a receipt each."""
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY floor_requests (request_id, status, subject_json) FROM STDIN") as copy:
            for doc in docs:
                copy.write_row((doc["request_id"], "completed", json.dumps(doc["subject"])))
        with cur.copy("COPY floor_tasks (request_id, system, state) FROM STDIN") as copy:
            for doc in docs:
                for system in systems:
                    copy.write_row((doc["request_id"], system, "confirmed"))
    return [receipt(doc["request_id"], "completed") for doc in docs]


def write_set_floor(conn: Any, docs: list[dict[str, Any]], systems: list[str], topic: str) -> Receipts:
    """What the orchestration must write, with none of its Python: oubli's tables and indexes, and per command
    the rows a worker writes for an erasure whose systems all confirm at once (``pg_stat_user_tables`` after a
    real run: 1 request row inserted and updated twice, 10 task rows inserted and updated twice, 23 audit
    rows, 2 outbox rows inserted and deleted). Four durable transactions per batch, as the worker's turn has:
    intake, claim, results, relay. Each is a few set-based statements, so the SQL side is all it costs."""
    ids = [doc["request_id"] for doc in docs]
    now = dt.datetime.now(dt.UTC)

    def receipts(cur: Any, status: str) -> None:
        with cur.copy("COPY outbox (topic, key, value, headers_json, created_at) FROM STDIN") as copy:
            for request_id in ids:
                key, value, _ = receipt(request_id, status)
                copy.write_row((topic, key, value, json.dumps([["x-oubli-status", status]]), now))

    def audit_tasks(cur: Any, update: str, action: str, before: str, after: str, values: tuple[Any, ...]) -> None:
        cur.execute(f"WITH moved AS ({update} RETURNING request_id, system, attempts) "  # noqa: S608 - constants
                    "INSERT INTO audit_events (request_id, system, at, actor, action, from_state, to_state, attempt) "
                    f"SELECT request_id, system, %s, 'floor', '{action}', '{before}', '{after}', attempts FROM moved",
                    (*values, now))

    def audit_requests(cur: Any, update: str, before: str, after: str, values: tuple[Any, ...]) -> None:
        cur.execute(f"WITH moved AS ({update} RETURNING request_id) "  # noqa: S608 - constants
                    "INSERT INTO audit_events (request_id, at, actor, action, from_state, to_state) "
                    f"SELECT request_id, %s, 'floor', 'status_changed', '{before}', '{after}' FROM moved",
                    (*values, now))

    with conn.transaction(), conn.cursor() as cur:  # intake
        with cur.copy("COPY requests (request_id, kind, status, subject_ref, body_digest, subject_json, requested_by, "
                      "requested_at, due_at, created_at, updated_at, priority) FROM STDIN") as copy:
            for doc in docs:
                copy.write_row((doc["request_id"], "erasure", "accepted", doc["subject"]["customer_id"][:80],
                                "0" * 64, json.dumps(doc["subject"]), "floor", now, now + dt.timedelta(days=30),
                                now, now, "standard"))
        cur.execute("INSERT INTO tasks (request_id, system, request_seq, state, attempts, max_attempts, "
                    "next_attempt_at, records, version, lease_losses, background, due_at) "
                    "SELECT r.request_id, s, r.seq, 'pending', 0, 8, r.created_at, 0, 0, 0, false, r.due_at "
                    "FROM requests AS r CROSS JOIN unnest(%s::text[]) AS s WHERE r.request_id = ANY(%s)",
                    (systems, ids))
        cur.execute("INSERT INTO audit_events (request_id, at, actor, action, to_state) "
                    "SELECT unnest(%s::text[]), %s, 'floor', 'accepted', 'accepted'", (ids, now))
        receipts(cur, "accepted")
    published = relay(conn)
    with conn.transaction(), conn.cursor() as cur:  # the claim
        audit_tasks(cur, "UPDATE tasks SET state = 'running', attempts = attempts + 1, next_attempt_at = NULL, "
                    "lease_owner = 'floor', lease_expires_at = %s, version = version + 1 "
                    "WHERE request_id = ANY(%s) AND state = 'pending'", "claimed", "pending", "running",
                    (now + dt.timedelta(seconds=60), ids))
        audit_requests(cur, "UPDATE requests SET status = 'in_progress', updated_at = %s "
                       "WHERE request_id = ANY(%s) AND status = 'accepted'", "accepted", "in_progress", (now, ids))
    with conn.transaction(), conn.cursor() as cur:  # the results
        audit_tasks(cur, "UPDATE tasks SET state = 'confirmed', outcome = 'erased', confirmed_at = %s, "
                    "confirmed_by = 'floor', lease_owner = NULL, lease_expires_at = NULL, version = version + 1 "
                    "WHERE request_id = ANY(%s) AND state = 'running'", "confirmed", "running", "confirmed", (now, ids))
        audit_requests(cur, "UPDATE requests SET status = 'completed', updated_at = %s, completed_at = %s, "
                       "subject_json = NULL, purged_at = %s WHERE request_id = ANY(%s) AND status = 'in_progress'",
                       "in_progress", "completed", (now, now, now, ids))
        receipts(cur, "completed")
    return published + relay(conn)


def relay(conn: Any) -> Receipts:
    """The outbox's rows, read and deleted in one transaction (the worker deletes what the broker acknowledged)."""
    with conn.transaction(), conn.cursor() as cur:
        rows = cur.execute("SELECT id, key, value, headers_json FROM outbox ORDER BY id").fetchall()
        cur.execute("DELETE FROM outbox WHERE id = ANY(%s)", ([row[0] for row in rows],))
    return [(bytes(row[1]), bytes(row[2]), json.loads(row[3])[0][1].encode()) for row in rows]


# --- report ------------------------------------------------------------------------------------------


def show(result: dict[str, Any]) -> None:
    flag = "" if result["completed"] == result["requests"] else "  INCOMPLETE"
    line = (f"  {result['config']:7} {result['rate']:8.1f} req/s  {result['transitions']:8.0f} transitions/s  "
            f"{result['statements']:6.2f} stmts/req  {result['commits']:6.3f} commits/req  "
            f"{result.get('syncs', float('nan')):6.3f} WAL syncs/req  "
            f"{result['cpu_ms']:6.2f} CPU ms/req  p50 {result['p50']:.3f}s  p99 {result['p99']:.3f}s  "
            f"({result['completed']} in {result['elapsed']:.1f}s){flag}")
    print(line, flush=True)
    show_where_time_went(result)
    if "lone" in result:
        print(f"          lone request: median {result['lone'] * 1000:.0f} ms, max {result['lone_max'] * 1000:.0f} ms "
              f"(accepted -> completed in the store: median {result['lone_store'] * 1000:.0f} ms)")
    if "no_accepted" in result:
        print(f"          checks: without an accepted receipt {result['no_accepted']}, with two different "
              f"terminal receipts {result['two_ends']}, outbox rows left {result['outbox_left']}")


def print_header(title: str, run: str, pg_url: str, label: str) -> None:
    """When, where and under what load a run was made, and the settings that make a commit durable: the
    figures mean little without them."""
    print(f"{title}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; {run}")
    with sa.create_engine(pg_url, poolclass=sa.pool.NullPool).connect() as conn:
        print(f"  {label}: fsync={conn.execute(sa.text('SHOW fsync')).scalar_one()}, "
              f"synchronous_commit={conn.execute(sa.text('SHOW synchronous_commit')).scalar_one()}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--floor-worker":
        floor_worker(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--systems", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16, help="each system's concurrency limit")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--poll-seconds", type=float, default=0.05)
    parser.add_argument("--lone", type=int, default=20, help="lone requests after the burst (0: none)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--write-floor", action="store_true",
                        help="also the write-set floor: the worker's row writes on its own tables, no orchestration")
    parser.add_argument("--no-worker", action="store_true")
    parser.add_argument("--soak", type=int, default=0, help="requests in all, in bursts of --requests")
    parser.add_argument("--soak-clear", action="store_true", help="empty the store after each soak burst")
    parser.add_argument("--tree", type=Path, help="run the worker from this checkout")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--pg-url", default=PG_URL)
    args = parser.parse_args()
    print_header("oubli capacity", f"{args.requests} erasures x {args.systems} no-op systems, {args.workers} "
                 f"worker(s){f', tree {args.tree}' if args.tree else ''}", args.pg_url, "store")
    with tempfile.TemporaryDirectory(prefix="oubli-capacity-") as tmp:
        for _ in range(args.repeats):
            worker = None if args.no_worker else worker_run(args, Path(tmp))
            if worker is not None:
                show(worker)
                if args.soak:
                    rss = worker["rss"]
                    print(f"  RSS: first {rss[0]:.1f} MB, last {rss[-1]:.1f} MB, max {max(rss):.1f} MB "
                          f"({(rss[-1] / rss[0] - 1) * 100:+.1f} %)")
            if not args.no_floor and not args.soak:
                floor = floor_run(args, Path(tmp))
                show(floor)
                if worker is not None:
                    print(f"  capacity / floor = {worker['rate'] / floor['rate']:.3f}")
            if args.write_floor:
                writes = floor_run(args, Path(tmp), writes=True)
                show(writes)
                if worker is not None:
                    print(f"  capacity / write-set floor = {worker['rate'] / writes['rate']:.3f}")


if __name__ == "__main__":
    main()
