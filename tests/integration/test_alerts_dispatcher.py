"""`churnwatch alerts run` as a real process: warnings from Kafka to a real SMTP inbox."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from churnwatch.core.broker import start_child, stop_child
from churnwatch.core.inbox import LocalInbox
from churnwatch.core.topics import Topic
from churnwatch.pipeline.events import CustomerUpdated, encode_event
from tests.dispatching import record
from tests.integration.conftest import produce_raw, settings_env, wait_for

COMMAND = [sys.executable, "-m", "churnwatch.cli", "alerts", "run"]


def dispatcher_env(settings, ledger_url: str, inbox: LocalInbox) -> dict[str, str]:
    """`churnwatch alerts run` on these settings and ledger, mailing ``inbox``."""
    return dict(
        os.environ,
        **settings_env(settings),
        CHURNWATCH_ALERTS__LEDGER_URL=ledger_url,
        CHURNWATCH_ALERTS__SMTP__PORT=str(inbox.port),
        CHURNWATCH_ALERTS__GROUP_ID=f"alerts-{settings.kafka.topic_prefix}",
        CHURNWATCH_ALERTS__DIGEST_HOUR="23",
    )


def many_warnings() -> tuple[list[Any], list[Any]]:
    """120 opened warnings of 12 reps with 10 customers each (under the daily cap, so
    every one is mailed), and the resolutions of a third of them."""
    opened = [
        record(f"w-{i}", customer=f"C{i}", owner=f"rep{i % 12}@sales.example.com")
        for i in range(120)
    ]
    resolved = [
        record(
            f"w-{i}", status="resolved", customer=f"C{i}", owner=f"rep{i % 12}@sales.example.com"
        )
        for i in range(0, 120, 3)
    ]
    return opened, resolved


def test_dispatcher_sends_each_warning_once_across_a_restart(stream_settings, ledger_url, tmp_path):
    inbox = LocalInbox().start()
    env = dispatcher_env(stream_settings, ledger_url, inbox)
    customer = CustomerUpdated(
        event_id="cu-1",
        customer_id="C9",
        occurred_at=record().at,
        name="Customer C9",
        owner="",  # no owner: the fallback team hears of it
        segment="standard",
        region="north",
    )
    produce_raw(stream_settings, [(Topic.CUSTOMERS, "C9", encode_event(customer))])
    warnings = [
        record("w-1"),
        record("w-2", customer="C9", owner=""),
        record("w-3", warning_type="overdue_debt", severity="critical", customer="C3"),
    ]
    messages = [(Topic.WARNINGS, w.customer_id, encode_event(w)) for w in warnings]
    try:
        produce_raw(stream_settings, messages)
        proc = start_child(COMMAND, env=env, log=tmp_path / "alerts.log")
        # critical overdue debt also goes to the finance lead (configs/routing.yaml);
        # (the suite's first dispatcher: a cold start on a fresh machine, once over 30 s)
        wait_for(
            lambda: len(inbox.received()) == 4,
            "four emails",
            timeout=120,
            log=tmp_path / "alerts.log",
        )
        stop_child(proc)
        # the same records again (a redelivery), and a resolution, after a restart
        produce_raw(stream_settings, messages)
        produce_raw(
            stream_settings,
            [(Topic.WARNINGS, "C1", encode_event(record("w-1", status="resolved")))],
        )
        proc = start_child(COMMAND, env=env, log=tmp_path / "alerts.log")
        wait_for(lambda: len(inbox.received()) == 5, "the resolved email")
        time.sleep(3)  # anything duplicated would arrive by now
        stop_child(proc)
    finally:
        inbox.stop()
    mails = inbox.received()
    assert len(mails) == 5
    assert sorted(m["To"] for m in mails) == [
        "finance-lead@example.com",
        "rep1@sales.example.com",
        "rep1@sales.example.com",
        "rep1@sales.example.com",
        "sales-team@example.com",
    ]
    assert mails[-1]["Subject"].endswith("Resolved: Sales drop: Customer C1 (C1)")
    log = (tmp_path / "alerts.log").read_text()
    assert "dispatching warnings" in log


def test_a_dispatcher_killed_mid_stream_loses_no_notification(
    stream_settings, ledger_url, tmp_path
):
    """kill -9 three times while it mails 120 warnings and then their resolutions:
    every notification arrives, and each kill repeats at most the one message that
    was on its way (the outbox commits after each send: at least once, never lost)."""
    import collections
    import signal

    inbox = LocalInbox().start()
    env = dispatcher_env(stream_settings, ledger_url, inbox)
    opened, resolved = many_warnings()
    kills = 0

    def kill_when(count: int, proc) -> None:
        nonlocal kills
        started = time.monotonic()
        wait_for(lambda: len(inbox.received()) >= count, f"{count} emails", timeout=240)
        print(f"{count} emails after {time.monotonic() - started:.1f} s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        kills += 1

    try:
        produce_raw(
            stream_settings, [(Topic.WARNINGS, w.customer_id, encode_event(w)) for w in opened]
        )
        proc = start_child(COMMAND, env=env, log=tmp_path / "alerts.log")
        kill_when(20, proc)
        proc = start_child(COMMAND, env=env, log=tmp_path / "alerts.log")
        kill_when(70, proc)
        proc = start_child(COMMAND, env=env, log=tmp_path / "alerts.log")
        # every opened warning told before its resolution comes: a notice still waiting
        # when its episode resolves is superseded, by design (never sent, no resolution)
        wait_for(
            lambda: len({(m["To"], m["Subject"]) for m in inbox.received()}) == len(opened),
            "every opened warning's email",
            timeout=120,
            log=tmp_path / "alerts.log",
        )
        produce_raw(
            stream_settings, [(Topic.WARNINGS, w.customer_id, encode_event(w)) for w in resolved]
        )
        kill_when(130, proc)
        proc = start_child(COMMAND, env=env, log=tmp_path / "alerts.log")
        wait_for(
            lambda: len({(m["To"], m["Subject"]) for m in inbox.received()}) == 160,
            "every notification",
            timeout=180,
            log=tmp_path / "alerts.log",
        )
        time.sleep(3)  # anything repeated would arrive by now
        stop_child(proc)
    finally:
        inbox.stop()
    sent = collections.Counter((m["To"], m["Subject"]) for m in inbox.received())
    assert len(sent) == len(opened) + len(resolved)  # none lost
    assert sum(sent.values()) - len(sent) <= kills  # at most one repeat per kill
    assert sum("Resolved:" in subject for _, subject in sent) == len(resolved)


def test_two_dispatchers_on_one_postgresql_ledger_send_each_notification_once(
    stream_settings, postgres, tmp_path
):
    """Two dispatchers in one consumer group on one PostgreSQL ledger (how a team runs
    them for availability): they share the warnings' partitions and the outbox,
    and every notification is mailed exactly once; when one stops, the other
    takes its partitions over and mails the rest, still once each."""
    import collections

    ledger = postgres.new_database()
    inbox = LocalInbox().start()
    env = dispatcher_env(stream_settings, ledger, inbox)
    opened, resolved = many_warnings()
    procs = []
    try:
        procs = [start_child(COMMAND, env=env, log=tmp_path / f"alerts-{n}.log") for n in (1, 2)]
        produce_raw(
            stream_settings, [(Topic.WARNINGS, w.customer_id, encode_event(w)) for w in opened]
        )
        wait_for(lambda: len(inbox.received()) >= 120, "the opened warnings' emails", timeout=180)
        stop_child(procs[0])  # a clean stop: nothing may be repeated
        produce_raw(
            stream_settings, [(Topic.WARNINGS, w.customer_id, encode_event(w)) for w in resolved]
        )
        wait_for(lambda: len(inbox.received()) >= 160, "every notification", timeout=180)
        time.sleep(3)  # anything repeated would arrive by now
    finally:
        for proc in procs:
            stop_child(proc)
        inbox.stop()
        postgres.drop_database(ledger)
    sent = collections.Counter((m["To"], m["Subject"]) for m in inbox.received())
    assert len(sent) == len(opened) + len(resolved)  # none lost
    assert [key for key, count in sent.items() if count > 1] == []  # none twice
    logs = [(tmp_path / f"alerts-{n}.log").read_text() for n in (1, 2)]
    assert all("dispatching warnings" in log for log in logs)


def test_the_account_feed_reaches_the_crm_webhook_and_the_health_topic(
    stream_settings, ledger_url, tmp_path
):
    """`churnwatch alerts run` with a `feed` webhook (a real HTTP receiver): a warning
    and its task, and a band change the worker put on the health topic, reach the
    webhook; the dispatcher's own changes reach the health topic beside the band."""
    import shutil

    from churnwatch.core.settings import CONFIGS
    from churnwatch.pipeline.events import AccountChange
    from tests.dispatching import NOW, Webhook
    from tests.integration.conftest import read_topic

    hook = Webhook()
    hook.start()
    routing = tmp_path / "routing.yaml"
    shutil.copy(CONFIGS / "routing.yaml", routing)
    with routing.open("a", encoding="utf-8") as out:
        out.write(f"\nfeed:\n  - webhook: http://127.0.0.1:{hook.port}/crm\n")
    inbox = LocalInbox().start()
    env = dict(
        dispatcher_env(stream_settings, ledger_url, inbox), CHURNWATCH_ALERTS__ROUTING=str(routing)
    )
    band = AccountChange(
        change_id="a-band-1",
        change="band_changed",
        customer_id="C7",
        at=NOW,
        health=31,
        band="at_risk",
        previous_band="watch",
    )
    try:
        produce_raw(
            stream_settings,
            [
                (Topic.WARNINGS, "C1", encode_event(record("w-1"))),
                (Topic.HEALTH, "C7", encode_event(band)),
            ],
        )
        proc = start_child(COMMAND, env=env, log=tmp_path / "alerts.log")
        wait_for(
            lambda: len(hook.received) >= 3,
            "three changes at the CRM",
            timeout=120,
            log=tmp_path / "alerts.log",
        )
        on_topic = lambda: [  # noqa: E731
            AccountChange.model_validate_json(v).change
            for v in read_topic(stream_settings, Topic.HEALTH)
        ]
        wait_for(lambda: len(on_topic()) >= 3, "the feed's changes on the health topic")
        time.sleep(2)  # anything repeated would arrive by now
        stop_child(proc)
    finally:
        inbox.stop()
        hook.stop()
    assert sorted(c["change"] for c in hook.received) == [
        "band_changed",
        "task_opened",
        "warning_opened",
    ]
    assert sorted(on_topic()) == ["band_changed", "task_opened", "warning_opened"]  # the band once
