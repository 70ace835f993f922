"""Benchmark the bronze job on the full year, side by side with a plain read → Delta write.

Measured: the ingestion of the daily drops (flights CSV, weather JSON lines) as `lakehouse run
bronze` does it: both sources side by side, each a Structured Streaming query (availableNow)
with its checkpoint, record accounting, columns by header name, lineage, idempotent appends.
The three reference snapshots and the audit rows (fixed costs of a run) are outside both
timings.
Prints the ratio (goal from DESIGN.md):
  bronze job / plain spark.read.csv(...).write.format("delta") of the same files   (≤ 1.3)
and, without a goal, one new day after the full year against the full-year run (the streaming
query's fixed start cost is accepted; bench/streaming.py prints it too).
Each timing is the best of --repeat runs, alternating the two contenders.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lakehouse.bronze import raw_schema
from lakehouse.config import load_config
from lakehouse.seed import seed
from lakehouse.session import build_session
from lakehouse.stages import bronze

DAILY = (("flights", "csv"), ("weather", "json"))


def plain_copy(spark, landing: Path, out: Path) -> float:  # type: ignore[no-untyped-def]
    """The floor: read the landed files as strings and write them to Delta, nothing else."""
    start = time.perf_counter()
    for source, fmt in DAILY:
        reader = spark.read.format(fmt).schema(raw_schema(source))
        if fmt == "csv":
            reader = reader.option("header", "true")
        reader.load(str(landing / source)).write.format("delta").mode("overwrite").save(
            str(out / source))
    return time.perf_counter() - start


def bronze_run(spark, root: Path, run: str) -> float:  # type: ignore[no-untyped-def]
    config = load_config("local", overrides={"data_root": str(root)})
    start = time.perf_counter()
    streamed = bronze.sources(config)
    with ThreadPoolExecutor(len(streamed)) as pool:  # side by side, as the bronze job runs them
        list(pool.map(lambda s: bronze.ingest(spark, config, s, run), streamed))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-bronze-"))
    try:
        landing = work / "landing"
        seed(landing, date(2013, 1, 1), date(2013, 12, 30))
        spark = build_session(load_config("local", overrides={"data_root": str(work)}))
        spark.sparkContext.setLogLevel("ERROR")
        plain_copy(spark, landing, work / "warmup")  # JIT, jar loading: not measured
        floor, job = [], []
        for i in range(args.repeat):
            floor.append(plain_copy(spark, landing, work / f"plain{i}"))
            root = work / f"job{i}"
            shutil.copytree(landing, root / "landing")
            job.append(bronze_run(spark, root, f"full-{i}"))
        # One more day lands after the full year: cost should follow new data, not table size.
        new_day = []
        for i in range(args.repeat):
            root = work / f"job{i}"
            seed(root / "landing", date(2013, 12, 31), date(2013, 12, 31))
            new_day.append(bronze_run(spark, root, f"day-{i}"))
        print(f"files: {len(list((landing / 'flights').iterdir()))} flights, "
              f"{len(list((landing / 'weather').iterdir()))} weather (2013-01-01..2013-12-30)")
        print(f"plain read→delta write   best {min(floor):7.2f} s   "
              f"runs {[round(t, 2) for t in floor]}")
        print(f"bronze job (full year)   best {min(job):7.2f} s   "
              f"runs {[round(t, 2) for t in job]}")
        print(f"bronze job (one new day) best {min(new_day):7.2f} s")
        print(f"ratio bronze / plain            = {min(job) / min(floor):.2f}  (goal ≤ 1.30)")
        print(f"ratio one new day / full year   = {min(new_day) / min(job):.3f} (no goal)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
