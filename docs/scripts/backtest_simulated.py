"""churn_risk's early-warning and value figures, and the alert budget, on a simulated
book with the walk-forward model (as ``churnwatch backtest`` runs them).

Run from the repository (docs/model.md, "Risk beyond rhythm"):

    python docs/scripts/backtest_simulated.py --relative-to rhythm
    python docs/scripts/backtest_simulated.py --relative-to book
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from churnwatch.core.settings import load_settings
from churnwatch.models.backtest import backtest
from churnwatch.pipeline.events import decode_event
from churnwatch.producers.simulator import parse_start, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=540)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--owners", type=int, default=6)
    parser.add_argument("--relative-to", choices=("book", "rhythm"), default="rhythm")
    args = parser.parse_args()
    sent, _ = simulate(
        args.customers, args.seed, parse_start("2024-10-07"), args.days, args.owners, 0
    )
    events = [decode_event(e.payload) for e in sent]
    settings = load_settings(None, warnings={"churn_risk": {"relative_to": args.relative_to}})
    with tempfile.TemporaryDirectory() as out:
        summary = backtest(
            events, settings.warnings, 86_400, 90, Path(out), model_settings=settings.model
        )
    early = summary["rules"]["churn_risk"]["early"]
    value = early["value"]
    print(
        f"churn_risk early ({args.relative_to}): precision {early['precision']}, over "
        f"customers like them {early['precision_over_like']}, recall {early['recall']}, "
        f"median lead {early['median_lead_days']} days; lost revenue warned early "
        f"{value['lost_revenue_warned_early']} (top 20%: "
        f"{value['top_20']['lost_revenue_warned_early']})"
    )
    for name, f in summary["budget"]["strategies"].items():
        print(
            f"  at the budget, {name}: {f['churns_found']} churns, "
            f"{f['of_lost_revenue']} of the lost revenue (top 20%: "
            f"{f['top_20']['of_lost_revenue']})"
        )


if __name__ == "__main__":
    main()
