"""The session factory on a session that exists already (a notebook, Databricks)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.functions import local_hhmm_to_utc
from lakehouse.seed import seed
from lakehouse.session import build_session
from lakehouse.stages import bronze, silver
from tests import snapshot
from tests.conftest import make_config

TZ = "spark.sql.session.timeZone"
SILVER = ("silver_flights", "silver_weather", "silver_planes", "silver_airports",
          "silver_airlines", "quarantine")


def new_york_0515_as_utc(spark: SparkSession) -> object:
    day = spark.range(1).select(F.lit("2013-03-10").cast("date").alias("d"))
    return day.select(local_hhmm_to_utc(F.col("d"), F.lit(515), F.lit("America/New_York"))
                      .cast("string")).first()[0]


@pytest.mark.slow
def test_silver_in_a_los_angeles_session_gives_the_tables_of_a_utc_one(
        spark: SparkSession, tmp_path: Path) -> None:
    utc = make_config(tmp_path / "utc")
    # New York's change to daylight saving time; both silver runs read the same bronze.
    seed(Path(utc.landing), date(2013, 3, 10), date(2013, 3, 10))
    bronze.run(spark, utc, "run-utc")
    la = make_config(tmp_path / "la", tables={
        name: utc.table(name) for name in utc.values["tables"] if name.startswith("bronze_")})
    silver.run(spark, utc, "run-utc")
    expected = snapshot.content(spark, utc, SILVER)
    utc_conversion = new_york_0515_as_utc(spark)
    try:
        spark.conf.set(TZ, "America/Los_Angeles")
        # The check can fail: silver's local-to-UTC conversion depends on the session zone.
        assert new_york_0515_as_utc(spark) != utc_conversion
        # What a notebook or a Databricks job does first with the session it was given.
        session = build_session(la)
        assert session.conf.get(TZ) == "UTC" and spark.conf.get(TZ) == "UTC"
        silver.run(session, la, "run-la")
    finally:
        spark.conf.set(TZ, "UTC")
    assert snapshot.content(spark, la, SILVER) == expected
    assert len(expected["silver_flights"]) > 700


CONNECT_SCRIPT = """
import sys
from pyspark.sql import SparkSession
from lakehouse.config import load_config
from lakehouse.session import ClassicSparkRequiredError
from lakehouse.stages import bronze, silver

spark = SparkSession.builder.remote("local[1]").config("spark.ui.enabled", "false").getOrCreate()
config = load_config("local", overrides={"data_root": sys.argv[1]})
for job in (bronze.run, bronze.run_continuous, silver.run):
    try:
        job(spark, config, "connect-run")
        print("ran", job.__module__, job.__name__)
    except ClassicSparkRequiredError as error:
        print("refused", job.__module__, job.__name__, "|", error)
spark.stop()
"""


# a Spark Connect server of its own, in another process (~6 s)
def test_bronze_and_silver_refuse_a_spark_connect_session_saying_why(tmp_path: Path) -> None:
    """A real Spark Connect session (pyspark's local Connect server), as Databricks standard
    access mode and serverless compute give: bronze and silver stop before touching anything,
    naming what they need, instead of failing in the server on a pickled session or event."""
    import subprocess
    import sys

    root = tmp_path / "data"
    seed(root / "landing", date(2013, 1, 1), date(2013, 1, 1))
    landed = sorted(p.relative_to(root) for p in root.rglob("*"))
    run = subprocess.run([sys.executable, "-c", CONNECT_SCRIPT, str(root)], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith(("ran", "refused"))]
    assert [line.split(" |")[0] for line in lines] == [
        "refused lakehouse.stages.bronze run", "refused lakehouse.stages.bronze run_continuous",
        "refused lakehouse.stages.silver run"], run.stdout
    assert all("needs classic Spark" in line and "Spark Connect" in line for line in lines)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == landed  # nothing written
