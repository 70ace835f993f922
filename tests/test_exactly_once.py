"""Bronze exactly once: crashes, kill -9, overlapping runs, a moved data root, a migration."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables, workflow
from lakehouse.bronze import CORRUPT_COLUMN, SOURCE_COLUMNS
from lakehouse.config import Config
from lakehouse.seed import seed
from lakehouse.stages import bronze
from lakehouse.tables import ConcurrentRunError
from tests.conftest import TEST_SPARK, make_config
from tests.test_bronze import bronze_lines, landed_lines

ROOT = Path(__file__).resolve().parent.parent
ONE_FILE_PER_BATCH = {"bronze": {"max_files_per_trigger": 1}}


def flights_source(config: Config) -> bronze.Source:
    return next(s for s in bronze.sources(config) if s.name == "flights")


def each_record_once(spark: SparkSession, config: Config) -> None:
    landing = Path(config.landing)
    assert bronze_lines(spark, config, "bronze_flights") == landed_lines(landing / "flights", True)


def test_crash_after_the_commit_then_rerun_lands_each_record_once(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path, **ONE_FILE_PER_BATCH)
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 2))
    real_append = tables.append

    def append_then_crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_append(*args, **kwargs)
        raise RuntimeError("simulated crash after the Delta commit, before the checkpoint")

    monkeypatch.setattr(tables, "append", append_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        bronze.ingest(spark, config, flights_source(config), "run-1")
    monkeypatch.setattr(tables, "append", real_append)
    assert tables.read(spark, config, "bronze_flights").count() == 842  # batch 0 committed
    # A maintenance commit lands in between: the replay still finds the stream's own commit.
    before = tables.version(spark, config, "bronze_flights")
    spark.sql(f"ALTER TABLE delta.`{config.table('bronze_flights')}` "
              "SET TBLPROPERTIES ('lakehouse.maintained' = 'yes')")
    assert tables.version(spark, config, "bronze_flights") == before + 1
    counts = bronze.ingest(spark, config, flights_source(config), "run-2")
    assert counts.replayed == [1] and counts.rows == 943
    assert "already committed by an interrupted run" in " ".join(counts.notes())
    each_record_once(spark, config)


def test_a_data_root_moved_elsewhere_ingests_nothing_twice(spark: SparkSession,
                                                           tmp_path: Path) -> None:
    config = make_config(tmp_path / "first")
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 2))
    bronze.ingest(spark, config, flights_source(config), "run-1")
    moved = make_config(tmp_path / "restored")
    shutil.copytree(tmp_path / "first", tmp_path / "restored")  # a backup restored elsewhere
    version = tables.version(spark, moved, "bronze_flights")
    assert bronze.ingest(spark, moved, flights_source(moved), "run-2").rows == 0
    assert tables.version(spark, moved, "bronze_flights") == version
    seed(Path(moved.landing), date(2013, 1, 3), date(2013, 1, 3))
    counts = bronze.ingest(spark, moved, flights_source(moved), "run-3")
    assert counts.files == 1 and counts.rows == 914
    each_record_once(spark, moved)


def test_two_runs_of_one_source_at_once_the_second_fails_and_is_not_retried(
        spark: SparkSession, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 2))
    real_append = tables.append
    writing, release = threading.Event(), threading.Event()

    def slow_append(*args, **kwargs):  # type: ignore[no-untyped-def]
        if args[2] == "bronze_flights" and not writing.is_set():
            writing.set()
            release.wait(120)
        real_append(*args, **kwargs)

    monkeypatch.setattr(tables, "append", slow_append)
    first = threading.Thread(target=bronze.ingest,
                             args=(spark, config, flights_source(config), "first"))
    first.start()
    try:
        assert writing.wait(120), "the first run never reached its append"
        attempts = []

        def second_run() -> bronze.Counts:
            attempts.append(1)
            return bronze.ingest(spark, config, flights_source(config), "second")

        with pytest.raises(ConcurrentRunError, match=r"the ingestion of bronze_flights is being "
                                                     r"run by pid \d+ .*run\.lock"):
            workflow.with_retries(second_run, "bronze", retries=2)
        assert attempts == [1]  # not retried as a transient error
    finally:
        release.set()
        first.join(300)
    each_record_once(spark, config)


def test_spark_and_delta_overlap_errors_are_not_retried() -> None:
    attempts = []

    def overlapping() -> None:
        attempts.append(1)
        raise RuntimeError("io.delta.exceptions.ConcurrentTransactionException: [DELTA_CONCURRENT_"
                           "TRANSACTION] This error occurs when multiple streaming queries are "
                           "using the same checkpoint to write into this table.")

    with pytest.raises(RuntimeError, match="ConcurrentTransactionException"):
        workflow.with_retries(overlapping, "bronze", retries=2)
    assert attempts == [1]


def write_as_the_ledger_version_did(spark: SparkSession, config: Config, day: Path) -> None:
    """bronze_flights as the file-ledger version left it: its columns, a ledger folder."""
    columns = [*SOURCE_COLUMNS["flights"], CORRUPT_COLUMN]
    rows = (spark.read.option("header", "true").schema(", ".join(f"`{c}` string" for c in columns))
            .csv(str(day)).select("*", F.col("_metadata.file_path").alias("_source_file"),
                                  F.col("_metadata.file_modification_time").alias(
                                      "_source_modified_at"),
                                  F.current_timestamp().alias("_ingested_at"),
                                  F.lit("ledger-run").alias("_run_id"),
                                  F.lit(0).cast("long").alias("_batch_id")))
    tables.append(rows, config, "bronze_flights", tag="ledger 1 batch 0 run ledger-run")
    ledger = Path(config.checkpoints) / "bronze_flights" / "ledger"
    ledger.mkdir(parents=True)
    (ledger / f"{0:020d}.done.json").write_text(json.dumps({"ledger": "1", "batch": 0}))


def test_a_table_written_by_the_ledger_version_needs_the_one_time_migration(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from lakehouse.cli import main

    config = make_config(tmp_path)
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 2))
    write_as_the_ledger_version_did(spark, config, landing / "flights" / "flights_2013-01-01.csv")
    version = tables.version(spark, config, "bronze_flights")
    with pytest.raises(bronze.MigrationRequiredError,
                       match=r"bronze_flights already holds records .* Run `lakehouse migrate "
                             r"--env local` once"):
        bronze.ingest(spark, config, flights_source(config), "run-1")
    assert tables.version(spark, config, "bronze_flights") == version  # nothing written

    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(tmp_path))
    assert main(["migrate"]) == 0
    out = capsys.readouterr().out
    assert "1 file(s) already in the table before its stream checkpoint" in out
    each_record_once(spark, config)  # day 1 not appended again, day 2 ingested
    assert "_rescued_data" in tables.read(spark, config, "bronze_flights").columns
    seed(landing, date(2013, 1, 3), date(2013, 1, 3))
    counts = bronze.ingest(spark, config, flights_source(config), "run-2")
    assert counts.files == 1 and counts.rows == 914
    each_record_once(spark, config)


def test_continuous_run_ingests_files_as_they_land(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path, bronze={"continuous_interval": "1 second"})
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            bronze.run_continuous(spark, config, "continuous", until=stop.is_set,
                                  layout_check_s=1)
        except BaseException as error:
            failure.append(error)

    def rows_become(expected: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not failure:
            if (tables.exists(spark, config, "bronze_flights")
                    and tables.read(spark, config, "bronze_flights").count() == expected):
                return
            time.sleep(0.5)
        raise AssertionError(f"bronze_flights never held {expected} rows: {failure}")

    thread = threading.Thread(target=run)
    thread.start()
    try:
        rows_become(842)
        seed(landing, date(2013, 1, 2), date(2013, 1, 2))
        rows_become(842 + 943)
        # a second file of a name already read would never be read: the run fails, naming both
        again = landing / "flights" / "again"
        again.mkdir()
        shutil.copy(landing / "flights" / "flights_2013-01-02.csv", again)
        thread.join(120)
    finally:
        stop.set()
        thread.join(120)
    assert not thread.is_alive()
    assert [type(e) for e in failure] == [bronze.LandingLayoutError]
    named = str(failure[0]).split("Rename or remove one of each: ")[1]
    assert named.startswith("flights_2013-01-02.csv: ")
    assert sorted(p.rsplit("/", 2)[1] for p in named.split(": ", 1)[1].split(", ")) == [
        "again", "flights"]
    audit = tables.read(spark, config, "audit").filter(
        (F.col("table_name") == "bronze_flights") & (F.col("rows_in") > 0))
    assert sorted(r["rows_in"] for r in audit.collect()) == [842, 943]  # a row per micro-batch
    each_record_once(spark, config)



def test_a_source_failing_while_the_next_one_starts_fails_the_continuous_run(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source whose query fails (a CSV without a header) while the next source's query is
    still starting is not forgotten: the continuous run fails with its error, instead of going
    on with the other sources while that one stays dead, its lock held."""
    config = make_config(tmp_path, bronze={"continuous_interval": "1 second"})
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    day = landing / "flights" / "flights_2013-01-01.csv"
    day.write_text("\n".join(day.read_text().splitlines()[1:]) + "\n")
    real = bronze.running
    started: list[Any] = []

    @contextlib.contextmanager
    def next_starts_after_the_first_failed(*args: Any) -> Iterator[Any]:
        if started:  # the next source starts once the first one's query has failed
            deadline = time.monotonic() + 60
            while started[0].isActive and time.monotonic() < deadline:
                time.sleep(0.2)
        with real(*args) as query:
            started.append(query)
            yield query

    monkeypatch.setattr(bronze, "running", next_starts_after_the_first_failed)
    give_up = time.monotonic() + 90
    with pytest.raises(bronze.MissingHeaderError, match=r"flights_2013-01-01.csv"):
        bronze.run_continuous(spark, config, "continuous",
                              until=lambda: time.monotonic() > give_up, layout_check_s=600)
    assert len(started) == 2 and not any(q.isActive for q in started)

KILLED_CHILD = """
import json, os, signal, sys
from lakehouse import tables
from lakehouse.config import load_config
from lakehouse.session import build_session
from lakehouse.stages import bronze

real_append, appended = tables.append, []

def append_then_die(df, config, name, **kwargs):
    real_append(df, config, name, **kwargs)
    appended.append(name)
    if appended.count("bronze_flights") == 2:  # after the Delta commit, before the checkpoint
        os.kill(os.getpid(), signal.SIGKILL)

tables.append = append_then_die
config = load_config("local", overrides=json.loads(sys.argv[1]))
flights = next(s for s in bronze.sources(config) if s.name == "flights")
bronze.ingest(build_session(config), config, flights, "killed")
"""


@pytest.mark.slow
def test_killed_process_then_rerun_lands_each_record_once(spark: SparkSession,
                                                          tmp_path: Path) -> None:
    config = make_config(tmp_path, **ONE_FILE_PER_BATCH)
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 3))
    overrides = {"data_root": config.data_root, **TEST_SPARK, **ONE_FILE_PER_BATCH}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, json.dumps(overrides)],
                             cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        assert child.wait(timeout=300) == -signal.SIGKILL
    finally:  # the driver's JVM goes with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    assert tables.read(spark, config, "bronze_flights").count() == 842 + 943
    counts = bronze.ingest(spark, config, flights_source(config), "rerun")
    assert "already committed by an interrupted run" in " ".join(counts.notes())
    assert counts.rows == 914
    each_record_once(spark, config)
