"""Gold: point-in-time flight features and route KPIs (pure functions of silver DataFrames).

A flight's features use only what was known at its as-of instant (scheduled departure minus the
configured offset): schedules, static plane attributes, the latest weather observation at the
origin at or before that instant, and outcomes of other flights already known by then. An outcome
becomes known when the flight arrives (a cancellation at its scheduled departure; a diversion or
an arrival in an unknown time zone, conservatively, a day after scheduled departure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lakehouse.functions import minutes_between

CATEGORICAL_FEATURES = ("carrier", "origin", "dest")
NUMERIC_FEATURES = (
    "sched_dep_hour", "sched_dep_minute_of_day", "day_of_week", "distance", "sched_block_minutes",
    "origin_hour_departures", "origin_day_departures",
    "plane_age", "plane_seats", "plane_engines",
    "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib",
    "weather_age_minutes",
    "origin_recent_known", "origin_recent_disruption_rate", "origin_recent_mean_arr_delay",
    "origin_day_known", "origin_day_disruption_rate", "origin_day_mean_arr_delay",
    "carrier_history_known", "carrier_history_disruption_rate",
    "route_history_known", "route_history_disruption_rate",
    "prev_flight_known", "prev_flight_arr_delay", "prev_flight_disrupted", "prev_flight_pending",
    "turnaround_minutes",
)
LABEL = "disrupted"
WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip",
                   "pressure", "visib")


@dataclass(frozen=True)
class FeatureSettings:
    """The gold section of conf."""

    as_of_offset_minutes: int
    origin_recent_hours: int
    daily_history_days: int
    disruption_delay_minutes: int
    home_timezone: str

    @classmethod
    def from_conf(cls, section: dict[str, Any]) -> FeatureSettings:
        return cls(**{k: section[k] for k in cls.__dataclass_fields__})


def with_outcome(settings: FeatureSettings) -> Callable[[DataFrame], DataFrame]:
    """Add the label, the as-of instant and the instant the flight's outcome became known."""

    def transform(df: DataFrame) -> DataFrame:
        offset = F.make_dt_interval(F.lit(0), F.lit(0), F.lit(settings.as_of_offset_minutes))
        arrived = F.col("sched_arr_utc") + F.make_dt_interval(
            F.lit(0), F.lit(0), F.coalesce(F.col("arr_delay"), F.lit(0)))
        known_at = (F.when(F.col("cancelled"), F.col("sched_dep_utc"))
                    .when(F.col("arr_delay").isNotNull() & F.col("sched_arr_utc").isNotNull(),
                          arrived)
                    .otherwise(F.col("sched_dep_utc") + F.expr("INTERVAL 24 HOURS")))
        disrupted = (F.col("cancelled") | F.col("diverted")
                     | (F.col("arr_delay") >= settings.disruption_delay_minutes))
        return df.withColumns({
            "as_of_utc": F.col("sched_dep_utc") - offset,
            "known_at_utc": known_at,
            LABEL: F.coalesce(disrupted, F.lit(False)).cast("int"),
        })

    return transform


def trailing_outcomes(events: DataFrame, queries: DataFrame, keys: list[str], window_seconds: int,
                      prefix: str) -> DataFrame:
    """For each query (_qid, keys, _ts), aggregate the events of the same keys known in
    [_ts - window, _ts]: count, disruption rate and mean arrival delay.

    One sort per key instead of a range join: events and queries are unioned and a range window
    sums the events' values up to each query's instant.
    """
    value_columns = ("_n", "_d", "_delay_sum", "_delay_n")
    stacked = events.select(*keys, F.unix_seconds("known_at_utc").alias("_ts"),
                            F.lit(None).cast("string").alias("_qid"), F.lit(1).alias("_n"),
                            F.col(LABEL).alias("_d"),
                            F.col("arr_delay").cast("double").alias("_delay_sum"),
                            F.col("arr_delay").isNotNull().cast("int").alias("_delay_n")).unionByName(
        queries.select(*keys, "_ts", "_qid", *[F.lit(0).alias(c) for c in value_columns]),
        allowMissingColumns=False)
    window = Window.partitionBy(*keys).orderBy("_ts").rangeBetween(-window_seconds, 0)
    sums = {c: F.sum(c).over(window) for c in value_columns}
    summed = stacked.withColumns(sums).filter(F.col("_qid").isNotNull())
    return summed.select(
        "_qid",
        F.col("_n").alias(f"{prefix}_known"),
        F.try_divide(F.col("_d"), F.col("_n")).alias(f"{prefix}_disruption_rate"),
        F.try_divide(F.col("_delay_sum"), F.col("_delay_n")).alias(f"{prefix}_mean_arr_delay"),
    )


def _local_midnight_utc(settings: FeatureSettings) -> Column:
    return F.to_utc_timestamp(F.to_timestamp("flight_date"), settings.home_timezone)


def origin_recent(flights: DataFrame, settings: FeatureSettings) -> DataFrame:
    """Outcomes of other flights from the same origin known in the hours before as-of."""
    queries = flights.select("origin", F.unix_seconds("as_of_utc").alias("_ts"),
                             F.col("flight_id").alias("_qid"))
    recent = trailing_outcomes(flights, queries, ["origin"], settings.origin_recent_hours * 3600,
                               "origin_recent")
    day = trailing_outcomes(flights, queries, ["origin"], 12 * 3600, "origin_day")
    return recent.join(day, on="_qid", how="inner").withColumnRenamed("_qid", "flight_id")


def daily_history(flights: DataFrame, settings: FeatureSettings, keys: list[str],
                  prefix: str) -> DataFrame:
    """Outcomes per key over the previous days, cut at the flight's local midnight: flights still
    in the air at midnight are left out."""
    cutoffs = (flights.select(*keys, "flight_date").distinct()
               .withColumn("_cutoff", _local_midnight_utc(settings)))
    queries = cutoffs.select(*keys, F.unix_seconds("_cutoff").alias("_ts"),
                             F.concat_ws("|", *keys, F.col("flight_date").cast("string"))
                             .alias("_qid"))
    stats = trailing_outcomes(flights, queries, keys, settings.daily_history_days * 86400, prefix)
    lookup = cutoffs.select(*keys, "flight_date",
                            F.concat_ws("|", *keys, F.col("flight_date").cast("string"))
                            .alias("_qid"))
    return lookup.join(stats, on="_qid", how="inner").drop("_qid", f"{prefix}_mean_arr_delay")


def weather_as_of(flights: DataFrame, weather: DataFrame) -> DataFrame:
    """The latest observation at the origin at or before each flight's as-of instant."""
    obs = weather.select("origin", F.col("time_hour").alias("_obs"))
    stacked = obs.select("origin", F.unix_seconds("_obs").alias("_ts"), F.lit(0).alias("_q"),
                         "_obs", F.lit(None).cast("string").alias("flight_id")).unionByName(
        flights.select("origin", F.unix_seconds("as_of_utc").alias("_ts"), F.lit(1).alias("_q"),
                       F.lit(None).cast("timestamp").alias("_obs"), "flight_id"))
    # Observations sort before queries at the same second: "at or before" includes it.
    window = Window.partitionBy("origin").orderBy("_ts", "_q").rowsBetween(
        Window.unboundedPreceding, Window.currentRow)
    latest = (stacked.withColumn("_latest", F.last("_obs", ignorenulls=True).over(window))
              .filter(F.col("_q") == 1).select("flight_id", "origin", "_latest"))
    joined = latest.join(weather.withColumnRenamed("time_hour", "_latest"),
                         on=["origin", "_latest"], how="left")
    return joined.select("flight_id", *WEATHER_COLUMNS,
                         F.col("_latest").alias("weather_observed_at"))


def previous_flight(flights: DataFrame) -> DataFrame:
    """The same plane's previous scheduled departure, and its outcome if known at as-of."""
    window = Window.partitionBy("tailnum").orderBy("sched_dep_utc", "flight_id")
    prev = flights.filter(F.col("tailnum").isNotNull()).select(
        "flight_id", "as_of_utc", "sched_dep_utc",
        F.lag("known_at_utc").over(window).alias("_prev_known_at"),
        F.lag("arr_delay").over(window).alias("_prev_arr_delay"),
        F.lag(LABEL).over(window).alias("_prev_disrupted"),
        F.lag("sched_arr_utc").over(window).alias("_prev_sched_arr"),
        F.lag("sched_dep_utc").over(window).alias("_prev_sched_dep"))
    known = F.col("_prev_known_at") <= F.col("as_of_utc")
    same_day = F.col("_prev_sched_dep") >= F.col("sched_dep_utc") - F.expr("INTERVAL 24 HOURS")
    return prev.select(
        "flight_id",
        F.when(same_day, known.cast("int")).alias("prev_flight_known"),
        F.when(same_day & known, F.col("_prev_arr_delay")).alias("prev_flight_arr_delay"),
        F.when(same_day & known, F.col("_prev_disrupted")).alias("prev_flight_disrupted"),
        F.when(same_day, (~known).cast("int")).alias("prev_flight_pending"),
        F.when(same_day, minutes_between(F.col("sched_dep_utc"), F.col("_prev_sched_arr")))
        .alias("turnaround_minutes"))


def schedule_features(flights: DataFrame) -> DataFrame:
    """Features of the timetable itself, published before the day of flight."""
    hour = F.floor(F.col("sched_dep_time") / 100)
    per_hour = Window.partitionBy("origin", "flight_date", hour)
    per_day = Window.partitionBy("origin", "flight_date")
    return flights.select(
        "flight_id",
        hour.cast("int").alias("sched_dep_hour"),
        (hour * 60 + F.col("sched_dep_time") % 100).cast("int").alias("sched_dep_minute_of_day"),
        F.dayofweek("flight_date").alias("day_of_week"),
        minutes_between(F.col("sched_arr_utc"), F.col("sched_dep_utc"))
        .alias("sched_block_minutes"),
        F.count(F.lit(1)).over(per_hour).alias("origin_hour_departures"),
        F.count(F.lit(1)).over(per_day).alias("origin_day_departures"))


def flight_features(flights: DataFrame, weather: DataFrame, planes: DataFrame,
                    settings: FeatureSettings) -> DataFrame:
    """gold.flight_features: one row per flight, point-in-time features plus the label."""
    base = flights.transform(with_outcome(settings))
    plane_attrs = planes.select("tailnum", (F.lit(2013) - F.col("year")).alias("plane_age"),
                                F.col("seats").alias("plane_seats"),
                                F.col("engines").alias("plane_engines"))
    carrier = daily_history(base, settings, ["carrier"], "carrier_history")
    route = daily_history(base, settings, ["origin", "dest"], "route_history")
    weather_obs = weather_as_of(base, weather)
    joined = (base.join(schedule_features(base), on="flight_id", how="left")
              .join(F.broadcast(plane_attrs), on="tailnum", how="left")
              .join(weather_obs.drop("origin"), on="flight_id", how="left")
              .join(origin_recent(base, settings), on="flight_id", how="left")
              .join(carrier, on=["carrier", "flight_date"], how="left")
              .join(route, on=["origin", "dest", "flight_date"], how="left")
              .join(previous_flight(base), on="flight_id", how="left"))
    return joined.select(
        "flight_id", "flight_date", "sched_dep_utc", "as_of_utc", "tailnum",
        *CATEGORICAL_FEATURES,
        *[F.col(c).cast("double").alias(c) for c in NUMERIC_FEATURES if c != "weather_age_minutes"],
        minutes_between(F.col("as_of_utc"), F.col("weather_observed_at"))
        .alias("weather_age_minutes"),
        "weather_observed_at", "known_at_utc", LABEL)


def route_daily_kpis(flights: DataFrame, settings: FeatureSettings) -> DataFrame:
    """gold.route_daily_kpis: per day and route, volumes, disruption and delays for BI."""
    labelled = flights.transform(with_outcome(settings))
    return (labelled.groupBy("flight_date", "origin", "dest")
            .agg(F.count(F.lit(1)).alias("flights"),
                 F.sum(F.col("cancelled").cast("int")).alias("cancelled"),
                 F.sum(F.col("diverted").cast("int")).alias("diverted"),
                 F.sum(LABEL).alias("disrupted"),
                 F.round(F.avg(LABEL), 4).alias("disruption_rate"),
                 F.round(F.avg("dep_delay"), 2).alias("avg_dep_delay"),
                 F.round(F.avg("arr_delay"), 2).alias("avg_arr_delay"),
                 F.countDistinct("carrier").alias("carriers")))
