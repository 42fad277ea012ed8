"""How many daily customer-sweeps could be skipped exactly with a model serving.

A sweep may skip a customer only if nothing it decides can differ from the day
before. With a model, that needs at least every model input to fall between
the same two split thresholds of the model's trees as the day before (the
trees compare inputs with thresholds only). This replays a simulated history
in batch (as ``churnwatch backtest`` does) with the bench's model and counts,
at every daily sweep, the customers whose inputs kept their bins: an upper
bound on what an exact skip could save. Run from the repository:

    python docs/scripts/skippable_sweeps.py --customers 1000 --days 540
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from churnwatch.core.settings import load_settings
from churnwatch.demo.setup import train_demo_model
from churnwatch.pipeline.events import decode_event
from churnwatch.pipeline.processing import read_segmented, run_history
from churnwatch.pipeline.scoring import INPUT_FEATURES, ModelHolder, feature_matrix
from churnwatch.pipeline.state import StateBlock
from churnwatch.producers.simulator import parse_start, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=540)
    args = parser.parse_args()
    settings = load_settings()
    registry = Path(tempfile.mkdtemp(prefix="skippable-")) / "registry"
    train_demo_model(settings, args.customers, registry)
    model = ModelHolder(registry).refresh()
    if model is None or model.compiled is None:
        raise SystemExit("the model did not compile")
    thresholds = model.compiled.split_thresholds()
    print(
        "split thresholds per input:",
        {INPUT_FEATURES[j]: len(t) for j, t in enumerate(thresholds) if len(t)},
    )
    sim = settings.simulator
    events, _ = simulate(args.customers, sim.seed, parse_start(sim.start), args.days, sim.owners, 0)
    previous: list[np.ndarray] = []
    same = total = 0

    def count(boundary: float, block: StateBlock) -> None:
        nonlocal same, total
        if not len(block):
            return
        rows = feature_matrix(
            read_segmented(block, np.arange(len(block)), boundary, settings.warnings)
        )
        bins = np.column_stack([np.searchsorted(t, rows[:, j]) for j, t in enumerate(thresholds)])
        bins[np.isnan(rows)] = -1
        if previous:
            known = min(len(previous[0]), len(bins))
            same += int((previous[0][:known] == bins[:known]).all(axis=1).sum())
            total += len(bins)
        previous[:] = [bins]

    run_history(
        [decode_event(e.payload) for e in events],
        settings.warnings,
        settings.clock.sweep_every_hours * 3600,
        model_at=lambda _boundary: model,
        before_sweep=count,
    )
    print(
        "customer-sweeps with every input in the same bins as the day before: "
        f"{same:,} of {total:,} ({same / total:.1%})"
    )


if __name__ == "__main__":
    main()
