"""Bronze ingestion of real landed files: every record once, with lineage."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.bronze import file_name
from lakehouse.config import Config
from lakehouse.seed import seed
from lakehouse.stages import bronze


def landed_lines(folder: Path, header: bool) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) - int(header) for p in folder.iterdir()
            if not p.name.startswith(".")}


def bronze_lines(spark: SparkSession, config: Config, table: str) -> dict[str, int]:
    rows = (tables.read(spark, config, table).groupBy(file_name(F.col("_source_file")))
            .count().collect())
    return {r[0]: r[1] for r in rows}


def test_every_landed_line_lands_once_with_lineage(spark: SparkSession, config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 2))
    results = {r["table_name"]: r for r in bronze.run(spark, config, "run-1")}
    assert results["bronze_flights"]["files"] == 2
    assert bronze_lines(spark, config, "bronze_flights") == landed_lines(landing / "flights", True)
    assert bronze_lines(spark, config, "bronze_weather") == landed_lines(landing / "weather", False)
    flights = tables.read(spark, config, "bronze_flights")
    lineage = flights.agg(*(F.sum(F.col(c).isNull().cast("int")).alias(c) for c in
                            ("_source_file", "_source_modified_at", "_ingested_at", "_run_id")))
    assert all(v == 0 for v in lineage.first().asDict().values())
    assert flights.filter(F.col("dep_time") == "NA").limit(1).count() == 1  # raw text kept
    assert tables.read(spark, config, "bronze_planes").count() == 3322


def test_rerun_without_new_files_commits_nothing(spark: SparkSession, config: Config) -> None:
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 1))
    bronze.run(spark, config, "run-1")
    versions = {t: tables.version(spark, config, t) for t in ("bronze_flights", "bronze_planes")}
    results = bronze.run(spark, config, "run-2")
    assert {t: tables.version(spark, config, t) for t in versions} == versions
    assert all(r["rows_in"] == 0 for r in results)


def test_new_late_and_malformed_files_are_picked_up(spark: SparkSession, config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    bronze.run(spark, config, "run-1")
    before = tables.read(spark, config, "bronze_flights").count()
    header = (landing / "flights" / "flights_2013-01-01.csv").read_text().splitlines()[0]
    # A second file for an old day, with one malformed line, and an empty file.
    (landing / "flights" / "flights_2013-01-01_late.csv").write_text(
        header + "\n2013,1,1,600,600,0,900,900,0,UA,9999,N14228,EWR,IAH,200,1400,6,0,"
        "2013-01-01T11:00:00Z\nthis line,is,broken\n")
    (landing / "flights" / "flights_2013-01-02_empty.csv").write_text("")
    result = {r["table_name"]: r for r in bronze.run(spark, config, "run-2")}["bronze_flights"]
    assert result["rows_in"] == 2 and result["rows_corrupt"] == 1
    flights = tables.read(spark, config, "bronze_flights")
    assert flights.count() == before + 2
    corrupt = flights.filter(F.col("_corrupt_record").isNotNull()).collect()
    assert [r["_corrupt_record"] for r in corrupt] == ["this line,is,broken"]
    assert corrupt[0]["_source_file"].endswith("flights_2013-01-01_late.csv")
