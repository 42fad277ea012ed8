"""The rules' early-warning figures on simulated books (rules only, no model).

Simulates ``--customers`` customers over ``--days`` days for each seed, runs
the worker's rules over the history in batch (as ``churnwatch backtest
--no-model`` does) and prints each rule's early-warning figures (see
docs/features.md, "How well the warnings do on real data"). Run from the
repository:

    python docs/scripts/sales_drop_simulated.py --customers 2000 --days 540 --seeds 1 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from churnwatch.core.settings import load_settings
from churnwatch.models.backtest import backtest
from churnwatch.pipeline.events import decode_event
from churnwatch.producers.simulator import parse_start, simulate

FIGURES = ("episodes", "judged", "precision", "recall", "median_lead_days", "precision_over_base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=540)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    settings = load_settings()
    print("| seed | rule | base rate | " + " | ".join(FIGURES) + " |")
    print("|---" * (len(FIGURES) + 3) + "|")
    for seed in args.seeds:
        produced, _ = simulate(args.customers, seed, parse_start("2024-01-01"), args.days, 3, 0)
        events = sorted((decode_event(e.payload) for e in produced), key=lambda e: e.occurred_at)
        with tempfile.TemporaryDirectory() as out:
            summary = backtest(events, settings.warnings, 86_400, 90, Path(out))
        for rule, result in summary["rules"].items():
            early = result["early"]
            if not early["episodes"]:
                continue
            cells = " | ".join(str(early[k]) for k in FIGURES)
            print(f"| {seed} | {rule} | {summary['base_rate']} | {cells} |")


if __name__ == "__main__":
    main()
