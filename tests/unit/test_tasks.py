"""Tasks (consumers/alerts/tasks.py): each opened or escalated warning gives its owner
a task due by its severity; overdue ones remind the owner, then the manager, through
the dispatcher's delivery stages; outcomes and resolutions close them. Real SMTP
inbox, test clock."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from churnwatch.consumers.alerts.ledger import Episode, Task, add_snooze
from churnwatch.consumers.alerts.tasks import task_counts
from churnwatch.consumers.web import acting
from churnwatch.core.inbox import LocalInbox
from tests.dispatching import NOW, record, statuses

MANAGED = {"managers": {"*": "manager"}}


def tasks(dispatcher) -> list[tuple[str, str, str, str]]:
    with dispatcher.sessions() as session:
        rows = session.scalars(select(Task).order_by(Task.id))
        return [(t.severity, t.state, t.outcome, t.owner) for t in rows]


def subjects(inbox) -> list[str]:
    return [m["Subject"].split("] ", 1)[1] for m in inbox.received()]


def test_a_warning_gives_its_owner_a_task_due_by_severity_once(make):
    dispatcher = make()
    dispatcher.on_warning(record("w-1", severity="medium"))
    dispatcher.on_warning(record("w-1", severity="medium"))  # redelivered
    dispatcher.on_warning(record("w-2", customer="C2", severity="critical"))
    with dispatcher.sessions() as session:
        made = {t.warning_id: t for t in session.scalars(select(Task))}
    assert sorted(made) == ["w-1", "w-2"]
    assert made["w-1"].due_at == NOW + timedelta(days=7)
    assert made["w-2"].due_at == NOW + timedelta(days=1)
    assert made["w-1"].owner == "rep1@sales.example.com"
    assert made["w-1"].text == "Call the customer this week."


def test_an_escalation_replaces_the_task_and_a_resolution_closes_it(make):
    dispatcher = make()
    dispatcher.on_warning(record(severity="medium"))
    dispatcher.on_warning(record(status="escalated", severity="high"))
    dispatcher.on_warning(record(severity="medium"))  # the opening redelivered: no new task
    assert tasks(dispatcher) == [
        ("medium", "dropped", "escalated", "rep1@sales.example.com"),
        ("high", "open", "", "rep1@sales.example.com"),
    ]
    dispatcher.on_warning(record(status="resolved", severity="high"))
    assert tasks(dispatcher)[-1][:3] == ("high", "done", "resolved")


def test_an_overdue_task_reminds_the_owner_then_the_manager_once_each(make, inbox):
    dispatcher = make(routing=MANAGED)
    dispatcher.on_warning(record(severity="critical"))  # due in a day
    dispatcher.tick()
    assert subjects(inbox) == ["Sales drop (critical): Customer C1 (C1)"]
    make.clock.advance(days=1, minutes=1)
    dispatcher.tick()
    late = [s for s in subjects(inbox) if s.startswith("Task overdue")]
    assert late == ["Task overdue: Sales drop (critical): Customer C1 (C1)"]
    mail = [m for m in inbox.received() if "Task overdue" in m["Subject"]][0]
    assert mail["To"] == "rep1@sales.example.com"
    assert "Call the customer this week." in LocalInbox.text(mail)
    make.clock.advance(days=1)
    dispatcher.tick()
    assert not any("Overdue task" in s for s in subjects(inbox))  # the owner's turn still
    make.clock.advance(days=1, minutes=1)  # 2 days after the reminder: the manager
    dispatcher.tick()
    # (a Thursday 10:02 UTC: inside the manager's window, weekdays 08:00-18:00 London)
    escalated = [m for m in inbox.received() if "Overdue task" in m["Subject"]]
    assert [m["To"] for m in escalated] == ["manager@example.com"]
    assert (
        "Overdue task of rep1@sales.example.com: Sales drop (critical)" in escalated[0]["Subject"]
    )
    assert "has not closed it" in LocalInbox.text(escalated[0])
    count = len(inbox.received())
    make.clock.advance(days=10)
    dispatcher.tick()
    assert not any("Task" in s or "task" in s for s in subjects(inbox)[count:])  # once each


def test_a_task_done_or_snoozed_is_never_chased(make, inbox):
    dispatcher = make(routing=MANAGED)
    dispatcher.on_warning(record("w-1", severity="critical"))
    dispatcher.on_warning(record("w-2", customer="C2", severity="critical"))
    with dispatcher.sessions.begin() as session:
        acting.record_outcome(session, session.get(Episode, "w-1"), "contacted", "", "ann", NOW)
        add_snooze(session, "C2", None, NOW + timedelta(days=5), "on holiday", NOW)
    make.clock.advance(days=2)
    dispatcher.tick()
    assert not any("Task" in s for s in subjects(inbox))
    assert tasks(dispatcher)[0][:3] == ("critical", "done", "contacted")
    make.clock.advance(days=3, minutes=1)  # the snooze is over: C2's task is chased now
    dispatcher.tick()
    assert [s for s in subjects(inbox) if "Task" in s] == [
        "Task overdue: Sales drop (critical): Customer C2 (C2)"
    ]


def test_a_reminder_queued_before_the_task_was_done_is_not_sent(make, inbox):
    """The manager's window holds the escalation; the owner closes the task meanwhile."""
    dispatcher = make(routing=MANAGED)
    dispatcher.on_warning(record(severity="critical"))
    make.clock.advance(days=1, minutes=1)
    dispatcher.tick()
    make.clock.now = make.clock.now.replace(hour=20)  # 2 days on, after London's 18:00
    make.clock.advance(days=2)
    dispatcher.tick()
    with dispatcher.sessions.begin() as session:
        acting.record_outcome(
            session, session.get(Episode, "w-1"), "saved", "", "ann", make.clock()
        )
    make.clock.advance(hours=14)
    dispatcher.tick()
    assert not any("Overdue task" in s for s in subjects(inbox))
    assert ("manager", "task_escalated", "superseded") in statuses(dispatcher)


def test_task_counts_per_owner_and_hand_over(make):
    dispatcher = make()
    dispatcher.on_warning(record("w-1", severity="critical"))
    dispatcher.on_warning(record("w-2", customer="C2", severity="low"))
    dispatcher.on_warning(record("w-3", customer="C3", severity="low", owner="rep2@x.com"))
    dispatcher.on_warning(record("w-3", customer="C3", status="resolved", owner="rep2@x.com"))
    with dispatcher.sessions.begin() as session:
        acting.hand_over_customer(session, "C2", "rep2@x.com", "", "boss", NOW)
        counts = task_counts(session, NOW + timedelta(days=2))
    assert counts["rep1@sales.example.com"].open == 1
    assert counts["rep1@sales.example.com"].overdue == 1
    assert counts["rep2@x.com"].open == 1 and counts["rep2@x.com"].overdue == 0
    assert counts["rep2@x.com"].done == 1


def test_the_daily_digest_lists_the_owners_overdue_tasks(make, inbox):
    dispatcher = make(digest_hour=17)
    dispatcher.on_warning(record(severity="critical"))  # due Tuesday 10:00
    dispatcher.tick()
    make.clock.advance(hours=7, minutes=1)  # Monday 17:01: the first digest
    dispatcher.tick()
    make.clock.advance(days=1)  # Tuesday 17:01: the task is 7 hours overdue
    dispatcher.tick()
    digests = [m for m in inbox.received() if "Your open warnings" in m["Subject"]]
    assert len(digests) == 2
    assert "overdue tasks" not in LocalInbox.text(digests[0])
    text = LocalInbox.text(digests[1])
    assert "Your overdue tasks (1), oldest due first" in text
    assert "Customer C1 (C1) - Call the customer this week. (due 2026-03-03)" in text
