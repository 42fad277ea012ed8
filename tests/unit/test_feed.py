"""The account feed (consumers/alerts/feed.py): warnings, tasks and health bands
reach a CRM's webhook (a real HTTP receiver) as documented JSON, once each and
through an outage, and the dispatcher's own changes reach the health topic's
publisher. The worker's side (band changes onto the topic) is in
tests/integration/test_pipeline.py."""

from __future__ import annotations

import json
import logging

import pytest

from churnwatch.consumers.alerts.ledger import Episode
from churnwatch.consumers.web import acting
from churnwatch.pipeline.events import AccountChange
from tests.dispatching import NOW, record


@pytest.fixture(autouse=True)
def crm_token(monkeypatch):
    monkeypatch.setenv("CRM_TOKEN", "t0ken")


def feed_to(webhook) -> dict:
    hook = f"http://127.0.0.1:{webhook.port}/crm/k3y-in-the-path"
    return {"feed": [{"webhook": hook, "headers": {"Authorization": "Bearer ${CRM_TOKEN}"}}]}


def crm(webhook) -> list[dict]:
    """What the CRM's webhook received (not the chat webhook's notices)."""
    return [
        body
        for body, (path, _) in zip(webhook.received, webhook.requests, strict=True)
        if path.startswith("/crm/")
    ]


def test_warnings_and_tasks_reach_the_crm_webhook_and_the_topic_once_each(make, webhook):
    published: list[tuple[bytes, dict]] = []
    dispatcher = make(
        routing=feed_to(webhook), publish=lambda k, v: published.append((k, json.loads(v)))
    )
    dispatcher.on_warning(record(severity="medium"))
    dispatcher.on_warning(record(severity="medium"))  # redelivered
    dispatcher.tick()
    dispatcher.on_warning(record(status="escalated", severity="high"))
    dispatcher.tick()
    dispatcher.on_warning(record(status="resolved", severity="high"))
    dispatcher.tick()
    dispatcher.tick()
    got = crm(webhook)
    assert [(c["change"], c["severity"], c["task_state"], c["task_outcome"]) for c in got] == [
        ("warning_opened", "medium", None, ""),
        ("task_opened", "medium", "open", ""),
        ("warning_escalated", "high", None, ""),
        ("task_closed", "medium", "dropped", "escalated"),
        ("task_opened", "high", "open", ""),
        ("warning_resolved", "high", None, ""),
        ("task_closed", "high", "done", "resolved"),
    ]
    for change in got:
        parsed = AccountChange.model_validate(change)  # the documented shape
        assert parsed.customer_id == "C1" and parsed.owner == "rep1@sales.example.com"
        assert parsed.warning_id == "w-1" and parsed.warning_type == "sales_drop"
    assert got[1]["task_text"] == "Call the customer this week."
    assert len({c["change_id"] for c in got}) == len(got)
    _, headers = next(r for r in webhook.requests if r[0].startswith("/crm/"))
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Churnwatch-Change"] == got[0]["change_id"]
    # the same changes went to the health topic, keyed by customer
    assert [(k, v["change_id"]) for k, v in published] == [(b"C1", c["change_id"]) for c in got]


def test_a_band_change_from_the_worker_goes_to_the_webhook_only(make, webhook):
    published: list[bytes] = []
    dispatcher = make(routing=feed_to(webhook), publish=lambda k, v: published.append(v))
    band = AccountChange(
        change_id="a-1",
        change="band_changed",
        customer_id="C9",
        at=NOW,
        health=35,
        band="at_risk",
        previous_band="watch",
    )
    assert dispatcher.on_health(band) == 1
    assert dispatcher.on_health(band) == 0  # read again from the topic
    dispatcher.tick()
    assert crm(webhook) == [band.model_dump(mode="json")]
    assert published == []  # it is on the topic already (the worker put it there)


def test_a_task_closed_in_the_inbox_reaches_the_feed(make, webhook):
    dispatcher = make(routing=feed_to(webhook))
    dispatcher.on_warning(record())
    dispatcher.tick()
    with dispatcher.sessions.begin() as session:  # the web process, on the same ledger
        episode = session.get(Episode, "w-1")
        acting.record_outcome(session, episode, "saved", "", "ann", NOW)
    dispatcher.tick()
    closed = crm(webhook)[-1]
    assert (closed["change"], closed["task_state"], closed["task_outcome"]) == (
        "task_closed",
        "done",
        "saved",
    )


def test_a_crm_down_for_a_while_loses_nothing_and_its_url_stays_out_of_the_log(
    make, webhook, caplog
):
    dispatcher = make(routing=feed_to(webhook))
    webhook.stop()
    dispatcher.on_warning(record())
    dispatcher.on_warning(record(status="escalated", severity="high"))
    with caplog.at_level(logging.WARNING):
        for _ in range(10):
            dispatcher.tick()
            make.clock.advance(seconds=5)
    assert "account feed" in caplog.text and "no answer from feed:127.0.0.1" in caplog.text
    assert "k3y-in-the-path" not in caplog.text
    webhook.start()  # back on the same port
    make.clock.advance(seconds=600)
    restarted = make(routing=feed_to(webhook))
    restarted.tick()
    restarted.tick()
    # all of them, in the order made (the first task closed before the feed heard
    # of it: it is reported once, closed)
    assert [(c["change"], c["severity"]) for c in crm(webhook)] == [
        ("warning_opened", "medium"),
        ("warning_escalated", "high"),
        ("task_closed", "medium"),
        ("task_opened", "high"),
    ]
