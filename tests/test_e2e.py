"""End to end on ten real days: landed files to predictions, twice, through the workflow."""

from __future__ import annotations

import os
import subprocess
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables, workflow
from lakehouse.config import Config
from lakehouse.seed import seed
from tests.conftest import make_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"train_from": "2013-01-01", "train_to": "2013-01-07", "validation_from": "2013-01-06",
         "holdout_from": "2013-01-08", "holdout_to": "2013-01-10", "max_evals": 2,
         "timeout_seconds": 120,
         "search_space": {"maxDepth": [3, 4], "maxIter": [10, 20], "minInstancesPerNode": [5, 20]}}
CONTENT_TABLES = ("bronze_flights", "bronze_weather", "bronze_planes", "silver_flights",
                  "silver_weather", "silver_planes", "silver_airports", "silver_airlines",
                  "flight_features", "route_daily_kpis", "delay_predictions")
VOLATILE = ("_ingested_at", "_run_id", "_batch_id", "scored_at")


def snapshot(spark: SparkSession, config: Config) -> dict[str, list]:
    out = {}
    for name in CONTENT_TABLES:
        df = tables.read(spark, config, name)
        out[name] = sorted(df.drop(*[c for c in VOLATILE if c in df.columns]).collect())
    return out


def test_daily_pipeline_twice_is_idempotent_and_scores_every_flight(
        spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path, train=TRAIN)
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 10))
    first = workflow.run_daily(spark, config, ("2013-01-08", "2013-01-10"))
    assert first["train"]["promoted"] is True
    assert 0.5 < first["train"]["holdout"]["auc_roc"] <= 1.0
    before = snapshot(spark, config)
    second = workflow.run_daily(spark, config, ("2013-01-08", "2013-01-10"))
    assert str(second["train"]).startswith("skipped")
    assert snapshot(spark, config) == before

    eligible = tables.read(spark, config, "flight_features").filter(
        F.col("flight_date").between("2013-01-08", "2013-01-10"))
    predictions = tables.read(spark, config, "delay_predictions")
    assert eligible.count() == predictions.count() > 2500
    assert eligible.join(predictions, "flight_id", "left_anti").limit(1).count() == 0
    assert predictions.filter(~F.col("probability").between(0, 1)).limit(1).count() == 0
    assert {r[0] for r in predictions.select("model_version").distinct().collect()} == {"1"}
    # nothing lost: landed = bronze = silver + quarantined + duplicates, per table
    audit = tables.read(spark, config, "audit").filter(F.col("run_id") == first["run_id"])
    silver = audit.filter(F.col("table_name") == "silver_flights").first()
    assert silver["rows_in"] == (silver["rows_out"] + silver["rows_quarantined"]
                                 + silver["rows_duplicate"])
    assert silver["rows_in"] == tables.read(spark, config, "bronze_flights").count()

    report = workflow.report(spark, config, first)
    for text in ("silver_flights", "champion: models:/flight_disruption@champion = version 1",
                 "AUC-ROC", "mlflow ui --backend-store-uri sqlite:///"):
        assert text in report


def test_jobs_run_through_spark_submit(spark: SparkSession, tmp_path: Path) -> None:
    """One spark-submit of the daily job: bronze, silver and gold run in a separate JVM; score
    then fails cleanly (exit code 2, a one-line reason) because no model is registered yet."""
    env = {**os.environ, "LAKEHOUSE_DATA_ROOT": str(tmp_path)}
    for inherited in ("PYSPARK_GATEWAY_PORT", "MLFLOW_TRACKING_URI"):
        env.pop(inherited, None)
    config = make_config(tmp_path)
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 1))
    run = subprocess.run([str(ROOT / "spark-submit.sh"), "daily", "--env", "local", "--stages",
                          "bronze,silver,gold,score", "--train", "never"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 2, run.stderr[-3000:]
    # spark-submit merges the Python driver's stderr into its stdout
    assert "NoChampionError: no version of model 'flight_disruption'" in run.stdout + run.stderr
    assert tables.read(spark, config, "silver_flights").count() == 842
    assert tables.read(spark, config, "flight_features").count() == 842
    jobs = {r["job"]: r["status"] for r in tables.read(spark, config, "audit").collect()}
    assert jobs == {"bronze": "succeeded", "silver": "succeeded", "gold": "succeeded",
                    "score": "failed"}


def test_poisoned_day_halts_the_workflow_and_leaves_silver_and_gold_untouched(
        spark: SparkSession, tmp_path: Path) -> None:
    from lakehouse.contracts import ContractViolation

    config = make_config(tmp_path)
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    stages = ("bronze", "silver", "gold")
    workflow.run_daily(spark, config, ("2013-01-01", "2013-01-01"), stages)
    guarded = ("silver_flights", "quarantine", "flight_features", "route_daily_kpis")
    versions = {t: tables.version(spark, config, t) for t in guarded}

    seed(landing, date(2013, 1, 2), date(2013, 1, 2))
    day = landing / "flights" / "flights_2013-01-02.csv"
    lines = day.read_text().splitlines()
    # a source bug: every distance of the day exported as 0
    poisoned = [lines[0], *(",".join([*r.split(",")[:15], "0", *r.split(",")[16:]])
                            for r in lines[1:])]
    day.write_text("\n".join(poisoned) + "\n")
    with pytest.raises(ContractViolation, match=r"silver.flights: rule 'distance_range'"):
        workflow.run_daily(spark, config, ("2013-01-02", "2013-01-02"), stages)
    assert {t: tables.version(spark, config, t) for t in guarded} == versions
    bronze_rows = tables.read(spark, config, "bronze_flights").count()
    assert bronze_rows == 842 + len(lines) - 1  # the raw records are kept in bronze
    failed = tables.read(spark, config, "audit").filter(F.col("status") == "failed").collect()
    assert [(r["job"], r["table_name"]) for r in failed] == [("silver", "silver_flights")]
    assert "distance_range" in failed[0]["message"]
