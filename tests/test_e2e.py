"""End to end: a job through spark-submit.sh in its own JVM, and a poisoned day halting the
workflow. (The daily workflow over real days, twice, is in test_monitoring.)"""

from __future__ import annotations

import os
import subprocess
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables, workflow
from lakehouse.seed import seed
from tests.conftest import make_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.cluster  # a second JVM through spark-submit.sh: make cluster-test runs it
def test_jobs_run_through_spark_submit(spark: SparkSession, tmp_path: Path) -> None:
    """One spark-submit of the daily job: bronze, silver and gold run in a separate JVM; score
    then fails cleanly (exit code 2, a one-line reason) because no model is registered yet."""
    env = {**os.environ, "LAKEHOUSE_DATA_ROOT": str(tmp_path)}
    for inherited in ("PYSPARK_GATEWAY_PORT", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
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
    with pytest.raises(workflow.WorkflowFailed) as failure:
        workflow.run_job(spark, config, "daily", "2013-01-02", "2013-01-02",
                         stages=",".join(stages))
    (error,) = failure.value.errors
    assert isinstance(error, ContractViolation)
    assert "silver.flights: rule 'distance_range'" in str(error)
    tasks = failure.value.results["tasks"]  # a data error: not retried, its dependents stopped
    assert (tasks["silver"].attempts, tasks["gold"].status) == (1, "upstream_failed")
    assert {t: tables.version(spark, config, t) for t in guarded} == versions
    bronze_rows = tables.read(spark, config, "bronze_flights").count()
    assert bronze_rows == 842 + len(lines) - 1  # the raw records are kept in bronze
    failed = tables.read(spark, config, "audit").filter(F.col("status") == "failed").collect()
    assert [(r["job"], r["table_name"]) for r in failed] == [("silver", "silver_flights")]
    assert "distance_range" in failed[0]["message"]
