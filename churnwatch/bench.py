"""``churnwatch bench``: how fast one worker (and two) drains a history, on this machine.

Starts its own embedded broker on a free port, pre-produces a simulated history
(``--customers``, ``--days``) and measures, in the same run and on the same
topics:

- a bare loop: aiokafka consume + JSON decode + a dict update per event, the
  ceiling any Python consumer on this broker can reach;
- a do-nothing Faust agent with the worker's consumer settings (JSON decode,
  ack per batch): what Faust's per-message delivery costs before churnwatch
  does anything, the ceiling of any worker built on Faust streams;
- ``churnwatch worker`` (model serving on unless ``--no-model``) draining the
  same history, from its first processed batch to its last, with its RSS and
  the bytes of state it stores per customer (the changelog's last record per
  customer, and the store folder), and the cores it and the broker kept busy
  (CPU time over the drain's wall time: on a machine with few cores, whether
  a second worker can add anything), and the most events it held at once for
  the watermark (``waiting``: the reorder buffer's peak, about 2 KB an event);
- with ``--workers 2``, two workers in one consumer group;
- then the last ``--live-days`` of the history produced live at
  ``--live-rate`` events/s, for the event-to-warning latency (from the
  broker's timestamp of the event that let a sweep run to the warning sent,
  read from the worker's latency histogram: bucket bounds, so "<= x s").

Prints a table and, with ``--json PATH``, writes the figures as JSON.

``--backtest`` times the batch path instead (no broker): ``churnwatch
backtest``'s work on the same simulated history, with the walk-forward model
unless ``--no-model`` (``--customers 4600 --days 540`` is about a million events).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from churnwatch.core.broker import EmbeddedBroker, free_port, start_child, stop_child
from churnwatch.core.settings import Settings
from churnwatch.core.topics import EVENT_TOPICS, end_offsets, ensure_topics
from pipeline.app import event_loop_factory, faust_app, input_topics, use_event_loop
from producers.produce import produce
from producers.simulator import SimEvent, iter_paced, parse_start, simulate

POLL_SECONDS = 0.5
#: How often a drain reads the workers' event counters: a drain's end is known
#: to within this (0.5 s put about 8% on a 12 s drain).
DRAIN_POLL_SECONDS = 0.1


@dataclass
class Run:
    """One drain of the history by ``workers`` worker processes."""

    workers: int
    events: int
    seconds: float
    events_per_second: float
    ratio_to_bare_loop: float
    ratio_to_faust_floor: float | None
    startup_seconds: float
    rss_mb_idle: float
    rss_mb_end: float
    rss_bytes_per_customer: float
    state_bytes_per_customer: float
    store_dir_bytes_per_customer: float
    warnings: int
    latency_p50_seconds: float | None = None
    latency_p99_seconds: float | None = None
    live_events: int = 0
    #: CPU time over the drain's wall time: how many of the machine's cores the
    #: workers (together) and the broker kept busy while draining.
    worker_cores: float | None = None
    broker_cores: float | None = None
    #: The most events the workers held (together) for the watermark at one poll
    #: of the drain: what the reorder buffer took of their memory at its peak.
    waiting_max: int = 0


@dataclass
class BenchResult:
    customers: int
    days: int
    events: int
    model: str
    store: str
    machine: str
    bare_loop_events_per_second: float
    faust_floor_events_per_second: float | None = None
    event_loop: str = "asyncio"
    runs: list[Run] = field(default_factory=list)


def machine() -> str:
    cores = os.cpu_count() or 0
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        memory = f", {kb / 1024**2:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cores} cores{memory}, Python {sys.version.split()[0]}, {sys.platform}"


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command: state is field 3, utime 14 and stime 15 (man 5 proc)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cores(pids: list[int], before: list[float | None], seconds: float) -> float | None:
    after = [cpu_seconds(pid) for pid in pids]
    used = 0.0
    for start, end in zip(before, after, strict=True):
        if start is None or end is None:
            return None
        used += end - start
    return round(used / seconds, 2) if seconds >= 1 else None  # shorter: ticks, not figures


def _metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:  # noqa: S310 - loopback
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _sum(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for labels, value in metrics.get(name, []) if labels.get("topic") != "ticks")


def _latency_buckets(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[float, float]:
    return {
        float(labels["le"]): value
        for labels, value in metrics.get("churnwatch_warning_latency_seconds_bucket", [])
        if labels.get("since") == "ingest"
    }


def _quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The bucket bound under which a share ``q`` of the new observations fall."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * total:
            return bound
    return None


async def bare_loop(bootstrap: str, topics: list[str], total: int) -> float:
    """Seconds for aiokafka to consume ``total`` messages, JSON-decode each and
    update a per-customer dict: what any consumer on this broker must pay."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))
        ]
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


def _faust_floor(settings: Settings, total: int, workdir: Path) -> float:
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
    args = [sys.executable, "-m", "churnwatch.bench", str(total), str(answer)]
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
    """The child of :func:`_faust_floor`: a Faust agent that decodes, acks, nothing else."""
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


def _changelog_bytes(settings: Settings, topic: str) -> tuple[int, int]:
    """(customers, bytes of their last stored state) from a changelog topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(group_id=None, **settings.kafka_client_options())
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    latest: dict[bytes, int] = {}
    if tps:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = end_offsets(settings, tps)
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    if message.value is not None:
                        latest[message.key] = len(message.value)
    consumer.close()
    return len(latest), sum(latest.values())


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_bench(
    settings: Settings,
    customers: int,
    days: int,
    workers: int = 1,
    with_model: bool = True,
    store: str = "rocksdb://",
    live_days: int = 30,
    live_rate: float = 1000.0,
    faust_floor: bool = True,
    say: Callable[[str], None] = print,
) -> BenchResult:
    """Run the benchmark; see the module docstring."""
    from churnwatch.demo import train_demo_model

    loop_factory = event_loop_factory(settings.worker.event_loop)
    sim = settings.simulator
    workdir = Path(tempfile.mkdtemp(prefix="churnwatch-bench-"))
    events, _truth = simulate(
        customers, sim.seed, parse_start(sim.start), days, sim.owners, malformed=0
    )
    live_from = events[-1].ts - timedelta(days=live_days)
    history = [e for e in events if e.ts < live_from]
    live = [e for e in events if e.ts >= live_from]
    registry = workdir / "registry"
    model = "none"
    if with_model:
        say("training a churn model on a simulated past (as the demo does) ...")
        model = train_demo_model(settings, customers, registry).version
    host = settings.broker.host
    broker = EmbeddedBroker(host, free_port(host), settings.broker.startup_timeout_seconds)
    result = BenchResult(customers, days, len(history), model, store, machine(), 0.0)
    result.event_loop = "uvloop" if loop_factory else "asyncio"
    try:
        broker.start()
        say(f"broker on {broker.bootstrap_servers}; {len(history)} events to drain")
        counts = sorted({1, workers})
        for n in counts:
            run_settings = _isolated(settings, broker.bootstrap_servers)
            ensure_topics(run_settings)
            _produce_all(run_settings, history, say)
            topics = [run_settings.topic(t) for t in EVENT_TOPICS]
            if not result.bare_loop_events_per_second:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    seconds = runner.run(bare_loop(broker.bootstrap_servers, topics, len(history)))
                result.bare_loop_events_per_second = len(history) / seconds
                say(f"bare loop: {result.bare_loop_events_per_second:,.0f} events/s")
                if faust_floor:
                    result.faust_floor_events_per_second = _faust_floor(
                        run_settings, len(history), workdir
                    )
                    floor = result.faust_floor_events_per_second
                    say(f"do-nothing Faust agent: {floor:,.0f} events/s")
            run = _drain(
                run_settings,
                n,
                len(history),
                live,
                live_rate,
                registry,
                store,
                workdir,
                say,
                broker.proc.pid if broker.proc else None,
            )
            run.ratio_to_bare_loop = run.events_per_second / result.bare_loop_events_per_second
            if result.faust_floor_events_per_second:
                run.ratio_to_faust_floor = round(
                    run.events_per_second / result.faust_floor_events_per_second, 3
                )
            result.runs.append(run)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def run_backtest_bench(
    settings: Settings,
    customers: int,
    days: int,
    with_model: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time a backtest of the simulated history, as ``churnwatch backtest`` runs it."""
    from models.backtest import backtest
    from pipeline.events import decode_event

    sim = settings.simulator
    events, _truth = simulate(
        customers, sim.seed, parse_start(sim.start), days, sim.owners, malformed=0
    )
    decoded = [decode_event(e.payload) for e in events]
    say(f"backtesting {len(decoded):,} events of {customers} customers over {days} days ...")
    workdir = Path(tempfile.mkdtemp(prefix="churnwatch-bench-"))
    try:
        started = time.perf_counter()
        summary = backtest(
            decoded,
            settings.warnings,
            settings.clock.sweep_every_hours * 3600,
            90,
            workdir,
            settings.model if with_model else None,
            progress=lambda line: say(f"  {time.perf_counter() - started:6.1f} s  {line}"),
        )
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "machine": machine(),
        "customers": customers,
        "days": days,
        "events": len(decoded),
        "model": "walk-forward" if with_model else "none (rules only)",
        "seconds": round(seconds, 1),
        "events_per_second": round(len(decoded) / seconds),
        "churns": summary["churns"],
    }


def _isolated(settings: Settings, bootstrap: str) -> Settings:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"bootstrap_servers": bootstrap, "topic_prefix": prefix}
            ),
            "worker": settings.worker.model_copy(update={"app_id": f"cw-{prefix}"}),
        }
    )


def _produce_all(settings: Settings, events: list[SimEvent], say: Callable[[str], None]) -> None:
    started = time.monotonic()
    stats = produce(settings, iter_paced(events, 0))
    if stats.failed:
        raise RuntimeError(f"{stats.failed} of {stats.sent} events could not be produced")
    say(f"produced {stats.sent} events in {time.monotonic() - started:.0f} s")


def _drain(
    settings: Settings,
    workers: int,
    total: int,
    live: list[SimEvent],
    live_rate: float,
    registry: Path,
    store: str,
    workdir: Path,
    say: Callable[[str], None],
    broker_pid: int | None = None,
) -> Run:
    procs = []
    ports = []
    data_dirs = []
    started = time.monotonic()
    try:
        for i in range(workers):
            port = free_port()
            data_dir = workdir / f"{settings.kafka.topic_prefix}-worker{i}"
            env = dict(
                os.environ,
                CHURNWATCH_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
                CHURNWATCH_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
                CHURNWATCH_WORKER__APP_ID=settings.worker.app_id,
                CHURNWATCH_WORKER__STORE=store,
                CHURNWATCH_WORKER__DATA_DIR=str(data_dir),
                CHURNWATCH_WORKER__METRICS_PORT=str(port),
                CHURNWATCH_CLOCK__MODE="event",
                CHURNWATCH_MODEL__REGISTRY=str(registry),
            )
            log = workdir / f"{settings.kafka.topic_prefix}-worker{i}.log"
            procs.append(
                start_child([sys.executable, "-m", "churnwatch.cli", "worker"], env=env, log=log)
            )
            ports.append(port)
            data_dirs.append(data_dir)
        idle_rss = 0.0
        first_at = first_count = None
        worker_cpu: list[float | None] = [None] * workers
        broker_cpu: list[float | None] = [None]
        processed = 0.0
        waiting_max = 0
        deadline = time.monotonic() + 3600
        while processed < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers processed {processed:.0f} of {total} in an hour")
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited with {proc.returncode}")
            figures = [_metrics(port) for port in ports]
            processed = sum(_sum(m, "churnwatch_events_consumed_total") for m in figures)
            waiting_max = max(
                waiting_max, int(sum(_sum(m, "churnwatch_events_waiting") for m in figures))
            )
            now = time.monotonic()
            if processed == 0:
                idle_rss = sum(rss_mb(proc.pid) for proc in procs)
            elif first_at is None:
                first_at, first_count = now, processed
                worker_cpu = [cpu_seconds(proc.pid) for proc in procs]
                broker_cpu = [cpu_seconds(broker_pid)] if broker_pid else [None]
            time.sleep(DRAIN_POLL_SECONDS)
        done_at = time.monotonic()
        if first_at is None or first_count is None:  # drained between two polls
            first_at, first_count = done_at - DRAIN_POLL_SECONDS, 0.0
        seconds = max(done_at - first_at, DRAIN_POLL_SECONDS)
        worker_cores = _cores([proc.pid for proc in procs], worker_cpu, done_at - first_at)
        broker_cores = _cores([broker_pid], broker_cpu, done_at - first_at) if broker_pid else None
        rate = (total - first_count) / seconds if total > first_count else total / seconds
        end_rss = sum(rss_mb(proc.pid) for proc in procs)
        customers, state_bytes = _changelog_bytes(
            settings, f"{settings.worker.app_id}-customer_state-changelog"
        )
        before = [_latency_buckets(_metrics(port)) for port in ports]
        say(
            f"{workers} worker(s): {rate:,.0f} events/s over {seconds:.1f} s; "
            f"producing {len(live)} live events at {live_rate:g}/s for the latency ..."
        )
        produce(settings, iter_paced(live, 0) if live_rate <= 0 else _at_rate(live, live_rate))
        target = total + len(live)
        wait_until = time.monotonic() + 120
        while processed < target and time.monotonic() < wait_until:
            processed = sum(
                _sum(_metrics(port), "churnwatch_events_consumed_total") for port in ports
            )
            time.sleep(POLL_SECONDS)
        time.sleep(1)
        after_metrics = [_metrics(port) for port in ports]
        after = [_latency_buckets(m) for m in after_metrics]
        merged_before = _merge(before)
        merged_after = _merge(after)
        warnings = int(sum(_sum(m, "churnwatch_warnings_total") for m in after_metrics))
        store_dir = sum(_dir_bytes(d) for d in data_dirs if d.exists())
        per = max(customers, 1)
        return Run(
            workers=workers,
            events=total,
            seconds=round(seconds, 2),
            events_per_second=round(rate),
            ratio_to_bare_loop=0.0,
            ratio_to_faust_floor=None,
            startup_seconds=round(first_at - started, 1),
            rss_mb_idle=round(idle_rss, 1),
            rss_mb_end=round(end_rss, 1),
            rss_bytes_per_customer=round((end_rss - idle_rss) * 1024 * 1024 / per),
            state_bytes_per_customer=round(state_bytes / per),
            store_dir_bytes_per_customer=round(store_dir / per),
            warnings=warnings,
            latency_p50_seconds=_quantile(merged_before, merged_after, 0.5),
            latency_p99_seconds=_quantile(merged_before, merged_after, 0.99),
            live_events=len(live),
            worker_cores=worker_cores,
            broker_cores=broker_cores,
            waiting_max=waiting_max,
        )
    finally:
        for proc in procs:
            stop_child(proc)


def _processed(ports: list[int]) -> float:
    return sum(_sum(_metrics(port), "churnwatch_events_consumed_total") for port in ports)


def _merge(buckets: list[dict[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for one in buckets:
        for bound, value in one.items():
            out[bound] = out.get(bound, 0.0) + value
    return out


def _at_rate(events: list[SimEvent], rate: float) -> list[tuple[SimEvent, float]]:
    return [(event, i / rate) for i, event in enumerate(events)]


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _cores_used(run: Run) -> str:
    if run.worker_cores is None:
        return "n/a"
    broker = "?" if run.broker_cores is None else f"{run.broker_cores:.2f}"
    return f"{run.worker_cores:.2f}+{broker}"


def format_result(result: BenchResult) -> str:
    """The figures as a plain-text table."""
    lines = [
        f"churnwatch bench: {result.customers} customers, {result.days} days, "
        f"{result.events:,} events drained; model {result.model}; store {result.store}",
        f"machine: {result.machine}",
        f"event loop: {result.event_loop}",
        f"bare loop (aiokafka + JSON decode + dict update): "
        f"{result.bare_loop_events_per_second:,.0f} events/s",
    ]
    floor = result.faust_floor_events_per_second
    if floor:
        lines.append(
            f"do-nothing Faust agent (decode + ack per batch): {floor:,.0f} events/s "
            f"({floor / result.bare_loop_events_per_second:.3f} x bare)"
        )
    lines += [
        "",
        f"{'workers':>7} {'events/s':>9} {'x bare':>7} {'x Faust':>7} "
        f"{'p50 lat':>8} {'p99 lat':>8} "
        f"{'RSS MB':>7} {'RSS B/cust':>10} {'state B/cust':>12} {'store B/cust':>12} "
        f"{'warnings':>8} {'cores w+b':>9} {'waiting':>7}",
    ]
    for run in result.runs:

        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"<={x:g}s"

        lines.append(
            f"{run.workers:>7} {run.events_per_second:>9,.0f} {run.ratio_to_bare_loop:>7.3f} "
            f"{_ratio(run.ratio_to_faust_floor):>7} "
            f"{fmt(run.latency_p50_seconds):>8} {fmt(run.latency_p99_seconds):>8} "
            f"{run.rss_mb_end:>7.0f} {run.rss_bytes_per_customer:>10,.0f} "
            f"{run.state_bytes_per_customer:>12,.0f} {run.store_dir_bytes_per_customer:>12,.0f} "
            f"{run.warnings:>8} {_cores_used(run):>9} {run.waiting_max:>7,}"
        )
    if len(result.runs) > 1:
        one, many = result.runs[0], result.runs[-1]
        speedup = many.events_per_second / one.events_per_second
        lines.append(f"{many.workers} workers drain {speedup:.2f}x one")
    return "\n".join(lines)


def to_json(result: BenchResult) -> str:
    return json.dumps(asdict(result), indent=2)


if __name__ == "__main__":  # the Faust floor's child process
    _faust_floor_main(int(sys.argv[1]), Path(sys.argv[2]))


def run_web_bench(
    settings: Settings,
    customers: int = 2000,
    days: int = 400,
    rounds: int = 7,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time the web inbox's pages over HTTP: a ledger with one open warning of every
    type for each of ``customers`` simulated customers (10,000 for 2,000), their live
    states held as the inbox holds the workers' (no broker: filled in process)."""
    import statistics
    from datetime import UTC, datetime, timedelta

    import requests

    from consumers.alerts.ledger import Customer, Episode, open_ledger
    from consumers.web.app import WebServer
    from consumers.web.live import LiveStates
    from consumers.web.users import add_user
    from pipeline.apply import apply_event
    from pipeline.events import WARNING_TYPES, CustomerUpdated, decode_event
    from pipeline.state import to_epoch

    sim = settings.simulator
    events, truth = simulate(customers, sim.seed, parse_start(sim.start), days, sim.owners, 0)
    workdir = Path(tempfile.mkdtemp(prefix="churnwatch-web-bench-"))
    settings = settings.model_copy(
        update={
            "alerts": settings.alerts.model_copy(
                update={"ledger_url": f"sqlite:///{workdir / 'alerts.db'}"}
            )
        }
    )
    sessions = open_ledger(settings.alerts.ledger_url)
    now = datetime.now(UTC)
    owners: dict[str, str] = {}
    live = LiveStates(settings)
    for sim_event in events:
        event = decode_event(sim_event.payload)
        if isinstance(event, CustomerUpdated):
            owners[event.customer_id] = event.owner
        apply_event(live.block.state(event.customer_id), event)
        live.partition_of[event.customer_id] = 0
    live.progress[0] = to_epoch(events[-1].ts)
    with sessions.begin() as session:
        add_user(session, "manager", "bench-password", "manager")
        add_user(session, "rep", "bench-password", "rep", owners[truth[0].customer_id])
        for k, t in enumerate(truth):
            owner = owners.get(t.customer_id, "")
            session.add(Customer(customer_id=t.customer_id, name=t.customer_id, owner=owner))
            for i, warning_type in enumerate(WARNING_TYPES):
                session.add(
                    Episode(
                        warning_id=f"{t.customer_id}-{warning_type}",
                        customer_id=t.customer_id,
                        customer_name=f"Customer {t.customer_id}",
                        owner=owner,
                        segment="standard",
                        warning_type=warning_type,
                        severity=("low", "medium", "high", "critical")[(k + i) % 4],
                        status="open",
                        opened_at=now - timedelta(days=(k + i) % 90),
                        summary="orders down 60% against the usual 8 weeks",
                        evidence={"revenue_52w": float(1000 + k), "amount_recent": 100.0},
                        action="Call the customer this week.",
                        churn_probability=0.8 if warning_type == "churn_risk" else None,
                        received_at=now,
                    )
                )
    warnings = customers * len(WARNING_TYPES)
    say(f"{warnings:,} open warnings for {customers:,} customers; serving ...")
    server = WebServer(settings, port=0, live=live).start()
    base = server.url

    def login(user: str) -> requests.Session:
        browser = requests.Session()
        page = browser.get(f"{base}/login", timeout=30).text
        token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        browser.post(
            f"{base}/login",
            data={"csrf": token, "username": user, "password": "bench-password"},
            timeout=30,
        )
        return browser

    def timed(browser: requests.Session, path: str) -> float:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            answer = browser.get(base + path, timeout=60)
            times.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"{path} answered {answer.status_code}")
        return round(statistics.median(times), 1)

    try:
        manager, rep = login("manager"), login("rep")
        customer = truth[0].customer_id
        pages = {
            f"inbox, manager ({warnings:,} warnings, first page)": timed(manager, "/inbox"),
            "inbox, manager, filtered by type and search": timed(
                manager, "/inbox?type=sales_drop&q=C0001"
            ),
            "inbox, one rep": timed(rep, "/inbox"),
            "customer page (live features, charts)": timed(rep, f"/customers/{customer}"),
            "team view": timed(manager, "/team"),
            "team CSV": timed(manager, "/team.csv"),
        }
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "machine": machine(),
        "customers": customers,
        "open_warnings": warnings,
        "rounds": rounds,
        "median_ms": pages,
    }
