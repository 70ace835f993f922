"""Table and column comments of the gold tables: meaning, how computed, when known.

They are written into the Delta tables (column comments in the schema, the table comment as its
description), so `DESCRIBE`, a catalog browser and `lakehouse describe <table>` show them.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

_AS_OF = "known at as-of (scheduled departure minus gold.as_of_offset_minutes)"
_HISTORY = ("outcomes known by the history cutoff (the earlier of the flight date's local "
            "midnight and as-of) over the previous gold.daily_history_days days")

TABLE_COMMENTS = {
    "flight_features": (
        "One row per scheduled flight: point-in-time features (only inputs known at as-of, "
        "scheduled departure minus gold.as_of_offset_minutes; see `lakehouse describe`) and the "
        "disruption label. Built incrementally from silver by MERGE on flight_id."),
    "route_daily_kpis": (
        "Per flight date and route (origin, dest): volumes, cancellations, diversions, "
        "disruption rate and mean delays, for BI. Built incrementally by MERGE per date and "
        "route."),
}

_WEATHER = "weather at the origin: the latest row complete at as-of, at most " \
           "gold.weather_max_age_hours old (null otherwise)"

COLUMN_COMMENTS: dict[str, dict[str, str]] = {
    "flight_features": {
        "flight_id": "natural key: flight date, carrier, flight number, origin",
        "flight_date": "scheduled local departure date",
        "sched_dep_utc": "scheduled departure, UTC (schedule: known before the day)",
        "as_of_utc": "the instant features are taken: scheduled departure minus "
                     "gold.as_of_offset_minutes",
        "tailnum": "recorded tail number (null for flights without one, all cancelled in 2013)",
        "tail_recorded": "the source recorded a tail number; false rows are left out of "
                         "training and evaluation and scored with this flag",
        "carrier": "carrier code (schedule)",
        "origin": "origin airport (schedule)",
        "dest": "destination airport (schedule)",
        "sched_dep_hour": "local scheduled departure hour (schedule)",
        "sched_dep_minute_of_day": "local scheduled departure, minutes after midnight (schedule)",
        "day_of_week": "day of week of flight_date, 1 = Sunday (schedule)",
        "distance": "route distance in miles (schedule)",
        "sched_block_minutes": "scheduled arrival minus scheduled departure, UTC (schedule)",
        "origin_hour_departures": "flights scheduled from the origin in the same local hour "
                                  "(schedule)",
        "origin_day_departures": "flights scheduled from the origin on the same date (schedule)",
        "plane_age": "flight year minus the plane's build year (static plane attributes)",
        "plane_seats": "seats of the plane (static plane attributes)",
        "plane_engines": "engines of the plane (static plane attributes)",
        **{c: f"{c}: {_WEATHER}" for c in ("temp", "dewp", "humid", "wind_dir", "wind_speed",
                                           "wind_gust", "precip", "pressure", "visib")},
        "weather_age_minutes": "minutes from the weather row becoming known (end of its hour) "
                               "to as-of",
        "origin_recent_known": "other flights from the origin whose outcome became known in "
                               "the gold.origin_recent_hours before as-of",
        "origin_recent_disruption_rate": "disrupted share of origin_recent_known",
        "origin_recent_mean_arr_delay": "mean arrival delay of origin_recent_known",
        "origin_day_known": "other flights from the origin whose outcome became known in the "
                            "12 h before as-of",
        "origin_day_disruption_rate": "disrupted share of origin_day_known",
        "origin_day_mean_arr_delay": "mean arrival delay of origin_day_known",
        "carrier_history_known": f"carrier's flights with {_HISTORY}",
        "carrier_history_disruption_rate": "disrupted share of carrier_history_known",
        "route_history_known": f"route's flights with {_HISTORY}",
        "route_history_disruption_rate": "disrupted share of route_history_known",
        "prev_flight_known": "1 when the plane's previous flight (within 24 h) has a known "
                             f"outcome at as-of, 0 when pending; {_AS_OF}",
        "prev_flight_arr_delay": "arrival delay of the plane's previous flight, if known at as-of",
        "prev_flight_disrupted": "1 when the plane's previous flight was disrupted, if known at "
                                 "as-of",
        "prev_flight_pending": "1 when the plane's previous flight's outcome is not known at "
                               "as-of",
        "turnaround_minutes": "scheduled departure minus the previous flight's scheduled arrival",
        "weather_observed_at": "time_hour stamp of the weather row used (known an hour later)",
        "known_at_utc": "when this flight's own outcome becomes known (not a feature): arrival, "
                        "scheduled departure if cancelled, +24 h if diverted",
        "disrupted": "label: 1 when arrival delay >= gold.disruption_delay_minutes, cancelled "
                     "or diverted (known at known_at_utc)",
    },
    "route_daily_kpis": {
        "flight_date": "scheduled local departure date",
        "origin": "origin airport",
        "dest": "destination airport",
        "flights": "flights scheduled on the route that date",
        "cancelled": "of them cancelled (no departure time)",
        "diverted": "of them diverted (departed, no arrival delay)",
        "disrupted": "of them disrupted (late by gold.disruption_delay_minutes, cancelled or "
                     "diverted)",
        "disruption_rate": "disrupted / the flights whose outcome is reported (a flight only "
                           "announced so far counts in flights, not in this rate)",
        "avg_dep_delay": "mean departure delay in minutes of departed flights",
        "avg_arr_delay": "mean arrival delay in minutes of arrived flights",
        "carriers": "distinct carriers flying the route that date",
    },
}


class UndocumentedColumnError(ValueError):
    """A gold column has no comment."""


def with_comments(table: str) -> Callable[[DataFrame], DataFrame]:
    """Attach each column's comment as schema metadata (Delta stores it as the column comment)."""
    comments = COLUMN_COMMENTS[table]

    def transform(df: DataFrame) -> DataFrame:
        missing = [c for c in df.columns if c not in comments]
        if missing:
            raise UndocumentedColumnError(f"gold.{table} columns {missing} have no comment in "
                                          f"lakehouse.gold_docs; documented: {sorted(comments)}")
        return df.select(*[F.col(c).alias(c, metadata={"comment": comments[c]})
                           for c in df.columns])

    return transform
