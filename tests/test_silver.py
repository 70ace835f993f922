"""Silver batches against real Delta tables: split, deduplicate, merge, halt."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.config import Config
from lakehouse.contracts import ContractViolation, contracts
from lakehouse.silver import MissingColumnsError
from lakehouse.stages.silver import refine_batch
from tests.conftest import make_config
from tests.rows import GOOD_WEATHER, bronze_rows, flight, reference_rows

CONTRACTS = contracts({"max_quarantine_share": 0.05, "max_wind_speed_mph": 150,
                       "max_wind_gust_mph": 200})


@pytest.fixture(scope="module")
def references_root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """silver's airports and planes refined once per module from the reference rows."""
    root = tmp_path_factory.mktemp("references")
    for table in ("airports", "planes"):
        refine_batch(spark, make_config(root), CONTRACTS[table], reference_rows(spark, table), 0)
    return root


@pytest.fixture()
def with_references(references_root: Path, config: Config, tmp_path: Path) -> Config:
    """The test's data root holding a copy of those Delta tables (their log's paths are
    relative: a copied table is the same table at another path), as refining them in every test
    cost ~7 s of its setup."""
    shutil.copytree(references_root, tmp_path, dirs_exist_ok=True)
    return config


def good_flights(n: int) -> list[dict]:
    return [flight(flight=str(1000 + i)) for i in range(n)]


def test_batch_is_split_deduplicated_and_accounted(spark: SparkSession,
                                                   with_references: Config) -> None:
    config = with_references
    rows = [*good_flights(30), flight(flight="1000", arr_delay="99"), flight(distance="0")]
    counts = refine_batch(spark, config, CONTRACTS["flights"],
                          bronze_rows(spark, "flights", rows), 1)
    assert counts["rows_in"] == 32 and counts["rows_out"] == 30
    assert counts["rows_not_applied"] == 0  # the table's first write: every row appended
    assert counts["rows_quarantined"] == 1 and counts["rows_duplicate"] == 1
    assert counts["rows_in"] == (counts["rows_out"] + counts["rows_quarantined"]
                                 + counts["rows_duplicate"])
    silver = tables.read(spark, config, "silver_flights")
    assert silver.count() == 30
    quarantined = tables.read(spark, config, "quarantine").collect()
    assert len(quarantined) == 1
    assert quarantined[0]["rules"] == ["distance_range"]
    assert '"distance":"0"' in quarantined[0]["raw_record"]
    assert quarantined[0]["table_name"] == "flights"


def test_late_corrected_record_updates_in_place(spark: SparkSession,
                                                with_references: Config) -> None:
    config = with_references
    contract = CONTRACTS["flights"]
    refine_batch(spark, config, contract, bronze_rows(spark, "flights", good_flights(30)), 1)
    late = bronze_rows(spark, "flights", [flight(flight="1003", arr_delay="45")],
                       ingested_at=dt.datetime(2026, 1, 2))
    counts = refine_batch(spark, config, contract, late, 2)
    silver = tables.read(spark, config, "silver_flights")
    assert counts["rows_out"] == 1 and counts["rows_not_applied"] == 0 and silver.count() == 30
    assert silver.filter(F.col("flight") == 1003).select("arr_delay").first()[0] == 45


def test_rerun_of_same_batch_changes_nothing(spark: SparkSession, with_references: Config,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from lakehouse.stages import silver as stage

    config = with_references
    batch = bronze_rows(spark, "flights", [*good_flights(30), flight(distance="0")])
    refine_batch(spark, config, CONTRACTS["flights"], batch, 1)
    before = tables.read(spark, config, "silver_flights").collect()
    quarantined = tables.version(spark, config, "quarantine")
    # the same Delta transaction (txnAppId, txnVersion) alone keeps the quarantine append from
    # landing twice: the check for records quarantine already holds is switched off here
    monkeypatch.setattr(stage, "not_yet_quarantined", lambda spark, config, table, rows: rows)
    again = refine_batch(spark, config, CONTRACTS["flights"], batch, 1)
    assert sorted(tables.read(spark, config, "silver_flights").collect()) == sorted(before)
    # the rows passed the contract again, and the MERGE wrote none of them: counted apart
    assert again["rows_out"] == 30 and again["rows_not_applied"] == 30
    assert tables.read(spark, config, "quarantine").count() == 1  # same txn: not appended twice
    assert tables.version(spark, config, "quarantine") == quarantined


def held_rdds(spark: SparkSession) -> set[int]:
    """Ids of the RDDs whose rows Spark holds in storage (cached or checkpointed), less the
    Delta table states Delta caches itself."""
    return {info.id() for info in spark.sparkContext._jsc.sc().getRDDStorageInfo()
            if not str(info.name()).startswith("Delta Table State")}


@pytest.mark.parametrize("poison", [
    {"distance": "-1"}, {"carrier": "NA"}, {"dep_delay": "five"}, {"month": "13"},
], ids=["out_of_range", "null_key", "changed_type", "impossible_date"])
def test_poisoned_batch_halts_and_leaves_tables_untouched(
        spark: SparkSession, with_references: Config, poison: dict) -> None:
    config = with_references
    contract = CONTRACTS["flights"]
    held = held_rdds(spark)
    refine_batch(spark, config, contract, bronze_rows(spark, "flights", good_flights(20)), 1)
    versions = {t: tables.version(spark, config, t) for t in ("silver_flights", "quarantine")}
    poisoned = [*good_flights(5), *(flight(flight=str(2000 + i), **poison) for i in range(5))]
    with pytest.raises(ContractViolation, match=r"silver.flights: rule '.*' .* broken by 5 of 10"):
        refine_batch(spark, config, contract, bronze_rows(spark, "flights", poisoned), 2)
    assert {t: tables.version(spark, config, t) for t in versions} == versions
    assert held_rdds(spark) <= held  # the batches' materialized rows are released, halted or not


def test_duplicate_keys_are_dropped_keeping_latest(spark: SparkSession,
                                                   with_references: Config) -> None:
    config = with_references
    rows = [flight(arr_delay="1", _ingested_at=dt.datetime(2026, 1, 1)),
            flight(arr_delay="2", _ingested_at=dt.datetime(2026, 1, 3)),
            flight(arr_delay="3", _ingested_at=dt.datetime(2026, 1, 2)), *good_flights(20)]
    counts = refine_batch(spark, config, CONTRACTS["flights"],
                          bronze_rows(spark, "flights", rows), 1)
    assert counts["rows_duplicate"] == 2
    assert counts["batch_warnings"] == ["key_unique"]  # a warn-level batch rule: rows go on
    kept = tables.read(spark, config, "silver_flights").filter(F.col("flight") == 1545)
    assert [r["arr_delay"] for r in kept.collect()] == [2]


def test_a_correction_ingested_with_the_file_it_corrects_wins_by_when_it_landed(
        spark: SparkSession, with_references: Config) -> None:
    """Files ingested in one batch share their ingestion time: the later file wins, whatever
    the names (flights_2013-01-05.csv sorts after flights_2013-01-05-fix.csv)."""
    config = with_references
    same = dt.datetime(2026, 1, 1)
    rows = [flight(arr_delay="1", _source_file="landing/flights_2013-01-05.csv",
                   _ingested_at=same, _source_modified_at=dt.datetime(2026, 1, 1, 2)),
            flight(arr_delay="7", _source_file="landing/flights_2013-01-05-fix.csv",
                   _ingested_at=same, _source_modified_at=dt.datetime(2026, 1, 1, 5)),
            *good_flights(20)]
    refine_batch(spark, config, CONTRACTS["flights"], bronze_rows(spark, "flights", rows), 1)
    kept = tables.read(spark, config, "silver_flights").filter(F.col("flight") == 1545)
    assert [(r["arr_delay"], r["_source_file"]) for r in kept.collect()] == [
        (7, "landing/flights_2013-01-05-fix.csv")]


def test_batch_with_too_many_missing_tail_numbers_halts(spark: SparkSession,
                                                        with_references: Config) -> None:
    config = with_references
    contract = CONTRACTS["flights"]
    refine_batch(spark, config, contract, bronze_rows(spark, "flights", good_flights(20)), 1)
    versions = {t: tables.version(spark, config, t) for t in ("silver_flights", "quarantine")}
    rows = [*good_flights(18), *(flight(flight=str(3000 + i), tailnum="NA") for i in range(2))]
    # named with what was measured, not the rule's name alone
    with pytest.raises(ContractViolation, match=r"rule 'tailnum_null_share' \(at most 5% of .*"
                                                r"\) broken: 2 of 20 .* have tailnum null "
                                                r"\(10\.0%\); nothing was written"):
        refine_batch(spark, config, contract, bronze_rows(spark, "flights", rows), 2)
    assert {t: tables.version(spark, config, t) for t in versions} == versions


def test_cancelled_flights_without_a_tail_do_not_halt_the_batch(
        spark: SparkSession, with_references: Config) -> None:
    # A storm day (e.g. 2013-12-10: 55 of 943 flights without a tail, each one cancelled): the
    # tail-number rule counts the flights that departed only.
    cancelled = [flight(flight=str(4000 + i), dep_time="NA", dep_delay="NA", arr_time="NA",
                        arr_delay="NA", air_time="NA", tailnum="NA") for i in range(4)]
    counts = refine_batch(spark, with_references, CONTRACTS["flights"],
                          bronze_rows(spark, "flights", [*good_flights(16), *cancelled]), 1)
    assert counts["rows_out"] == 20 and counts["rows_quarantined"] == 0
    written = tables.read(spark, with_references, "silver_flights")
    assert written.filter(F.col("tailnum").isNull() & F.col("cancelled")).count() == 4


def test_schedule_events_without_a_tail_do_not_halt_but_operated_flights_do(
        spark: SparkSession, with_references: Config) -> None:
    """A storm day's schedules, sent before their outcomes: the flights that will be cancelled
    have no tail (2013-02-08: 206 of 1,345), and whether they operate is not known yet."""
    from lakehouse.silver import from_flight_events

    untimed = {c: None for c in ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")}
    schedules = [("scheduled", "2013-01-01T05:00:00Z",
                  {**flight(), **untimed, "flight": str(5000 + i),
                   "tailnum": None if i < 4 else "N14228"}) for i in range(20)]
    counts = refine_batch(spark, with_references, CONTRACTS["flights"],
                          from_flight_events(flight_events(spark, schedules)), 0, "events")
    assert counts["rows_out"] == 20 and counts["rows_quarantined"] == 0
    # their outcomes: operated flights without a tail are what the rule is for
    operated = [("outcome", "2013-01-01T14:00:00Z", {**flight(), "flight": str(5000 + i),
                                                      "tailnum": None if i < 4 else "N14228"})
                for i in range(20)]
    with pytest.raises(ContractViolation, match=r"4 of 20 flights known to have operated have "
                                                r"tailnum null \(20\.0%\)"):
        refine_batch(spark, with_references, CONTRACTS["flights"],
                     from_flight_events(flight_events(spark, operated, first_offset=20)), 1,
                     "events")


def test_a_batch_replayed_after_a_failed_write_loses_no_row_whatever_changed_between(
        spark: SparkSession, with_references: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Silver's write fails (a lost executor); before the replay a new airports snapshot drops
    the flights' origin, so the replay quarantines rows the first attempt kept. Each row lands
    in silver or in quarantine all the same."""
    config = Config(with_references.env, {**with_references.values, "silver": {
        **with_references.section("silver"), "max_quarantine_share": 1.0}})
    rows = [*good_flights(30), flight(flight="2999", distance="0")]

    def lost(*args: Any, **kwargs: Any) -> None:
        raise OSError("executor lost")

    with monkeypatch.context() as failing:
        failing.setattr(tables, "merge", lost)
        with pytest.raises(OSError, match="executor lost"):
            refine_batch(spark, config, CONTRACTS["flights"], bronze_rows(spark, "flights", rows),
                         1)
    airports = tables.read(spark, config, "silver_airports")
    origin = flight()["origin"]
    assert airports.filter(F.col("faa") == origin).count() == 1
    tables.overwrite(airports.filter(F.col("faa") != origin), config, "silver_airports")
    counts = refine_batch(spark, config, CONTRACTS["flights"], bronze_rows(spark, "flights", rows),
                          1)
    assert counts["rows_quarantined"] == 31
    held = tables.read(spark, config, "quarantine").filter(F.col("table_name") == "flights")
    assert held.count() == 31
    assert not tables.exists(spark, config, "silver_flights") or tables.read(
        spark, config, "silver_flights").count() == 0


def test_renamed_column_fails_naming_it(spark: SparkSession, with_references: Config) -> None:
    batch = bronze_rows(spark, "flights", good_flights(3)).withColumnRenamed("dest", "destination")
    with pytest.raises(MissingColumnsError, match=r"lacks columns \['dest'\].*destination"):
        refine_batch(spark, with_references, CONTRACTS["flights"], batch, 1)


def test_impossible_wind_speed_is_nulled_and_counted(spark: SparkSession, config: Config) -> None:
    rows = [GOOD_WEATHER, {**GOOD_WEATHER, "time_hour": "2013-01-01T11:00:00Z", "hour": "6",
                           "wind_speed": "1048.36058"}]
    counts = refine_batch(spark, config, CONTRACTS["weather"],
                          bronze_rows(spark, "weather", rows), 1)
    assert counts["rows_out"] == 2 and counts["rows_warned"] == 1
    speeds = {r["hour"]: r["wind_speed"]
              for r in tables.read(spark, config, "silver_weather").collect()}
    assert speeds == {5: pytest.approx(10.35702), 6: None}


def test_small_file_against_recent_history_warns_and_keeps_rows(
        spark: SparkSession, with_references: Config) -> None:
    contract = contracts({"max_quarantine_share": 0.05, "max_wind_speed_mph": 150,
                          "max_wind_gust_mph": 200,
                          "recent_rows_per_file": {"flights": 900.0}})["flights"]
    counts = refine_batch(spark, with_references, contract,
                          bronze_rows(spark, "flights", good_flights(20)), 1)
    assert counts["batch_warnings"] == ["rows_per_file_vs_recent"]
    assert counts["rows_out"] == 20
    big = contracts({"max_quarantine_share": 0.05, "max_wind_speed_mph": 150,
                     "max_wind_gust_mph": 200, "recent_rows_per_file": {"flights": 25.0}})
    counts = refine_batch(spark, with_references, big["flights"],
                          bronze_rows(spark, "flights", good_flights(20)), 2)
    assert counts["batch_warnings"] == []


def flight_events(spark: SparkSession, events: list[tuple[str, str, dict | str]],
                  first_offset: int = 0) -> DataFrame:
    """Bronze flight events: (event_type, event_time, flight or raw text) as Kafka records."""
    import json

    from pyspark.sql import types as T

    schema = T.StructType([
        T.StructField("key", T.StringType()), T.StructField("value", T.StringType()),
        T.StructField("topic", T.StringType()), T.StructField("partition", T.IntegerType()),
        T.StructField("offset", T.LongType()), T.StructField("timestamp", T.TimestampType()),
        T.StructField("_invalid_bytes", T.MapType(T.StringType(), T.BinaryType())),
        T.StructField("_ingested_at", T.TimestampType()), T.StructField("_run_id", T.StringType()),
        T.StructField("_batch_id", T.LongType())])
    rows = []
    for i, (kind, at, payload) in enumerate(events):
        value = payload if isinstance(payload, str) else json.dumps(
            {**payload, "event_type": kind, "event_time": at})
        rows.append(("k", value, "flights", 0, first_offset + i, dt.datetime(2026, 1, 1), None,
                     dt.datetime(2026, 1, 1), "test-run", 0))
    return spark.createDataFrame(rows, schema)


def test_flight_events_are_refined_like_files(spark: SparkSession, with_references: Config) -> None:
    from lakehouse.silver import from_flight_events

    # Two bad events of six: over the 5% share, under the minimum count of quarantined rows
    # that halts (a quiet stream's setting)
    config = Config(with_references.env, {**with_references.values, "silver": {
        **with_references.section("silver"), "min_quarantined_to_halt": 3}})
    schedule = {**flight(), **{c: None for c in ("dep_time", "dep_delay", "arr_time", "arr_delay",
                                                 "air_time")}}
    events = [("scheduled", "2013-01-01T05:00:00Z", schedule),
              ("outcome", "2013-01-01T13:49:00Z", flight()),  # the same flight, arrived
              ("outcome", "2013-01-01T13:49:00Z", flight()),  # sent twice
              ("scheduled", "2013-01-01T06:00:00Z", {**schedule, "flight": "77"}),
              ("scheduled", "2013-01-01T06:00:00Z", '{"flight": 78, "event_type": "sch'),  # cut off
              ("scheduled", "2013-01-01T06:00:00Z", {"flight": "79"})]  # keys missing
    counts = refine_batch(spark, config, CONTRACTS["flights"],
                          from_flight_events(flight_events(spark, events)), 0, "events")
    assert (counts["rows_in"], counts["rows_out"], counts["rows_duplicate"],
            counts["rows_quarantined"]) == (6, 2, 2, 2)
    silver = {r["flight"]: r for r in tables.read(spark, config, "silver_flights").collect()}
    assert silver[1545]["arr_delay"] == 11 and silver[1545]["cancelled"] is False
    assert silver[1545]["_source_file"] == "kafka:flights/0@2"
    assert silver[77]["dep_time"] is None and silver[77]["cancelled"] is None  # not known yet
    quarantined = tables.read(spark, config, "quarantine").collect()
    assert sorted(r["rules"][0] for r in quarantined) == ["columns_present", "well_formed"]

    # Later: a late copy of the first schedule event (older) and flight 77's outcome.
    late = [("scheduled", "2013-01-01T05:00:00Z", schedule),
            ("outcome", "2013-01-01T14:30:00Z", {**flight(), "flight": "77", "arr_delay": "40"})]
    refine_batch(spark, config, CONTRACTS["flights"],
                 from_flight_events(flight_events(spark, late, first_offset=6)), 1, "events")
    silver = {r["flight"]: r for r in tables.read(spark, config, "silver_flights").collect()}
    assert silver[1545]["arr_delay"] == 11 and silver[1545]["_source_file"] == "kafka:flights/0@2"
    assert silver[77]["arr_delay"] == 40 and silver[77]["cancelled"] is False
    assert len(silver) == 2


def test_of_two_events_with_one_time_the_later_offset_wins(
        spark: SparkSession, with_references: Config) -> None:
    """A re-sent outcome with the same event time: the record at offset 10 is the later one
    (as text, '@9' sorts after '@10')."""
    from lakehouse.silver import from_flight_events

    events = [("outcome", "2013-01-01T13:49:00Z", {**flight(), "arr_delay": "5"}),
              ("outcome", "2013-01-01T13:49:00Z", {**flight(), "arr_delay": "25"})]
    refine_batch(spark, with_references, CONTRACTS["flights"],
                 from_flight_events(flight_events(spark, events, first_offset=9)), 0, "events")
    kept = tables.read(spark, with_references, "silver_flights").collect()
    assert [(r["arr_delay"], r["_source_file"]) for r in kept] == [(25, "kafka:flights/0@10")]


def test_an_event_without_type_or_readable_time_is_quarantined(
        spark: SparkSession, with_references: Config) -> None:
    """A null event_type would pass as an outcome (a schedule-shaped event marked cancelled);
    an event_time that is not ISO 8601 with an offset would be null, and a null time never
    loses to an older event."""
    from lakehouse.silver import from_flight_events

    config = Config(with_references.env, {**with_references.values, "silver": {
        **with_references.section("silver"), "max_quarantine_share": 0.9}})
    schedule = {**flight(), **{c: None for c in ("dep_time", "dep_delay", "arr_time", "arr_delay",
                                                 "air_time")}}
    outcome = {**flight(), "flight": "79", "event_type": "outcome",
               "event_time": "2013-01-01T13:49:00Z"}
    two = json.dumps(outcome) + json.dumps({**outcome, "flight": "80"})  # a newline missed
    twice = json.dumps(outcome)[:-1] + ', "arr_delay": "-5"}'  # a key given twice
    events = [(None, "2013-01-01T05:00:00Z", schedule),  # type null
              ("outcome", "2013-01-01 13:49", {**flight(), "flight": "77"}),  # no offset
              ("outcome", "2013-01-01T13:49:00Z", {**flight(), "flight": "78"}),
              ("outcome", "", two), ("outcome", "", twice)]
    counts = refine_batch(spark, config, CONTRACTS["flights"],
                          from_flight_events(flight_events(spark, events)), 0, "events")
    assert (counts["rows_out"], counts["rows_quarantined"]) == (1, 4)
    assert [r["flight"] for r in tables.read(spark, config, "silver_flights").collect()] == [78]
    quarantined = {r["source_file"]: r for r in tables.read(spark, config, "quarantine")
                   .collect()}
    assert {k: r["rules"][0] for k, r in quarantined.items()} == {
        "kafka:flights/0@0": "event_type_known", "kafka:flights/0@1": "event_time_valid",
        "kafka:flights/0@3": "well_formed", "kafka:flights/0@4": "well_formed"}
    assert [len(quarantined[f"kafka:flights/0@{i}"]["rules"]) for i in (0, 1)] == [1, 1]
    # the event's own type and time text kept in the raw record, beside the flight's columns
    raw = {i: json.loads(quarantined[f"kafka:flights/0@{i}"]["raw_record"]) for i in (0, 1)}
    assert raw[0]["event_time"] == "2013-01-01T05:00:00Z" and "event_type" not in raw[0]
    assert (raw[1]["event_type"], raw[1]["event_time"], raw[1]["flight"]) == (
        "outcome", "2013-01-01 13:49", "77")
    # kept whole: both objects, and both values of the key
    assert [quarantined[f"kafka:flights/0@{i}"]["corrupt_record"] for i in (3, 4)] == [two, twice]


def test_a_schedule_event_never_erases_a_known_outcome(
        spark: SparkSession, with_references: Config) -> None:
    """The outcome of a landed file (which carries no event time) and an outcome event stay
    when a schedule event for the flight comes later, in a later batch or in the same one."""
    from lakehouse.silver import from_flight_events

    refine_batch(spark, with_references, CONTRACTS["flights"],
                 bronze_rows(spark, "flights", [flight()]), 0)
    schedule = {**flight(), **{c: None for c in ("dep_time", "dep_delay", "arr_time", "arr_delay",
                                                 "air_time")}}
    events = [("scheduled", "2013-01-01T15:00:00Z", schedule),  # after the file's outcome
              ("outcome", "2013-01-01T13:49:00Z", {**flight(), "flight": "77"}),
              ("scheduled", "2013-01-01T15:00:00Z", {**schedule, "flight": "77"}),  # same batch
              ("scheduled", "2013-01-01T15:00:00Z", {**schedule, "flight": "79"}),
              ("outcome", "2013-01-01T10:00:00Z", flight(flight="81", arr_delay="30"))]
    refine_batch(spark, with_references, CONTRACTS["flights"],
                 from_flight_events(flight_events(spark, events)), 0, "events")
    silver = {r["flight"]: r for r in tables.read(spark, with_references, "silver_flights")
              .collect()}
    assert (silver[1545]["arr_delay"], silver[1545]["cancelled"]) == (11, False)
    assert silver[1545]["_source_file"] != "kafka:flights/0@0"
    assert (silver[77]["arr_delay"], silver[77]["cancelled"]) == (11, False)
    assert silver[77]["_source_file"] == "kafka:flights/0@1"
    assert silver[79]["cancelled"] is None  # a schedule alone: not known yet
    # an outcome event after the schedule still fills it in
    refine_batch(spark, with_references, CONTRACTS["flights"], from_flight_events(flight_events(
        spark, [("outcome", "2013-01-01T16:00:00Z", {**flight(), "flight": "79"}),
                # the 10:00 outcome sent again at 11:00, unchanged
                ("outcome", "2013-01-01T11:00:00Z", flight(flight="81", arr_delay="30"))],
        first_offset=5)), 1, "events")
    after = tables.read(spark, with_references, "silver_flights").filter("flight = 79").first()
    assert after is not None and after["cancelled"] is False
    # an outcome that arrives after a later-stamped schedule event (partition lag) fills it in
    refine_batch(spark, with_references, CONTRACTS["flights"], from_flight_events(flight_events(
        spark, [("scheduled", "2013-01-01T15:00:00Z", {**schedule, "flight": "80"}),
                # a late 10:30 outcome: older than the 11:00 one the table holds
                ("outcome", "2013-01-01T10:30:00Z", flight(flight="81", arr_delay="45"))],
        first_offset=7)), 2, "events")
    refine_batch(spark, with_references, CONTRACTS["flights"], from_flight_events(flight_events(
        spark, [("outcome", "2013-01-01T14:00:00Z", {**flight(), "flight": "80"})],
        first_offset=9)), 3, "events")
    late = tables.read(spark, with_references, "silver_flights").filter("flight = 80").first()
    assert late is not None and (late["cancelled"], late["arr_delay"]) == (False, 11)
    # the repeated 11:00 event, equal to the row, moved its time on: the 10:30 one is older
    repeated = tables.read(spark, with_references, "silver_flights").filter("flight = 81").first()
    assert repeated is not None and repeated["arr_delay"] == 30
    assert repeated["_event_time"] == dt.datetime(2013, 1, 1, 11, 0)


@pytest.mark.slow
def test_a_reference_is_rebuilt_only_when_its_bronze_rows_change_and_quarantines_once(
        spark: SparkSession, config: Config) -> None:
    """A commit that keeps bronze's rows (properties here; OPTIMIZE and VACUUM likewise, which
    Databricks runs on its own) rebuilds nothing; a commit that may change them rebuilds the
    table from the same snapshot, and its bad rows are not quarantined twice."""
    from datetime import date
    from pathlib import Path

    from lakehouse.seed import seed
    from lakehouse.stages import bronze, silver

    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    (snapshot,) = (landing / "reference" / "planes").glob("*.csv")
    header, first, *rest = snapshot.read_text().splitlines()
    broken = first.split(",")
    broken[0], broken[6] = "N0BAD", "many"  # seats not a number: quarantined
    snapshot.write_text("\n".join([header, first, ",".join(broken), *rest]) + "\n")
    bronze.run(spark, config, "b-1")

    def planes_run(run_id: str) -> dict:
        return next(r for r in silver.run(spark, config, run_id)
                    if r["table_name"] == "silver_planes")

    def quarantined() -> list:
        return [r["raw_record"] for r in tables.read(spark, config, "quarantine")
                .filter(F.col("table_name") == "planes").collect()]

    built = planes_run("s-1")
    assert built["rows_quarantined"] == 1 and len(quarantined()) == 1
    location = config.table("bronze_planes")
    spark.sql(f"ALTER TABLE delta.`{location}` SET TBLPROPERTIES ('owner.note' = 'x')")
    assert planes_run("s-2")["rows_in"] == 0
    # an UPDATE (of a row to itself): a commit that could have changed the rows, so silver
    # rebuilds, from the same snapshot
    spark.sql(f"UPDATE delta.`{location}` SET _run_id = _run_id WHERE _run_id IS NOT NULL")
    rebuilt = planes_run("s-3")
    assert rebuilt["rows_in"] == built["rows_in"] > 0 and rebuilt["rows_quarantined"] == 1
    assert len(quarantined()) == 1 and "N0BAD" in quarantined()[0]


@pytest.mark.slow  # a bronze and a silver run of a real day (70-110 s beside the other workers)
def test_missing_columns_and_undecodable_bytes_are_quarantined_from_landed_files(
        spark: SparkSession, config: Config) -> None:
    from datetime import date
    from pathlib import Path

    from lakehouse.seed import seed
    from lakehouse.stages import bronze, silver

    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    day = landing / "flights" / "flights_2013-01-01.csv"
    lines = day.read_bytes().splitlines()
    header = lines[0].decode().split(",")
    keep = [i for i, c in enumerate(header) if c != "air_time"]
    short = [b",".join(line.split(b",")[i] for i in keep) for line in lines[:3]]
    (landing / "flights" / "short.csv").write_bytes(b"\n".join(short) + b"\n")
    bad = lines[3].replace(b",N", b",N\xff", 1)
    day.write_bytes(b"\n".join([*lines[:3], bad, *lines[4:]]) + b"\n")
    bronze.run(spark, config, "run-1")
    results = {r["table_name"]: r for r in silver.run(spark, config, "run-1")}
    flights = results["silver_flights"]
    assert flights["rows_in"] == 842 + 2 and flights["rows_quarantined"] == 3
    rules = sorted(r["rules"][0] for r in tables.read(spark, config, "quarantine").collect())
    assert rules == ["columns_present", "columns_present", "text_decodable"]


@pytest.mark.slow  # two bronze days, three silver runs (~40 s)
def test_a_run_failing_after_a_merged_micro_batch_counts_it_in_its_audit_row(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Micro-batches merged before a failure stay in silver (a rerun goes on after them): the
    failed run's audit row counts them, as bronze's does, rather than nothing."""
    from lakehouse.seed import seed
    from lakehouse.stages import bronze, silver

    config = make_config(tmp_path, silver={"max_files_per_trigger": 1})
    seed(Path(config.landing), dt.date(2013, 1, 1), dt.date(2013, 1, 2))
    bronze.run(spark, config, "b-1")
    real = silver.refine_batch
    merged: list[dict[str, Any]] = []

    def second_fails(spark_: SparkSession, config_: Config, contract: Any, batch: DataFrame,
                     batch_id: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if contract.table == "flights" and merged:
            raise RuntimeError("the second micro-batch fails")
        counts = real(spark_, config_, contract, batch, batch_id, *args, **kwargs)
        if contract.table == "flights":
            merged.append(counts)
        return counts

    monkeypatch.setattr(silver, "refine_batch", second_fails)
    with pytest.raises(RuntimeError, match="second micro-batch"):
        silver.run(spark, config, "s-1")
    [first] = merged
    assert first["rows_in"] > 0
    [failed] = tables.read(spark, config, "audit").filter(
        (F.col("run_id") == "s-1") & (F.col("table_name") == "silver_flights")).collect()
    assert failed["status"] == "failed"
    assert (failed["rows_in"], failed["rows_out"], failed["rows_quarantined"]) == (
        first["rows_in"], first["rows_out"], first["rows_quarantined"])
    assert tables.read(spark, config, "silver_flights").count() == first["rows_out"]
    monkeypatch.undo()
    [again] = [r for r in silver.run(spark, config, "s-2") if r["table_name"] == "silver_flights"]
    bronze_rows_in = tables.read(spark, config, "bronze_flights").count()
    assert first["rows_in"] + again["rows_in"] == bronze_rows_in


@pytest.mark.slow
def test_a_silver_stream_started_afresh_quarantines_its_new_bad_rows(
        spark: SparkSession, config: Config) -> None:
    """The quarantine append is idempotent per streaming query and batch: a stream restarted
    on a new checkpoint (an operator re-checking bronze) numbers its batches from 0 again, and
    its bad rows must not be taken for the old stream's batches already written."""
    import shutil
    from pathlib import Path

    from lakehouse.seed import daily_path, seed
    from lakehouse.stages import bronze, silver

    landing = Path(config.landing)

    def land(day: dt.date, bad_flight: str | None) -> None:
        seed(landing, day, day)
        if bad_flight is None:
            return
        path = daily_path(landing, "flights", day)
        header, *rows = path.read_text().splitlines()
        names = header.split(",")
        at, flight_at = names.index("distance"), names.index("flight")
        first = rows[0].split(",")
        first[at], first[flight_at] = "0", bad_flight
        path.write_text("\n".join([header, ",".join(first), *rows[1:]]) + "\n")

    for day, bad in ((dt.date(2013, 1, 1), "9001"), (dt.date(2013, 1, 2), None)):
        land(day, bad)
        bronze.run(spark, config, f"b-{day}")
        silver.run(spark, config, f"s-{day}")  # one micro-batch each: batches 0 and 1
    shutil.rmtree(Path(config.checkpoints) / "silver_flights")
    land(dt.date(2013, 1, 3), "9003")
    bronze.run(spark, config, "b-3")
    held = tables.read(spark, config, "silver_flights").count()
    # a new stream: all of bronze in its batch 0; the rows silver holds already are not
    # written again, and the audit says so
    results = {r["table_name"]: r for r in silver.run(spark, config, "s-3")}
    assert f"{held} of rows_out not written" in results["silver_flights"]["message"]
    quarantined = [r["raw_record"] for r in tables.read(spark, config, "quarantine")
                   .filter(F.col("table_name") == "flights").collect()]
    assert any('"flight":"9003"' in raw for raw in quarantined), quarantined
    # the new stream read bronze from its start: the record quarantined before is not added
    # again
    assert sum('"flight":"9001"' in raw for raw in quarantined) == 1, quarantined


@pytest.mark.slow  # eleven silver runs (~75 s)
def test_a_new_airports_or_planes_snapshot_recomputes_the_flights_silver_holds(
        spark: SparkSession, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plane silver did not know, then a corrected time zone, then a destination it did not
    know (SJU, missing from the real airports table) arrive in new snapshots: the flights
    silver holds take their flags and scheduled times as a build from bronze under the new
    snapshots gives them, and only they are rewritten (gold recomputes their days from the
    change feed). A snapshot rebuilt with the same content reads no flight. Flights the new
    snapshot would quarantine keep their columns and are counted, unless they are more than
    the quarantine share: then the run halts and rewrites nothing."""
    from zoneinfo import ZoneInfo

    from chispa import assert_df_equality

    from lakehouse.bronze import SOURCE_COLUMNS
    from lakehouse.silver import OUTPUT
    from lakehouse.stages import silver
    from tests.rows import AIRPORTS, PLANES

    sju = flight(carrier="B6", flight="701", tailnum="N605JB", origin="JFK", dest="SJU",
                 sched_dep_time="700", dep_time="705", dep_delay="5", sched_arr_time="1130",
                 arr_time="1125", arr_delay="-5", time_hour="2013-01-01T12:00:00Z")
    lax = flight(flight="300", origin="LAX", sched_dep_time="800", dep_time="800",
                 dep_delay="0", sched_arr_time="1330", arr_time="1330", arr_delay="0",
                 time_hour="2013-01-01T16:00:00Z")
    flights = [flight(), sju, lax]
    new_planes = [*PLANES, ("N605JB", "2006", "Fixed wing multi engine", "EMBRAER",
                            "ERJ 190-100 IGW", "2", "20", "NA", "Turbo-fan")]

    def zoned(iah_zone: str, sju_added: bool = False) -> list[tuple]:
        rows = [(*a[:7], iah_zone) if a[0] == "IAH" else a for a in AIRPORTS
                if not (sju_added and a[0] == "LAX")]  # LAX goes when SJU comes
        return rows + ([("SJU", "Luis Munoz Marin Intl", "18.44", "-66.00", "9", "-4", "N",
                         "America/Puerto_Rico")] if sju_added else [])

    def land(root: Config, airports: list[tuple] | None, planes: list[tuple] | None,
             name: str) -> None:
        for source, rows in (("airports", airports), ("planes", planes)):
            if rows is None:
                continue  # that snapshot stays as it was
            records = [{**dict(zip(SOURCE_COLUMNS[source], r, strict=True)),
                        "_source_file": f"{source}_{name}.csv"} for r in rows]
            tables.overwrite(bronze_rows(spark, source, records), root, f"bronze_{source}")

    def flights_note(root: Config, run_id: str) -> str:
        row = next(r for r in silver.run(spark, root, run_id)
                   if r["table_name"] == "silver_flights")
        return row.get("message") or ""

    def held(root: Config = config) -> dict[str, Any]:
        return {r["flight_id"]: r for r in tables.read(spark, root, "silver_flights").collect()}

    def utc(hhmm: int, zone: str) -> dt.datetime:  # worked out apart from Spark
        local = dt.datetime(2013, 1, 1, hhmm // 100, hhmm % 100, tzinfo=ZoneInfo(zone))
        return local.astimezone(dt.UTC).replace(tzinfo=None)

    def commits_since(version: int) -> list[str]:
        return [r[0] for r in tables.delta_table(spark, config, "silver_flights").history()
                .filter(F.col("version") > version).select("operation").collect()]

    land(config, AIRPORTS, PLANES, "v1")
    tables.append(bronze_rows(spark, "flights", flights), config, "bronze_flights")
    assert flights_note(config, "s-1") == ""
    first = held()
    assert len(first) == 3
    sju_id = next(k for k in first if "_B6_" in k)
    lax_id = next(k for k in first if k.endswith("_LAX"))
    iah_id = next(k for k in first if k not in (sju_id, lax_id))
    assert first[sju_id]["sched_arr_utc"] is None and not first[sju_id]["dest_known"]
    assert not first[sju_id]["plane_known"]
    assert first[iah_id]["sched_arr_utc"] == utc(819, "America/Chicago")
    before = tables.version(spark, config, "silver_flights")
    assert before is not None

    # unchanged snapshots: no commit; the same content landed anew (silver's snapshot tables
    # rebuilt, new versions): no flight read or rewritten, only the state recorded
    assert flights_note(config, "s-2") == ""
    assert tables.version(spark, config, "silver_flights") == before
    land(config, AIRPORTS, PLANES, "v1-again")

    def not_recomputed(*args: Any) -> None:
        raise AssertionError("the flights were read again for a snapshot of the same content")

    with monkeypatch.context() as patched:
        patched.setattr(silver, "with_reference_columns", not_recomputed)
        assert flights_note(config, "s-3") == ""
    assert commits_since(before) == ["SET TBLPROPERTIES"]
    assert held() == first

    # planes alone: the SJU flight's plane is known now
    land(config, None, new_planes, "v2")
    assert "1 held flight(s) recomputed" in flights_note(config, "s-4")
    assert held()[sju_id]["plane_known"] and held()[sju_id]["sched_arr_utc"] is None
    # a time zone alone (IAH's, to another one: any will do)
    before = tables.version(spark, config, "silver_flights")
    assert before is not None
    land(config, zoned("America/Denver"), None, "v3")
    assert "2 held flight(s) recomputed" in flights_note(config, "s-5")  # both land at IAH
    at_v3 = held()
    assert at_v3[iah_id]["sched_arr_utc"] == utc(819, "America/Denver")
    assert at_v3[lax_id]["sched_arr_utc"] == utc(1330, "America/Denver")
    changed = tables.read_changes(spark, config, "silver_flights", before + 1,
                                  tables.version(spark, config, "silver_flights"))
    assert sorted(r[0] for r in changed.filter(F.col("_change_type") == "update_postimage")
                  .select("flight_id").collect()) == sorted([iah_id, lax_id])
    # as a build from bronze under the same snapshots gives them
    fresh = make_config(Path(config.data_root) / "fresh")
    land(fresh, zoned("America/Denver"), new_planes, "v3")
    tables.append(bronze_rows(spark, "flights", flights), fresh, "bronze_flights")
    flights_note(fresh, "f-1")
    columns = list(OUTPUT["flights"])
    assert_df_equality(tables.read(spark, config, "silver_flights").select(*columns),
                       tables.read(spark, fresh, "silver_flights").select(*columns),
                       ignore_row_order=True)

    # SJU added; LAX dropped (its flight's origin) and IAH put in Tokyo, where its flight
    # would land before it took off: 2 of 3 held flights would be quarantined, over the 5%
    # share, so the run halts and rewrites nothing; allowed, they keep their columns
    land(config, zoned("Asia/Tokyo", sju_added=True), None, "v4")
    halted = tables.version(spark, config, "silver_flights")
    with pytest.raises(ContractViolation, match=r"would quarantine 2 of the 3 flights silver "
                                                r"holds .*origin_in_airports 1, "
                                                r"sched_arr_after_dep 1\); nothing was "
                                                r"rewritten"):
        silver.run(spark, config, "s-6")
    assert tables.version(spark, config, "silver_flights") == halted
    lenient = make_config(Path(config.data_root), silver={"max_quarantine_share": 1.0})
    note = flights_note(lenient, "s-7")
    assert "1 held flight(s) recomputed" in note and "2 kept as they were" in note, note
    now = held()
    assert now[sju_id]["sched_arr_utc"] == utc(1130, "America/Puerto_Rico")  # UTC-4
    assert now[sju_id]["dest_known"] and now[sju_id]["plane_known"]
    assert now[lax_id] == at_v3[lax_id]
    assert now[iah_id]["sched_arr_utc"] == utc(819, "America/Denver")  # kept
    assert flights_note(lenient, "s-8") == ""  # the state recorded: nothing more to do

    # a run failing between its update and recording the state, then a revert to the
    # snapshot before: the flights are recomputed back (the state did not name the old one)
    land(config, zoned("America/Denver"), None, "v5")
    recorded = tables.set_table_property

    def state_lost(spark_: Any, config_: Any, name: str, key: str, value: str) -> None:
        if "updating" not in value:
            raise OSError("storage lost")
        recorded(spark_, config_, name, key, value)

    with monkeypatch.context() as patched, pytest.raises(OSError, match="storage lost"):
        patched.setattr(tables, "set_table_property", state_lost)
        silver.run(spark, lenient, "s-9")
    assert not held()[sju_id]["dest_known"]  # updated for v5, its state not recorded
    land(config, zoned("Asia/Tokyo", sju_added=True), None, "v4-again")
    assert "recomputed" in flights_note(lenient, "s-10")
    assert held() == now
