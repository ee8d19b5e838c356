"""The worker command of the README's tour: writes one day of (made-up) sales as a CSV.

    python3 examples/export_sales.py 2024-01-15 [--out out/sales]

Prints `PROGRESS <fraction> <message>` lines while it works and, at the end, an
`ARTIFACT <path>` line that `partita worker` reports as the run's artifact. Exits 2 for a
key that is not a date. Only the standard library, so any Python 3 runs it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import random
import sys
from pathlib import Path

PRODUCTS = ("espresso", "cappuccino", "flat-white", "croissant", "bagel")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("day", help="the partition key, YYYY-MM-DD")
    parser.add_argument("--out", default="out/sales", help="directory of the CSV files")
    parser.add_argument("--currency", default="EUR")
    args = parser.parse_args()
    try:
        day = datetime.date.fromisoformat(args.day)
    except ValueError:
        print(f"not a day: {args.day!r}", file=sys.stderr)
        return 2
    rows = random.Random(day.toordinal())  # the same day always gives the same file
    path = Path(args.out) / f"{day.isoformat()}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["day", "product", "quantity", "revenue", "currency"])
        for index, product in enumerate(PRODUCTS, start=1):
            quantity = rows.randint(10, 200)
            writer.writerow(
                [day.isoformat(), product, quantity, f"{quantity * rows.uniform(2, 5):.2f}", args.currency]
            )
            print(f"PROGRESS {index / len(PRODUCTS):.2f} {product}", flush=True)
    print(f"ARTIFACT {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
