"""The worker serves the promoted churn model, follows promotions, refuses a bad model."""

from __future__ import annotations

import shutil

from churnwatch.core.registry import MODEL_FILE, promote
from churnwatch.core.topics import Topic
from churnwatch.models.train import train
from churnwatch.pipeline.events import WarningRecord, decode_event
from churnwatch.producers.produce import produce
from churnwatch.producers.simulator import iter_paced, parse_start, simulate
from tests.integration.conftest import (
    isolated_settings,
    read_topic,
    samples,
    wait_for,
    wait_processed,
)


def serving(settings) -> str | None:
    found = samples(settings.worker.metrics_port, "churnwatch_model_info")
    return found[0][0].get("version") if found else None


def warnings(settings) -> list[WarningRecord]:
    return [WarningRecord.model_validate_json(v) for v in read_topic(settings, Topic.WARNINGS)]


def test_promoting_while_running_switches_models_and_a_corrupt_one_is_refused(
    broker, worker, tmp_path
):
    registry = tmp_path / "registry"
    settings = isolated_settings(
        broker,
        tmp_path / "worker",
        model={"registry": str(registry), "reload_seconds": 0.5},
    )
    # a model trained on another company's history (another seed)
    past, _ = simulate(120, 11, parse_start("2024-10-07"), 540, 3, 0)
    model = train([decode_event(e.payload) for e in past], settings, registry, "simulator")

    events, _ = simulate(60, 5, parse_start("2024-10-07"), 540, 3, 0)
    first, second, third = (
        events[: len(events) // 2],
        events[len(events) // 2 : len(events) * 3 // 4],
        events[len(events) * 3 // 4 :],
    )
    proc = worker(settings)
    port = settings.worker.metrics_port

    # 1. no model promoted: rules only, and the worker says so
    assert produce(settings, iter_paced(first, 0)).failed == 0
    wait_processed(settings, len(first), proc)
    before = warnings(settings)
    assert before and all(w.model_version == "" and w.churn_probability is None for w in before)
    assert serving(settings) == "none"
    # no model: no model age (0 would read "trained in 1970") and no value at risk
    assert samples(port, "churnwatch_model_created_timestamp_seconds") == []
    assert samples(port, "churnwatch_expected_loss") == []

    # 2. promoted while running: picked up without a restart
    promote(registry, model.version)
    wait_for(lambda: serving(settings) == model.version, "the worker to load the model")
    assert produce(settings, iter_paced(second, 0)).failed == 0
    wait_processed(settings, len(first) + len(second), proc)
    seen = {(w.warning_id, w.status) for w in before}
    after = [w for w in warnings(settings) if (w.warning_id, w.status) not in seen]
    assert after, "no warnings after the promotion"
    assert all(w.model_version == model.version for w in after)
    assert all(w.churn_probability is not None for w in after)
    risk = [w for w in after if w.warning_type == "churn_risk" and w.status == "opened"]
    assert risk and all("main reasons:" in w.summary for w in risk)
    # what the model does shows in the metrics
    ((created_labels, created),) = samples(port, "churnwatch_model_created_timestamp_seconds")
    assert created_labels == {"version": model.version} and created > 1e9
    assert [labels for labels, _ in samples(port, "churnwatch_expected_loss")] == [
        {"version": model.version}
    ]
    assert sum(v for _, v in samples(port, "churnwatch_churn_score_count")) > 0
    drift = {labels["feature"]: v for labels, v in samples(port, "churnwatch_feature_drift_psi")}
    assert "days_since_last_order" in drift and all(v >= 0 for v in drift.values())
    open_risk = [
        v
        for labels, v in samples(port, "churnwatch_open_episodes")
        if labels["warning_type"] == "churn_risk"
    ]
    assert open_risk and open_risk[0] >= 0
    latency = samples(port, "churnwatch_warning_latency_seconds_count")
    assert {labels["since"] for labels, v in latency if v > 0} == {"event_time", "ingest"}
    assert samples(port, "churnwatch_consumer_lag_messages")

    # 3. a corrupt model promoted: refused, the old one keeps scoring
    bad = registry / "v-corrupt"
    shutil.copytree(model.folder, bad)
    (bad / MODEL_FILE).write_bytes((bad / MODEL_FILE).read_bytes()[:1000])
    promote(registry, "v-corrupt")
    wait_for(
        lambda: sum(v for _, v in samples(port, "churnwatch_model_refused_total")) == 1,
        "the worker to refuse the corrupt model",
    )
    assert serving(settings) == model.version
    assert produce(settings, iter_paced(third, 0)).failed == 0
    wait_processed(settings, len(events), proc)
    seen |= {(w.warning_id, w.status) for w in after}
    last = [w for w in warnings(settings) if (w.warning_id, w.status) not in seen]
    assert last and all(w.model_version == model.version for w in last)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "refused churn model v-corrupt" in log
    assert "running the warning rules only" in log


def test_the_customer_page_shows_the_workers_current_churn_probability(broker, worker, tmp_path):
    """The worker serves a model from its first event on; the customer page's churn
    probability (read from the worker's changelog) is the one the same logic holds
    at the end of the same history run in batch, to the percent shown, with the
    day of the sweep that scored it; never a value from a warning's opening."""
    import re
    from datetime import UTC, datetime

    import requests
    from kafka.partitioner.default import murmur2

    from churnwatch.consumers.alerts.ledger import Customer, open_ledger
    from churnwatch.consumers.web.app import WebServer
    from churnwatch.consumers.web.users import add_user
    from churnwatch.pipeline.processing import run_history
    from churnwatch.pipeline.scoring import load_model

    registry = tmp_path / "registry"
    settings = isolated_settings(
        broker,
        tmp_path / "worker",
        model={"registry": str(registry)},
        alerts={"ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}"},
    )
    past, _ = simulate(120, 11, parse_start("2024-10-07"), 540, 3, 0)
    model = train([decode_event(e.payload) for e in past], settings, registry, "simulator")
    promote(registry, model.version)
    events, truth = simulate(30, 5, parse_start("2024-10-07"), 420, 3, 0)
    # the whole history first: produced while the worker reads, one topic's batch can
    # land after another's later events, and a late event is applied after its sweep
    # (by design), so that customer's stream would differ from the batch run
    assert produce(settings, iter_paced(events, 0)).failed == 0
    proc = worker(settings)  # (it loads the promoted model before its first sweep)
    wait_processed(settings, len(events), proc)
    assert serving(settings) == model.version
    assert "late event" not in (tmp_path / "worker.log").read_text(errors="replace")

    # The same logic in batch, one partition at a time: each partition's clock is
    # its own events' time (a partition whose events end on a Thursday sweeps no
    # further), as in the worker. (murmur2: the producer's default partitioner.)
    served = load_model(model.folder)
    decoded = [decode_event(e.payload) for e in events]
    n = settings.kafka.partitions
    batch = {}
    for partition in range(n):
        mine = [
            e for e in decoded if (murmur2(e.customer_id.encode()) & 0x7FFFFFFF) % n == partition
        ]
        if mine:
            states, _ = run_history(mine, settings.warnings, 86_400, model_at=lambda _b: served)
            batch.update({c: (states, states[c].row) for c in states})
    sessions = open_ledger(settings.alerts.ledger_url)
    with sessions.begin() as session:
        add_user(session, "root", "root-password", "admin")
        for t in truth:
            session.add(Customer(customer_id=t.customer_id, name=t.customer_id))
    server = WebServer(settings, port=0).start()
    try:
        browser = requests.Session()
        page = browser.get(f"{server.url}/login").text
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        browser.post(
            f"{server.url}/login",
            data={"csrf": token, "username": "root", "password": "root-password"},
        )
        compared = 0
        for t in truth:
            states, row = batch[t.customer_id]
            probability = float(states.col["churn_probability"][row])
            if probability != probability:  # NaN: never scored
                continue
            scored = datetime.fromtimestamp(float(states.col["churn_scored_at"][row]), UTC)

            def shown(customer_id: str = t.customer_id) -> re.Match[str] | None:
                html = browser.get(f"{server.url}/customers/{customer_id}").text
                return re.search(r'<dd id="churn">(\d+)% <small>\(scored ([\d-]+)\)', html)

            wait_for(lambda: shown() is not None, "the page to read the worker's changelog")
            found = shown()
            assert found is not None
            assert int(found.group(1)) == round(probability * 100), t.customer_id
            assert found.group(2) == scored.date().isoformat()
            compared += 1
        assert compared >= 20
    finally:
        server.stop()
