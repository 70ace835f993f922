"""The bronze file ledger: which landed files were read, across crashes, backlogs and stores."""

from __future__ import annotations

import errno
import os
from datetime import date
from pathlib import Path
from urllib.parse import unquote

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import ledger, tables
from lakehouse.bronze import file_name
from lakehouse.config import Config
from lakehouse.ledger import LedgerError
from lakehouse.seed import seed
from lakehouse.stages import bronze
from tests.conftest import make_config
from tests.test_bronze import bronze_lines, landed_lines

ODD_NAME = "flights_2013-01-02 [late] #2 100% %41 {a,b} x*?.csv"


def lines_per_file(spark: SparkSession, config: Config) -> dict[str, int]:
    """Bronze records per source file name, as the file system spells it."""
    return {unquote(k): v for k, v in bronze_lines(spark, config, "bronze_flights").items()}


def land_odd_name(landing: Path) -> None:
    """A late file whose name holds a space, glob brackets, a hash and a percent sign."""
    day = (landing / "flights" / "flights_2013-01-01.csv").read_text().splitlines()
    (landing / "flights" / ODD_NAME).write_text("\n".join(day[:3]) + "\n")


def ledger_folder(config: Config, table: str) -> Path:
    return Path(config.checkpoints) / table / "ledger"


def files_per_batch(spark: SparkSession, config: Config) -> dict[int, list[str]]:
    rows = (tables.read(spark, config, "bronze_flights")
            .select("_batch_id", file_name(F.col("_source_file")).alias("file")).distinct()
            .collect())
    batches: dict[int, list[str]] = {}
    for r in rows:
        batches.setdefault(r["_batch_id"], []).append(r["file"])
    return {b: sorted(files) for b, files in batches.items()}


def crash_before_the_commit(monkeypatch, spark: SparkSession, config: Config,  # type: ignore[no-untyped-def]
                            run_id: str) -> None:
    real_append = tables.append

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("simulated crash before the Delta commit")

    monkeypatch.setattr(tables, "append", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        bronze.ingest_daily(spark, config, "flights", run_id)
    monkeypatch.setattr(tables, "append", real_append)


def crash_after_the_commit(monkeypatch, spark: SparkSession, config: Config,  # type: ignore[no-untyped-def]
                           run_id: str) -> None:
    real_append = tables.append

    def append_then_crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_append(*args, **kwargs)
        raise RuntimeError("simulated crash after the Delta commit, before the ledger")

    monkeypatch.setattr(tables, "append", append_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        bronze.ingest_daily(spark, config, "flights", run_id)
    monkeypatch.setattr(tables, "append", real_append)


def test_crash_before_the_delta_commit_then_rerun_reads_the_open_batch_once(
        spark: SparkSession, config: Config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    bronze.ingest_daily(spark, config, "flights", "run-1")
    seed(landing, date(2013, 1, 2), date(2013, 1, 3))
    crash_before_the_commit(monkeypatch, spark, config, "run-2")
    assert tables.version(spark, config, "bronze_flights") == 0  # batch 0 only
    seed(landing, date(2013, 1, 4), date(2013, 1, 4))  # lands before the rerun
    totals = bronze.ingest_daily(spark, config, "flights", "run-3")
    assert totals["files"] == 3 and totals["replayed"] == []
    # The open batch is read again with exactly its files; the new day comes after it.
    assert files_per_batch(spark, config) == {
        0: ["flights_2013-01-01.csv"], 1: ["flights_2013-01-02.csv", "flights_2013-01-03.csv"],
        2: ["flights_2013-01-04.csv"]}
    assert bronze_lines(spark, config, "bronze_flights") == landed_lines(landing / "flights", True)


@pytest.mark.parametrize("committed", [False, True])
def test_a_file_gone_from_an_open_batch_is_named_and_the_rest_is_taken(
        spark: SparkSession, config: Config, monkeypatch,  # type: ignore[no-untyped-def]
        committed: bool) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 2))
    crash = crash_after_the_commit if committed else crash_before_the_commit
    crash(monkeypatch, spark, config, "run-1")
    gone = landing / "flights" / "flights_2013-01-01.csv"
    gone_lines = landed_lines(landing / "flights", True)[gone.name]
    gone.unlink()  # e.g. removed as a bad file
    result = {r["table_name"]: r for r in bronze.run(spark, config, "run-2")}["bronze_flights"]
    assert result["files"] == 1
    kept = "committed before: their records stay in bronze" if committed else "not read"
    assert (f"1 file(s) of a batch left open by an interrupted run were gone when it was taken "
            f"again ({kept}): flights_2013-01-01.csv") in result["message"]
    expected = landed_lines(landing / "flights", True)
    if committed:  # what the commit read stays: nothing is lost, nothing is read twice
        expected[gone.name] = gone_lines
    assert bronze_lines(spark, config, "bronze_flights") == expected
    # Landed again under its name, the file is not read again: it was read once.
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    again = bronze.ingest_daily(spark, config, "flights", "run-3")
    assert again["files"] == int(not committed)


def test_a_table_without_its_ledger_is_not_read_into_again(spark: SparkSession,
                                                           config: Config) -> None:
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 1))
    bronze.ingest_daily(spark, config, "flights", "run-1")
    for path in ledger_folder(config, "bronze_flights").iterdir():
        path.unlink()
    with pytest.raises(LedgerError, match=r"bronze_flights exists but its file ledger .* is empty"):
        bronze.ingest_daily(spark, config, "flights", "run-2")
    assert tables.version(spark, config, "bronze_flights") == 0


def test_two_runs_planning_one_batch_at_once_fail_the_second(spark: SparkSession,
                                                            tmp_path: Path) -> None:
    listing = [ledger.LandedFile((tmp_path / "a.csv").as_uri(), 1, 1)]
    first, second = (ledger.FileLedger(spark, str(tmp_path / "ledger")) for _ in range(2))
    assert first.plan(listing) is not None
    with pytest.raises(LedgerError, match="two runs of one bronze table overlapped"):
        second.plan(listing)


@pytest.mark.parametrize("hard_links", [True, False])
def test_ledger_files_are_created_whole_and_never_replaced(
        spark: SparkSession, tmp_path: Path, monkeypatch,  # type: ignore[no-untyped-def]
        hard_links: bool) -> None:
    if not hard_links:  # as on mounts without hard links

        def no_link(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise PermissionError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    target = (tmp_path / "ledger" / "0.plan.json").as_uri()
    tables.create_text(spark, target, "first")
    with pytest.raises(FileExistsError):
        tables.create_text(spark, target, "second")
    assert tables.read_text(spark, target) == "first"
    assert [p.name for p in (tmp_path / "ledger").iterdir()] == ["0.plan.json"]


def test_old_ledger_files_are_dropped_and_the_newest_carries_every_file(
        spark: SparkSession, config: Config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(ledger, "MAX_FILES_PER_BATCH", 1)
    monkeypatch.setattr(ledger, "KEEP_DONE", 1)
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 3))
    assert bronze.ingest_daily(spark, config, "flights", "run-1")["files"] == 3
    assert sorted(p.name for p in ledger_folder(config, "bronze_flights").iterdir()) == [
        "00000000000000000002.done.json", "00000000000000000002.plan.json"]
    seed(landing, date(2013, 1, 4), date(2013, 1, 4))
    assert bronze.ingest_daily(spark, config, "flights", "run-2")["files"] == 1
    assert bronze_lines(spark, config, "bronze_flights") == landed_lines(landing / "flights", True)


def test_a_backlog_is_read_oldest_first_in_batches(spark: SparkSession, config: Config,
                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(ledger, "MAX_FILES_PER_BATCH", 2)
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 3))
    for days, name in enumerate(("flights_2013-01-03.csv", "flights_2013-01-02.csv",
                                 "flights_2013-01-01.csv")):  # landed in reverse name order
        os.utime(landing / "flights" / name, (1_700_000_000 + days, 1_700_000_000 + days))
    totals = bronze.ingest_daily(spark, config, "flights", "run-1")
    assert totals["files"] == 3 and tables.version(spark, config, "bronze_flights") == 1
    assert files_per_batch(spark, config) == {
        0: ["flights_2013-01-02.csv", "flights_2013-01-03.csv"], 1: ["flights_2013-01-01.csv"]}
    assert bronze.ingest_daily(spark, config, "flights", "run-2")["files"] == 0


def test_a_file_changed_after_it_was_read_is_named_and_not_read_again(
        spark: SparkSession, config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    bronze.ingest_daily(spark, config, "flights", "run-1")
    before = tables.read(spark, config, "bronze_flights").count()
    day = landing / "flights" / "flights_2013-01-01.csv"
    day.write_text(day.read_text() + day.read_text().splitlines()[1] + "\n")
    result = {r["table_name"]: r for r in bronze.run(spark, config, "run-2")}["bronze_flights"]
    assert result["files"] == 0
    assert "1 file(s) changed after they were read, not read again: flights_2013-01-01.csv" in \
        result["message"]
    assert tables.read(spark, config, "bronze_flights").count() == before


def test_an_unreadable_ledger_file_fails_the_run_naming_it(spark: SparkSession,
                                                           config: Config) -> None:
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 1))
    bronze.ingest_daily(spark, config, "flights", "run-1")
    (done,) = ledger_folder(config, "bronze_flights").glob("*.done.json")
    done.write_text('{"ledger": "cut off')
    with pytest.raises(LedgerError, match=rf"{done.name} is not a ledger file"):
        bronze.ingest_daily(spark, config, "flights", "run-2")


def test_odd_file_names_and_data_roots_are_one_file_each(
        spark: SparkSession, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Listing, ledger, Spark's file paths and the accounting of a replay agree on each file."""
    (tmp_path / "sub").mkdir()
    config = make_config(tmp_path / "sub" / "..")
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    land_odd_name(landing)
    crash_after_the_commit(monkeypatch, spark, config, "run-1")
    totals = bronze.ingest_daily(spark, config, "flights", "run-2")  # checks what run-1 wrote
    assert totals["replayed"] == [2] and totals["landed"] == 0
    assert lines_per_file(spark, config) == landed_lines(landing / "flights", True)
    assert bronze.ingest_daily(spark, config, "flights", "run-3")["files"] == 0


def test_the_ledger_works_the_same_through_hadoop_file_systems(
        spark: SparkSession, config: Config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """On a cluster the landing zone and checkpoints are on DBFS, S3 or ABFS: list, read and
    write through Hadoop's FileSystem (here its local one), under a data root whose name
    holds a space and a percent-escape."""
    monkeypatch.setattr(tables, "_local_path", lambda spark, uri: None)
    config = make_config(Path(config.data_root) / "data root %41")
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    land_odd_name(landing)
    (landing / "flights" / "_SUCCESS").write_text("")
    (landing / "flights" / ".flights_2013-01-02.csv.crc").write_text("")
    listed = tables.list_files(spark, str(landing / "flights"))
    assert sorted(unquote(uri.rsplit("/", 1)[-1]) for uri, _, _ in listed) == [
        "flights_2013-01-01.csv", ODD_NAME]
    assert bronze.ingest_daily(spark, config, "flights", "run-1")["files"] == 2
    seed(landing, date(2013, 1, 2), date(2013, 1, 2))
    crash_after_the_commit(monkeypatch, spark, config, "run-2")
    totals = bronze.ingest_daily(spark, config, "flights", "run-3")  # the commit tag, via Hadoop
    assert totals["files"] == 1 and totals["replayed"] == [1]
    assert sorted(p.name for p in ledger_folder(config, "bronze_flights").iterdir()
                  if not p.name.startswith(".")) == [
        f"{b:020d}.{kind}.json" for b in (0, 1) for kind in ("done", "plan")]
    flights = landing / "flights"
    assert lines_per_file(spark, config) == {
        k: v for k, v in landed_lines(flights, True).items() if not k.startswith("_")}
