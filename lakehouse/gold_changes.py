"""Which gold rows a change to silver can move: the dates an incremental gold build recomputes,
and the slices of silver those dates read (pure functions of DataFrames and dates).

A changed silver row (its image before and after the change, from Delta's change data feed)
moves the features of its own flight, and of every flight whose history windows, weather
look-up or previous-flight link can reach it. The bounds below follow the feature definitions
in lakehouse.features; the incremental-equals-full test checks them on real data.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakehouse.features import (
    ORIGIN_DAY_HOURS,
    FeatureSettings,
    hours,
    local_date,
    with_outcome,
)
from lakehouse.known_at import MAX_OUTCOME_LAG_HOURS, weather_known_at

PLANE_ATTRIBUTES = ("tailnum", "year", "seats", "engines")


def _date_range(first: Column, last: Column) -> Column:
    return F.explode(F.sequence(first, F.greatest(first, F.coalesce(last, first))))


def dates_moved_by_flights(changes: DataFrame, settings: FeatureSettings) -> DataFrame:
    """Flight dates whose features can differ after these silver flight rows changed.

    From the flight's own date to the last date whose windows can count its outcome: history
    up to daily_history_days after it is known, origin outcomes up to ORIGIN_DAY_HOURS (or
    origin_recent_hours if longer), and the
    same plane's next flight within 24 h.
    """
    labelled = changes.transform(with_outcome(settings))
    counted_until = F.least(F.col("known_at_utc"),
                            F.col("sched_dep_utc") + hours(MAX_OUTCOME_LAG_HOURS))
    start = F.greatest(F.col("sched_dep_utc"), counted_until)
    # a flight's history ends at the earlier of its date's midnight and its as-of instant: an
    # outcome reaches flights up to the history span plus the as-of offset after it
    reach = max(settings.daily_history_days * 24,
                max(ORIGIN_DAY_HOURS, settings.origin_recent_hours), 24
                ) + settings.as_of_offset_minutes / 60
    last = F.date_add(local_date(start + hours(reach), settings), 1)
    return labelled.select(_date_range(F.col("flight_date"), last).alias("flight_date")).distinct()


def dates_moved_by_weather(changes: DataFrame, settings: FeatureSettings) -> DataFrame:
    """Flight dates whose as-of instant falls while these weather rows are the latest fresh
    ones: from when a row is known, for weather_max_age_hours."""
    departs_from = weather_known_at() + hours(settings.as_of_offset_minutes / 60)
    departs_until = departs_from + hours(settings.weather_max_age_hours)
    return changes.select(_date_range(local_date(departs_from, settings),
                                      local_date(departs_until, settings)).alias("flight_date")
                          ).distinct()


def changed_tails(features: DataFrame, planes: DataFrame) -> DataFrame:
    """Tail numbers whose plane attributes in silver planes now differ from those gold's
    feature rows were built with (a new snapshot with the same attributes changes nothing).
    Gold's rows say what they were built with (the build year is the flight's year less
    plane_age), so no earlier version of silver planes is read: a snapshot replaces the
    table, and an old version is past Delta's time-travel retention after a week (its files
    vacuumed), which would force a full build on every monthly snapshot."""
    def attributes(rows: DataFrame, year: Column, seats: str, engines: str) -> DataFrame:
        return rows.select("tailnum", year.cast("double").alias("year"),
                           F.col(seats).cast("double").alias("seats"),
                           F.col(engines).cast("double").alias("engines"))

    built = features.filter(F.col("tailnum").isNotNull())
    old = attributes(built, F.year("flight_date") - F.col("plane_age"), "plane_seats",
                     "plane_engines").distinct()
    # the tails gold holds, with the attributes silver has for them now (none: nulls, as the
    # features' left join gives)
    new = attributes(old.select("tailnum").distinct().join(
        planes.select(*PLANE_ATTRIBUTES), "tailnum", "left"), F.col("year"), "seats", "engines")
    return old.exceptAll(new).unionByName(new.exceptAll(old)).select("tailnum").distinct()


def days_before(dates: Iterable[date], lookback_days: int) -> list[date]:
    """Each date and the lookback_days before it, sorted."""
    return sorted({d - timedelta(days=i) for d in dates for i in range(lookback_days + 1)})


def weather_read(weather: DataFrame, dates: Iterable[date],
                 settings: FeatureSettings) -> DataFrame:
    """The weather rows the features of flights on dates can read."""
    wanted = days_before(dates, settings.weather_lookback_days)
    return weather.filter(local_date(F.col("time_hour"), settings).isin(wanted))


def flights_read(flights: DataFrame, dates: Iterable[date],
                 settings: FeatureSettings) -> DataFrame:
    """The flights the features of flights on dates can read (their history)."""
    return flights.filter(F.col("flight_date").isin(
        days_before(dates, settings.history_lookback_days)))


def row_changes(new: DataFrame, current: DataFrame, keys: tuple[str, ...],
                flag: str = "_delete") -> DataFrame:
    """What a MERGE must write for recomputed dates: the new rows that differ from the current
    ones (flag false: inserted or updated) and the keys of current rows no longer produced
    (flag true: deleted). Rows equal to the current ones are left out, so they are not
    rewritten."""
    changed = new.exceptAll(current.select(*new.columns))
    gone = current.join(new.select(*keys), on=list(keys), how="left_anti")
    stale = gone.select(*[F.col(c) if c in keys else F.lit(None).cast(new.schema[c].dataType)
                          .alias(c) for c in new.columns], F.lit(True).alias(flag))
    return changed.withColumn(flag, F.lit(False)).unionByName(stale)
