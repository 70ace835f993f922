"""Benchmark the score and monitor jobs, side by side in one run.

Prints two ratios (goals from DESIGN.md):
  score job on the full year / plain model.transform + Delta append of the same rows  (≤ 1.2)
  monitor job for one day / score job for that day                                    (≤ 0.5)
  (the day scored into a table holding the day before, as a daily run finds it)
The year is landed and built once, a small champion trained (the model's cost is the same for
both contenders: each loads the registered version, `models:/<name>/<version>`, in its time);
each timing is the best of --repeat runs, alternating the contenders.
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

import mlflow.spark

from lakehouse import registry, tables
from lakehouse.config import load_config
from lakehouse.evaluation import positive_probability
from lakehouse.seed import seed
from lakehouse.session import build_session
from lakehouse.stages import bronze, gold, monitor, score, silver, train

TRAIN = {"max_evals": 1, "families": ["gbt"], "class_weighting": ["none"],
         "search_space": {"gbt": {"maxDepth": [5, 5], "maxIter": [30, 30]}}}


def rounded(times: list[float]) -> list[float]:
    return [round(t, 2) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    try:
        config = load_config("local", overrides={"data_root": str(work), "train": TRAIN})
        spark = build_session(config)
        spark.sparkContext.setLogLevel("ERROR")
        seed(Path(config.landing), date(2013, 1, 1), date(2013, 12, 31))
        for stage in (bronze, silver, gold, train):
            stage.run(spark, config, "bench")
        name = config.section("mlflow")["model_name"]
        version = registry.resolve(name, registry.CHAMPION)
        assert version is not None
        features = tables.read(spark, config, "flight_features")
        rows = features.count()
        job, plain, day_score, day_monitor = [], [], [], []
        for i in range(-1, args.repeat):  # round -1 warms up
            out = work / "round" / str(i)

            def fresh(part: str, out: Path = out):  # type: ignore[no-untyped-def]
                return load_config("local", overrides={
                    "data_root": str(work), "train": TRAIN, "tables": {
                        name: str(out / part / name)
                        for name in ("delay_predictions", "model_monitoring", "alerts")}})

            year, one_day = fresh("year"), fresh("day")
            started = time.perf_counter()
            score.run(spark, year, "bench", "2013-01-01", "2013-12-31")
            took_job = time.perf_counter() - started
            started = time.perf_counter()
            # like for like: the plain script loads the registered version too
            model = mlflow.spark.load_model(f"models:/{name}/{version.version}")
            (model.transform(features).select("flight_id", positive_probability()
                                              .alias("probability"))
             .write.format("delta").mode("append").save(str(out / "plain")))
            took_plain = time.perf_counter() - started
            # the daily case: the table holds the day before, not the day scored
            score.run(spark, one_day, "bench-day-before", "2013-12-30", "2013-12-30")
            started = time.perf_counter()
            score.run(spark, one_day, "bench-day", "2013-12-31", "2013-12-31")
            took_day = time.perf_counter() - started
            started = time.perf_counter()
            monitor.run(spark, one_day, "bench-day", "2013-12-31")
            took_monitor = time.perf_counter() - started
            if i >= 0:
                job.append(took_job)
                plain.append(took_plain)
                day_score.append(took_day)
                day_monitor.append(took_monitor)
        print(f"flight_features: {rows} rows; model version {version.version}")
        print(f"score job, full year        best {min(job):7.2f} s  runs {rounded(job)}")
        print(f"plain transform + append    best {min(plain):7.2f} s  runs {rounded(plain)}")
        print(f"score job, one day          best {min(day_score):7.2f} s  runs "
              f"{rounded(day_score)}")
        print(f"monitor job, that day       best {min(day_monitor):7.2f} s  runs "
              f"{rounded(day_monitor)}")
        print(f"score job / plain transform + append = {min(job) / min(plain):.2f}  (goal ≤ 1.2)")
        print(f"monitor one day / score one day = {min(day_monitor) / min(day_score):.2f}  "
              f"(goal ≤ 0.5)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
