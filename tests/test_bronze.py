"""Bronze ingestion of real landed files: every record once, with lineage."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.bronze import file_name, same_file
from lakehouse.config import Config
from lakehouse.seed import seed
from lakehouse.stages import bronze
from tests.conftest import TEST_SPARK

ROOT = Path(__file__).resolve().parent.parent


def landed_lines(folder: Path, header: bool) -> dict[str, int]:
    return {p.name: len(p.read_bytes().splitlines()) - int(header) for p in folder.iterdir()
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


def test_malformed_files_keep_every_line_and_record_drift(spark: SparkSession,
                                                          config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    folder = landing / "flights"
    header = (folder / "flights_2013-01-01.csv").read_text().splitlines()[0]
    good = "2013,1,2,600,600,0,900,900,0,UA,1,N14228,EWR,IAH,200,1400,6,0,2013-01-02T11:00:00Z"
    (folder / "flights_2013-01-02.csv").write_bytes(
        f"{header}\n{good}\n".encode() + b"2013,1,2,601,600,1,901,900,1,UA,2,N\xff\xfe8,EWR,IAH,"
        b"200,1400,6,0,2013-01-02T11:00:00Z\n" + b"2013,1,2,602,600,2,90")  # bad UTF-8, cut off
    (folder / "flights_2013-01-03.csv").write_text(f"{header},gate\n{good},B12\n{good},C3\n")
    short_header = header.replace(",air_time", "")
    short_row = good.replace(",200,1400", ",1400")
    (folder / "flights_2013-01-04.csv").write_text(f"{short_header}\n{short_row}\n")
    weather = landing / "weather" / "weather_2013-01-02.jsonl"
    weather.write_text('{"origin": "EWR", "year": 2013, "month": 1, "day": 2, "hour": 1}\n'
                       '{"origin": "EWR", "year": 2013, "mon\n')
    results = {r["table_name"]: r for r in bronze.run(spark, config, "run-1")}

    flights = results["bronze_flights"]
    assert flights["rows_landed"] == flights["rows_in"] == 842 + 3 + 2 + 1
    assert flights["rows_corrupt"] == 1 + 2 + 1  # truncated line, extra column, missing column
    assert "flights_2013-01-03.csv: extra columns ['gate']" in flights["message"]
    assert ("flights_2013-01-04.csv: extra columns [], missing columns ['air_time']"
            in flights["message"])
    assert bronze_lines(spark, config, "bronze_flights") == landed_lines(folder, True)
    utf8 = tables.read(spark, config, "bronze_flights").filter(F.col("flight") == "2").first()
    assert utf8["tailnum"].startswith("N\ufffd")  # kept, replacement characters visible
    assert results["bronze_weather"]["rows_corrupt"] == 1
    assert results["bronze_weather"]["rows_in"] == results["bronze_weather"]["rows_landed"]


def test_crash_after_write_then_rerun_lands_each_record_once(
        spark: SparkSession, config: Config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 2))
    real_append = tables.append

    def append_then_crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_append(*args, **kwargs)
        if args[2] == "bronze_flights":
            raise RuntimeError("simulated crash after the Delta commit, before the ledger")

    monkeypatch.setattr(tables, "append", append_then_crash)
    try:
        bronze.run(spark, config, "run-1")
    except Exception as error:  # the ingest thread surfaces the crash
        assert "simulated crash" in str(error)
    else:
        raise AssertionError("the simulated crash did not surface")
    monkeypatch.setattr(tables, "append", real_append)
    # A maintenance commit lands in between: the replay still finds the stream's own commit.
    before = tables.version(spark, config, "bronze_flights")
    tables.delta_table(spark, config, "bronze_flights").optimize().executeCompaction()
    assert tables.version(spark, config, "bronze_flights") == before + 1
    result = {r["table_name"]: r for r in bronze.run(spark, config, "run-2")}["bronze_flights"]
    assert "already committed by an interrupted run" in result["message"]
    assert bronze_lines(spark, config, "bronze_flights") == landed_lines(landing / "flights", True)
    failed = tables.read(spark, config, "audit").filter(
        (F.col("table_name") == "bronze_flights") & (F.col("status") == "failed")).count()
    assert failed == 1


def test_new_snapshot_replaces_reference_and_history_keeps_the_old(
        spark: SparkSession, config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    bronze.run(spark, config, "run-1")
    old = landing / "reference" / "planes" / "planes_2013-01-01.csv"
    lines = old.read_text().splitlines()
    (old.parent / "planes_2013-02-01.csv").write_text("\n".join(lines[:-1]) + "\n")
    bronze.run(spark, config, "run-2")
    assert tables.read(spark, config, "bronze_planes").count() == 3321
    assert tables.read(spark, config, "bronze_planes", version=0).count() == 3322


def test_json_lines_that_are_not_one_object_are_kept_whole(spark: SparkSession,
                                                           config: Config) -> None:
    """The JSON reader would drop an empty array line and split an array of two objects."""
    weather = Path(config.landing) / "weather"
    weather.mkdir(parents=True)
    lines = ['{"origin": "EWR", "year": "2013", "hour": "1"}', "[]",
             '[{"origin": "JFK"}, {"origin": "LGA"}]', "42", "   ", '{"origin": "LGA", "te']
    (weather / "weather_2013-01-01.jsonl").write_text("\n".join(lines) + "\n")
    result = {r["table_name"]: r for r in bronze.run(spark, config, "run-1")}["bronze_weather"]
    assert result["rows_landed"] == result["rows_in"] == 5
    corrupt = tables.read(spark, config, "bronze_weather").filter(
        F.col("_corrupt_record").isNotNull()).select("_corrupt_record").collect()
    assert sorted(r[0] for r in corrupt) == sorted(lines[1:4] + lines[5:])


def test_a_line_the_reader_skips_fails_the_run_until_the_file_is_mended(
        spark: SparkSession, config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    day = landing / "flights" / "flights_2013-01-01.csv"
    good = day.read_bytes()
    lines = good.splitlines(keepends=True)
    # Spark's CSV reader trims control characters and drops the line as blank.
    day.write_bytes(b"".join(lines[:5]) + b"\x01\x02\n" + b"".join(lines[5:]))
    for run in ("run-1", "run-2"):  # the replayed batch is checked again
        with pytest.raises(Exception, match=r"flights_2013-01-01.csv: 843 lines landed, "
                                            r"842 records read"):
            bronze.run(spark, config, run)
    day.write_bytes(good)
    result = {r["table_name"]: r for r in bronze.run(spark, config, "run-3")}["bronze_flights"]
    assert "already committed by an interrupted run" in result["message"]
    assert bronze_lines(spark, config, "bronze_flights") == landed_lines(landing / "flights", True)


def test_lines_counted_in_spark_match_the_driver_count(spark: SparkSession,
                                                       tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"h1,h2\r\n1,2\r\n\r\n3,4\r\n  \n5")
    (tmp_path / "b.csv").write_bytes(b"h1,h2\n")
    files = [(tmp_path / n).as_uri() for n in ("a.csv", "b.csv")]
    driver = tables.landed_lines(spark, files, header=True)
    in_spark = {same_file(f): v for f, v in
                tables.landed_lines_in_spark(spark, files, header=True).items()}
    assert {same_file(f): v for f, v in driver.items()} == in_spark
    assert driver[files[0]] == (3, "h1,h2") and driver[files[1]] == (0, "h1,h2")


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 22])
def test_line_count_does_not_depend_on_where_reads_split_the_file(chunk: int) -> None:
    data = b"h1,h2\r\n1,2\r\n\r\n3,4\r  \n5,6\n\n7,\xff8"
    expected = [line for line in data.splitlines() if line.strip()]
    lines, first = tables.count_lines(io.BytesIO(data), header=True, chunk=chunk)
    assert (lines, first) == (len(expected) - 1, "h1,h2")


KILLED_CHILD = """
import json, os, signal, sys
from lakehouse import tables
from lakehouse.config import load_config
from lakehouse.session import build_session
from lakehouse.stages import bronze

real_append = tables.append

def append_then_die(df, config, name, **kwargs):
    real_append(df, config, name, **kwargs)
    if name == "bronze_flights":  # killed after the Delta commit, before the ledger
        os.kill(os.getpid(), signal.SIGKILL)

tables.append = append_then_die
config = load_config("local", overrides=json.loads(sys.argv[1]))
bronze.run(build_session(config), config, "killed")
"""


@pytest.mark.slow
def test_killed_process_then_rerun_lands_each_record_once(spark: SparkSession,
                                                          config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 2))
    overrides = {"data_root": config.data_root, **TEST_SPARK}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, json.dumps(overrides)],
                             cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        assert child.wait(timeout=300) == -signal.SIGKILL
    finally:  # the driver's JVM goes with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    assert tables.read(spark, config, "bronze_flights").count() == 842 + 943
    result = {r["table_name"]: r for r in bronze.run(spark, config, "rerun")}["bronze_flights"]
    assert "already committed by an interrupted run" in result["message"]
    assert bronze_lines(spark, config, "bronze_flights") == landed_lines(landing / "flights", True)
