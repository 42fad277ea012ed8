"""Training, the registry, safe loading and scoring in sweeps (no broker needed)."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from churnwatch.core.registry import (
    MODEL_FILE,
    RegistryError,
    promote,
    promoted_version,
    rollback,
    versions,
)
from churnwatch.models.baselines import p_no_order
from churnwatch.models.train import TrainingError, split_cutoffs, train
from churnwatch.pipeline.boosters import probe_rows
from churnwatch.pipeline.events import decode_event
from churnwatch.pipeline.processing import run_history, sweep
from churnwatch.pipeline.scoring import INPUT_FEATURES, ModelError, ModelHolder, load_model
from churnwatch.producers.simulator import parse_start, simulate


@pytest.fixture(scope="module")
def history():
    events, truth = simulate(120, 11, parse_start("2024-10-07"), 540, 3, 0)
    return [decode_event(e.payload) for e in events], truth


@pytest.fixture(scope="module")
def trained(history, tmp_path_factory):
    from churnwatch.core.settings import load_settings

    registry = tmp_path_factory.mktemp("registry")
    result = train(history[0], load_settings(None), registry, "simulator")
    return registry, result


def test_training_writes_a_complete_card_model_and_report(trained):
    registry, result = trained
    card = json.loads((result.folder / "card.json").read_text())
    assert card["version"] == result.version
    assert card["features"] == list(INPUT_FEATURES)
    assert card["label"]["horizon_days"] == 90
    assert set(card["metrics"]["baselines"]) == {"recency", "frequency", "logistic", "bgnbd"}
    for scores in [card["metrics"]["model"], *card["metrics"]["baselines"].values()]:
        assert {"roc_auc", "pr_auc", "brier", "precision_top10"} <= set(scores)
        assert 0 <= scores["brier"] <= 1
    # a time split: every training cutoff's horizon ended by the test cutoff
    window = card["data_window"]
    assert window["train_cutoffs"][1] < window["test_cutoff"]
    assert window["train_rows"] > window["test_rows"] > 50
    assert sum(row["rows"] for row in card["calibration"]) == window["test_rows"]
    for name in ["report.md", "roc.png", "calibration.png", "scores.png", "importance.png"]:
        assert (result.folder / name).stat().st_size > 500, name
    assert (result.folder / MODEL_FILE).read_bytes()[:2] == b"PK"  # skops zip, not a pickle
    # on the simulator, whose churners fade in several ways, the model beats
    # the best single-number baseline
    assert card["metrics"]["model"]["roc_auc"] > card["metrics"]["baselines"]["recency"]["roc_auc"]
    assert versions(registry) == [result.version]


def test_the_baselines_are_ranked_on_their_own_scores(trained, history, settings):
    """The card's recency and frequency figures are those of the raw numbers, not of
    their isotonic mapping to probabilities (which ties neighbouring values)."""
    from datetime import datetime

    from sklearn.metrics import roc_auc_score

    from churnwatch.models.dataset import build_training_set

    card = trained[1].card
    cutoff = datetime.fromisoformat(card["data_window"]["test_cutoff"])
    rows = build_training_set(history[0], [cutoff], 90, settings.warnings)
    assert len(rows) == card["data_window"]["test_rows"]
    labels = rows["churned"].to_numpy(dtype=float)
    silence = rows["days_since_last_order"].to_numpy(dtype=float)
    orders = rows["rfm_orders_52w"].to_numpy(dtype=float)
    reported = card["metrics"]["baselines"]
    assert reported["recency"]["roc_auc"] == round(roc_auc_score(labels, silence), 4)
    assert reported["frequency"]["roc_auc"] == round(roc_auc_score(labels, -orders), 4)


def test_too_short_a_history_is_a_clear_error(history, settings, tmp_path):
    events = [e for e in history[0] if (e.occurred_at - history[0][0].occurred_at).days < 200]
    with pytest.raises(TrainingError, match="history"):
        train(events, settings, tmp_path, "short")


def test_promote_and_rollback(trained, tmp_path):
    registry = tmp_path / "registry"
    source = trained[0] / trained[1].version
    for version in ("v1", "v2"):
        shutil.copytree(source, registry / version)
    assert promoted_version(registry) is None
    assert promote(registry, "v1") is None
    assert promote(registry, "v2") == "v1"
    assert promoted_version(registry) == "v2"
    assert rollback(registry) == "v1"
    assert promoted_version(registry) == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(registry)
    with pytest.raises(RegistryError, match="no model 'v9'"):
        promote(registry, "v9")


def test_loaded_model_scores_and_explains(trained):
    model = load_model(trained[1].folder)
    rows = np.array([model.usual, model.usual * 0 + 1.0])
    p = model.probabilities(rows)
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()
    reasons = model.reasons(rows[1], "en", top=3)
    assert len(reasons) <= 3
    assert all(r[3] > 0 for r in reasons)


def test_the_compiled_model_gives_scikit_learns_probabilities(trained, history, settings):
    """The worker scores without scikit-learn's per-tree calls, to the same numbers."""
    from churnwatch.pipeline.features import read_many
    from churnwatch.pipeline.scoring import feature_matrix

    model = load_model(trained[1].folder)
    assert model.compiled is not None
    states, _ = run_history(history[0], settings.warnings, 86400.0)
    rows = np.vstack(
        [
            feature_matrix(read_many(states, np.arange(len(states)), at))
            for at in (
                history[0][200].occurred_at.timestamp(),
                history[0][-1].occurred_at.timestamp(),
            )
        ]
    )
    assert np.array_equal(model.probabilities(rows), model.estimator.predict_proba(rows)[:, 1])
    # inputs far from the usual, and missing ones, each way every split sends them
    odd = probe_rows(model.usual, 4000)
    assert np.isnan(odd).any(axis=1).mean() > 0.9
    assert np.array_equal(model.probabilities(odd), model.estimator.predict_proba(odd)[:, 1])


def test_a_split_of_present_from_missing_values_compiles_to_the_same_numbers():
    """scikit-learn splits a feature's present values from its missing ones with the
    threshold +inf; a model with such a split was scored through scikit-learn's
    per-tree calls (the backtest of a large order-only history spent 88% there)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier

    from churnwatch.pipeline.boosters import CompiledBoosters

    rng = np.random.default_rng(3)
    n = 3000
    churned = rng.random(n) < 0.4
    x = rng.normal(size=(n, 4))
    x[:, 0] = np.where(churned & (rng.random(n) < 0.8), np.nan, 1.0)  # one present value
    model = CalibratedClassifierCV(
        HistGradientBoostingClassifier(max_iter=20, random_state=0), method="isotonic", cv=3
    ).fit(x, churned)
    thresholds = [
        tree.nodes["num_threshold"][~tree.nodes["is_leaf"].astype(bool)]
        for c in model.calibrated_classifiers_
        for (tree,) in c.estimator._predictors
    ]
    assert np.isinf(np.concatenate(thresholds)).any()  # the case under test
    probes = np.vstack([x[:500], [[np.nan, np.inf, -np.inf, 0.0], [1.0, -np.inf, np.inf, 1.0]]])
    compiled = CompiledBoosters.compile(model, probes)
    assert compiled is not None
    np.testing.assert_array_equal(compiled.probabilities(x), model.predict_proba(x)[:, 1])


def test_reasons_of_many_rows_at_once_equal_one_row_at_a_time(trained):
    model = load_model(trained[1].folder)
    rows = np.array([model.usual * 0 + 1.0, model.usual * 0 + 50.0, model.usual])
    one_by_one = [model.explain(row, "zh-CN", 3) for row in rows]
    assert model.explain_many(rows, ["zh-CN"] * 3, 3) == one_by_one
    assert one_by_one[2] == "-"  # the usual customer has nothing pushing it up


def test_corrupt_or_mismatched_model_is_refused(trained, tmp_path):
    good = trained[1].folder
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    data = (corrupt / MODEL_FILE).read_bytes()
    (corrupt / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot load"):
        load_model(corrupt)
    other = tmp_path / "other"
    shutil.copytree(good, other)
    card = json.loads((other / "card.json").read_text())
    card["features"] = card["features"][:-1]
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="other features"):
        load_model(other)


def test_holder_keeps_serving_the_old_model_when_the_new_one_is_corrupt(trained, tmp_path, caplog):
    registry = tmp_path / "registry"
    shutil.copytree(trained[1].folder, registry / "v1")
    shutil.copytree(trained[1].folder, registry / "v2")
    (registry / "v2" / MODEL_FILE).write_bytes(b"not a model")
    holder = ModelHolder(registry)
    with caplog.at_level(logging.WARNING):
        assert holder.refresh() is None
    assert "running the warning rules only" in caplog.text
    promote(registry, "v1")
    assert holder.refresh().version == trained[1].version
    promote(registry, "v2")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        model = holder.refresh()
    assert model is not None and model.version == trained[1].version  # the old one
    assert "refused churn model v2" in caplog.text
    assert model.probabilities(model.usual[np.newaxis, :]).shape == (1,)


@pytest.mark.parametrize(
    "pointer, reason",
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"version": 5}', "'version' must be a version name"),
        ('{"version": "v1", "history": "v0"}', "'history' must be a list"),
    ],
)
def test_a_damaged_promoted_file_is_refused_and_the_model_keeps_serving(
    trained, tmp_path, caplog, pointer, reason
):
    registry = tmp_path / "registry"
    shutil.copytree(trained[1].folder, registry / "v1")
    promote(registry, "v1")
    holder = ModelHolder(registry)
    assert holder.refresh().version == trained[1].version
    (registry / "promoted.json").write_text(pointer)
    with pytest.raises(RegistryError, match=reason):
        promoted_version(registry)
    with caplog.at_level(logging.ERROR):
        assert holder.refresh().version == trained[1].version
        assert holder.refresh().version == trained[1].version
    assert caplog.text.count("cannot read the promoted model") == 1  # said once
    assert reason.strip("'") in caplog.text


def test_a_model_that_cannot_load_is_not_promoted(trained, tmp_path):
    registry = tmp_path / "registry"
    shutil.copytree(trained[1].folder, registry / "v1")
    shutil.copytree(trained[1].folder, registry / "v2")
    (registry / "v2" / MODEL_FILE).write_bytes(b"not a model")
    promote(registry, "v1", check=load_model)
    with pytest.raises(ModelError, match="cannot load"):
        promote(registry, "v2", check=load_model)
    assert promoted_version(registry) == "v1"


def test_sweeps_score_in_batches_and_raise_explained_churn_risk(trained, history, settings):
    model = load_model(trained[1].folder)
    calls: list[int] = []

    class Counting:
        def predict_proba(self, x):
            calls.append(len(x))
            return model.estimator.predict_proba(x)

    counting = type(model)(
        model.version, Counting(), model.usual, model.horizon_days, model.book_churn_rate
    )
    states, _ = run_history(history[0], settings.warnings, 86400.0)
    last_order = max(s.last_order_at for s in states.values())
    changed = sweep(states, last_order + 86400, settings.warnings, counting, batch_size=50)
    risk = [r for _, recs in changed for r in recs if r.warning_type == "churn_risk"]
    assert risk, "no churn-risk warning opened"
    # one call per batch of 50 customers (whatever their segments), then one more
    # for the reasons of every warning that opened (each row re-scored once per input)
    variants = len(INPUT_FEATURES) + 1
    full, rest = divmod(len(states), 50)
    assert len({s.segment for s in states.values()}) > 1
    assert calls[: full + 1] == [50] * full + [rest]
    assert calls[full + 1 :] == [len(risk) * variants]
    record = risk[0]
    assert record.status == "opened"
    assert record.model_version == model.version
    enter, _ = settings.warnings.churn_risk.bounds(model.book_churn_rate)
    assert model.book_churn_rate is not None and enter > model.book_churn_rate
    assert record.churn_probability >= enter
    assert record.evidence["enter_probability"] == pytest.approx(enter, abs=5e-4)
    assert "main reasons:" in record.summary
    assert record.evidence["expected_loss"] == pytest.approx(
        record.churn_probability * record.evidence["revenue_52w"], rel=0.01, abs=1
    )


def test_bgnbd_no_order_probability_grows_with_silence():
    params = np.array([0.5, 4.0, 0.1, 0.5])
    x = np.array([5.0, 5.0, 5.0])
    t_x = np.array([50.0, 30.0, 10.0])  # last order 0, 20, 40 weeks ago
    big_t = np.array([50.0, 50.0, 50.0])
    p = p_no_order(params, x, t_x, big_t, 13.0)
    assert ((p > 0) & (p < 1)).all()
    assert p[0] < p[1] < p[2]


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shifted_one():
    from churnwatch.pipeline.drift import drift_reference, psi

    rng = np.random.default_rng(0)
    training = rng.exponential(30.0, 5000)
    training[:250] = np.nan  # some customers never ordered
    reference = drift_reference(training)
    assert len(reference["edges"]) == 9 and len(reference["shares"]) == 11
    same = rng.exponential(30.0, 2000)
    same[:100] = np.nan
    assert psi(reference, same) < 0.1
    assert psi(reference, same * 3) > 0.25  # everyone silent three times longer


def test_false_alarms_become_weighted_negative_rows_at_the_cutoff_before_them():
    import pandas as pd

    from churnwatch.models.train import teach_false_alarms

    day = datetime(2025, 1, 1, tzinfo=UTC)
    rows = pd.DataFrame(
        {
            "cutoff": [day, day + timedelta(days=14), day, day + timedelta(days=14)],
            "customer_id": ["A", "A", "B", "B"],
            "churned": [1, 1, 1, 0],
        }
    )
    alarms = [("A", day + timedelta(days=20)), ("Z", day)]  # Z: no rows of it
    taught, weights, team = teach_false_alarms(rows, alarms, 14, 5.0)
    assert taught["churned"].tolist() == [1, 0, 1, 0]  # A's row of the cutoff before
    assert weights is not None and weights.tolist() == [1, 5, 1, 1]
    assert (team.false_alarms, team.rows, team.relabelled) == (2, 1, 1)
    assert rows["churned"].tolist() == [1, 1, 1, 0]  # the caller's rows are left alone
    same, none, off = teach_false_alarms(rows, alarms, 14, 0.0)
    assert same is rows and none is None and off.rows == 0


def test_training_on_the_teams_false_alarms_lowers_their_risk(history, tmp_path):
    """Churned customers the team called false alarms: with a weight, the new model
    scores their rows lower than the model trained without them, and the card says
    how many rows were taught."""
    from churnwatch.core.settings import load_settings
    from churnwatch.models.dataset import build_training_set

    events = history[0]
    plain = load_settings(None)
    first = train(events, plain, tmp_path / "a", "simulator")
    cutoffs, _ = split_cutoffs(events, plain.model.cutoff_every_days, 90)
    rows = build_training_set(events, cutoffs, 90, plain.warnings)
    positives = rows[rows["churned"] == 1]
    judged = sorted(set(positives["customer_id"]))[::2]  # half the churners, each churned row
    churned = positives[positives["customer_id"].isin(judged)]
    alarms = [
        (c, at.to_pydatetime() + timedelta(days=1))
        for c, at in zip(churned["customer_id"], churned["cutoff"], strict=True)
    ]
    weighted = load_settings(None, model={"false_alarm_weight": 20})
    second = train(events, weighted, tmp_path / "b", "simulator", false_alarms=alarms)
    taught = second.card["team_false_alarms"]
    assert len(alarms) >= 10 and len(positives) > len(alarms)
    assert taught["given"] == taught["rows_taught"] == taught["relabelled"] == len(alarms)
    assert first.card["team_false_alarms"]["rows_taught"] == 0
    x = churned[list(INPUT_FEATURES)].to_numpy(dtype=float)
    before = load_model(first.folder).estimator.predict_proba(x)[:, 1]
    after = load_model(second.folder).estimator.predict_proba(x)[:, 1]
    print(f"false alarms {len(alarms)}: mean risk {before.mean():.3f} -> {after.mean():.3f}")
    assert after.mean() < before.mean() - 0.1


def test_the_churn_risk_entry_can_be_measured_from_the_customers_rhythm(trained):
    """The card keeps the training rows' churn rate by rhythm; with
    churn_risk.relative_to: rhythm, each customer's entry is measured from its own
    rhythm's rate (the book's where a rhythm had too few rows)."""
    import dataclasses

    from churnwatch.core.thresholds import WarningThresholds
    from churnwatch.pipeline.processing import churn_rates

    _, result = trained
    by_rhythm = result.card["data_window"]["churn_rate_by_rhythm"]
    assert len(by_rhythm) == 4
    loaded = load_model(result.folder)
    assert loaded.rhythm_churn_rates == tuple(by_rhythm)
    model = dataclasses.replace(
        loaded, book_churn_rate=0.4, rhythm_churn_rates=(0.7, 0.4, 0.1, None)
    )
    columns = {"orders_52w": np.array([1.0, 3.0, 8.0, 20.0])}
    book = WarningThresholds(churn_risk={"relative_to": "book"})
    rhythm = WarningThresholds()  # (the default)
    assert churn_rates(model, book, columns).tolist() == [0.4] * 4
    rates = churn_rates(model, rhythm, columns)
    assert rates.tolist() == [0.7, 0.4, 0.1, 0.4]
    enter, leave = rhythm.churn_risk.bounds_of(rates)
    np.testing.assert_allclose(enter, [0.73, 0.46, 0.19, 0.46])
    np.testing.assert_allclose(leave, rates)


def test_the_reasons_say_what_beyond_the_rhythm_pushed_the_risk_up(trained):
    """A risk raised by a long silence and by overdue debt is explained by the debt
    (the rhythm is what customers like it share); one raised by the silence alone,
    by the silence."""
    import dataclasses

    from churnwatch.pipeline.scoring import INPUT_FEATURES

    silence, debt = (INPUT_FEATURES.index(n) for n in ("days_since_last_order", "overdue_amount"))

    class Stub:
        def predict_proba(self, x):
            z = 0.02 * (x[:, silence] - 30) + 0.001 * x[:, debt] - 2
            p = 1 / (1 + np.exp(-z))
            return np.column_stack([1 - p, p])

    _, result = trained
    loaded = load_model(result.folder)
    usual = loaded.usual.copy()
    usual[silence], usual[debt] = 30.0, 0.0
    model = dataclasses.replace(loaded, estimator=Stub(), compiled=None, usual=usual)
    both, quiet = usual.copy(), usual.copy()
    both[silence], both[debt] = 200.0, 3000.0
    quiet[silence] = 200.0
    assert [r[0] for r in model.reasons(both, "en")] == ["overdue amount"]
    assert [r[0] for r in model.reasons(quiet, "en")] == ["days since the last order"]
