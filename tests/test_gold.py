"""Incremental gold on real days: days landed one at a time, a late correction and a new planes
snapshot give tables identical to a full build; unchanged rows are not rewritten."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.storagelevel import StorageLevel

from lakehouse import tables
from lakehouse.cli import main
from lakehouse.config import Config
from lakehouse.features import (
    FeatureSettings,
    FeatureSettingsError,
    flight_features,
    route_daily_kpis,
)
from lakehouse.gold_docs import COLUMN_COMMENTS, with_comments
from lakehouse.silver import KEYS, OUTPUT
from lakehouse.stages import gold
from tests.conftest import make_config
from tests.rows import silver_frames, source_rows

DAYS = [date(2013, 2, d) for d in (1, 2, 3, 4)]
# Days landed one at a time with a one-day history window: a new day then reads back fewer days
# than silver holds, and a late correction recomputes fewer days than follow it.
LONG_DAYS = [date(2013, 2, d) for d in range(1, 10)]


def day_of(row: dict[str, str]) -> date:
    return date(int(row["year"]), int(row["month"]), int(row["day"]))


@pytest.fixture(scope="module")
def raw() -> dict[str, list[dict[str, str]]]:
    return {"flights": source_rows("flights", lambda r: day_of(r) in LONG_DAYS),
            "weather": source_rows("weather", lambda r: day_of(r) in LONG_DAYS),
            "planes": source_rows("planes")}


def land(spark: SparkSession, config: Config, flights: list[dict[str, Any]],
         weather: list[dict[str, Any]], planes: list[dict[str, str]] | None = None) -> None:
    """Write rows to silver as the silver stage does: MERGE on the natural key (only changed
    rows updated), the planes snapshot replaced."""
    frames = silver_frames(spark, flights, weather, planes)
    for table in ("flights", "weather"):
        tables.merge(spark, frames[table], config, f"silver_{table}", KEYS[table],
                     changed_columns=OUTPUT[table])
    if planes is not None or not tables.exists(spark, config, "silver_planes"):
        tables.overwrite(frames["planes"], config, "silver_planes")


def full_build(spark: SparkSession, config: Config) -> dict[str, DataFrame]:
    settings = FeatureSettings.from_conf(config.section("gold"))
    flights, weather, planes = (tables.read(spark, config, f"silver_{t}")
                                for t in ("flights", "weather", "planes"))
    return {"flight_features": flight_features(flights, weather, planes, settings)
            .transform(with_comments("flight_features")),
            "route_daily_kpis": route_daily_kpis(flights, settings)
            .transform(with_comments("route_daily_kpis"))}


def scans_recorded(spark: SparkSession) -> tuple[list[DataFrame], type, Any]:
    """A list of the DataFrames checked for rows (isEmpty: gold's scan of a slice before a
    write), the DataFrame class and the recording isEmpty to patch onto it."""
    scanned: list[DataFrame] = []
    frame_type = type(spark.range(1))
    is_empty = frame_type.isEmpty

    def counted(self: DataFrame) -> bool:
        scanned.append(self)
        return bool(is_empty(self))

    return scanned, frame_type, counted


def messages(results: list[dict[str, Any]]) -> list[str]:
    return [r["message"] for r in results]


@pytest.mark.slow
def test_days_one_at_a_time_and_late_corrections_equal_a_full_build(
        spark: SparkSession, tmp_path: Path, raw: dict[str, list[dict[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path, gold={"daily_history_days": 1})
    settings = FeatureSettings.from_conf(config.section("gold"))
    assert settings.history_lookback_days < len(LONG_DAYS) - 1
    # every silver slice an incremental run caches, to check each is released by its end
    sliced: list[DataFrame] = []
    flights_read: list[DataFrame] = []  # this run's slices of silver_flights
    cache = gold.Silver.slice

    def recorded(self: gold.Silver, table: str, *args: Any) -> DataFrame:
        sliced.append(cache(self, table, *args))
        if table == "silver_flights":
            flights_read.append(sliced[-1])
        return sliced[-1]

    monkeypatch.setattr(gold.Silver, "slice", recorded)
    # the scans of gold before a write: none for a new day after the last build's `through`
    scanned, frame_type, counted = scans_recorded(spark)
    by_day = {d: [r for r in raw["flights"] if day_of(r) == d] for d in LONG_DAYS}
    weather_by_day = {d: [r for r in raw["weather"] if day_of(r) == d] for d in LONG_DAYS}
    for i, day in enumerate(LONG_DAYS):
        land(spark, config, by_day[day], weather_by_day[day], raw["planes"] if i == 0 else None)
        with monkeypatch.context() as patched:
            patched.setattr(frame_type, "isEmpty", counted)
            flights_read.clear()
            results = gold.run(spark, config, f"day-{i}")
        assert scanned == [], (day, len(scanned))
        if i:  # a new day reads back the history its features need, not all of silver
            first_read = min(f.agg(F.min("flight_date")).first()[0] for f in flights_read)
            assert first_read == max(
                LONG_DAYS[0], day - timedelta(days=settings.history_lookback_days)), first_read
        for name in gold.OUTPUTS:  # each new day went in by the replaceWhere insert
            last = tables.delta_table(spark, config, name).history(1).first()
            assert (i == 0 or (last["operation"] == "WRITE"
                    and str(day) in last["operationParameters"]["predicate"])), last
        expected = "full build: no earlier build" if i == 0 else "incremental: "
        assert all(m.startswith(expected) for m in messages(results)), messages(results)
        if i:
            assert f"({day}.." in messages(results)[0] and f"({day}..{day})" in messages(results)[1]
        # each table's build records the last flight date silver holds (the next new day's
        # dates after it are written without a scan of gold), here the day just landed
        for name in gold.OUTPUTS:
            state = tables.tagged_state(spark, config, name, gold.TAG)
            assert gold.held_through(state) == day == tables.read(
                spark, config, "silver_flights").agg(F.max("flight_date")).first()[0], state
    # the days as the new-day path wrote them (the correction below rewrites some of their
    # rows before the comparison at the end)
    for name, frame in full_build(spark, config).items():
        assert_df_equality(tables.read(spark, config, name), frame, ignore_row_order=True,
                           ignore_nullable=True)
    # Versions read explicitly: a cached or re-read frame of the path could show either.
    version_before = tables.version(spark, config, "flight_features")
    features_before = tables.read(spark, config, "flight_features", version=version_before)

    # A late correction on the 2nd: a flight on time becomes 5 h late, and a weather reading
    # of the 3rd changes. Later flights' carrier and route history must follow.
    corrected = next(r for r in by_day[DAYS[1]] if r["arr_delay"] not in ("NA",)
                     and int(r["arr_delay"]) < 0 and int(r["sched_dep_time"]) < 1200)
    corrected = {**corrected, "arr_delay": "300", "arr_time": corrected["arr_time"]}
    reading = {**weather_by_day[DAYS[2]][30], "temp": "95.0"}
    land(spark, config, [corrected], [reading])
    results = gold.run(spark, config, "correction")
    assert messages(results)[0].startswith("incremental: ")
    # the 2nd and the days after it whose one-day history can count its outcome, not all
    recomputed = messages(results)[0].split("(2013-02-02..", 1)[1][:10]
    assert DAYS[3] <= date.fromisoformat(recomputed) < LONG_DAYS[-2], messages(results)[0]
    assert messages(results)[1] == ("incremental: 1 flight date(s) recomputed "
                                    "(2013-02-02..2013-02-02)")
    version_after = tables.version(spark, config, "flight_features")
    after = tables.read(spark, config, "flight_features", version=version_after)
    moved = after.exceptAll(features_before).select("flight_date").distinct().collect()
    assert DAYS[2] in {r[0] for r in moved}  # a later day's history moved

    # Only the rows whose values changed were written: Delta's change feed of that commit holds
    # exactly them (deletion vectors: the other rows of their files stay in place).
    changes = tables.read_changes(spark, config, "flight_features", version_before + 1,
                                  version_after)
    updated = changes.filter(F.col("_change_type") == "update_postimage")
    assert updated.count() == after.exceptAll(features_before).count() > 0

    # A new planes snapshot with one build year changed moves only that plane's rows.
    tail = corrected["tailnum"]
    planes = [dict(p, year="1990") if p["tailnum"] == tail else p for p in raw["planes"]]
    land(spark, config, [], [], planes)
    gold.run(spark, config, "planes")
    again = tables.read(spark, config, "flight_features",
                        version=tables.version(spark, config, "flight_features"))
    changed = again.exceptAll(after).select("tailnum").distinct().collect()
    assert [r[0] for r in changed] == [tail]

    for name, frame in full_build(spark, config).items():
        assert_df_equality(tables.read(spark, config, name), frame, ignore_row_order=True,
                           ignore_nullable=True,
                           ignore_column_order=False)
    assert sliced and all(df.storageLevel == StorageLevel.NONE for df in sliced)


@pytest.mark.slow
def test_rerun_without_changes_commits_nothing_and_full_rebuilds(
        spark: SparkSession, config: Config, raw: dict[str, list[dict[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    land(spark, config, [r for r in raw["flights"] if day_of(r) == DAYS[0]],
         [r for r in raw["weather"] if day_of(r) == DAYS[0]], raw["planes"])
    gold.run(spark, config, "first")
    versions = {n: tables.version(spark, config, n) for n in gold.OUTPUTS}
    results = gold.run(spark, config, "second")
    assert {n: tables.version(spark, config, n) for n in gold.OUTPUTS} == versions
    assert messages(results) == ["incremental: 0 flight date(s) recomputed (none)"] * 2
    assert messages(gold.run(spark, config, "full", full=True))[0] == "full build: --full"
    # a RESTORE (or any write not made by gold) leaves no trusted state: build in full
    tables.delta_table(spark, config, "flight_features").restoreToVersion(0)
    assert messages(gold.run(spark, config, "restored"))[0].startswith(
        "full build: no earlier build found")
    changed = make_config(Path(config.data_root), gold={"daily_history_days": 5})
    assert messages(gold.run(spark, changed, "settings"))[0] == (
        "full build: gold settings or feature definitions changed since the last build")
    # silver written while its change data feed was off: gold cannot know what changed
    silver = tables.delta_table(spark, changed, "silver_flights").detail().first()
    assert silver is not None
    spark.sql(f"ALTER TABLE delta.`{silver['location']}` "
              "SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'false')")
    land(spark, changed, [r for r in raw["flights"] if day_of(r) == DAYS[1]],
         [r for r in raw["weather"] if day_of(r) == DAYS[1]])
    message = messages(gold.run(spark, changed, "feed off"))[0]
    assert message.startswith("full build: change data feed unreadable since") and (
        "enabled now on ['silver_flights']" in message), message
    assert "incremental" in messages(gold.run(spark, changed, "after"))[0]

    # One table failing does not stop the other: both audited, the first error raised.
    build = gold.build

    def failing(silver: gold.Silver, name: str, *args: Any) -> DataFrame:
        if name == "route_daily_kpis":
            raise RuntimeError("the KPIs failed")
        return build(silver, name, *args)

    before = {n: tables.version(spark, changed, n) for n in gold.OUTPUTS}
    monkeypatch.setattr(gold, "build", failing)
    with pytest.raises(RuntimeError, match="the KPIs failed"):
        gold.run(spark, changed, "one fails", full=True)
    assert tables.version(spark, changed, "flight_features") > before["flight_features"]
    assert tables.version(spark, changed, "route_daily_kpis") == before["route_daily_kpis"]
    audit = {r["table_name"]: r for r in tables.read(spark, changed, "audit")
             .filter(F.col("run_id") == "one fails").collect()}
    assert audit["flight_features"]["status"] == "succeeded", audit
    assert audit["route_daily_kpis"]["status"] == "failed" and (
        "the KPIs failed" in audit["route_daily_kpis"]["message"]), audit


@pytest.mark.slow
def test_a_vacuumed_change_feed_rebuilds_in_full(
        spark: SparkSession, config: Config, raw: dict[str, list[dict[str, str]]]) -> None:
    """A VACUUM removed the files behind the silver versions gold has not read yet (here the
    _change_data files of a correction): the read fails only when it runs, and gold builds in
    full instead of failing every day until someone passes --full."""
    first = [r for r in raw["flights"] if day_of(r) == DAYS[0]]
    weather = [r for r in raw["weather"] if day_of(r) == DAYS[0]]
    land(spark, config, first, weather, raw["planes"])
    gold.run(spark, config, "first")
    late = next(r for r in first if r["arr_delay"] not in ("NA",) and int(r["arr_delay"]) < 0)
    land(spark, config, [{**late, "arr_delay": "300"}], [])  # an update: a _change_data file
    location = tables.delta_table(spark, config, "silver_flights").detail().first()
    assert location is not None
    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    spark.conf.set(check, "false")
    try:
        spark.sql(f"VACUUM delta.`{location['location']}` RETAIN 0 HOURS")
    finally:
        spark.conf.unset(check)
    message = messages(gold.run(spark, config, "after vacuum"))[0]
    assert message.startswith("full build: change data feed unreadable since"), message
    assert "FAILED_READ_FILE.FILE_NOT_EXIST" in message, message
    assert "incremental" in messages(gold.run(spark, config, "after"))[0]


def age_log(spark: SparkSession, config: Config, name: str, days: int) -> None:
    """Let days pass for a table's commits: Delta dates a commit by its log file's modification
    time (these tables have no in-commit timestamps), and refuses time travel (and its change
    feed) to a version other than the latest once that is older than the table's
    delta.deletedFileRetentionDuration (7 days). Only the files' times are set; nothing in
    the log is read or written."""
    import os
    import time

    location = tables.delta_table(spark, config, name).detail().first()
    assert location is not None
    then = time.time() - days * 86400
    for path in Path(str(location["location"]).removeprefix("file:"), "_delta_log").iterdir():
        os.utime(path, (then, then))


@pytest.mark.slow
def test_silver_versions_a_week_old_force_no_failure_and_a_planes_snapshot_no_full_build(
        spark: SparkSession, config: Config, raw: dict[str, list[dict[str, str]]]) -> None:
    """Delta refuses to read a version a week old (not the latest). A new planes snapshot a
    week after the last gold build moves only the changed plane's rows: gold compares silver
    planes with what its own rows were built with, not with the old snapshot (whose read
    failed gold on every monthly snapshot). A gold that has not run for a week, silver having
    moved on twice, builds in full with the reason instead of failing every day."""
    first = [r for r in raw["flights"] if day_of(r) == DAYS[0]]
    weather = [r for r in raw["weather"] if day_of(r) == DAYS[0]]
    land(spark, config, first, weather, raw["planes"])
    gold.run(spark, config, "first")
    land(spark, config, [r for r in raw["flights"] if day_of(r) == DAYS[1]],
         [r for r in raw["weather"] if day_of(r) == DAYS[1]])
    gold.run(spark, config, "second")
    built = tables.read(spark, config, "flight_features",
                        version=tables.version(spark, config, "flight_features"))
    for name in ("silver_flights", "silver_weather", "silver_planes"):
        age_log(spark, config, name, 8)
    tail = next(r["tailnum"] for r in first if r["tailnum"] not in ("", "NA"))
    land(spark, config, [], [], [dict(p, year="1990") if p["tailnum"] == tail else p
                                 for p in raw["planes"]])
    with pytest.raises(Exception, match="DELTA_UNSUPPORTED_TIME_TRAVEL_BEYOND_DELETED_FILE"):
        tables.read(spark, config, "silver_planes", version=0).count()  # the old snapshot
    message = messages(gold.run(spark, config, "planes a week later"))[0]
    assert message.startswith("incremental: "), message
    now = tables.read(spark, config, "flight_features",
                      version=tables.version(spark, config, "flight_features"))
    assert [r[0] for r in now.exceptAll(built).select("tailnum").distinct().collect()] == [tail]
    assert now.filter(F.col("tailnum") == tail).select(
        (F.year("flight_date") - F.col("plane_age")).alias("year")).distinct().collect() == [
        (1990.0,)]

    # gold stopped for a week while silver_flights took two corrections
    late = [r for r in first if r["arr_delay"] not in ("NA",) and int(r["arr_delay"]) < 0][:2]
    for i, row in enumerate(late):
        land(spark, config, [{**row, "arr_delay": str(300 + i)}], [])
    age_log(spark, config, "silver_flights", 8)
    message = messages(gold.run(spark, config, "a week behind"))[0]
    assert message.startswith("full build: change data feed unreadable since"), message
    assert "DELTA_UNSUPPORTED_TIME_TRAVEL_BEYOND_DELETED_FILE_RETENTION_DURATION" in message
    for name, frame in full_build(spark, config).items():
        assert_df_equality(tables.read(spark, config, name), frame, ignore_row_order=True,
                           ignore_nullable=True)
    assert "incremental" in messages(gold.run(spark, config, "after"))[0]


@pytest.mark.slow
def test_a_recreated_silver_table_rebuilds_in_full_and_a_first_build_counts_its_rows(
        spark: SparkSession, config: Config, raw: dict[str, list[dict[str, str]]]) -> None:
    """silver_flights dropped and made anew stands at an earlier version than the one gold's
    last build read: its change feed from there reads nothing, so gold builds in full (it
    reported no change and kept the old rows). A first build's audit counts the rows it wrote
    (it read the metrics of the table comment's commit: 0)."""
    import shutil

    first = [r for r in raw["flights"] if day_of(r) == DAYS[0]]
    weather = [r for r in raw["weather"] if day_of(r) == DAYS[0]]
    land(spark, config, first, weather, raw["planes"])
    land(spark, config, [{**first[0], "arr_delay": "301"}], [])  # silver_flights at version 1
    built = gold.run(spark, config, "first")
    assert [r["rows_out"] for r in built] == [
        tables.read(spark, config, n).count() for n in gold.OUTPUTS]
    assert all(r["rows_out"] > 0 for r in built)
    shutil.rmtree(config.table("silver_flights"))
    land(spark, config, first[:50], [])  # a new silver_flights at version 0: 50 flights
    message = messages(gold.run(spark, config, "recreated"))[0]
    assert message.startswith("full build: ['silver_flights'] at an earlier version"), message
    assert tables.read(spark, config, "flight_features").count() == 50
    # made anew again, now past the version the last build read (0): the versions alone would
    # read its change feed from version 1 and miss what version 0 wrote
    shutil.rmtree(config.table("silver_flights"))
    land(spark, config, first[50:60], [])
    land(spark, config, [{**first[50], "arr_delay": "302"}], [])
    message = messages(gold.run(spark, config, "made anew"))[0]
    assert message.startswith("full build: ['silver_flights'] made anew"), message
    def ids(name: str) -> list[str]:
        return sorted(r[0] for r in tables.read(spark, config, name).select("flight_id").collect())

    assert ids("flight_features") == ids("silver_flights") and len(ids("flight_features")) == 10


def test_a_vacuumed_feed_is_told_by_its_error_condition_only() -> None:
    """The conditions OSS Delta and Databricks raise when a VACUUM removed a change feed's files
    make gold build in full; another missing file named in a trace does not."""
    for text in ("An error occurred while calling o1.collectToPython.\n: org.apache.spark."
                 "SparkException: [FAILED_READ_FILE.FILE_NOT_EXIST] Encountered error while "
                 "reading file file:/t/_change_data/cdc-0.parquet. File does not exist.",
                 "[FAILED_READ_FILE.DBR_FILE_NOT_EXIST] Error while reading file dbfs:/t/x",
                 "[DELTA_CHANGE_DATA_FILE_NOT_FOUND] File s3://b/t/_change_data/cdc-1 "
                 "referenced in the transaction log cannot be found",
                 "[DELTA_FILE_NOT_FOUND_DETAILED] File s3://b/t/part-0 referenced in the "
                 "transaction log cannot be found",
                 # the log cleaned up past delta.logRetentionDuration
                 "org.apache.spark.sql.delta.DeltaFileNotFoundException: "
                 "[DELTA_TRUNCATED_TRANSACTION_LOG] file:/t/_delta_log/00000000000000000003"
                 ".json: Unable to reconstruct state at version 3 as the transaction log has "
                 "been truncated"):
        assert gold.feed_unreadable(RuntimeError(text)), text
        # the audit message names the line with the condition, not the py4j call
        line = gold.summary(RuntimeError("An error occurred while calling o1\n" + text))
        assert any(marker in line for marker in gold.VACUUMED_MARKERS), line
    for text in ("Caused by: java.io.FileNotFoundException: /etc/spark/conf/missing.xml",
                 "[PERMISSION_DENIED] User does not have READ on table silver.flights"):
        assert not gold.feed_unreadable(RuntimeError(text)), text


def test_gold_without_silver_fails_naming_the_table(spark: SparkSession, config: Config) -> None:
    """...and records the failed run for both gold tables (the failure comes before either
    table's own work: it left no audit row)."""
    with pytest.raises(gold.GoldInputError, match=r"silver_flights does not exist at .*run the "
                                                  r"silver job first"):
        gold.run(spark, config, "none")
    rows = tables.read(spark, config, "audit").filter(F.col("run_id") == "none").collect()
    assert sorted((r["job"], r["table_name"], r["status"]) for r in rows) == [
        ("gold", "flight_features", "failed"), ("gold", "route_daily_kpis", "failed")]
    assert all(r["message"].startswith("GoldInputError: silver_flights does not exist")
               for r in rows)
    # a misspelt gold setting too (read first, before either table)
    mistyped = make_config(Path(config.values["data_root"]), gold={"as_of_offset": 60})
    with pytest.raises(FeatureSettingsError, match="unknown settings"):
        gold.run(spark, mistyped, "typo")
    rows = tables.read(spark, config, "audit").filter(F.col("run_id") == "typo").collect()
    assert sorted(r["table_name"] for r in rows) == ["flight_features", "route_daily_kpis"]
    assert all(r["status"] == "failed" and r["duration_s"] >= 0 for r in rows)


@pytest.mark.slow  # builds gold, then describes it through the CLI
def test_describe_prints_known_at_rules_comments_version_and_rows(
        spark: SparkSession, config: Config, raw: dict[str, list[dict[str, str]]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    land(spark, config, [r for r in raw["flights"] if day_of(r) == DAYS[0]],
         [r for r in raw["weather"] if day_of(r) == DAYS[0]], raw["planes"])
    gold.run(spark, config, "first")
    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", config.data_root)
    assert main(["describe", "flight_features"]) == 0
    out = capsys.readouterr().out
    rows = len([r for r in raw["flights"] if day_of(r) == DAYS[0]])
    assert "weather" in out and "at the end of its hour, time_hour + 1 h" in out
    assert f"Delta version {tables.version(spark, config, 'flight_features')}, {rows} rows" in out
    assert "Built incrementally from silver by MERGE on flight_id" in out
    for column, comment in COLUMN_COMMENTS["flight_features"].items():
        assert any(line.split()[:1] == [column] and comment in line for line in
                   out.splitlines()), column
    assert main(["describe", "nope"]) == 2
    assert "unknown table 'nope'; configured tables are" in capsys.readouterr().err


def test_a_new_day_is_written_into_its_dates_only(spark: SparkSession, config: Config) -> None:
    """The new-day path (replaceWhere on the recomputed dates) adds the day's rows, keeps the
    others, and refuses a row outside the dates instead of writing it."""
    rows = spark.createDataFrame([("a", date(2013, 2, 1)), ("b", date(2013, 2, 2))],
                                 "flight_id string, flight_date date")
    tables.append(rows.filter("flight_date = DATE'2013-02-01'"), config, "route_daily_kpis")
    day = "flight_date IN (DATE'2013-02-02', DATE'2013-02-03')"
    tables.insert_into_empty(rows.filter("flight_date = DATE'2013-02-02'"), config,
                             "route_daily_kpis", day, tag="t")
    assert sorted(r[0] for r in tables.read(spark, config, "route_daily_kpis").collect()) == [
        "a", "b"]
    version = tables.version(spark, config, "route_daily_kpis")
    with pytest.raises(Exception, match="REPLACE_WHERE"):
        tables.insert_into_empty(rows.filter("flight_date = DATE'2013-02-01'"), config,
                                 "route_daily_kpis", "flight_date = DATE'2013-02-04'")
    assert tables.version(spark, config, "route_daily_kpis") == version


def test_new_flights_of_a_held_day_are_merged_into_that_day_only(spark: SparkSession,
                                                                  config: Config) -> None:
    """A late flight of a day gold holds (nothing else changed) goes in by an insert-only MERGE
    on the recomputed dates' slice: no blind append a racing run could duplicate, no scan of
    (or conflict with) the other dates."""
    schema = "flight_id string, flight_date date, value int"
    tables.overwrite(spark.createDataFrame([("a", date(2013, 2, 1), 1),
                                            ("b", date(2013, 2, 2), 2)], schema),
                     config, "flight_features")
    recomputed = spark.createDataFrame([("b", date(2013, 2, 2), 2), ("c", date(2013, 2, 2), 3)],
                                       schema)
    plan = gold.Plan(False, "a late flight", [date(2013, 2, 2)])
    _, metrics = gold.write(spark, config, "flight_features", recomputed, plan, "t")
    assert metrics["numTargetRowsInserted"] == "1" and metrics["numTargetRowsUpdated"] == "0"
    assert sorted(tuple(r) for r in tables.read(spark, config, "flight_features").collect()) == [
        ("a", date(2013, 2, 1), 1), ("b", date(2013, 2, 2), 2), ("c", date(2013, 2, 2), 3)]
    last = tables.delta_table(spark, config, "flight_features").history(1).first()
    assert last["operation"] == "MERGE"
    predicate = last["operationParameters"]["predicate"]  # as Delta planned it
    assert "flight_date" in predicate and "2013-02-02" in predicate, predicate
    # the same run again: nothing to write
    assert gold.write(spark, config, "flight_features", recomputed, plan, "t") == (None, {})


def test_dates_after_the_last_builds_through_are_inserted_without_a_scan(
        spark: SparkSession, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new day's dates lie after the `through` the last build recorded: gold holds none of
    them, so they are written by the replaceWhere insert without scanning gold's slice first;
    without a recorded bound (a state written by an earlier version), the slice is scanned."""
    schema = "flight_id string, flight_date date, value int"
    tables.overwrite(spark.createDataFrame([("a", date(2013, 2, 1), 1),
                                            ("b", date(2013, 2, 2), 2)], schema),
                     config, "flight_features")
    scanned, frame_type, counted = scans_recorded(spark)
    monkeypatch.setattr(frame_type, "isEmpty", counted)
    new_day = spark.createDataFrame([("c", date(2013, 2, 3), 3)], schema)
    plan = gold.Plan(False, "a new day", [date(2013, 2, 3)], [date(2013, 2, 3)])
    version, metrics = gold.write(spark, config, "flight_features", new_day, plan, "t",
                                  date(2013, 2, 2))
    assert scanned == [] and metrics["numOutputRows"] == "1"
    last = tables.delta_table(spark, config, "flight_features").history(1).first()
    assert version == last["version"] == tables.version(spark, config, "flight_features")
    assert last["operation"] == "WRITE" and "2013-02-03" in last["operationParameters"][
        "predicate"], last
    later = spark.createDataFrame([("d", date(2013, 2, 4), 4)], schema)
    plan = gold.Plan(False, "a new day", [date(2013, 2, 4)], [date(2013, 2, 4)])
    gold.write(spark, config, "flight_features", later, plan, "t", None)
    assert len(scanned) == 1
    assert sorted(r[0] for r in tables.read(spark, config, "flight_features").collect()) == [
        "a", "b", "c", "d"]
    assert gold.held_through({"through": "2013-02-03"}) == date(2013, 2, 3)
    assert gold.held_through({"versions": {}}) is None
    assert gold.held_through({"through": "not a date"}) is None
    assert gold.held_through(None) is None


def test_a_tagged_write_puts_back_the_sessions_own_commit_metadata(
        spark: SparkSession, tmp_path: Path) -> None:
    """Gold's state goes into its commit's userMetadata through the session conf (MERGE reads
    it there): a value the user set in the session for their own commits is put back after."""
    config = make_config(tmp_path)
    rows = spark.createDataFrame([("a", 1)], "flight_id string, v int")
    tables.overwrite(rows, config, "flight_features")
    spark.conf.set(tables.USER_METADATA, "the user's")
    try:
        tables.merge(spark, rows.withColumn("v", F.lit(2)), config, "flight_features",
                     ["flight_id"], tag="gold-state {}")
        assert spark.conf.get(tables.USER_METADATA) == "the user's"
        tagged = tables.delta_table(spark, config, "flight_features").history(1).first()
        assert tagged is not None and tagged["userMetadata"] == "gold-state {}"
    finally:
        spark.conf.unset(tables.USER_METADATA)
    with tables.commit_metadata(spark, "x"):
        assert spark.conf.get(tables.USER_METADATA) == "x"
    assert spark.conf.get(tables.USER_METADATA, None) is None  # unset again when it was unset


def test_lineage_names_the_silver_versions_of_the_features_version_read(
        spark: SparkSession, tmp_path: Path) -> None:
    """A gold run committing while training reads flight_features: the run's lineage is that
    of the version it read, not of the newer one."""
    from lakehouse.lineage import GOLD_TAG, table_versions

    config = make_config(tmp_path)
    rows = spark.createDataFrame([("a", 1)], "flight_id string, v int")
    for silver in (3, 4):
        state = json.dumps({"versions": {"silver_flights": silver}})
        tables.overwrite(rows, config, "flight_features", tag=f"{GOLD_TAG} {state}")
    assert table_versions(spark, config, 0)["silver_flights_delta_version"] == 3
    assert table_versions(spark, config, 1)["silver_flights_delta_version"] == 4


def test_scoring_reads_silver_at_the_version_gold_built_the_features_from(
        spark: SparkSession, config: Config, raw: dict[str, list[dict[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A flight that reaches silver after gold ran has no feature row yet: read at the latest
    version, scoring recorded it unscorable, a row the late-flight pass then took as its
    prediction for good. Read as gold built the features, it is not seen until gold has it;
    the latest is read whenever it holds the same rows, or the pin could be unreadable."""
    import shutil

    from lakehouse import lineage

    def built_from() -> int | None:
        return lineage.silver_flights_built_from(spark, config, tables.version(
            spark, config, "flight_features"))

    first = [r for r in raw["flights"] if day_of(r) == DAYS[0]]
    land(spark, config, first[:20], [r for r in raw["weather"] if day_of(r) == DAYS[0]],
         raw["planes"])
    gold.run(spark, config, "g1")
    built = tables.version(spark, config, "silver_flights")
    assert built_from() == built  # silver as gold read it: the latest
    location = config.table("silver_flights")
    spark.sql(f"OPTIMIZE delta.`{location}`")
    assert tables.version(spark, config, "silver_flights") > built
    # the same rows: the latest, as a version (read at each action, "the latest" could move)
    assert built_from() == tables.version(spark, config, "silver_flights")
    land(spark, config, first[20:21], [])  # silver moves on, gold not yet
    assert built_from() == built
    # versions below the head are read as asked (history is read from the newest back)
    assert tables.version(spark, config, "silver_flights") > built + 1
    assert set(tables.commits(spark, config, "silver_flights", built, built + 1)) == {
        built, built + 1}
    assert tables.read(spark, config, "silver_flights", version=built).count() == 20
    assert tables.read(spark, config, "silver_flights").count() == 21
    monkeypatch.setattr(lineage, "PIN_MAX_AGE", timedelta(0))
    # too old a pin (VACUUM may have removed its files): the latest
    assert built_from() == tables.version(spark, config, "silver_flights")
    monkeypatch.undo()
    # silver made anew: its versions are another table's, the latest is read
    shutil.rmtree(location)
    land(spark, config, first[:5], [])
    land(spark, config, first[5:6], [])
    assert built_from() == tables.version(spark, config, "silver_flights") == 1
    # a features table gold did not write (no state): the latest
    tables.overwrite(spark.createDataFrame([("a",)], "flight_id string"), config,
                     "flight_features")
    assert built_from() == 1
