"""One subject's queue: a sender that retries one customer's erasure with fresh request ids, next to everyone else.

Publishes ``--same`` erasures of one customer, then ``--others`` of distinct customers (10 no-op systems each),
to the worker's real ``Loop`` in this process, with an in-memory broker (``devkit.membroker``: no Kafka, so the
figures are the store's and the loop's) and a fresh PostgreSQL schema. A subject's requests run one after
the other (SPEC invariant 7), so the queue takes one request's round trip per request; what this measures
is what the queue costs everyone: how long the others take, and how long each step of the queue takes
as it gets shorter. Before the held turns (migration 0012) every claim walked and probed every waiting
task of the queue.

    .venv/bin/python bench/subject_queue.py --same 2000 --others 1000            # 1-4 min
    .venv/bin/python bench/subject_queue.py --same 2000 --tree /tmp/oubli-before  # another checkout's worker
"""

from __future__ import annotations

import argparse
import sys

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--same", type=int, default=2000, help="requests of the one customer, published first")
parser.add_argument("--others", type=int, default=1000, help="requests of distinct customers, published after")
parser.add_argument("--limit", type=float, default=900.0, help="give up after this many seconds")
parser.add_argument("--tree", help="run the worker's code from this checkout (a git worktree)")
parser.add_argument("--pg-url", help="PostgreSQL (default: the test stack's)")
args = parser.parse_args()
if args.tree:
    sys.path.insert(0, args.tree)

import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import structlog  # noqa: E402
from _common import PG_URL, pg_schema  # noqa: E402

from devkit.membroker import MemBroker  # noqa: E402
from devkit.pipeline import raw_settings, subject_command  # noqa: E402
from worker import compose, config  # noqa: E402
from worker.loop import Loop  # noqa: E402

SYSTEMS = {f"s{i:02d}": {"connector": "bench.noop", "concurrency": 100} for i in range(10)}


def main() -> None:
    logging.disable(logging.INFO)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with pg_schema("queue", base=args.pg_url or PG_URL) as url:
        raw = raw_settings(store_url=url, bootstrap="127.0.0.1:1", systems=SYSTEMS)
        raw["worker"].update(max_in_flight=1000, batch_size=500)
        settings = config.build(raw, env={})
        broker = MemBroker(6)
        loop = Loop(compose.build(settings, migrate=True, producer_factory=broker.producer),
                    broker.consumer({"group.id": settings.kafka.group_id}))
        loop.start()
        topics = settings.kafka.topics
        queue, others = [], []
        for i in range(args.same + args.others):
            mine = i < args.same
            command = subject_command(systems=sorted(SYSTEMS), **({"customer_id": "C-QUEUE"} if mine else {}))
            (queue if mine else others).append(command["request_id"])
            broker.append(topics.commands, key=command["subject"]["customer_id"].encode(),
                          value=json.dumps(command).encode())
        start = time.monotonic()
        done: dict[str, float] = {}
        seen: dict[int, int] = {}
        while len(done) < len(queue) + len(others) and time.monotonic() - start < args.limit:
            loop.run_once()
            for partition, log in enumerate(broker.logs[topics.receipts]):
                for record in log[seen.get(partition, 0):]:
                    receipt = json.loads(record.value() or b"{}")
                    if receipt.get("status") == "completed":
                        done.setdefault(receipt["request_id"], time.monotonic() - start)
                seen[partition] = len(log)
        loop.close()
    others_done = sorted(done[r] for r in others if r in done)
    queue_done = sorted(done[r] for r in queue if r in done)
    steps = [b - a for a, b in zip(queue_done, queue_done[1:], strict=False)]
    print(f"oubli subject queue: {args.same} requests of one customer, then {args.others} of others, "
          f"10 no-op systems, worker from {args.tree or 'this tree'}")
    if others_done:
        print(f"  others:    {len(others_done)}/{len(others)} completed, p50 {statistics.median(others_done):.1f} s, "
              f"last {others_done[-1]:.1f} s")
    if queue_done:
        first, last = steps[: len(steps) // 10] or [0.0], steps[-(len(steps) // 10 or 1):] or [0.0]
        print(f"  the queue: {len(queue_done)}/{len(queue)} completed in {queue_done[-1]:.1f} s; a step "
              f"(one request to the next) median {statistics.median(first) * 1000:.0f} ms over its first tenth, "
              f"{statistics.median(last) * 1000:.0f} ms over its last")


if __name__ == "__main__":
    main()
