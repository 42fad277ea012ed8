"""The web inbox in a real headless browser (Debian's chromium) against a running
pipeline: broker, worker, alert dispatcher and `churnwatch web`, all real processes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from churnwatch.consumers.alerts.ledger import (
    Action,
    Customer,
    Episode,
    Notification,
    UsedLink,
    open_ledger,
)
from churnwatch.consumers.alerts.links import ActionLinks
from churnwatch.core.broker import free_port, start_child, stop_child
from churnwatch.core.inbox import LocalInbox
from churnwatch.core.topics import Topic
from churnwatch.pipeline.events import WarningRecord, encode_event
from churnwatch.producers.produce import produce
from churnwatch.producers.simulator import iter_paced, parse_start, simulate
from tests.dispatching import record
from tests.integration.conftest import (
    isolated_settings,
    produce_raw,
    read_topic,
    settings_env,
    wait_for,
    wait_processed,
)
from tests.integration.test_alerts_dispatcher import dispatcher_env

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed "
    "(`make test` installs them when run as root)",
)
CLI = [sys.executable, "-m", "churnwatch.cli"]
REP1, REP2 = "rep1@sales.example.com", "rep2@sales.example.com"
PASSWORDS = {"rep1": "rep1-password", "boss": "boss-password"}


def _browser():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1300,1000")
    return webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=options)


def _add_user(env: dict[str, str], name: str, *args: str) -> None:
    done = subprocess.run(  # noqa: S603 - our own CLI
        [*CLI, "web", "users", "add", name, *args, "--password-stdin"],
        input=PASSWORDS[name] + "\n",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def gone(element: Any) -> Callable[[object], bool]:
    """Like selenium's ``staleness_of``, also when chromedriver reports the stale
    element as an inspector error ("does not belong to the document") during the
    navigation."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def stale(_: object) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return stale


def test_a_rep_and_a_manager_work_through_the_inbox_in_a_browser(broker, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    settings = isolated_settings(broker, tmp_path / "worker")
    events, _ = simulate(40, 11, parse_start("2024-10-07"), 420, 2, 0)
    produce(settings, iter_paced(events, 0))
    inbox = LocalInbox().start()
    port = free_port()
    env = dict(
        dispatcher_env(settings, f"sqlite:///{tmp_path / 'ledger.db'}", inbox),
        # the dispatcher's mails carry one-click links the web process follows
        CHURNWATCH_WEB__BASE_URL=f"http://127.0.0.1:{port}",
        CHURNWATCH_WEB__LINK_SECRET="k" * 40,
    )
    web_env = dict(env, CHURNWATCH_WEB__PORT=str(port), CHURNWATCH_WEB__SESSION_SECRET="s" * 40)
    _add_user(env, "rep1", "--owner", REP1)
    _add_user(env, "boss", "--role", "manager")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    procs = []
    browser = None
    try:
        worker = start_child(
            [*CLI, "worker"], env=dict(os.environ, **settings_env(settings)), log=tmp_path / "w.log"
        )
        procs.append(worker)
        procs.append(start_child([*CLI, "alerts", "run"], env=env, log=tmp_path / "alerts.log"))
        procs.append(start_child([*CLI, "web"], env=web_env, log=tmp_path / "web.log"))
        wait_processed(settings, len(events), worker, timeout=180)
        sessions = open_ledger(env["CHURNWATCH_ALERTS__LEDGER_URL"])
        raised = {
            WarningRecord.model_validate_json(r).warning_id
            for r in read_topic(settings, Topic.WARNINGS)
        }
        assert raised, "the worker raised no warning to look at"

        def ledger_open() -> dict[str, str]:
            """Open warnings' customers -> owner, once the dispatcher has every record."""
            with sessions() as session:
                owners = {c.customer_id: c.owner for c in session.scalars(select(Customer))}
                return {
                    e.customer_id: owners.get(e.customer_id) or e.owner
                    for e in session.scalars(select(Episode).where(Episode.status == "open"))
                }

        def open_ids() -> set[str]:
            with sessions() as session:
                return set(
                    session.scalars(select(Episode.warning_id).where(Episode.status == "open"))
                )

        def settled() -> bool:
            """Every warning in the ledger, and its open ones unchanged for a while."""
            with sessions() as session:
                if set(session.scalars(select(Episode.warning_id))) != raised:
                    return False
            before = ledger_open()
            time.sleep(2)
            return ledger_open() == before

        wait_for(settled, "the dispatcher's ledger to hold every warning", timeout=60)
        expected = {c for c, owner in ledger_open().items() if owner == REP1}
        others = {c for c, owner in ledger_open().items() if owner == REP2}
        assert expected and others, "the test needs open warnings for both reps"

        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base), "the web inbox", timeout=30)
        browser = _browser()
        wait = WebDriverWait(browser, 30)

        def login(user: str) -> None:
            browser.delete_all_cookies()
            browser.get(f"{base}/inbox")
            browser.find_element(By.ID, "username").send_keys(user)
            browser.find_element(By.ID, "password").send_keys(PASSWORDS[user])
            browser.find_element(By.ID, "login").click()
            # (the login page's own address holds "/inbox" in its ?next=)
            wait.until(seen.presence_of_element_located((By.ID, "logout")))

        # the rep's inbox lists exactly the rep's customers at risk
        login("rep1")
        rows = browser.find_elements(By.CSS_SELECTOR, "#inbox tr.account")
        listed = {row.get_attribute("data-customer") for row in rows}
        assert listed == expected
        browser.save_screenshot(str(shots / "inbox.png"))

        # a customer page with the worker's live figures and the weekly chart
        customer = rows[0].get_attribute("data-customer")
        rows[0].find_element(By.TAG_NAME, "a").click()
        wait.until(gone(rows[0]))

        def live_page(_: object) -> bool:
            if browser.find_elements(By.ID, "live"):
                return True
            browser.refresh()  # the inbox may still be reading the changelog
            return False

        wait.until(live_page)
        bars = browser.find_elements(By.CSS_SELECTOR, "#weekly-chart svg rect.revenue")
        assert bars, "the weekly chart has no revenue bars"
        assert browser.find_elements(By.CSS_SELECTOR, "#weekly-chart svg line.opening")
        browser.save_screenshot(str(shots / "customer.png"))

        # snooze it: the dispatcher then records its next notification as snoozed
        until = (datetime.now(UTC) + timedelta(days=7)).date().isoformat()
        browser.execute_script(
            "document.getElementById('snooze-until').value = arguments[0]", until
        )
        browser.find_element(By.ID, "snooze-reason").send_keys("on holiday until next week")
        button = browser.find_element(By.ID, "snooze")
        button.click()
        wait.until(gone(button))
        wait.until(seen.presence_of_element_located((By.ID, "snoozed")))
        produce_raw(
            settings,
            [(Topic.WARNINGS, customer, encode_event(record("w-after", customer=customer)))],
        )

        def after_snooze() -> str | None:
            with sessions() as session:
                return session.scalar(
                    select(Notification.status).where(Notification.warning_id == "w-after")
                )

        # queued as pending, then held back by the snooze when it is due
        wait_for(
            lambda: after_snooze() not in (None, "pending"),
            "the dispatcher to take the new warning and judge it",
            timeout=30,
        )
        assert after_snooze() == "snoozed"

        # record an outcome on its first warning
        episode = browser.find_element(By.CSS_SELECTOR, "#episodes tr.episode")
        warning_type = episode.get_attribute("data-type")
        form = episode.find_element(By.CSS_SELECTOR, "form.outcome-form")
        form.find_element(By.CSS_SELECTOR, "select[name=outcome] option[value=saved]").click()
        form.find_element(By.NAME, "note").send_keys("new contract signed")
        form.find_element(By.CSS_SELECTOR, "button.record-outcome").click()
        wait.until(gone(form))  # the page before had "saved" too (the snooze)
        wait.until(seen.presence_of_element_located((By.ID, "saved")))

        # a one-click link from a mail the rep received: confirmed, it acts once
        mails = [m for m in inbox.received() if REP1 in str(m["To"])]
        links = [
            found
            for m in mails
            for part in m.walk()
            if part.get_content_maintype() == "text"  # (the links are the HTML part's)
            for found in re.findall(r"http://[^\s)\]\"'<>]+/act/[\w.-]+", part.get_content())
        ]
        reader = ActionLinks("k" * 40, base, 7)
        claims = {u: reader.read(u.rsplit("/", 1)[1]) for u in set(links)}
        links = [
            u
            for u, claim in claims.items()
            if claim.action == "acknowledged" and claim.warning_id in open_ids()
        ]
        assert links, "no mail to rep1 carries a link to an open warning"
        link = links[0]
        with sessions() as session:
            acks_before = session.scalar(
                select(func.count()).select_from(Action).where(Action.kind == "acknowledged")
            )
        browser.delete_all_cookies()  # (a phone's browser: not signed in)
        browser.get(link)
        confirm = browser.find_element(By.ID, "confirm")
        with sessions() as session:  # opening it (a mail scanner's GET) changed nothing
            assert session.scalar(select(func.count()).select_from(UsedLink)) == 0
        confirm.click()
        wait.until(seen.presence_of_element_located((By.ID, "link-done")))
        with sessions() as session:
            used = session.scalars(select(UsedLink)).one()
            acked = session.scalars(
                select(Action).where(
                    Action.kind == "acknowledged", Action.warning_id == used.warning_id
                )
            ).one()
            assert acked.by == f"{REP1} (link)"
            assert (
                session.scalar(
                    select(func.count()).select_from(Action).where(Action.kind == "acknowledged")
                )
                == acks_before + 1
            )
            linked = session.get(Episode, used.warning_id)
        browser.get(link)  # the same link again: says so, changes nothing
        assert "used already" in browser.find_element(By.ID, "message").text
        login("rep1")
        browser.get(f"{base}/inbox?ack=yes")
        acked_rows = browser.find_elements(By.CSS_SELECTOR, "#inbox tr.account")
        assert linked.customer_id in {r.get_attribute("data-customer") for r in acked_rows}

        # another rep's customer by URL: refused, nothing of it shown
        other = sorted(others)[0]
        browser.get(f"{base}/customers/{other}")
        assert "You may not see this customer." in browser.find_element(By.ID, "message").text
        assert other not in browser.find_element(By.TAG_NAME, "main").text

        # the manager sees the outcome in the team view, then switches to Chinese
        login("boss")
        team_link = browser.find_element(By.ID, "nav-team")
        team_link.click()
        wait.until(gone(team_link))
        row = browser.find_element(By.CSS_SELECTOR, f"#outcomes tr[data-type={warning_type}]")
        assert row.find_element(By.CSS_SELECTOR, "td.saved").text == "1"
        browser.find_element(By.ID, "lang-zh-CN").click()
        wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "团队的风险客户"))
    finally:
        if browser is not None:
            # what the browser showed last, for whoever reads a failure
            (tmp_path / "last_page.html").write_text(browser.page_source)
            browser.quit()
        for proc in procs:
            stop_child(proc)
        inbox.stop()
    for name in ("w.log", "web.log"):
        log = (tmp_path / name).read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


def _answers(base: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"{base}/login", timeout=2) as answer:  # noqa: S310 - our server
        return bool(answer.status == 200)
