from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from churnwatch.cli import cli


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "broker", "worker", "simulate", "warnings", "topics"):
        assert command in result.output


def test_bad_settings_file_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("clock:\n  mode: sundial\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "topics", "create"])
    assert result.exit_code == 2
    assert "clock.mode" in result.output


def test_docs_check_passes_on_the_committed_docs():
    result = CliRunner().invoke(cli, ["docs", "events", "--check"])
    assert result.exit_code == 0, result.output


def test_train_from_the_archive_then_promote_show_and_roll_back(tmp_path, monkeypatch):
    from collections import defaultdict

    from churnwatch.consumers.archiver import Archive, ArchiveStats
    from churnwatch.pipeline.events import decode_event
    from churnwatch.producers.simulator import parse_start, simulate

    events, _ = simulate(120, 11, parse_start("2024-10-07"), 540, 3, 0)
    by_topic = defaultdict(list)
    for e in events:
        by_topic[e.topic.value].append(decode_event(e.payload))
    archive = Archive(tmp_path / "archive")
    for topic, batch in by_topic.items():
        archive.write(topic, batch, ArchiveStats())
    monkeypatch.setenv("CHURNWATCH_ARCHIVE__PATH", str(tmp_path / "archive"))
    monkeypatch.setenv("CHURNWATCH_MODEL__REGISTRY", str(tmp_path / "registry"))
    runner = CliRunner()

    empty = runner.invoke(cli, ["models", "list"])
    assert empty.exit_code == 0 and "no models" in empty.output
    versions = []
    for _ in range(2):
        result = runner.invoke(cli, ["train", "--quiet"])
        assert result.exit_code == 0, result.output
        assert f"training on {len(events):,} events from archive" in result.output
        assert "| model |" in result.output and "| bgnbd |" in result.output
        versions.append(result.output.split("churnwatch models promote ")[1].split()[0])
    for version in versions:
        assert runner.invoke(cli, ["models", "promote", version]).exit_code == 0
    listing = runner.invoke(cli, ["models", "list"]).output
    assert f"* {versions[1]}" in listing and f"  {versions[0]}" in listing
    shown = runner.invoke(cli, ["models", "show"])
    assert shown.exit_code == 0 and f"version {versions[1]}" in shown.output
    back = runner.invoke(cli, ["models", "rollback"])
    assert back.exit_code == 0 and versions[0] in back.output
    assert f"* {versions[0]}" in runner.invoke(cli, ["models", "list"]).output
    again = runner.invoke(cli, ["models", "rollback"])
    assert again.exit_code == 1 and "nothing to roll back" in again.output
    missing = runner.invoke(cli, ["models", "promote", "v0"])
    assert missing.exit_code == 1 and "no model 'v0'" in missing.output


def test_train_needs_both_events_and_mapping_or_an_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURNWATCH_ARCHIVE__PATH", str(tmp_path / "nothing"))
    result = CliRunner().invoke(cli, ["train", "--quiet"])
    assert result.exit_code == 1 and "archive" in result.output and "is empty" in result.output
    csv = tmp_path / "x.csv"
    csv.write_text("a\n1\n")
    result = CliRunner().invoke(cli, ["train", "--events", str(csv)])
    assert result.exit_code == 2 and "go together" in result.output


def test_alerts_snooze_list_feedback_and_unsnooze(ledger_url, monkeypatch):
    from sqlalchemy import select

    from churnwatch.consumers.alerts.ledger import Notification, Snooze, open_ledger
    from tests.dispatching import record

    url = ledger_url
    monkeypatch.setenv("CHURNWATCH_ALERTS__LEDGER_URL", url)
    runner = CliRunner()
    snoozed = runner.invoke(
        cli,
        ["alerts", "snooze", "C1", "--until", "2099-01-01", "--reason", "holiday"],
    )
    assert snoozed.exit_code == 0 and "snoozed C1 (all warnings)" in snoozed.output
    past = runner.invoke(cli, ["alerts", "snooze", "C1", "--until", "2000-01-01", "--reason", "x"])
    assert past.exit_code == 2 and "future" in past.output

    from churnwatch.consumers.alerts.dispatcher import make_dispatcher
    from churnwatch.core.settings import load_settings

    dispatcher = make_dispatcher(load_settings())
    dispatcher.on_warning(record())
    dispatcher.deliver_due()  # the snooze holds it back when it is due
    listing = runner.invoke(cli, ["alerts", "list", "--customer", "C1"])
    assert listing.exit_code == 0 and "snoozed" in listing.output
    assert (
        "no notifications match"
        in runner.invoke(cli, ["alerts", "list", "--status", "sent"]).output
    )
    escalated = runner.invoke(cli, ["alerts", "list", "--kind", "escalated"])
    assert escalated.exit_code == 0 and "no notifications match" in escalated.output

    with open_ledger(url)() as session:
        short_id = session.scalar(select(Notification.short_id))
    ok = runner.invoke(cli, ["alerts", "feedback", short_id, "already_known", "--note", "met"])
    assert ok.exit_code == 0 and f"recorded already_known for {short_id}" in ok.output
    bad = runner.invoke(cli, ["alerts", "feedback", "NXXXX", "acted"])
    assert bad.exit_code == 1 and "no notification" in bad.output

    lifted = runner.invoke(cli, ["alerts", "unsnooze", "C1"])
    assert lifted.exit_code == 0 and "lifted 1 snooze(s)" in lifted.output
    with open_ledger(url)() as session:
        assert session.scalar(select(Snooze.lifted_at)) is not None


ONLINE_RETAIL = Path(__file__).resolve().parents[2].parent / "shared/data/online_retail"


@pytest.mark.skipif(not ONLINE_RETAIL.exists(), reason="../shared/data is absent (CI has it)")
def test_backtest_an_export_with_and_without_the_walk_forward_model(tmp_path):
    import json

    import pandas as pd

    # every fifth customer of Online Retail: a fair, quick sample of the real export
    invoices = pd.read_csv(ONLINE_RETAIL / "invoices.csv.gz")
    sample = tmp_path / "sample.csv"
    invoices[invoices.CustomerID.astype(int) % 5 == 0].to_csv(sample, index=False)
    mapping = Path(__file__).resolve().parents[2] / "configs/mappings/online_retail.yaml"
    runner = CliRunner()
    args = ["backtest", "--events", str(sample), "--mapping", str(mapping)]

    result = runner.invoke(cli, [*args, "--out", str(tmp_path / "full")])
    assert result.exit_code == 0, result.output
    assert "retraining as of 2011-" in result.output
    assert "| churn_risk |" in result.output and "| plain_90_day |" in result.output
    assert "walk-forward models, retrained every 28 days, serving from 2011-" in result.output
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert (
        summary["customers"]
        == invoices[invoices.CustomerID.astype(int) % 5 == 0]["CustomerID"].nunique()
    )
    assert summary["model"]["versions"] and summary["rules"]["churn_risk"]["episodes"] > 0

    rules_only = runner.invoke(cli, [*args, "--out", str(tmp_path / "rules"), "--no-model"])
    assert rules_only.exit_code == 0, rules_only.output
    assert "| churn_risk |" not in rules_only.output and "retraining" not in rules_only.output
    plain = json.loads((tmp_path / "rules" / "summary.json").read_text())
    assert plain["model"] is None
    assert plain["rules"]["sales_drop"] == summary["rules"]["sales_drop"]


def test_bench_times_a_backtest_of_the_simulated_history(tmp_path):
    import json

    from churnwatch.producers.simulator import parse_start, simulate

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli,
        ["bench", "--backtest", "--customers", "60", "--days", "400", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    events, truth = simulate(60, 7, parse_start("2024-10-07"), 400, 6, malformed=0)
    assert figures["events"] == len(events) and figures["customers"] == len(truth)
    assert figures["model"] == "walk-forward" and figures["seconds"] > 0
    assert figures["churns"] > 0
    assert f"backtest of {len(events):,} events (walk-forward)" in result.output
