"""Benchmark the score and monitor jobs, side by side in one run.

Prints two ratios (goals from DESIGN.md):
  score job on the full year / plain model.transform + Delta append of the same rows  (≤ 1.2)
  monitor job for one day / score job for that day                                    (≤ 0.5)
  (the day scored into a table holding the day before, as a daily run finds it; the monitor
  both into a table holding the day before's monitoring, as a daily run finds it, the goal's
  case, and into an empty one, the first run's case)
"The same rows" are the rows the job writes for the scored flights (the flight's columns, the
probability, the class at the threshold, status, the model's name, version, run id, role and
the features version read: `inference.score`), appended as they come out of the model: the job's
own work less reading silver for flights without a feature row, the idempotent MERGE, the
counts read back and the audit. The earlier, narrower baseline (flight_id and the probability
alone) is printed beside it.
The year is landed and built once, a small champion trained (the model's cost is the same for
both contenders: each loads the registered version, `models:/<name>/<version>`, in its time);
each timing is the best of --repeat runs, each round starting with another of the year's
contenders.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# the bench's own MLflow store under its data root, never the one a user's environment names
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)

import mlflow.spark

from bench.common import build_year, data_root
from lakehouse import registry, tables
from lakehouse.config import load_config
from lakehouse.evaluation import positive_probability
from lakehouse.inference import score as score_rows
from lakehouse.session import build_session
from lakehouse.stages import monitor, score, train

TRAIN = {"max_evals": 1, "families": ["gbt"], "class_weighting": ["none"],
         "search_space": {"gbt": {"maxDepth": [5, 5], "maxIter": [30, 30]}}}


def rounded(times: list[float]) -> list[float]:
    return [round(t, 2) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--data-root", type=Path,
                        help="build the year (and train the small champion) here and keep it; "
                             "what was built there before is reused (default: a temporary "
                             "folder, removed after)")
    args = parser.parse_args()
    work, keep = data_root(args.data_root, "bench-scoring-")
    rounds = Path(tempfile.mkdtemp(prefix="bench-scoring-rounds-"))
    try:
        config = load_config("local", overrides={"data_root": str(work), "train": TRAIN})
        spark = build_session(config)
        spark.sparkContext.setLogLevel("ERROR")
        build_year(spark, config, work)
        name = registry.configure(config)["model_name"]
        if registry.resolve(name, registry.CHAMPION) is None:
            train.run(spark, config, "bench")
        version = registry.resolve(name, registry.CHAMPION)
        assert version is not None
        # the job's own threshold rule (tag, run metric, the model's own), as it scores
        scorer = score.Scorer.of(name, registry.CHAMPION, version)
        threshold = score.model_threshold(score.load(scorer), scorer)
        features_version = tables.version(spark, config, "flight_features") or 0
        features = tables.read(spark, config, "flight_features", version=features_version)
        rows = features.count()
        job, plain, narrow, day_score, day_monitor, first_monitor = [], [], [], [], [], []
        for i in range(-1, args.repeat):  # round -1 warms up
            out = rounds / str(i)

            def fresh(part: str, out: Path = out):  # type: ignore[no-untyped-def]
                return load_config("local", overrides={
                    "data_root": str(work), "train": TRAIN, "tables": {
                        name: str(out / part / name)
                        for name in ("delay_predictions", "model_monitoring", "alerts")}})

            year, one_day = fresh("year"), fresh("day")
            # the day's predictions, with its own monitoring tables (the day before monitored)
            daily = load_config("local", overrides={
                "data_root": str(work), "train": TRAIN, "tables": {
                    "delay_predictions": str(out / "day" / "delay_predictions"),
                    **{table: str(out / "daily" / table) for table in ("model_monitoring",
                                                                       "alerts")}}})

            def job_year(year=year) -> None:  # type: ignore[no-untyped-def]
                score.run(spark, year, "bench", "2013-01-01", "2013-12-31")

            def plain_rows(out: Path = out) -> None:
                # like for like: the plain script loads the registered version too
                model = mlflow.spark.load_model(f"models:/{name}/{version.version}")
                (score_rows(model, features, name, str(version.version), version.run_id or "",
                            registry.CHAMPION, threshold, features_version)
                 .write.format("delta").mode("append").save(str(out / "plain")))

            def plain_narrow(out: Path = out) -> None:
                model = mlflow.spark.load_model(f"models:/{name}/{version.version}")
                (model.transform(features).select("flight_id", positive_probability()
                                                  .alias("probability"))
                 .write.format("delta").mode("append").save(str(out / "narrow")))

            contenders = [("job", job_year), ("plain", plain_rows), ("narrow", plain_narrow)]
            took: dict[str, float] = {}
            shift = (i + 1) % len(contenders)  # each round starts with another contender
            for label, contender in contenders[shift:] + contenders[:shift]:
                started = time.perf_counter()
                contender()
                took[label] = time.perf_counter() - started
            took_job, took_plain, took_narrow = took["job"], took["plain"], took["narrow"]
            # the daily case: the table holds the day before, not the day scored
            score.run(spark, one_day, "bench-day-before", "2013-12-30", "2013-12-30")
            started = time.perf_counter()
            score.run(spark, one_day, "bench-day", "2013-12-31", "2013-12-31")
            took_day = time.perf_counter() - started
            monitor.run(spark, daily, "bench-day-before", "2013-12-30")
            took_monitor: dict[str, float] = {}
            for label, conf in (("daily", daily), ("first", one_day))[::1 if i % 2 else -1]:
                started = time.perf_counter()
                monitor.run(spark, conf, "bench-day", "2013-12-31")
                took_monitor[label] = time.perf_counter() - started
            if i >= 0:
                job.append(took_job)
                plain.append(took_plain)
                narrow.append(took_narrow)
                day_score.append(took_day)
                day_monitor.append(took_monitor["daily"])
                first_monitor.append(took_monitor["first"])
        print(f"flight_features: {rows} rows; model version {version.version}")
        print(f"score job, full year        best {min(job):7.2f} s  runs {rounded(job)}")
        print(f"plain transform + append    best {min(plain):7.2f} s  runs {rounded(plain)}  "
              f"(the job's rows)")
        print(f"  the same, two columns     best {min(narrow):7.2f} s  runs {rounded(narrow)}  "
              f"(flight_id, probability)")
        print(f"score job, one day          best {min(day_score):7.2f} s  runs "
              f"{rounded(day_score)}")
        print(f"monitor job, that day       best {min(day_monitor):7.2f} s  runs "
              f"{rounded(day_monitor)}  (the day before monitored)")
        print(f"  the same, first monitor   best {min(first_monitor):7.2f} s  runs "
              f"{rounded(first_monitor)}  (an empty monitoring table)")
        print(f"score job / plain transform + append = {min(job) / min(plain):.2f}  (goal ≤ 1.2; "
              f"{min(job) / min(narrow):.2f} against the two-column append)")
        print(f"monitor one day / score one day = {min(day_monitor) / min(day_score):.2f}  "
              f"(goal ≤ 0.5; {min(first_monitor) / min(day_score):.2f} for a first monitor)")
    finally:
        shutil.rmtree(rounds, ignore_errors=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
