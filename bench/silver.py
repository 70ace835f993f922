"""Benchmark: the share of the silver job spent on contracts (pandera validation, rule counts,
thresholds and the quarantine split), on the full year.

Runs the silver step for flights and weather twice, side by side in one session: as the job does
it (contract-checked) and the same typing, deduplication and MERGE without the contract steps.
One unmeasured warm-up round first, then --repeat rounds; the best of each is compared.
Prints both times and  share = (checked - unchecked) / checked   (goal ≤ 0.20).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lakehouse import tables
from lakehouse.config import load_config
from lakehouse.contracts import contracts
from lakehouse.seed import seed
from lakehouse.session import build_session
from lakehouse.silver import OUTPUT, clean_weather, drop_duplicate_keys, parse_columns, to_silver
from lakehouse.stages import bronze, silver

TABLES = ("weather", "flights")


def unchecked(spark, config, table: str, batch) -> None:  # type: ignore[no-untyped-def]
    """The silver step with every contract step removed: type, enrich, dedup, clean, MERGE."""
    frame = (batch.transform(parse_columns(table)).transform(silver.enrich(spark, config, table))
             .transform(drop_duplicate_keys(contracts(config.section("silver"))[table].keys)))
    if table == "weather":
        frame = frame.transform(clean_weather(150, 200))
    tables.merge(spark, frame.transform(to_silver(table)), config, f"silver_{table}",
                 contracts(config.section("silver"))[table].keys, changed_columns=OUTPUT[table])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds, after one warm-up")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-silver-"))
    try:
        base = load_config("local", overrides={"data_root": str(work)})
        seed(Path(base.landing), date(2013, 1, 1), date(2013, 12, 31))
        spark = build_session(base)
        spark.sparkContext.setLogLevel("ERROR")
        bronze.run(spark, base, "bench")
        for table in ("planes", "airports", "airlines"):
            silver.refine_snapshot(spark, base, contracts(base.section("silver"))[table], "bench")
        batches = {t: tables.read(spark, base, f"bronze_{t}").cache() for t in TABLES}
        rows = {t: b.count() for t, b in batches.items()}
        timings: dict[str, list[float]] = {"checked": [], "unchecked": []}
        per_table: dict[tuple[str, str], list[float]] = {}
        for i in range(-1, args.repeat):  # round -1 warms up (JIT, code generation): not counted
            for kind in ("unchecked", "checked"):  # alternate, fresh target tables each time
                out = {f"silver_{t}": str(work / f"{kind}{i}" / t) for t in TABLES}
                out["quarantine"] = str(work / f"{kind}{i}" / "quarantine")
                config = load_config("local", overrides={"data_root": str(work), "tables": out})
                total = 0.0
                for table in TABLES:
                    start = time.perf_counter()
                    if kind == "checked":
                        silver.refine_batch(spark, config,
                                            contracts(config.section("silver"))[table],
                                            batches[table], 0)
                    else:
                        unchecked(spark, config, table, batches[table])
                    took = time.perf_counter() - start
                    if i >= 0:
                        per_table.setdefault((table, kind), []).append(took)
                    total += took
                if i >= 0:
                    timings[kind].append(total)
        checked, plain = min(timings["checked"]), min(timings["unchecked"])
        print(f"rows: {rows}")
        for table in TABLES:
            print(f"  {table:8} best with {min(per_table[table, 'checked']):6.2f} s, "
                  f"without {min(per_table[table, 'unchecked']):6.2f} s")
        print(f"silver with contracts     best {checked:7.2f} s  "
              f"runs {[round(t, 2) for t in timings['checked']]}")
        print(f"silver without contracts  best {plain:7.2f} s  "
              f"runs {[round(t, 2) for t in timings['unchecked']]}")
        print(f"contract share of the silver job = {(checked - plain) / checked:.2f}  "
              "(goal ≤ 0.20)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
