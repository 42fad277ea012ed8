"""The worker's benchmark: its own broker, a simulated history, the worker draining it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from churnwatch.bench.loops import bare_loop, faust_floor_rate
from churnwatch.bench.probes import (
    POLL_SECONDS,
    changelog_bytes,
    cores,
    cpu_seconds,
    dir_bytes,
    latency_buckets,
    machine,
    merge_buckets,
    metric_sum,
    metrics_of,
    quantile,
    rss_mb,
)
from churnwatch.core.apache_kafka import ApacheKafkaCluster
from churnwatch.core.broker import EmbeddedBroker, free_port, start_child, stop_child
from churnwatch.core.settings import Settings
from churnwatch.core.topics import EVENT_TOPICS, Table, changelog_topic, ensure_topics
from churnwatch.pipeline.app import event_loop_factory
from churnwatch.producers.produce import produce
from churnwatch.producers.simulator import SimEvent, iter_paced, parse_start, simulate

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
    broker: str = "tansu"
    processing_guarantee: str = "at_least_once"
    runs: list[Run] = field(default_factory=list)


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
    broker_kind: str = "tansu",
    guarantee: str = "at_least_once",
    say: Callable[[str], None] = print,
) -> BenchResult:
    """Run the benchmark; what it measures is in :mod:`churnwatch.bench`."""
    from churnwatch.demo.setup import train_demo_model

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
    broker: EmbeddedBroker | ApacheKafkaCluster
    if broker_kind == "apache-kafka":
        broker = ApacheKafkaCluster(workdir / "apache-kafka", ports=[free_port(host)])
    else:
        broker = EmbeddedBroker(host, free_port(host), settings.broker.startup_timeout_seconds)
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"processing_guarantee": guarantee})}
    )
    result = BenchResult(customers, days, len(history), model, store, machine(), 0.0)
    result.event_loop = "uvloop" if loop_factory else "asyncio"
    result.broker, result.processing_guarantee = broker_kind, guarantee
    try:
        broker.start()
        say(f"{broker_kind} broker on {broker.bootstrap_servers}; {len(history)} events to drain")
        counts = sorted({1, workers})
        for n in counts:
            run_settings = isolated(settings, broker.bootstrap_servers)
            ensure_topics(run_settings)
            produce_all(run_settings, history, say)
            topics = [run_settings.topic(t) for t in EVENT_TOPICS]
            if not result.bare_loop_events_per_second:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    seconds = runner.run(
                        bare_loop(
                            broker.bootstrap_servers,
                            topics,
                            run_settings.kafka.partitions,
                            len(history),
                        )
                    )
                result.bare_loop_events_per_second = len(history) / seconds
                say(f"bare loop: {result.bare_loop_events_per_second:,.0f} events/s")
                if faust_floor:
                    result.faust_floor_events_per_second = faust_floor_rate(
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


def isolated(settings: Settings, bootstrap: str) -> Settings:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"bootstrap_servers": bootstrap, "topic_prefix": prefix}
            ),
            "worker": settings.worker.model_copy(update={"app_id": f"cw-{prefix}"}),
        }
    )


def produce_all(settings: Settings, events: list[SimEvent], say: Callable[[str], None]) -> None:
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
                CHURNWATCH_WORKER__PROCESSING_GUARANTEE=settings.worker.processing_guarantee,
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
            figures = [metrics_of(port) for port in ports]
            processed = sum(metric_sum(m, "churnwatch_events_consumed_total") for m in figures)
            waiting_max = max(
                waiting_max, int(sum(metric_sum(m, "churnwatch_events_waiting") for m in figures))
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
        worker_cores = cores([proc.pid for proc in procs], worker_cpu, done_at - first_at)
        broker_cores = cores([broker_pid], broker_cpu, done_at - first_at) if broker_pid else None
        rate = (total - first_count) / seconds if total > first_count else total / seconds
        end_rss = sum(rss_mb(proc.pid) for proc in procs)
        customers, state_bytes = changelog_bytes(
            settings, changelog_topic(settings, Table.CUSTOMER_STATE)
        )
        before = [latency_buckets(metrics_of(port)) for port in ports]
        say(
            f"{workers} worker(s): {rate:,.0f} events/s over {seconds:.1f} s; "
            f"producing {len(live)} live events at {live_rate:g}/s for the latency ..."
        )
        produce(settings, iter_paced(live, 0) if live_rate <= 0 else _at_rate(live, live_rate))
        target = total + len(live)
        wait_until = time.monotonic() + 120
        while processed < target and time.monotonic() < wait_until:
            processed = sum(
                metric_sum(metrics_of(port), "churnwatch_events_consumed_total") for port in ports
            )
            time.sleep(POLL_SECONDS)
        time.sleep(1)
        after_metrics = [metrics_of(port) for port in ports]
        after = [latency_buckets(m) for m in after_metrics]
        merged_before = merge_buckets(before)
        merged_after = merge_buckets(after)
        warnings = int(sum(metric_sum(m, "churnwatch_warnings_total") for m in after_metrics))
        store_dir = sum(dir_bytes(d) for d in data_dirs if d.exists())
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
            latency_p50_seconds=quantile(merged_before, merged_after, 0.5),
            latency_p99_seconds=quantile(merged_before, merged_after, 0.99),
            live_events=len(live),
            worker_cores=worker_cores,
            broker_cores=broker_cores,
            waiting_max=waiting_max,
        )
    finally:
        for proc in procs:
            stop_child(proc)


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
        f"event loop: {result.event_loop}; broker {result.broker}; "
        f"processing guarantee {result.processing_guarantee}",
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
