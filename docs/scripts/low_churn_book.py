"""How many early warnings a low-churn book gets with the default settings (issue 32,
item 5): a simulated book whose churning profiles are scaled down to ``--churn``
of the customers, run through ``churnwatch backtest``'s logic with the
walk-forward model. Prints each type's early episodes per 1,000 customers a
month, its precision over customers like them, and the same for the simulator's
usual mix (30% churners). Run from the repository:

    python docs/scripts/low_churn_book.py --churn 0.05
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from churnwatch.core.settings import load_settings
from churnwatch.models.backtest import backtest
from churnwatch.pipeline.events import decode_event
from churnwatch.producers import simulator


def run(share: float | None, customers: int, days: int, seed: int) -> None:
    weights = dict(simulator.PROFILE_WEIGHTS)
    if share is not None:
        churning = sum(weights[p] for p in simulator.CHURN_PROFILES)
        steady = 1 - churning
        for p in simulator.CHURN_PROFILES:
            weights[p] *= share / churning
        for p in simulator.STEADY_PROFILES:
            weights[p] *= (1 - share) / steady
    saved = dict(simulator.PROFILE_WEIGHTS)
    simulator.PROFILE_WEIGHTS.clear()
    simulator.PROFILE_WEIGHTS.update(weights)
    try:
        sent, truth = simulator.simulate(
            customers, seed, simulator.parse_start("2024-10-07"), days, 6, 0
        )
    finally:
        simulator.PROFILE_WEIGHTS.clear()
        simulator.PROFILE_WEIGHTS.update(saved)
    events = [decode_event(e.payload) for e in sent]
    settings = load_settings(None)
    with tempfile.TemporaryDirectory() as out:
        summary = backtest(
            events, settings.warnings, 86_400, 90, Path(out), model_settings=settings.model
        )
    churned = sum(t.churned for t in truth) / len(truth)
    months = days / 30.4
    print(f"book: {customers} customers, {churned:.0%} churn over {days} days, seed {seed}")
    for name, r in summary["rules"].items():
        if name.startswith("plain"):
            continue
        e = r["early"]
        per = 1000 * e["episodes"] / customers / months
        print(
            f"  {name:<20} {e['episodes']:>5} early episodes = {per:5.1f} per 1,000 customers "
            f"a month; precision {e['precision']}, over customers like them "
            f"{e['precision_over_like']}, recall {e['recall']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--churn", type=float, default=0.05)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=540)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    run(args.churn, args.customers, args.days, args.seed)
    run(None, args.customers, args.days, args.seed)


if __name__ == "__main__":
    main()
