"""Benchmark the gold job on the full year: a full build, one new day after it, and a plain
read of silver + write of as many rows, side by side in one run.

Prints two ratios (goals from DESIGN.md):
  one new day after the full year / the full-year build              (≤ 0.10)
  full gold build / plain read of silver_flights + Delta write of the same number of rows
The full build and the plain copy alternate (best of --repeat each, after a warm-up); each new
day (2013-12-29, -30, -31) is a real day landed through bronze and silver after the build, and
the gold run that takes it in is timed (median of the three).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lakehouse import tables
from lakehouse.config import load_config
from lakehouse.seed import seed
from lakehouse.session import build_session
from lakehouse.stages import bronze, gold, silver

NEW_DAYS = (date(2013, 12, 29), date(2013, 12, 30), date(2013, 12, 31))


def plain_copy(spark, config, out: Path) -> float:  # type: ignore[no-untyped-def]
    """The floor: read silver flights and write as many rows to Delta, nothing computed."""
    start = time.perf_counter()
    tables.read(spark, config, "silver_flights").write.format("delta").mode("overwrite").save(
        str(out))
    return time.perf_counter() - start


def rounded(times: list[float]) -> list[float]:
    return [round(t, 2) for t in times]


def timed(step) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2, help="measured full builds and copies")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gold-"))
    try:
        config = load_config("local", overrides={"data_root": str(work)})
        spark = build_session(config)
        spark.sparkContext.setLogLevel("ERROR")
        seed(Path(config.landing), date(2013, 1, 1), date(2013, 12, 28))
        bronze.run(spark, config, "bench")
        silver.run(spark, config, "bench")
        rows = tables.read(spark, config, "silver_flights").count()
        full: list[float] = []
        plain: list[float] = []
        for i in range(-1, args.repeat):  # round -1 warms up (JIT, code generation)
            took_full = timed(partial(gold.run, spark, config, f"full-{i}", full=True))
            took_plain = plain_copy(spark, config, work / f"plain{i}")
            if i >= 0:
                full.append(took_full)
                plain.append(took_plain)
        new_day = []
        for day in NEW_DAYS:
            seed(Path(config.landing), day, day)
            bronze.run(spark, config, f"bench-{day}")
            silver.run(spark, config, f"bench-{day}")
            started = time.perf_counter()
            results = gold.run(spark, config, f"day-{day}")
            new_day.append(time.perf_counter() - started)
            print(f"  {day}: {new_day[-1]:.2f} s; " + "; ".join(r["message"] for r in results))
        best_full, best_plain, day_cost = min(full), min(plain), statistics.median(new_day)
        print(f"silver flights: {rows} rows")
        print(f"gold full build          best {best_full:7.2f} s  runs {rounded(full)}")
        print(f"plain read + write       best {best_plain:7.2f} s  runs {rounded(plain)}")
        print(f"one new day (gold run)   median {day_cost:5.2f} s  runs {rounded(new_day)}")
        print(f"full build / plain read + write = {best_full / best_plain:.2f}")
        print(f"one new day / full build = {day_cost / best_full:.3f}  (goal ≤ 0.10)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
