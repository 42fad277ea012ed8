"""The dispatcher against a real SMTP server and a real HTTP webhook receiver.

The dispatcher runs on a test clock so that cooldowns, delivery windows and
digests can be checked without waiting; the receivers are real servers on
loopback ports.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from churnwatch.consumers.alerts.dispatcher import Dispatcher
from churnwatch.consumers.alerts.ledger import (
    Notification,
    Snooze,
    add_snooze,
    lift_snoozes,
    open_ledger,
)
from churnwatch.consumers.alerts.routing import RoutingError, load_routing
from churnwatch.core.inbox import LocalInbox
from churnwatch.core.settings import AlertSettings, SmtpSettings
from tests.dispatching import NOW, record, statuses


def test_owner_gets_one_email_with_the_evidence_even_when_redelivered(make, inbox):
    dispatcher = make()
    assert dispatcher.on_warning(record()) == 1
    assert dispatcher.on_warning(record()) == 0  # redelivered
    dispatcher.tick()
    restarted = make()  # a new process over the same ledger
    assert restarted.on_warning(record()) == 0
    restarted.tick()
    mails = inbox.received()
    assert len(mails) == 1
    mail = mails[0]
    assert mail["To"] == "rep1@sales.example.com"
    assert "Sales drop (medium): Customer C1 (C1)" in mail["Subject"]
    text = LocalInbox.text(mail)
    for expected in (
        "rep1@sales.example.com",
        "sales_drop summary for C1",
        "10,000",
        "Call the customer this week.",
        "amount_recent: 1,015",
    ):
        assert expected in text, expected
    short_id = mail["Subject"].split()[1].rstrip("]")
    assert f"churnwatch alerts feedback {short_id}" in text


def test_routing_by_type_severity_and_segment_with_fallback(make, inbox, webhook):
    dispatcher = make()
    dispatcher.on_warning(record("w-1", warning_type="overdue_debt", severity="critical"))
    dispatcher.on_warning(record("w-2", customer="C2", owner="", segment="key_account"))
    dispatcher.tick()
    assert sorted(r for r, _, _ in statuses(dispatcher)) == [
        "finance",
        "manager",
        "rep1@sales.example.com",
        "team",
    ]
    assert sorted(m["To"] for m in inbox.received()) == [
        "manager@example.com",
        "rep1@sales.example.com",
        "team@example.com",
    ]
    assert len(webhook.received) == 1
    assert webhook.received[0]["title"].endswith("欠款预警（critical）：Customer C1 (C1)")


def test_cooldown_then_reminder_and_a_resolved_message(make, inbox):
    dispatcher = make(cooldown_hours={"*": 72.0})
    dispatcher.on_warning(record())
    dispatcher.tick()
    make.clock.advance(hours=71)
    dispatcher.tick()
    assert len(inbox.received()) == 1  # still cooling down
    make.clock.advance(hours=2)
    dispatcher.tick()
    dispatcher.tick()
    assert [m["Subject"].split("] ")[1] for m in inbox.received()] == [
        "Sales drop (medium): Customer C1 (C1)",
        "Still open: Sales drop (medium): Customer C1 (C1)",
    ]
    dispatcher.on_warning(record(status="resolved"))
    dispatcher.tick()
    assert inbox.received()[-1]["Subject"].endswith("Resolved: Sales drop: Customer C1 (C1)")
    make.clock.advance(hours=100)
    dispatcher.tick()
    assert len(inbox.received()) == 3  # no reminder for a closed episode


def test_sales_drop_is_held_while_debt_is_overdue_and_mentioned_in_its_message(make, inbox):
    dispatcher = make()
    dispatcher.on_warning(record("w-debt", warning_type="overdue_debt"))
    dispatcher.on_warning(record("w-drop", warning_type="sales_drop"))
    dispatcher.tick()
    assert statuses(dispatcher) == [
        ("rep1@sales.example.com", "opened", "sent"),
        ("rep1@sales.example.com", "opened", "inhibited"),
    ]
    # another customer's sales drop is not held
    dispatcher.on_warning(record("w-other", customer="C2"))
    dispatcher.tick()
    assert len(inbox.received()) == 2
    # the other way round: the open drop is listed inside the debt message
    dispatcher.on_warning(record("w-drop3", customer="C3"))
    dispatcher.on_warning(record("w-debt3", customer="C3", warning_type="overdue_debt"))
    dispatcher.tick()
    debt_mail = inbox.received()[-1]
    assert "Overdue debt" in debt_mail["Subject"]
    assert "sales_drop summary for C3" in LocalInbox.text(debt_mail)
    # once the debt is settled, the held drop goes out
    dispatcher.on_warning(record("w-debt", status="resolved", warning_type="overdue_debt"))
    dispatcher.tick()
    subjects = [m["Subject"] for m in inbox.received()]
    assert any("Sales drop (medium): Customer C1" in s for s in subjects)


def test_snoozed_customer_is_recorded_not_sent(make, inbox):
    dispatcher = make()
    with dispatcher.sessions.begin() as session:
        session.add(
            Snooze(
                customer_id="C1",
                warning_type=None,
                until=NOW + timedelta(days=7),
                reason="on holiday",
                created_at=NOW,
            )
        )
    dispatcher.on_warning(record())
    dispatcher.on_warning(record("w-2", customer="C2"))
    dispatcher.tick()
    assert statuses(dispatcher) == [
        ("rep1@sales.example.com", "opened", "snoozed"),
        ("rep1@sales.example.com", "opened", "sent"),
    ]
    assert [m["Subject"].split("] ")[1] for m in inbox.received()] == [
        "Sales drop (medium): Customer C2 (C2)"
    ]


def test_outside_business_hours_the_message_waits_for_the_window(make, inbox):
    dispatcher = make(digest_hour=23)
    make.clock.now = datetime(2026, 3, 6, 19, 30, tzinfo=UTC)  # Friday evening in London
    dispatcher.on_warning(record(segment="key_account", owner=""))
    dispatcher.tick()
    assert [m["To"] for m in inbox.received()] == ["team@example.com"]  # no window for the team
    make.clock.now = datetime(2026, 3, 9, 7, 59, tzinfo=UTC)  # Monday 07:59 London
    dispatcher.tick()
    assert len(inbox.received()) == 1
    make.clock.now = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)
    dispatcher.tick()
    assert [m["To"] for m in inbox.received()] == ["team@example.com", "manager@example.com"]


def test_daily_cap_sends_the_rest_to_the_digest_ranked_by_expected_loss(make, inbox):
    dispatcher = make(daily_cap=2, digest_hour=17)
    dispatcher.on_warning(record("w-a", customer="A", revenue=1_000.0, probability=0.9))
    dispatcher.on_warning(record("w-b", customer="B", revenue=100_000.0, probability=0.2))
    dispatcher.on_warning(record("w-c", customer="C", revenue=50_000.0, probability=0.8))
    dispatcher.tick()
    assert [s for _, _, s in statuses(dispatcher)] == ["sent", "sent", "capped"]
    assert len(inbox.received()) == 2
    make.clock.now = NOW.replace(hour=17)
    dispatcher.tick()
    dispatcher.tick()  # one digest a day
    digest = inbox.received()[-1]
    assert len(inbox.received()) == 3 and "Your open warnings (3)" in digest["Subject"]
    text = LocalInbox.text(digest)
    # expected loss: C 40,000 > B 20,000 > A 900
    assert text.index("Customer C") < text.index("Customer B") < text.index("Customer A")


def test_a_webhook_down_for_a_minute_loses_nothing(make, webhook):
    dispatcher = make()
    webhook.stop()
    dispatcher.on_warning(record("w-debt", warning_type="overdue_debt", severity="critical"))
    for _ in range(12):  # a minute of retries at most every 5, 10, 20 ... seconds
        dispatcher.tick()
        make.clock.advance(seconds=5)
    with dispatcher.sessions() as session:
        note = session.scalar(select(Notification).where(Notification.recipient == "finance"))
        assert note.status == "pending" and note.attempts >= 3
    assert webhook.received == []
    webhook.start()  # the receiver is back (same port)
    restarted = make()  # and the dispatcher restarted meanwhile
    make.clock.advance(seconds=600)
    restarted.tick()
    assert len(webhook.received) == 1
    restarted.tick()
    assert len(webhook.received) == 1


def test_routing_file_errors_name_the_key(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text("fallback: nobody\nrecipients: {}\n")
    with pytest.raises(RoutingError, match="fallback 'nobody' is not under recipients"):
        load_routing(path)
    path.write_text(
        "fallback: t\nrecipients: {t: {channels: [{email: a@b, webhook: 'http://x'}]}}\n"
    )
    with pytest.raises(RoutingError, match=r"recipients\.t\.channels\.0"):
        load_routing(path)
    path.write_text(
        "fallback: t\nrecipients: {t: {channels: [{email: a@b}], window: {timezone: Mars/Base}}}\n"
    )
    with pytest.raises(RoutingError, match="unknown time zone"):
        load_routing(path)


def test_shipped_routing_file_loads():
    routing = load_routing("configs/routing.yaml")
    assert routing.route("", "sales_drop", "low", "standard", "") == [routing.fallback]


def test_escalation_sends_a_new_notification_once(make, inbox, webhook):
    dispatcher = make()
    dispatcher.on_warning(record("w-debt", warning_type="overdue_debt", severity="medium"))
    dispatcher.tick()
    worse = record("w-debt", status="escalated", warning_type="overdue_debt", severity="critical")
    assert dispatcher.on_warning(worse) == 2  # the owner again, and now the finance lead
    assert dispatcher.on_warning(worse) == 0  # redelivered
    dispatcher.tick()
    subjects = [m["Subject"].split("] ")[1] for m in inbox.received()]
    assert subjects == [
        "Overdue debt (medium): Customer C1 (C1)",
        "Worse: Overdue debt now critical: Customer C1 (C1)",
    ]
    assert len(webhook.received) == 1 and "升级" in webhook.received[0]["title"]


def test_short_ids_of_keys_whose_hashes_start_alike_differ(ledger_url):
    """Two dedup keys with the same first 8 hex digits of their hash get distinct ids,
    and each keeps its own id when asked again."""
    import hashlib

    from churnwatch.consumers.alerts.ledger import Notification, short_id

    seen: dict[str, str] = {}
    n = 0
    while True:  # a birthday collision on 32 bits: ~80,000 keys
        key = f"opened|w-{n}|rep1|email"
        prefix = hashlib.sha256(key.encode()).hexdigest()[:8]
        if prefix in seen:
            first, second = seen[prefix], key
            break
        seen[prefix] = key
        n += 1
    sessions = open_ledger(ledger_url)
    now = datetime.now(UTC)
    with sessions() as session:
        ids = []
        for key in (first, second):
            sid = short_id(session, key)
            session.add(
                Notification(
                    short_id=sid,
                    dedup_key=key,
                    recipient="rep1",
                    channel="email",
                    kind="opened",
                    status="sent",
                    subject="",
                    body_text="",
                    body_markdown="",
                    created_at=now,
                    due_at=now,
                )
            )
            session.commit()
            ids.append(sid)
        assert ids[0] != ids[1] and ids[0][:9] == ids[1][:9]
        assert len(ids[0]) == 9 and len(ids[1]) == 10
        assert short_id(session, second) == ids[1]


@pytest.mark.parametrize(
    "owner",
    [
        "rep1@sales.example.com&bcc=attacker@evil.example",
        "rep1@sales.example.com&to=attacker@evil.example",
        "rep1@sales.example.com&from=ceo@sales.example.com",
        "rep1@sales.example.com&smtp=mx.evil.example",
        "rep1@sales.example.com?bcc=attacker@evil.example",
        "rep1@sales.example.com,attacker@evil.example",
        "rep one <attacker@evil.example>",
    ],
)
def test_an_owner_crafted_to_add_recipients_reaches_only_the_fallback(make, inbox, owner):
    dispatcher = make()
    dispatcher.on_warning(record(owner=owner))
    dispatcher.tick()
    mails = inbox.received()
    assert [m["To"] for m in mails] == ["team@example.com"]
    assert all(to == ["team@example.com"] for to in inbox.envelopes())
    assert not any("evil" in str(m["From"]) + str(m["Bcc"]) for m in mails)


def test_smtp_credentials_and_sender_reach_the_mailer_exactly():
    """Characters that mean something in a URL stay part of the value they are in."""
    import apprise

    from churnwatch.consumers.alerts.routing import Channel

    password = "Pa55&w0rd#Z/9?x%41+ =;"  # noqa: S105 - a dummy with URL characters
    smtp = SmtpSettings(
        host="smtp.example.com",
        port=2525,
        user="mailer+cw@example.com",
        password=password,
        sender="churnwatch+alerts@example.com",
        security="starttls",
    )
    notifier = apprise.Apprise()
    assert notifier.add(Channel(email="o.neil+vip@sales.example.com").apprise_url(smtp))
    (mailer,) = list(notifier)
    assert mailer.password == password
    assert mailer.user == "mailer+cw@example.com"
    assert mailer.from_addr[1] == "churnwatch+alerts@example.com"
    assert [address for _, address in mailer.targets] == ["o.neil+vip@sales.example.com"]
    assert (mailer.host, mailer.port) == ("smtp.example.com", 2525)
    assert not mailer.bcc and not mailer.cc
    with pytest.raises(ValueError, match="not a plain e-mail address"):
        Channel(email="a@example.com&bcc=b@evil.example")


def test_customer_text_in_an_email_is_shown_never_turned_into_links_or_markup(make, inbox):
    dispatcher = make()
    name = '[Pay here](http://evil.example/pay) <a href="http://evil.example">x</a> <b>bold</b>'
    dispatcher.on_warning(record().model_copy(update={"customer_name": name}))
    dispatcher.tick()
    (mail,) = inbox.received()
    html_part = mail.get_body(preferencelist=("html",))
    assert html_part is not None
    html = str(html_part.get_content())
    assert "evil.example" in html  # shown as text ...
    assert "<a " not in html and "<b>" not in html  # ... never as a link or markup
    assert "[Pay here](http://evil.example/pay)" in LocalInbox.text(mail)


def test_an_episode_that_resolved_before_its_news_went_out_is_never_announced(make, inbox):
    """As after a dispatcher restart or a channel outage: both records arrive
    before the outbox runs. Nobody hears "opened" for something already over,
    and as nobody heard of it, nobody gets its end either."""
    dispatcher = make()
    dispatcher.on_warning(record(wid="w-gone"))
    dispatcher.on_warning(record(wid="w-gone", status="resolved"))
    dispatcher.tick()
    assert inbox.received() == []
    assert statuses(dispatcher) == [("rep1@sales.example.com", "opened", "superseded")]
    # one that was told gets its end
    dispatcher.on_warning(record(wid="w-told"))
    dispatcher.tick()
    dispatcher.on_warning(record(wid="w-told", status="resolved"))
    dispatcher.tick()
    assert [(kind, status) for _, kind, status in statuses(dispatcher)][1:] == [
        ("opened", "sent"),
        ("resolved", "sent"),
    ]
    assert len(inbox.received()) == 2


def snooze(dispatcher: Dispatcher, customer: str, until: datetime, at: datetime) -> None:
    with dispatcher.sessions.begin() as session:
        add_snooze(session, customer, None, until, "asked us to call back", at)


def test_a_snooze_set_while_a_notice_waits_for_its_window_holds_it(make, inbox):
    dispatcher = make(digest_hour=23)
    make.clock.now = datetime(2026, 3, 6, 19, 30, tzinfo=UTC)  # Friday evening in London
    dispatcher.on_warning(record(customer="K1", segment="key_account", owner=""))
    dispatcher.tick()
    assert [m["To"] for m in inbox.received()] == ["team@example.com"]  # the manager waits
    # Saturday: someone snoozes the customer in the inbox until Tuesday noon
    snooze(dispatcher, "K1", datetime(2026, 3, 10, 12, 0, tzinfo=UTC), make.clock.now)
    make.clock.now = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)  # Monday 08:00: the window opens
    dispatcher.tick()
    assert [m["To"] for m in inbox.received()] == ["team@example.com"]
    assert ("manager", "opened", "snoozed") in statuses(dispatcher)
    # the snooze ends with the warning still open: both hear it is still open
    make.clock.now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    dispatcher.tick()
    subjects = {m["To"]: m["Subject"].split("] ")[1] for m in inbox.received()[1:]}
    still_open = "Still open: Sales drop (medium): Customer K1 (K1)"
    assert subjects == {"manager@example.com": still_open, "team@example.com": still_open}


def test_a_snooze_set_between_retries_stops_the_next_attempt(make, webhook):
    dispatcher = make()
    webhook.stop()
    dispatcher.on_warning(record("w-debt", warning_type="overdue_debt", severity="critical"))
    dispatcher.tick()  # the owner's mail goes, the finance webhook fails
    snooze(dispatcher, "C1", NOW + timedelta(days=3), make.clock.now)
    webhook.start()
    make.clock.advance(seconds=30)
    dispatcher.tick()
    assert webhook.received == []
    assert ("finance", "opened", "snoozed") in statuses(dispatcher)


def test_lifting_a_snooze_brings_the_reminder_forward(make, inbox):
    dispatcher = make(cooldown_hours={"*": 72.0})
    snooze(dispatcher, "C1", NOW + timedelta(days=14), NOW)
    dispatcher.on_warning(record())
    dispatcher.tick()
    assert inbox.received() == []
    make.clock.advance(hours=1)
    with dispatcher.sessions.begin() as session:
        assert lift_snoozes(session, "C1", make.clock.now) == 1
    dispatcher.tick()
    assert [m["Subject"].split("] ")[1] for m in inbox.received()] == [
        "Still open: Sales drop (medium): Customer C1 (C1)"
    ]


def test_only_the_newest_news_goes_out_when_two_notices_waited_for_the_window(make, inbox):
    dispatcher = make(digest_hour=23)
    make.clock.now = datetime(2026, 3, 7, 10, 0, tzinfo=UTC)  # Saturday: the manager's is shut
    dispatcher.on_warning(record(customer="K1", segment="key_account", owner=""))
    worse = record(customer="K1", segment="key_account", owner="", severity="high")
    dispatcher.on_warning(worse.model_copy(update={"status": "escalated"}))
    dispatcher.tick()
    make.clock.now = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)
    dispatcher.tick()
    to_manager = [m["Subject"].split("] ")[1] for m in inbox.received() if "manager" in m["To"]]
    assert to_manager == ["Worse: Sales drop now high: Customer K1 (K1)"]
    assert [s for r, _, s in statuses(dispatcher) if r == "manager"] == ["superseded", "sent"]


def test_a_tick_costs_the_same_whatever_the_number_of_open_episodes(make):
    """Reminders and digests come from their due times, not from a scan of every open
    episode on every poll: the statements a quiet tick runs do not grow with them."""
    from sqlalchemy import event

    def statements_of_a_quiet_tick(dispatcher: Dispatcher) -> int:
        engine = dispatcher.sessions.kw["bind"]
        count = 0

        def counted(*_args) -> None:
            nonlocal count
            count += 1

        event.listen(engine, "before_cursor_execute", counted)
        try:
            dispatcher.tick()
        finally:
            event.remove(engine, "before_cursor_execute", counted)
        return count

    dispatcher = make(daily_cap=1000, digest_hour=23)
    costs = []
    for total in (10, 200):
        for n in range(len(costs) * 10, total):
            dispatcher.on_warning(record(f"w-{n}", customer=f"C{n}"))
        dispatcher.tick()  # all sent; their reminders are days away
        make.clock.advance(minutes=1)
        costs.append(statements_of_a_quiet_tick(dispatcher))
    assert costs[0] == costs[1]


def test_a_warning_after_todays_digest_hour_waits_for_tomorrows_digest():
    from zoneinfo import ZoneInfo

    from churnwatch.consumers.alerts.policy import Policy

    settings = AlertSettings(digest_hour=17)
    routing = load_routing(settings.routing)
    policy = Policy(settings, routing)
    london = routing.recipient("sales-manager")  # Europe/London
    zone = ZoneInfo("Europe/London")
    before = datetime(2025, 3, 4, 16, 59, tzinfo=zone)
    after = datetime(2025, 3, 4, 17, 1, tzinfo=zone)
    today, tomorrow = (datetime(2025, 3, d, 17, 0, tzinfo=zone) for d in (4, 5))
    assert policy.next_digest(london, before, after_today=False) == today
    assert policy.next_digest(london, after, after_today=False) == tomorrow
    assert policy.next_digest(london, before, after_today=True) == tomorrow
    # across the change to summer time the digest keeps its local hour
    spring = datetime(2025, 3, 29, 18, 0, tzinfo=zone)
    assert policy.next_digest(london, spring, after_today=False).utcoffset() == timedelta(hours=1)
