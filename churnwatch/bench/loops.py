"""The bench's yardsticks: a bare aiokafka consume loop, and a Faust agent that does nothing.

``python -m churnwatch.bench.loops TOTAL ANSWER`` is the do-nothing agent's process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from churnwatch.bench.probes import POLL_SECONDS
from churnwatch.core.broker import start_child, stop_child
from churnwatch.core.settings import Settings
from churnwatch.pipeline.app import faust_app, input_topics, use_event_loop


async def bare_loop(bootstrap: str, topics: list[str], partitions: int, total: int) -> float:
    """Seconds for aiokafka to consume ``total`` messages, JSON-decode each and
    update a per-customer dict: what any consumer on this broker must pay."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        started = time.perf_counter()
        await consumer.seek_to_beginning(*tps)
        per_customer: dict[str, int] = {}
        count = 0
        while count < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            if not batches and time.perf_counter() - started > 300:
                raise RuntimeError(f"bare loop read {count} of {total} messages in 300 s")
            for messages in batches.values():
                for message in messages:
                    event = json.loads(message.value)
                    customer = event["customer_id"]
                    per_customer[customer] = per_customer.get(customer, 0) + 1
                    count += 1
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def faust_floor_rate(settings: Settings, total: int, workdir: Path) -> float:
    """Events/s of a do-nothing Faust agent draining the topics (in a child process)."""
    log = workdir / f"{settings.kafka.topic_prefix}-faust-floor.log"
    answer = workdir / f"{settings.kafka.topic_prefix}-faust-floor.txt"
    env = dict(
        os.environ,
        CHURNWATCH_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        CHURNWATCH_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
        CHURNWATCH_WORKER__APP_ID=f"{settings.worker.app_id}-floor",
        CHURNWATCH_WORKER__STORE="memory://",
        CHURNWATCH_WORKER__DATA_DIR=str(workdir / "faust-floor"),
    )
    args = [sys.executable, "-m", "churnwatch.bench.loops", str(total), str(answer)]
    proc = start_child(args, env=env, log=log)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if answer.exists():
                return float(answer.read_text())
            if proc.poll() is not None:
                raise RuntimeError(f"the Faust floor agent exited ({proc.returncode}): see {log}")
            time.sleep(POLL_SECONDS)
        raise RuntimeError("the Faust floor agent did not drain the history in 600 s")
    finally:
        stop_child(proc)


def _faust_floor_main(total: int, answer: Path) -> None:
    """The child of :func:`faust_floor`: a Faust agent that decodes, acks, nothing else."""
    from faust import Worker

    from churnwatch.core.settings import load_settings

    settings = load_settings()
    use_event_loop(settings.worker.event_loop)
    app = faust_app(settings)
    size = settings.worker.batch_size

    @app.agent(input_topics(app, settings), name="faust_floor")
    async def faust_floor(stream: Any) -> None:
        manual = stream.noack()
        batch: list[Any] = []
        count, started = 0, 0.0
        async for event in manual.events():
            started = started or time.perf_counter()
            json.loads(event.message.value)
            batch.append(event)
            count += 1
            if len(batch) >= size or count >= total:
                for taken in batch:
                    await manual.ack(taken)
                batch.clear()
            if count == total:
                rate = total / (time.perf_counter() - started)
                partial = answer.with_suffix(".partial")
                partial.write_text(f"{rate:.1f}")
                partial.replace(answer)  # whole, or not there

    Worker(app, loglevel="warning").execute_from_commandline()


if __name__ == "__main__":  # the Faust floor's child process
    _faust_floor_main(int(sys.argv[1]), Path(sys.argv[2]))
