"""The web inbox over a real HTTP server (uvicorn) and a real SQLite ledger; no broker.

The browser test against a running pipeline is tests/integration/test_web.py.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import func, select

from churnwatch.consumers.alerts.dispatcher import Dispatcher
from churnwatch.consumers.alerts.ledger import (
    Action,
    Customer,
    Episode,
    Feedback,
    Notification,
    Snooze,
    Task,
    UsedLink,
    User,
    open_ledger,
)
from churnwatch.consumers.alerts.links import ActionLinks
from churnwatch.consumers.alerts.messages import TITLES, episode_message, page_link
from churnwatch.consumers.alerts.routing import load_routing
from churnwatch.consumers.web import charts
from churnwatch.consumers.web.app import WebServer
from churnwatch.consumers.web.texts import TEXTS
from churnwatch.consumers.web.users import UserError, add_user, authenticate
from churnwatch.core.settings import Settings, load_settings
from churnwatch.pipeline.events import WARNING_TYPES

NOW = datetime.now(UTC)


def test_both_languages_have_every_text_and_warning_title():
    assert set(TEXTS["en"]) == set(TEXTS["zh-CN"])
    for language in TEXTS:
        assert set(WARNING_TYPES) <= set(TITLES[language])


def test_passwords_are_hashed_and_checked(ledger_url):
    sessions = open_ledger(ledger_url)
    with sessions.begin() as session:
        user = add_user(session, "ann", "correct horse", "rep", "rep1@x.example")
        assert (
            user.password_hash.startswith("$argon2") and "correct horse" not in user.password_hash
        )
        with pytest.raises(UserError, match="at least 8"):
            add_user(session, "bob", "short", "rep", "rep2@x.example")
        with pytest.raises(UserError, match="needs --owner"):
            add_user(session, "bob", "long enough", "rep")
        with pytest.raises(UserError, match="unknown role"):
            add_user(session, "bob", "long enough", "boss")
        with pytest.raises(UserError, match="exists already"):
            add_user(session, "ann", "long enough", "manager")
    with sessions.begin() as session:
        assert authenticate(session, "ann", "correct horse") is not None
        assert authenticate(session, "ann", "wrong horse") is None
        assert authenticate(session, "nobody", "correct horse") is None


def test_charts_escape_what_they_draw_and_mark_each_opening():
    weeks = [NOW - timedelta(weeks=10 - i) for i in range(10)]
    svg = charts.weekly_chart(
        weeks,
        [1, 0, 2, 0, 1, 0, 0, 0, 0, 0],
        [100.0, 0, 250.0, 0, 80.0, 0, 0, 0, 0, 0],
        60.0,
        [(weeks[6], "<script>alert(1)</script>")],
        {"title": "t", "revenue": "r", "orders": "o", "baseline": "b", "opening": "x"},
    )
    assert svg.count('<rect class="revenue" ') == 3
    assert svg.count('class="opening" x1') == 1
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert charts.aging_chart([("1-30 <b>", 10.0)]).count("&lt;b&gt;") == 1


def test_notifications_link_to_the_customers_page():
    episode = Episode(
        warning_id="w1",
        customer_id="C1",
        customer_name="Shop",
        owner="",
        warning_type="sales_drop",
        severity="high",
        summary="s",
        evidence={},
        action="a",
        churn_probability=None,
    )
    link = page_link("https://churn.example.com/", "C1")
    assert link == "https://churn.example.com/customers/C1"
    message = episode_message(episode, "opened", "en", "N1", [], link)
    assert f"Open in churnwatch: {link}" in message.text
    assert f"]({link})" in message.markdown
    assert "http" not in episode_message(episode, "opened", "en", "N1", []).text
    assert page_link("") == ""


# --- the server ------------------------------------------------------------------------

OWNERS = {"ann": "rep1@sales.example.com", "bob": "rep2@sales.example.com"}


def _episode(i: int, owner: str, **changes: Any) -> Episode:
    values: dict[str, Any] = dict(
        warning_id=f"w{i}",
        customer_id=f"C{i}",
        customer_name=f"Shop {i}",
        owner=owner,
        segment="smb" if i % 2 else "key_account",
        warning_type=WARNING_TYPES[i % len(WARNING_TYPES)],
        severity=("low", "medium", "high", "critical")[i % 4],
        status="open",
        opened_at=NOW - timedelta(days=i),
        summary=f"summary {i}",
        evidence={"revenue_52w": 1000.0 * (i + 1)},
        action="call them",
        churn_probability=None,
        received_at=NOW - timedelta(hours=1),
    )
    values.update(changes)
    return Episode(**values)


@pytest.fixture
def site(ledger_url: str) -> Iterator[tuple[str, Any, Settings]]:
    """A running inbox on a ledger with 12 warnings: ann owns the even customers,
    bob the odd ones; meg manages their team, sam manages another, root is admin."""
    url = ledger_url
    settings = load_settings(alerts={"ledger_url": url}, web={"trusted_proxies": ["127.0.0.1"]})
    sessions = open_ledger(url)
    with sessions.begin() as session:
        add_user(session, "ann", "ann-password", "rep", OWNERS["ann"], "north")
        add_user(session, "bob", "bob-password", "rep", OWNERS["bob"], "north")
        add_user(session, "meg", "meg-password", "manager", "", "north")
        add_user(session, "sam", "sam-password", "manager", "", "south")
        add_user(session, "root", "root-password", "admin")
        for i in range(12):
            owner = OWNERS["ann"] if i % 2 == 0 else OWNERS["bob"]
            name = "=HYPERLINK(1)" if i == 4 else f"Shop {i}"
            session.add(Customer(customer_id=f"C{i}", name=name, owner=owner, region="EU"))
            session.add(_episode(i, owner, customer_name=name))
    server = WebServer(settings, port=0, live=False).start()
    yield server.url, sessions, settings
    server.stop()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def _login(base: str, user: str, password: str | None = None) -> requests.Session:
    browser = requests.Session()
    token = _csrf(browser.get(f"{base}/login").text)
    answer = browser.post(
        f"{base}/login",
        data={"csrf": token, "username": user, "password": password or f"{user}-password"},
    )
    assert answer.status_code == 200 and answer.url.endswith("/inbox"), answer.text[:300]
    return browser


def _customers(html: str) -> set[str]:
    return set(re.findall(r'<tr class="account[^"]*" data-customer="([^"]+)"', html))


def test_every_page_needs_a_login_and_a_wrong_password_gets_nothing(site):
    base, _, _ = site
    for path in ("/inbox", "/customers/C0", "/team", "/team.csv", "/users"):
        answer = requests.get(base + path, allow_redirects=False, timeout=10)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    browser = requests.Session()
    token = _csrf(browser.get(f"{base}/login").text)
    wrong = browser.post(
        f"{base}/login", data={"csrf": token, "username": "ann", "password": "guess-guess"}
    )
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert browser.get(f"{base}/inbox", allow_redirects=False).status_code == 303
    ok = _login(base, "ann")
    cookie = next(c for c in ok.cookies if c.name == "churnwatch_session")
    assert cookie.has_nonstandard_attr("httponly")  # (the cookie jar keeps it lowercase)
    assert cookie.get_nonstandard_attr("samesite") == "lax"
    # after a login, "next" may only lead to one of our own pages
    browser = requests.Session()
    token = _csrf(browser.get(f"{base}/login").text)
    away = browser.post(
        f"{base}/login?next=//evil.example/x",
        data={"csrf": token, "username": "ann", "password": "ann-password"},
        allow_redirects=False,
    )
    assert away.headers["location"] == "/inbox"


def test_a_rep_sees_only_their_customers_and_gets_403_for_others(site):
    base, _, _ = site
    ann = _login(base, "ann")
    inbox = ann.get(f"{base}/inbox").text
    assert _customers(inbox) == {f"C{i}" for i in range(0, 12, 2)}
    # highest expected loss first: C10 has the largest revenue of ann's customers
    assert re.findall(r'data-customer="([^"]+)"', inbox)[0] == "C10"
    assert ann.get(f"{base}/customers/C2").status_code == 200
    refused = ann.get(f"{base}/customers/C3")
    assert refused.status_code == 403 and "Shop 3" not in refused.text
    assert ann.get(f"{base}/customers/NOPE").status_code == 404
    assert ann.get(f"{base}/team").status_code == 403
    assert ann.get(f"{base}/users").status_code == 403
    # filters and search
    assert _customers(ann.get(f"{base}/inbox", params={"q": "shop 8"}).text) == {"C8"}
    segment = ann.get(f"{base}/inbox", params={"segment": "key_account"}).text
    assert _customers(segment) == {f"C{i}" for i in range(0, 12, 2)}  # all even are key
    severity = ann.get(f"{base}/inbox", params={"severity": "high"}).text
    assert _customers(severity) == {"C2", "C6", "C10"}


def test_the_inbox_lists_accounts_with_their_warnings_as_chips(site):
    """One row per customer, however many warnings it has open: the most severe
    first among its chips, the filters choosing the chips shown."""
    base, sessions, _ = site
    with sessions.begin() as session:
        for n, (warning_type, severity) in enumerate(
            [("overdue_debt", "critical"), ("complaint_trouble", "low")]
        ):
            session.add(
                _episode(
                    2,
                    OWNERS["ann"],
                    warning_id=f"w2-{n}",
                    warning_type=warning_type,
                    severity=severity,
                )
            )
    inbox = _login(base, "ann").get(f"{base}/inbox").text
    assert re.findall(r'<tr class="account[^"]*" data-customer="C2"', inbox) == [
        '<tr class="account sev-critical new" data-customer="C2"'
    ]
    assert "Accounts at risk: 6" in inbox and "Open warnings</th>" in inbox
    row = re.search(r'data-customer="C2">(.*?)</tr>', inbox, re.S)
    assert row is not None
    chips = re.findall(r'class="chip sev-(\w+)" data-type="(\w+)"', row.group(1))
    assert chips[0] == ("critical", "overdue_debt") and len(chips) == 3
    assert ("low", "complaint_trouble") in chips
    only = _login(base, "ann").get(f"{base}/inbox", params={"type": "complaint_trouble"}).text
    row = re.search(r'data-customer="C2">(.*?)</tr>', only, re.S)
    assert row is not None
    assert re.findall(r'data-type="(\w+)"', row.group(1)) == ["complaint_trouble"]


def test_managers_see_their_team_and_admins_everyone(site):
    base, _, _ = site
    assert _customers(_login(base, "meg").get(f"{base}/inbox").text) == {f"C{i}" for i in range(12)}
    assert _customers(_login(base, "sam").get(f"{base}/inbox").text) == set()
    assert len(_customers(_login(base, "root").get(f"{base}/inbox").text)) == 12


def test_actions_write_the_ledger_and_the_dispatcher_honours_a_snooze(site):
    base, sessions, settings = site
    ann = _login(base, "ann")
    token = _csrf(ann.get(f"{base}/customers/C2").text)
    until = (NOW + timedelta(days=10)).date().isoformat()
    done = ann.post(
        f"{base}/customers/C2/snoozed",
        data={"csrf": token, "until": until, "reason": "on holiday"},
    )
    assert done.status_code == 200 and "Snoozed until" in done.text
    ann.post(f"{base}/customers/C2/acknowledged", data={"csrf": token, "warning_id": "w2"})
    ann.post(
        f"{base}/customers/C2/outcome",
        data={"csrf": token, "warning_id": "w2", "outcome": "saved", "note": "won back"},
    )
    with sessions() as session:
        kinds = session.scalars(select(Action.kind).where(Action.customer_id == "C2")).all()
        assert sorted(kinds) == ["acknowledged", "outcome", "snoozed"]
        feedback = session.scalars(select(Feedback)).one()
        assert (feedback.warning_id, feedback.verdict, feedback.note) == ("w2", "saved", "won back")
    # the dispatcher, on the same ledger, holds C2's next notification back as snoozed
    dispatcher = Dispatcher(settings.alerts, load_routing(settings.alerts.routing), sessions)
    from tests.dispatching import record

    dispatcher.on_warning(record("w-new", customer="C2", owner=OWNERS["ann"]))
    dispatcher.deliver_due()
    with sessions() as session:
        note = session.scalars(select(Notification).where(Notification.customer_id == "C2")).one()
        assert note.status == "snoozed"
    # acknowledged shows in the inbox's filter; the outcome in the manager's team view
    acked = ann.get(f"{base}/inbox", params={"ack": "yes"}).text
    assert _customers(acked) == {"C2"}
    team = _login(base, "meg").get(f"{base}/team").text
    w2_type = WARNING_TYPES[2 % len(WARNING_TYPES)]
    row = re.search(rf'<tr data-type="{w2_type}">(.*?)</tr>', team, re.S)
    assert row and '<td class="num saved">1</td>' in row.group(1)
    # lifting the snooze
    ann.post(f"{base}/customers/C2/unsnoozed", data={"csrf": token})
    with sessions() as session:
        assert session.scalars(select(Snooze)).one().lifted_at is not None


def test_a_hand_over_moves_the_customer_to_the_colleague(site):
    base, sessions, _ = site
    ann = _login(base, "ann")
    token = _csrf(ann.get(f"{base}/customers/C4").text)
    ann.post(
        f"{base}/customers/C4/handed_over",
        data={"csrf": token, "to": "bob", "note": "bob knows them"},
    )
    assert ann.get(f"{base}/customers/C4").status_code == 403
    bob = _login(base, "bob")
    assert "C4" in _customers(bob.get(f"{base}/inbox").text)


@pytest.mark.parametrize(
    ("action", "form", "why"),
    [
        ("snoozed", {"until": "next week", "reason": "x"}, "YYYY-MM-DD"),
        ("snoozed", {"until": "2020-01-01", "reason": "x"}, "in the future"),
        ("snoozed", {"until": "2999-01-01", "reason": "x"}, "within 366 days"),
        ("snoozed", {"until": "{soon}", "reason": ""}, "'reason' is required"),
        ("snoozed", {"until": "{soon}", "reason": "x" * 2001}, "longer than 2000"),
        ("outcome", {"warning_id": "w3", "outcome": "saved"}, "not this customer's"),
        ("outcome", {"warning_id": "w2", "outcome": "great"}, "unknown outcome"),
        ("acknowledged", {"warning_id": "nope"}, "not this customer's"),
        ("handed_over", {"to": "nobody"}, "who owns customers"),
    ],
)
def test_bad_forms_get_a_clear_4xx_and_write_nothing(site, action, form, why):
    base, sessions, _ = site
    ann = _login(base, "ann")
    token = _csrf(ann.get(f"{base}/customers/C2").text)
    soon = (NOW + timedelta(days=3)).date().isoformat()
    data = {k: v.replace("{soon}", soon) for k, v in form.items()}
    answer = ann.post(f"{base}/customers/C2/{action}", data={"csrf": token, **data})
    assert 400 <= answer.status_code < 500 and why in html.unescape(answer.text)
    _nothing_written(sessions)


def test_a_missing_or_forged_csrf_token_is_refused(site):
    base, sessions, _ = site
    ann = _login(base, "ann")
    soon = (NOW + timedelta(days=3)).date().isoformat()
    for token in (None, "forged"):
        data = {"until": soon, "reason": "x"} | ({"csrf": token} if token else {})
        answer = ann.post(f"{base}/customers/C2/snoozed", data=data)
        assert answer.status_code == 403 and "security token" in answer.text
    # another person's valid token does not work in this session either
    bob_token = _csrf(_login(base, "bob").get(f"{base}/inbox").text)
    answer = ann.post(
        f"{base}/customers/C2/snoozed", data={"csrf": bob_token, "until": soon, "reason": "x"}
    )
    assert answer.status_code == 403
    # nor may a rep act on someone else's customer
    token = _csrf(ann.get(f"{base}/inbox").text)
    answer = ann.post(
        f"{base}/customers/C3/snoozed", data={"csrf": token, "until": soon, "reason": "x"}
    )
    assert answer.status_code == 403
    _nothing_written(sessions)


def _nothing_written(sessions: Any) -> None:
    with sessions() as session:
        for table in (Action, Snooze, Feedback):
            assert session.scalar(select(func.count()).select_from(table)) == 0


def test_team_csv_lists_the_open_warnings_safely(site):
    base, _, _ = site
    text = _login(base, "meg").get(f"{base}/team.csv").text
    lines = text.strip().splitlines()
    assert lines[0].startswith("customer_id,customer_name,owner")
    assert len(lines) == 13
    assert "'=HYPERLINK(1)" in text  # a spreadsheet shows it, does not run it


def test_the_language_follows_the_user(site):
    base, _, _ = site
    ann = _login(base, "ann")
    token = _csrf(ann.get(f"{base}/inbox").text)
    page = ann.post(f"{base}/language", data={"csrf": token, "language": "zh-CN", "back": "/inbox"})
    assert "未关闭的预警" in page.text and "Open warnings" not in page.text
    assert re.search(r'class="chip sev-high"[^>]*>[^<]* · 高</span>', page.text)  # severities too
    # kept for the next login
    assert "未关闭的预警" in _login(base, "ann").get(f"{base}/inbox").text


def test_single_sign_on_header_is_trusted_only_from_the_configured_proxies(site, tmp_path):
    base, _, settings = site
    # the fixture trusts 127.0.0.1 with no header name: the header means nothing
    assert (
        requests.get(
            f"{base}/inbox", headers={"X-User": "ann"}, allow_redirects=False, timeout=10
        ).status_code
        == 303
    )
    for trusted, expected in ((["127.0.0.1"], 200), (["10.0.0.1"], 303)):
        s = settings.model_copy(
            update={
                "web": settings.web.model_copy(
                    update={"user_header": "X-User", "trusted_proxies": trusted}
                )
            }
        )
        server = WebServer(s, port=0, live=False).start()
        try:
            answer = requests.get(
                f"{server.url}/inbox", headers={"X-User": "ann"}, allow_redirects=False, timeout=10
            )
        finally:
            server.stop()
        assert answer.status_code == expected


def test_new_warnings_are_marked_until_the_next_visit(site):
    base, sessions, _ = site
    first = _login(base, "ann").get(f"{base}/inbox").text
    assert first.count('<span class="badge">new</span>') == 6
    with sessions.begin() as session:
        session.add(
            _episode(20, OWNERS["ann"], received_at=datetime.now(UTC) + timedelta(seconds=1))
        )
        session.add(Customer(customer_id="C20", name="Shop 20", owner=OWNERS["ann"]))
    again = _login(base, "ann").get(f"{base}/inbox").text
    assert again.count('<span class="badge">new</span>') == 1
    assert re.search(r'class="account[^"]* new" data-customer="C20"', again)


def test_users_are_managed_from_the_cli(ledger_url):
    from click.testing import CliRunner

    from churnwatch.cli import cli

    runner = CliRunner()
    env = {"CHURNWATCH_ALERTS__LEDGER_URL": ledger_url}
    added = runner.invoke(
        cli,
        ["web", "users", "add", "ann", "--owner", "rep1@x.example", "--password-stdin"],
        input="a-long-password\n",
        env=env,
    )
    assert added.exit_code == 0, added.output
    short = runner.invoke(
        cli,
        ["web", "users", "add", "bob", "--owner", "b", "--password-stdin"],
        input="x\n",
        env=env,
    )
    assert short.exit_code == 1 and "at least 8" in short.output
    listed = runner.invoke(cli, ["web", "users", "list"], env=env)
    assert "ann" in listed.output and "rep1@x.example" in listed.output
    assert "a-long-password" not in listed.output
    changed = runner.invoke(
        cli,
        ["web", "users", "passwd", "ann", "--password-stdin"],
        input="another-password\n",
        env=env,
    )
    assert changed.exit_code == 0
    sessions = open_ledger(env["CHURNWATCH_ALERTS__LEDGER_URL"])
    with sessions.begin() as session:
        assert authenticate(session, "ann", "another-password") is not None
    assert runner.invoke(cli, ["web", "users", "remove", "ann"], env=env).exit_code == 0
    with sessions() as session:
        assert session.get(User, "ann") is None


def test_an_admin_manages_users_in_the_page_and_others_may_not(site):
    base, sessions, _ = site
    root = _login(base, "root")
    token = _csrf(root.get(f"{base}/users").text)
    added = root.post(
        f"{base}/users",
        data={
            "csrf": token,
            "username": "cai",
            "password": "cai-password",
            "role": "rep",
            "owner": "rep3@sales.example.com",
            "language": "zh-CN",
        },
    )
    assert added.status_code == 200 and 'data-user="cai"' in added.text
    assert "未关闭的预警" in _login(base, "cai").get(f"{base}/inbox").text
    weak = root.post(
        f"{base}/users",
        data={"csrf": token, "username": "dan", "password": "short", "role": "rep", "owner": "x"},
    )
    assert weak.status_code == 400 and "at least 8" in weak.text
    assert root.post(f"{base}/users", data={"csrf": token, "remove": "cai"}).status_code == 200
    assert root.post(f"{base}/users", data={"csrf": token, "remove": "root"}).status_code == 400
    meg = _login(base, "meg")
    refused = meg.post(
        f"{base}/users",
        data={"csrf": _csrf(meg.get(f"{base}/inbox").text), "remove": "ann"},
    )
    assert refused.status_code == 403
    with sessions() as session:
        assert session.get(User, "cai") is None and session.get(User, "ann") is not None


def test_the_team_view_shows_the_backtest_precision_beside_the_teams(site, tmp_path):
    import json

    base, sessions, settings = site
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"rules": {"sales_drop": {"precision": 0.42}}}))
    s = settings.model_copy(
        update={"web": settings.web.model_copy(update={"backtest_summary": str(summary)})}
    )
    server = WebServer(s, port=0, live=False).start()
    try:
        team = _login(server.url, "meg").get(f"{server.url}/team").text
    finally:
        server.stop()
    row = re.search(r'<tr data-type="sales_drop">(.*?)</tr>', team, re.S)
    assert row and '<td class="num backtest">42%</td>' in row.group(1)


def test_the_outcomes_by_type_count_every_warning_raised_and_say_how_many_are_open(site):
    """The outcomes are measured against every warning raised; the tables by owner,
    segment and region count the open ones. One resolved sales drop shows the two."""
    base, sessions, _settings = site
    with sessions.begin() as session:
        episode = session.scalars(
            select(Episode).where(Episode.warning_type == "sales_drop").limit(1)
        ).one()
        episode.status = "resolved"
    team = _login(base, "meg").get(f"{base}/team").text
    assert "<th>Warnings raised</th><th>Still open</th>" in team
    row = re.search(r'<tr data-type="sales_drop">(.*?)</tr>', team, re.S)
    raised = int(re.search(r'class="num raised">(\d+)<', row.group(1)).group(1))
    still_open = int(re.search(r'class="num still-open">(\d+)<', row.group(1)).group(1))
    assert raised >= 1 and still_open == raised - 1
    groups = re.findall(r'<tr data-group="[^"]+"><td>[^<]*</td><td class="num">(\d+)</td>', team)
    with sessions() as session:
        open_now = session.scalar(select(func.count()).where(Episode.status == "open"))
    # the tables by owner, by segment and by region each count every open one once
    assert sum(int(n) for n in groups) == 3 * open_now


def test_a_page_waiting_on_the_live_states_does_not_hold_up_anyone_else(site):
    """While the live-state follower holds its lock (ingesting a batch), a customer
    page waits for it in the thread pool, and every other request is still served."""
    import threading

    from churnwatch.consumers.web.live import LiveStates

    base, _sessions, settings = site
    live = LiveStates(settings)  # not following anything: the test holds its lock
    server = WebServer(settings, port=0, live=live).start()
    try:
        ann = _login(server.url, "ann")
        answers: list[int] = []
        with live.lock:
            slow = threading.Thread(
                target=lambda: answers.append(ann.get(f"{server.url}/customers/C0").status_code)
            )
            slow.start()
            threading.Event().wait(0.5)  # the customer page is now waiting on the lock
            assert answers == []
            other = requests.get(f"{server.url}/login", timeout=5)  # not held up
            assert other.status_code == 200
            bob = requests.Session()
            token = _csrf(bob.get(f"{server.url}/login", timeout=5).text)
            signed = bob.post(  # argon2 and the ledger: not held up either
                f"{server.url}/login",
                data={"csrf": token, "username": "bob", "password": "bob-password"},
                allow_redirects=False,
                timeout=5,
            )
            assert signed.status_code == 303 and signed.headers["location"] == "/inbox"
            assert answers == []
        slow.join(timeout=10)
        assert answers == [200]
    finally:
        server.stop()


def test_the_customer_page_and_the_inbox_show_the_live_health_score(site):
    """The health score the worker keeps in the customer's state (its parts, the
    trends, the weeks behind it), read from the changelog as the web reads it."""
    from datetime import timedelta

    import numpy as np

    from churnwatch.consumers.web.live import LiveStates
    from churnwatch.pipeline.health import health_view, record_health
    from churnwatch.pipeline.processing import run_history
    from churnwatch.pipeline.state_format import encode_state
    from tests.factories import T0, make_event

    base, _sessions, settings = site
    orders = [make_event("order", customer_id="C0", at=T0 + timedelta(weeks=w)) for w in range(30)]
    block, _ = run_history(orders, settings.warnings, 86_400)  # daily sweeps keep the score
    expected = health_view(block, block.rows["C0"])
    assert expected is not None and len(expected["history"]) == 16
    live = LiveStates(settings)
    live._take(live.states_topic, b'"C0"', encode_state(block["C0"]))  # noqa: SLF001
    live._take(live.progress_topic, b'"0"', str(block["C0"].last_order_at + 86_400).encode())  # noqa: SLF001
    server = WebServer(settings, port=0, live=live).start()
    try:
        ann = _login(server.url, "ann")
        page = ann.get(f"{server.url}/customers/C0").text
        shown = re.search(r'<dd id="health"><strong>(\d+)</strong>/100', page)
        assert shown and int(shown.group(1)) == expected["score"]
        parts = re.search(r'<dd id="health-parts">(.*?)</dd>', page, re.S)
        assert parts and "buying" in parts.group(1)
        history = re.search(r'<dd id="health-history">(.*?)</dd>', page, re.S)
        assert history and history.group(1).count("→") == 15
        inbox = ann.get(f"{server.url}/inbox").text
        assert f"health {expected['score']}" in inbox
        assert 'id="churn"' not in page  # no model scored it: no probability shown
        # a customer gone quiet scores lower, and the inbox can put it first
        gone_quiet = [
            make_event("order", customer_id="C2", at=T0 + timedelta(weeks=w)) for w in range(8)
        ]
        quiet, _ = run_history(gone_quiet + orders[-1:], settings.warnings, 86_400)
        assert health_view(quiet, quiet.rows["C2"])["score"] < expected["score"]
        live._take(live.states_topic, b'"C2"', encode_state(quiet["C2"]))  # noqa: SLF001
        by_loss = ann.get(f"{server.url}/inbox").text
        by_health = ann.get(f"{server.url}/inbox", params={"order": "health"}).text
        first = re.findall(r'data-customer="([^"]+)"', by_health)[0]
        assert first == "C2" and re.findall(r'data-customer="([^"]+)"', by_loss)[0] == "C10"
        # the model's live probability, with the time of the sweep that scored it
        state = block["C0"]
        rows = np.array([state.row])
        scored_at = block["C0"].last_order_at + 86_400
        parts = block.col["health_parts"][rows]
        score = block.col["health_score"][rows]
        record_health(block, rows, scored_at, score, parts, 5, np.array([0.37]))
        live._take(live.states_topic, b'"C0"', encode_state(block["C0"]))  # noqa: SLF001
        page = ann.get(f"{server.url}/customers/C0").text
        churn = re.search(r'<dd id="churn">(.*?)</dd>', page, re.S)
        day = datetime.fromtimestamp(scored_at, UTC).date().isoformat()
        assert churn and "37%" in churn.group(1) and f"scored {day}" in churn.group(1)
    finally:
        server.stop()


# --- one-click links from notifications -------------------------------------------------


def _linked_server(settings: Settings, days: float = 7.0) -> tuple[WebServer, ActionLinks]:
    web = settings.web.model_copy(update={"link_secret": SecretStr("k" * 40), "link_days": days})
    server = WebServer(settings.model_copy(update={"web": web}), port=0, live=False).start()
    return server, ActionLinks("k" * 40, server.url, days)


def test_a_notification_carries_one_click_links_that_confirm_then_act_once(site):
    _, sessions, settings = site
    server, links = _linked_server(settings)
    try:
        # the dispatcher's message about an open warning carries them, for its recipient
        dispatcher = Dispatcher(
            settings.alerts,
            load_routing(settings.alerts.routing),
            sessions,
            base_url=server.url,
            links=links,
        )
        from tests.dispatching import record

        dispatcher.on_warning(record("w-mail", customer="C2", owner=OWNERS["ann"]))
        with sessions() as session:
            body = session.scalars(
                select(Notification.body_text).where(Notification.warning_id == "w-mail")
            ).one()
        found = dict(re.findall(r"  (Acknowledge|Snooze 14 days|False alarm): (\S+)", body))
        assert set(found) == {"Acknowledge", "Snooze 14 days", "False alarm"}
        claim = links.read(found["False alarm"].rsplit("/", 1)[1])
        assert (claim.warning_id, claim.recipient) == ("w-mail", OWNERS["ann"])

        phone = requests.Session()  # not signed in
        link = links.make("w2", OWNERS["ann"], "false_alarm")
        shown = phone.get(link)
        assert shown.status_code == 200 and 'id="confirm"' in shown.text
        with sessions() as session:  # a GET (a mail scanner's) changes nothing
            assert session.scalar(select(func.count()).select_from(UsedLink)) == 0
        done = phone.post(link, data={"csrf": _csrf(shown.text)})
        assert done.status_code == 200 and 'id="link-done"' in done.text
        with sessions() as session:
            feedback = session.scalars(select(Feedback).where(Feedback.warning_id == "w2")).one()
            assert feedback.verdict == "false_alarm"
            action = session.scalars(select(Action).where(Action.warning_id == "w2")).one()
            assert (action.kind, action.detail, action.by) == (
                "outcome",
                "false_alarm",
                f"{OWNERS['ann']} (link)",
            )
        again = phone.get(link)
        assert again.status_code == 409 and "used already" in again.text
        assert phone.post(link, data={"csrf": _csrf(shown.text)}).status_code == 409
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Feedback)) == 1

        snooze = links.make("w4", OWNERS["ann"], "snoozed")
        page = phone.get(snooze)
        assert phone.post(snooze, data={"csrf": _csrf(page.text)}).status_code == 200
        with sessions() as session:
            held = session.scalars(select(Snooze).where(Snooze.customer_id == "C4")).one()
            assert held.warning_type == WARNING_TYPES[4 % len(WARNING_TYPES)]
            days = (held.until - datetime.now(UTC)).total_seconds() / 86_400
            assert 13.9 < days <= 14.0

        token = links.make("w6", OWNERS["ann"], "acknowledged").rsplit("/", 1)[1]
        forged = phone.get(f"{server.url}/act/{token[:-3]}abc")
        assert forged.status_code == 400 and "not valid" in forged.text
        other = ActionLinks("another secret", server.url, 7).make("w6", OWNERS["ann"], "snoozed")
        assert phone.get(other).status_code == 400
        unknown = phone.get(links.make("w-nope", OWNERS["ann"], "acknowledged"))
        assert unknown.status_code == 404
    finally:
        server.stop()


def test_an_expired_one_click_link_changes_nothing_and_says_so(site):
    _, sessions, settings = site
    server, links = _linked_server(settings, days=1 / 86_400)  # a second
    try:
        link = links.make("w2", OWNERS["ann"], "acknowledged")
        import time

        time.sleep(2.2)
        answer = requests.get(link, timeout=10)
        assert answer.status_code == 410 and "expired" in answer.text
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Action)) == 0
    finally:
        server.stop()


def test_the_team_view_and_the_cli_read_the_teams_verdicts_by_month_and_type(site, tmp_path):
    from churnwatch.consumers.alerts.verdicts import false_alarms, format_verdicts, ledger_verdicts

    base, sessions, settings = site
    judged = [  # (warning id, owner, opened, type, verdict)
        ("w30", "ann", datetime(2025, 1, 10, tzinfo=UTC), "churn_risk", "false_alarm"),
        ("w31", "bob", datetime(2025, 1, 20, tzinfo=UTC), "churn_risk", "saved"),
        ("w32", "ann", datetime(2025, 2, 5, tzinfo=UTC), "sales_drop", "contacted"),
    ]
    with sessions.begin() as session:
        for n, (wid, who, opened, warning_type, verdict) in enumerate(judged):
            session.add(
                _episode(
                    30 + n,
                    OWNERS[who],
                    warning_id=wid,
                    opened_at=opened,
                    warning_type=warning_type,
                    status="resolved",
                )
            )
            session.add(Feedback(short_id="", warning_id=wid, verdict=verdict, at=NOW))
    team = _login(base, "meg").get(f"{base}/team").text
    months = re.findall(
        r'<tr data-month="([\d-]+)">.*?class="num judged">(\d+)</td>.*?'
        r'class="num precision">(\d+%)</td>',
        team,
        re.S,
    )
    assert months == [("2025-01", "2", "50%"), ("2025-02", "1", "100%")]
    # ... and what `churnwatch train` and `tune` print from the same ledger
    verdicts = ledger_verdicts(settings.alerts.ledger_url)
    assert verdicts is not None and verdicts.by_type["churn_risk"].false_alarm_rate == 0.5
    lines = format_verdicts(verdicts, ["churn_risk", "overdue_debt"], "here")
    assert "churn_risk" in lines and "50%" in lines and "overdue_debt         none judged" in lines
    # the churn-risk false alarm `churnwatch train` can teach (model.false_alarm_weight)
    assert false_alarms(settings.alerts.ledger_url) == [("C30", judged[0][2])]
    missing = tmp_path / "nowhere" / "ledger.db"
    assert ledger_verdicts(f"sqlite:///{missing}") is None and not missing.exists()
    assert "none yet" in format_verdicts(None, ["churn_risk"], "here")


def _task_rows(html_text: str, table: str = "tasks") -> list[str]:
    body = re.search(rf'<table class="list" id="{table}">(.*?)</table>', html_text, re.S)
    return re.findall(r'data-customer="([^"]+)"', body.group(1)) if body else []


def test_my_tasks_lists_the_reps_tasks_soonest_first_and_closes_them(site):
    """The dispatcher makes the tasks (ann: C2 critical and overdue, C6 low; bob: C3);
    ann sees hers, closes one as contacted (the same outcome rows as the customer
    page) and drops the other; the manager's team view counts them per owner."""
    from tests.dispatching import record

    base, sessions, settings = site
    dispatcher = Dispatcher(settings.alerts, load_routing(settings.alerts.routing), sessions)
    dispatcher.on_warning(record("t-2", customer="C2", owner=OWNERS["ann"], severity="low"))
    dispatcher.on_warning(record("t-6", customer="C6", owner=OWNERS["ann"], severity="medium"))
    dispatcher.on_warning(record("t-3", customer="C3", owner=OWNERS["bob"], severity="high"))
    with sessions.begin() as session:
        tasks = {t.customer_id: t for t in session.scalars(select(Task))}
        tasks["C2"].due_at = NOW - timedelta(days=1)  # overdue since yesterday
    ann = _login(base, "ann")
    page_html = ann.get(f"{base}/tasks").text
    assert _task_rows(page_html) == ["C2", "C6"]  # not bob's; the overdue one first
    assert re.search(
        r'<tr class="task sev-low overdue" data-task="\d+" data-customer="C2"', page_html
    )
    assert "Call the customer this week." in page_html
    team = _login(base, "meg").get(f"{base}/team").text
    row = re.search(rf'<tr data-owner="{OWNERS["ann"]}">(.*?)</tr>', team, re.S)
    assert row and '<td class="num open">2</td><td class="num overdue">1</td>' in row.group(1)

    token = _csrf(page_html)
    done = ann.post(
        f"{base}/tasks/{tasks['C6'].id}",
        data={"csrf": token, "do": "done", "outcome": "contacted", "note": "called"},
    )
    assert done.status_code == 200 and done.url.endswith("/tasks?saved=1")
    assert _task_rows(done.text) == ["C2"]
    assert ann.post(f"{base}/tasks/{tasks['C2'].id}", data={"csrf": token, "do": "drop"}).ok
    again = ann.post(f"{base}/tasks/{tasks['C2'].id}", data={"csrf": token, "do": "drop"})
    assert again.status_code == 409 and "closed already" in again.text
    theirs = ann.post(f"{base}/tasks/{tasks['C3'].id}", data={"csrf": token, "do": "drop"})
    assert theirs.status_code == 403
    odd = ann.post(f"{base}/tasks/{tasks['C3'].id}x", data={"csrf": token, "do": "drop"})
    assert odd.status_code == 404
    with sessions() as session:
        closed = {
            t.customer_id: (t.state, t.outcome, t.closed_by) for t in session.scalars(select(Task))
        }
        assert closed == {
            "C2": ("dropped", "", "ann"),
            "C6": ("done", "contacted", "ann"),
            "C3": ("open", "", ""),
        }
        verdict = session.scalars(select(Feedback).where(Feedback.warning_id == "t-6")).one()
        assert (verdict.verdict, verdict.note) == ("contacted", "called")
        kinds = session.scalars(select(Action.kind).where(Action.customer_id == "C2")).all()
        assert "task_dropped" in kinds
    listing = ann.get(f"{base}/tasks").text
    assert "No open tasks." in listing
    assert "done: contacted" in listing and "dropped" in listing
    team = _login(base, "meg").get(f"{base}/team").text
    row = re.search(rf'<tr data-owner="{OWNERS["ann"]}">(.*?)</tr>', team, re.S)
    assert row and re.search(r'open">0<.*overdue">0<.*done">1<.*dropped">1<', row.group(1), re.S)
