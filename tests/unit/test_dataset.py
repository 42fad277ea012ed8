from __future__ import annotations

import pytest

from churnwatch.models.dataset import build_training_set, cutoffs_every
from churnwatch.pipeline.events import decode_event
from churnwatch.producers.loading import load_events
from churnwatch.producers.simulator import parse_start, simulate
from tests.paths import REPO

DATA = REPO.parent / "shared" / "data" / "online_retail" / "invoices.csv.gz"


@pytest.fixture(scope="module")
def history():
    events, truth = simulate(40, 9, parse_start("2024-10-07"), 540, 3, 0)
    return [decode_event(e.payload) for e in events], truth


def test_no_feature_uses_an_event_at_or_after_its_cutoff(history, settings):
    events, _ = history
    cutoffs = cutoffs_every(events, 28, 90)
    full = build_training_set(events, cutoffs, 90, settings.warnings)
    assert len(full) > 200
    for cutoff in cutoffs[::4]:
        # the same features from only the events before the cutoff: nothing at
        # or after it (not even the orders that decide the label) changes them
        before = [e for e in events if e.occurred_at < cutoff]
        alone = build_training_set(before, [cutoff], 90, settings.warnings)
        expected = full[full.cutoff == cutoff].drop(columns="churned").reset_index(drop=True)
        assert expected.equals(alone.drop(columns="churned").reset_index(drop=True)), cutoff


def test_labels_say_whether_the_customer_ordered_within_the_horizon(history, settings):
    events, truth = history
    cutoffs = cutoffs_every(events, 28, 90)
    table = build_training_set(events, cutoffs, 90, settings.warnings)
    churn_dates = {t.customer_id: t.churn_date for t in truth if t.churned}
    steady = {t.customer_id for t in truth if t.profile == "steady"}
    assert steady
    # steady customers (not the seasonal ones, whose winter lull can look like
    # churn to a 90-day label) keep ordering
    assert (table[table.customer_id.isin(steady)].churned == 0).all()
    # a churner's rows turn to churned once its last order is behind the cutoff
    for customer_id, churn_date in churn_dates.items():
        rows = table[(table.customer_id == customer_id) & (table.cutoff > churn_date)]
        assert (rows.churned == 1).all()


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data is absent (CI always has it)")
def test_online_retail_training_set_has_the_known_shape(settings):
    events, _ = load_events(DATA, REPO / "configs" / "mappings" / "online_retail.yaml")
    from datetime import UTC, datetime

    cutoff = datetime(2011, 9, 10, tzinfo=UTC)
    table = build_training_set(events, [cutoff], 90, settings.warnings)
    # the data README: 3,370 active customers, 43% churn (90 days, cutoff 2011-09-10)
    assert len(table) == pytest.approx(3370, rel=0.02)
    assert table.churned.mean() == pytest.approx(0.43, abs=0.02)


def test_segment_windows_apply_in_the_training_set_as_in_sweeps(history):
    """A segment's own windows (here: key accounts' "recent" = 4 weeks, not 8) change
    the training rows of that segment's customers only."""
    from churnwatch.core.settings import load_settings

    events, _ = history
    cutoffs = cutoffs_every(events, 28, 90)[-3:]
    plain = load_settings().warnings
    keyed = load_settings(warnings={"segments": {"key_account": {"recent_weeks": 4}}}).warnings
    a = build_training_set(events, cutoffs, 90, plain)
    b = build_training_set(events, cutoffs, 90, keyed)
    segment = {e.customer_id: e.segment for e in events if e.type == "customer_updated"}
    key = a.customer_id.map(segment) == "key_account"
    assert key.any() and (~key).any()
    assert a[~key].equals(b[~key])  # other segments: the same rows
    # key accounts: "recent" orders now count 4 weeks, as the worker's sweeps count them
    assert (b[key].orders_recent <= a[key].orders_recent).all()
    assert (b[key].orders_recent < a[key].orders_recent).any()
