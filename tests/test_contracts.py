"""Each flights rule: a row that passes and a row that breaks it; pandera verdicts; halting."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.contracts import (
    ContractViolation,
    contracts,
    rule_counts,
    validate,
    with_rule_results,
)
from lakehouse.contracts.core import FAILED_RULES, WARNED_RULES
from lakehouse.silver import TYPES, parse_columns, with_flight_times
from lakehouse.stages.silver import enforce_thresholds
from tests.rows import bronze_rows, flight, reference_rows

SETTINGS = {"max_quarantine_share": 0.05, "max_wind_speed_mph": 150, "max_wind_gust_mph": 200}
FLIGHTS = contracts(SETTINGS)["flights"]


def checked_flights(spark: SparkSession, rows: list[dict]) -> DataFrame:
    airports = reference_rows(spark, "airports").transform(parse_columns("airports"))
    planes = reference_rows(spark, "planes").transform(parse_columns("planes"))
    return (bronze_rows(spark, "flights", rows).transform(parse_columns("flights"))
            .transform(with_flight_times(airports, planes))
            .transform(with_rule_results(FLIGHTS))).cache()


# (rule, change to the good row that breaks it)
BREAKING = [
    ("well_formed", {"_corrupt_record": "2013,1,1,517"}),
    *((f"{c}_parsable", {c: f"{c}?"}) for c, t in TYPES["flights"].items() if t != "string"),
    *((f"{c}_not_null", {c: "NA"}) for c in ("carrier", "flight", "origin", "dest",
                                             "sched_dep_time", "sched_arr_time")),
    ("flight_date_valid", {"month": "2", "day": "30"}),
    ("carrier_format", {"carrier": "u1a"}),
    ("origin_format", {"origin": "NEWARK"}),
    ("dest_format", {"dest": "I-H"}),
    ("sched_dep_time_valid", {"sched_dep_time": "575"}),
    ("sched_arr_time_valid", {"sched_arr_time": "2460"}),
    ("dep_time_valid", {"dep_time": "2401"}),
    ("arr_time_valid", {"arr_time": "3000"}),
    ("dep_delay_range", {"dep_delay": "4000"}),
    ("arr_delay_range", {"arr_delay": "-500"}),
    ("air_time_range", {"air_time": "0"}),
    ("distance_range", {"distance": "0"}),
    ("origin_in_airports", {"origin": "ZZZ"}),
    ("sched_arr_after_dep", {"sched_dep_time": "2359", "sched_arr_time": "2355"}),
    ("columns_present", {"air_time": None, "_missing_columns": ["air_time"]}),
    ("text_decodable", {"tailnum": "N\ufffd8", "_invalid_bytes": {"tailnum": b"N\xff8"}}),
    ("event_type_known", {"_event_type": "boarding"}),
    ("event_time_valid", {"_event_type": "outcome"}),  # an event without its time
    # an event stamped 2099 (bronze ingested it in 2026): it would outrank every correction
    ("event_time_plausible", {"_event_type": "outcome",
                              "_event_time": dt.datetime(2099, 1, 1)}),
]
WARNING = [
    ("tailnum_format", {"tailnum": "D942DN"}),
    ("dest_in_airports", {"dest": "BQN"}),
    ("tailnum_in_planes", {"tailnum": "N99999"}),
    ("tailnum_present", {"tailnum": "NA"}),
    ("time_hour_parsable", {"time_hour": "2013-01-01 10:00"}),  # no offset
]


def test_every_flights_rule_has_a_breaking_case() -> None:
    covered = {name for name, _ in BREAKING + WARNING}
    assert covered == {r.name for r in FLIGHTS.rules}


def test_each_rule_passes_the_good_row_and_flags_its_breaking_row(spark: SparkSession) -> None:
    cases = [("good", {}), *BREAKING, *WARNING]
    warn_rules = {rule for rule, _ in WARNING}
    rows = [flight(_source_file=f"case-{i}", **change) for i, (_, change) in enumerate(cases)]
    flagged = {r["_source_file"]: r for r in checked_flights(spark, rows).select(
        "_source_file", FAILED_RULES, WARNED_RULES).collect()}
    for i, (rule, _) in enumerate(cases):
        row = flagged[f"case-{i}"]
        if rule == "good":
            assert row[FAILED_RULES] == [] and row[WARNED_RULES] == [], row
        elif rule in warn_rules:
            assert row[FAILED_RULES] == [] and rule in row[WARNED_RULES], (rule, row)
        else:
            assert rule in row[FAILED_RULES], (rule, row)


def test_pandera_reports_failed_rules_and_key_duplicates(spark: SparkSession) -> None:
    checked = checked_flights(spark, [flight(), flight(), flight(distance="0", flight="9")])
    report = validate(FLIGHTS, checked)
    assert report.schema_errors == ()
    assert {"distance_range", "key_unique"} <= set(report.failed_checks)


def test_pandera_settings_from_outside_cannot_switch_the_contract_off(
        spark: SparkSession) -> None:
    """PANDERA_VALIDATION_DEPTH=SCHEMA_ONLY or PANDERA_VALIDATION_ENABLED=False (as a context
    here, which is what pandera makes of them) would skip the data checks: the batch rules'
    halts with them."""
    from pandera.config import config_context

    checked = checked_flights(spark, [flight(), flight(distance="0", flight="9")])
    for outside in ({"validation_depth": "SCHEMA_ONLY"}, {"validation_enabled": False}):
        with config_context(**outside):  # type: ignore[arg-type]
            report = validate(FLIGHTS, checked)
        assert "distance_range" in report.failed_checks, outside


def test_pandera_reports_renamed_and_retyped_columns(spark: SparkSession) -> None:
    checked = checked_flights(spark, [flight()])
    renamed = validate(FLIGHTS, checked.withColumnRenamed("dest", "destination"))
    assert any("'dest'" in e and "COLUMN_NOT_IN_DATAFRAME" in e for e in renamed.schema_errors)
    retyped = validate(FLIGHTS, checked.withColumn("distance", F.col("distance").cast("string")))
    assert any("'distance'" in e and "WRONG_DATATYPE" in e for e in retyped.schema_errors)


def test_batch_over_quarantine_share_halts_naming_table_rule_count_and_keys(
        spark: SparkSession) -> None:
    checked = checked_flights(spark, [flight(), flight(flight="77", distance="0")]).persist()
    counts = rule_counts(FLIGHTS, checked)
    assert counts["distance_range"] == 1 and counts["_quarantined"] == 1 and counts["_rows"] == 2
    with pytest.raises(ContractViolation) as error:
        enforce_thresholds(FLIGHTS, checked, counts, max_share=0.05)
    message = str(error.value)
    for part in ("silver.flights", "distance_range", "1 of 2 rows", "2013-01-01_UA_77_EWR"):
        assert part in message


def test_a_few_quarantined_rows_below_the_minimum_do_not_halt(spark: SparkSession) -> None:
    """A micro-batch of a quiet events stream: 1 bad row of 3 is 33%, yet one bad event; with
    silver.min_quarantined_to_halt 2 it is quarantined and the batch goes on; two halt it."""
    rows = [flight(), flight(flight="2"), flight(flight="77", distance="0")]
    checked = checked_flights(spark, rows).persist()
    counts = rule_counts(FLIGHTS, checked)
    enforce_thresholds(FLIGHTS, checked, counts, max_share=0.05, min_count=2)
    with pytest.raises(ContractViolation, match="distance_range"):
        enforce_thresholds(FLIGHTS, checked, counts, max_share=0.05)  # the default, 1
    two_bad = checked_flights(spark, [*rows, flight(flight="78", distance="0")]).persist()
    with pytest.raises(ContractViolation, match=r"distance_range.*halting from 2 rows"):
        enforce_thresholds(FLIGHTS, two_bad, rule_counts(FLIGHTS, two_bad), max_share=0.05,
                           min_count=2)


def test_batch_under_quarantine_share_passes(spark: SparkSession) -> None:
    rows = [flight(flight=str(n)) for n in range(30)] + [flight(flight="99", distance="0")]
    checked = checked_flights(spark, rows).persist()
    counts = rule_counts(FLIGHTS, checked)
    enforce_thresholds(FLIGHTS, checked, counts, max_share=0.05)  # 1/31 = 3.2 %: no halt
    assert counts["_quarantined"] == 1


def test_rule_columns_run_in_generated_code(spark: SparkSession) -> None:
    """No rule column falls back to interpretation: one expression without code generation
    (a higher-order function such as filter or array_compact) takes the whole projection out of
    whole-stage codegen, and Spark then interprets every rule condition row by row (~10x the
    cost on the full year of flights, bench/silver.py)."""
    checked = checked_flights(spark, [flight()]).unpersist()
    checked.collect()
    plan = checked._jdf.queryExecution().executedPlan().toString().split("== Initial Plan ==")[0]
    projects = [line for line in plan.splitlines() if "Project [" in line]
    assert projects
    interpreted = [line.strip()[:120] for line in projects if "*(" not in line]
    assert not interpreted, interpreted
