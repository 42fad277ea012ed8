"""What the bench reads off processes and the broker: RSS, CPU time, /metrics, changelogs."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from churnwatch.core.settings import Settings
from churnwatch.core.topics import end_offsets

#: How often the bench reads a process's figures while it waits for it.
POLL_SECONDS = 0.5


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


def cores(pids: list[int], before: list[float | None], seconds: float) -> float | None:
    after = [cpu_seconds(pid) for pid in pids]
    used = 0.0
    for start, end in zip(before, after, strict=True):
        if start is None or end is None:
            return None
        used += end - start
    return round(used / seconds, 2) if seconds >= 1 else None  # shorter: ticks, not figures


def metrics_of(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
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


def metric_sum(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _labels, value in metrics.get(name, []))


def latency_buckets(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[float, float]:
    return {
        float(labels["le"]): value
        for labels, value in metrics.get("churnwatch_warning_latency_seconds_bucket", [])
        if labels.get("since") == "ingest"
    }


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
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


def changelog_bytes(settings: Settings, topic: str) -> tuple[int, int]:
    """(customers, bytes of their last stored state) from a changelog topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(group_id=None, **settings.kafka_consumer_options())
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


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def merge_buckets(buckets: list[dict[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for one in buckets:
        for bound, value in one.items():
            out[bound] = out.get(bound, 0.0) + value
    return out
