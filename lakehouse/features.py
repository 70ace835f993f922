"""Gold: point-in-time flight features and route KPIs (pure functions of silver DataFrames).

A flight's features use only inputs known at its as-of instant (scheduled departure minus
`gold.as_of_offset_minutes`), by the rules of `lakehouse.known_at.KNOWN_AT`: the schedule and
static plane attributes, the latest weather row at the origin already complete then, and
outcomes of *other* flights already known then. Flights without a recorded tail number are all
cancelled in the source data (the tail is missing *because* of the outcome): their rows carry
`tail_recorded = false`, and training and evaluation leave them out (see lakehouse.training).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lakehouse import known_at
from lakehouse.functions import minutes_between
from lakehouse.known_at import MAX_OUTCOME_LAG_HOURS, outcome_known_at, weather_known_at

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
TAIL_RECORDED = "tail_recorded"
WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip",
                   "pressure", "visib")
ORIGIN_DAY_HOURS = 12
# Bumped when a feature's definition changes: gold then rebuilds in full on its next run.
FEATURES_VERSION = 3


class FeatureSettingsError(ValueError):
    """The gold section of conf holds a value the features cannot be built with."""


@dataclass(frozen=True)
class FeatureSettings:
    """The gold section of conf."""

    as_of_offset_minutes: int
    origin_recent_hours: int
    daily_history_days: int
    disruption_delay_minutes: int
    home_timezone: str
    weather_max_age_hours: int

    def __post_init__(self) -> None:
        for name in ("as_of_offset_minutes", "origin_recent_hours", "daily_history_days",
                     "weather_max_age_hours", "disruption_delay_minutes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                why = (" (features are taken this long before scheduled departure; at 0 a "
                       "flight's own cancellation, known at its scheduled departure, would "
                       "count)" if name == "as_of_offset_minutes" else "")
                raise FeatureSettingsError(f"gold.{name} must be a whole number > 0, got "
                                           f"{value!r}{why}")
        import zoneinfo

        if self.home_timezone not in zoneinfo.available_timezones():
            raise FeatureSettingsError(
                f"gold.home_timezone must be an IANA time-zone id such as America/New_York, "
                f"got {self.home_timezone!r} (local dates and midnights are taken in it)")

    @classmethod
    def from_conf(cls, section: dict[str, Any]) -> FeatureSettings:
        missing = sorted(set(cls.__dataclass_fields__) - set(section))
        if missing:
            raise FeatureSettingsError(f"gold section of conf lacks {missing}; it has "
                                       f"{sorted(section)}")
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:  # a misspelt key would silently be ignored
            raise FeatureSettingsError(f"gold: unknown settings {unknown}; known are "
                                       f"{sorted(cls.__dataclass_fields__)}")
        return cls(**{k: section[k] for k in cls.__dataclass_fields__})

    def fingerprint(self) -> str:
        """Identifies the feature definitions: a gold table built with another is rebuilt.
        The known-at rules are part of them (each input's instant and the rows it applies to,
        the outcome's longest lag) and so are the origin's day window: an edited rule with
        FEATURES_VERSION left as it was would otherwise mix rows of both rules in gold."""
        rules = [[k.input, k.instant, k.applies] for k in known_at.KNOWN_AT]
        text = json.dumps({**asdict(self), "features_version": FEATURES_VERSION,
                           "known_at": rules, "max_outcome_lag_hours":
                           known_at.MAX_OUTCOME_LAG_HOURS, "origin_day_hours": ORIGIN_DAY_HOURS},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def history_lookback_days(self) -> int:
        """Days of flights before a flight's date that its features can read (events known
        from the history window's start, at most MAX_OUTCOME_LAG_HOURS after departure)."""
        hours = (self.as_of_offset_minutes / 60
                 + max(self.daily_history_days * 24, ORIGIN_DAY_HOURS, self.origin_recent_hours)
                 + MAX_OUTCOME_LAG_HOURS)
        return math.ceil(hours / 24) + 1

    @property
    def weather_lookback_days(self) -> int:
        """Days of weather rows (by local date) before a flight's date its features can read."""
        hours = self.as_of_offset_minutes / 60 + self.weather_max_age_hours + 1
        return math.ceil(hours / 24) + 1


def hours(n: float) -> Column:
    return F.make_dt_interval(F.lit(0), F.lit(0), F.lit(round(n * 60)))


def local_date(instant: Column, settings: FeatureSettings) -> Column:
    """The date at the origins' home time zone of a UTC instant."""
    return F.to_date(F.from_utc_timestamp(instant, settings.home_timezone))


def with_outcome(settings: FeatureSettings) -> Callable[[DataFrame], DataFrame]:
    """Add the label, the as-of instant and the instant the flight's outcome became known."""

    def transform(df: DataFrame) -> DataFrame:
        disrupted = (F.col("cancelled") | F.col("diverted")
                     | (F.col("arr_delay") >= settings.disruption_delay_minutes))
        # cancelled is null while a flight's outcome is not reported yet: no label then
        label = F.when(F.col("cancelled").isNotNull(), F.coalesce(disrupted, F.lit(False)))
        return df.withColumns({
            "as_of_utc": F.col("sched_dep_utc") - hours(settings.as_of_offset_minutes / 60),
            "known_at_utc": outcome_known_at(),
            LABEL: label.cast("int"),
        })

    return transform


def history_events(flights: DataFrame) -> DataFrame:
    """Flights whose outcome can feed history features: known (reported), within
    MAX_OUTCOME_LAG_HOURS of scheduled departure."""
    return flights.filter(F.col("known_at_utc").isNotNull() & (
        F.col("known_at_utc") <= F.col("sched_dep_utc") + hours(MAX_OUTCOME_LAG_HOURS)))


def trailing_outcomes(events: DataFrame, queries: DataFrame, keys: list[str], window_seconds: int,
                      prefix: str) -> DataFrame:
    """For each query (_qid, keys, _ts), aggregate the events of the same keys known in
    [_ts - window, _ts]: count, disruption rate and mean arrival delay.

    One sort per key instead of a range join: events and queries are unioned and a range window
    sums the events' values up to each query's instant.
    """
    value_columns = ("_n", "_d", "_delay_sum", "_delay_n")
    stacked = history_events(events).select(
        *keys, F.unix_seconds("known_at_utc").alias("_ts"),
        F.lit(None).cast("string").alias("_qid"), F.lit(1).alias("_n"), F.col(LABEL).alias("_d"),
        F.col("arr_delay").cast("double").alias("_delay_sum"),
        F.col("arr_delay").isNotNull().cast("int").alias("_delay_n")).unionByName(
        queries.select(*keys, "_ts", "_qid", *[F.lit(0).alias(c) for c in value_columns]))
    window = Window.partitionBy(*keys).orderBy("_ts").rangeBetween(-window_seconds, 0)
    sums = {c: F.sum(c).over(window) for c in value_columns}
    summed = stacked.withColumns(sums).filter(F.col("_qid").isNotNull())
    return summed.select(
        "_qid",
        F.col("_n").alias(f"{prefix}_known"),
        F.try_divide(F.col("_d"), F.col("_n")).alias(f"{prefix}_disruption_rate"),
        F.try_divide(F.col("_delay_sum"), F.col("_delay_n")).alias(f"{prefix}_mean_arr_delay"),
    )


def history_cutoff(settings: FeatureSettings) -> Column:
    """Daily history ends at the earlier of the flight date's local midnight and as-of: flights
    still in the air at midnight are left out, and so is anything after as-of."""
    midnight = F.to_utc_timestamp(F.to_timestamp("flight_date"), settings.home_timezone)
    return F.least(midnight, F.col("as_of_utc"))


def origin_recent(events: DataFrame, queries: DataFrame, settings: FeatureSettings) -> DataFrame:
    """Outcomes of other flights from the same origin known in the hours before as-of."""
    asked = queries.select("origin", F.unix_seconds("as_of_utc").alias("_ts"),
                           F.col("flight_id").alias("_qid"))
    recent = trailing_outcomes(events, asked, ["origin"], settings.origin_recent_hours * 3600,
                               "origin_recent")
    day = trailing_outcomes(events, asked, ["origin"], ORIGIN_DAY_HOURS * 3600, "origin_day")
    return recent.join(day, on="_qid", how="inner").withColumnRenamed("_qid", "flight_id")


def daily_history(events: DataFrame, queries: DataFrame, settings: FeatureSettings,
                  keys: list[str], prefix: str) -> DataFrame:
    """Outcomes per key over the days before each flight's history cutoff; one query per key,
    date and cutoff (all flights of a day share one but those departing just after midnight)."""
    qid = F.concat_ws("|", *keys, F.col("flight_date").cast("string"),
                      F.col("_history_cutoff").cast("string"))
    cutoffs = queries.select(*keys, "flight_date", "_history_cutoff").distinct()
    asked = cutoffs.select(*keys, F.unix_seconds("_history_cutoff").alias("_ts"), qid.alias("_qid"))
    stats = trailing_outcomes(events, asked, keys, settings.daily_history_days * 86400, prefix)
    lookup = cutoffs.select(*keys, "flight_date", "_history_cutoff", qid.alias("_qid"))
    return lookup.join(stats, on="_qid", how="inner").drop("_qid", f"{prefix}_mean_arr_delay")


def weather_as_of(queries: DataFrame, weather: DataFrame, settings: FeatureSettings) -> DataFrame:
    """The latest weather row at the origin complete at or before each flight's as-of instant,
    if it is at most weather_max_age_hours old then."""
    stacked = weather.select(
        "origin", F.unix_seconds(weather_known_at()).alias("_ts"), F.lit(0).alias("_q"),
        "time_hour", F.unix_seconds(weather_known_at()).alias("_known"),
        F.lit(None).cast("string").alias("flight_id")).unionByName(
        queries.select("origin", F.unix_seconds("as_of_utc").alias("_ts"), F.lit(1).alias("_q"),
                       F.lit(None).cast("timestamp").alias("time_hour"),
                       F.lit(None).cast("long").alias("_known"), "flight_id"))
    # Rows sort before queries at the same second: "at or before" includes it.
    window = Window.partitionBy("origin").orderBy("_ts", "_q").rowsBetween(
        Window.unboundedPreceding, Window.currentRow)
    age = F.col("_ts") - F.col("_latest_known")
    latest = (stacked.withColumns({
        "_latest": F.last("time_hour", ignorenulls=True).over(window),
        "_latest_known": F.last("_known", ignorenulls=True).over(window)})
              .filter((F.col("_q") == 1) & (age <= settings.weather_max_age_hours * 3600))
              .select("flight_id", "origin", F.col("_latest").alias("time_hour"),
                      (age / 60).cast("double").alias("weather_age_minutes")))
    return latest.join(weather.select("origin", "time_hour", *WEATHER_COLUMNS),
                       on=["origin", "time_hour"], how="inner").select(
        "flight_id", *WEATHER_COLUMNS, "weather_age_minutes",
        F.col("time_hour").alias("weather_observed_at"))


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
    known = F.coalesce(F.col("_prev_known_at") <= F.col("as_of_utc"), F.lit(False))
    same_day = F.col("_prev_sched_dep") >= F.col("sched_dep_utc") - hours(24)
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


def on_dates(dates: Iterable[date] | None) -> Callable[[DataFrame], DataFrame]:
    """Rows whose flight_date is one of dates (all rows when dates is None)."""
    if dates is None:
        return lambda df: df
    wanted = sorted(set(dates))
    return lambda df: df.filter(F.col("flight_date").isin(wanted))


def flight_features(flights: DataFrame, weather: DataFrame, planes: DataFrame,
                    settings: FeatureSettings, dates: Iterable[date] | None = None) -> DataFrame:
    """gold.flight_features: one row per flight, point-in-time features plus the label.

    Args:
        flights, weather, planes: silver tables (or the slices of them the features read).
        settings: the gold section of conf.
        dates: build the rows of flights on these dates only; flights and weather must then
            hold the history those rows read (see history_lookback_days).
    """
    base = flights.transform(with_outcome(settings)).withColumn("_history_cutoff",
                                                                history_cutoff(settings))
    queries = base.transform(on_dates(dates))
    plane_attrs = planes.select("tailnum", F.col("year").alias("_plane_year"),
                                F.col("seats").alias("plane_seats"),
                                F.col("engines").alias("plane_engines"))
    carrier = daily_history(base, queries, settings, ["carrier"], "carrier_history")
    route = daily_history(base, queries, settings, ["origin", "dest"], "route_history")
    history_keys = ["flight_date", "_history_cutoff"]
    joined = (queries.join(schedule_features(queries), on="flight_id", how="left")
              .join(F.broadcast(plane_attrs), on="tailnum", how="left")
              .join(weather_as_of(queries, weather, settings), on="flight_id", how="left")
              .join(origin_recent(base, queries, settings), on="flight_id", how="left")
              .join(carrier, on=["carrier", *history_keys], how="left")
              .join(route, on=["origin", "dest", *history_keys], how="left")
              .join(previous_flight(base), on="flight_id", how="left"))
    plane_age = F.year("flight_date") - F.col("_plane_year")
    return joined.select(
        "flight_id", "flight_date", "sched_dep_utc", "as_of_utc", "tailnum",
        F.col("tailnum").isNotNull().alias(TAIL_RECORDED),
        *CATEGORICAL_FEATURES,
        *[(plane_age if c == "plane_age" else F.col(c)).cast("double").alias(c)
          for c in NUMERIC_FEATURES],
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
