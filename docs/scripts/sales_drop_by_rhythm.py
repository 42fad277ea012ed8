"""The rules' early-warning figures on an export, split by how often customers order.

Loads an export with its mapping, splits the customers by their number of
orders over the whole export (``--bounds``: frequent, middle, rare), and runs
the rules over each group's events alone (as ``churnwatch backtest
--no-model`` does), printing each rule's early-warning figures against the
group's own base rate. The split reads the whole export, so it knows the
future (a customer who stops early has few orders): read it as "customers of
this rhythm", not as something a worker could know on the day. Run from the
repository:

    python docs/scripts/sales_drop_by_rhythm.py \\
        --events ../shared/data/online_retail/invoices.csv.gz \\
        --mapping configs/mappings/online_retail.yaml
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from churnwatch.core.settings import load_settings
from churnwatch.models.backtest import backtest
from churnwatch.pipeline.events import OrderPlaced
from churnwatch.producers.loading import load_exports

FIGURES = ("episodes", "judged", "precision", "precision_over_base", "recall", "median_lead_days")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--mapping", type=Path, required=True)
    parser.add_argument(
        "--bounds",
        type=int,
        nargs=2,
        default=[12, 5],
        help="frequent: at least the first number of orders; rare: below the second",
    )
    args = parser.parse_args()
    frequent, rare = args.bounds
    loaded = load_exports([(args.events, args.mapping)])
    events = sorted((e for part in loaded for e in part.events), key=lambda e: e.occurred_at)
    orders = Counter(e.customer_id for e in events if isinstance(e, OrderPlaced))

    def group(customer: str) -> str:
        n = orders[customer]
        return "frequent" if n >= frequent else "rare" if n < rare else "middle"

    settings = load_settings()
    print("| customers | rule | customers in group | base rate | " + " | ".join(FIGURES) + " |")
    print("|---" * (len(FIGURES) + 4) + "|")
    for name in ("frequent", "middle", "rare"):
        mine = [e for e in events if group(e.customer_id) == name]
        customers = len({e.customer_id for e in mine})
        with tempfile.TemporaryDirectory() as out:
            summary = backtest(mine, settings.warnings, 86_400, 90, Path(out))
        for rule, result in summary["rules"].items():
            early = result["early"]
            if early["episodes"] and rule != "plain_90_day":
                cells = " | ".join(str(early[k]) for k in FIGURES)
                print(f"| {name} | {rule} | {customers} | {summary['base_rate']} | {cells} |")


if __name__ == "__main__":
    main()
