"""The historical-rate baseline: what a scheduler's rule of thumb would predict.

A flight's score is the disruption rate of the same carrier, origin and scheduled departure
hour over the days before its as-of instant, counting only outcomes known by then (the same
point-in-time rule as gold's features). Slots without history get the overall rate.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.features import LABEL, trailing_outcomes

KEYS = ["carrier", "origin", "sched_dep_hour"]
SCORE = "baseline_rate"


def historical_rate(features: DataFrame, days: int, prior: float, start: str | None = None,
                    end: str | None = None) -> DataFrame:
    """gold.flight_features rows with SCORE: the slot's trailing disruption rate at as-of.

    Args:
        features: gold.flight_features (its label and known_at_utc are the events; every row
            is also a query at its as_of_utc).
        days: length of the trailing window.
        prior: the score of a slot without known outcomes in the window.
        start, end: score only the flights dated start..end (ISO dates, both or neither); the
            events are then those known from the earliest of their as-of instants less the
            window on, so a holdout's rates are computed without sorting the whole year's.
    """
    queried = features
    events = features
    if (start is None) != (end is None):
        raise ValueError(f"historical_rate: give both start and end or neither, got "
                         f"start={start!r}, end={end!r}")
    if start is not None and end is not None:
        queried = features.filter(F.col("flight_date").between(F.lit(start).cast("date"),
                                                                F.lit(end).cast("date")))
        earliest = queried.agg(F.min("as_of_utc").alias("_earliest_as_of"))
        # in whole seconds, as trailing_outcomes' window compares them
        events = (features.crossJoin(F.broadcast(earliest))
                  .filter(F.unix_seconds("known_at_utc")
                          >= F.unix_seconds("_earliest_as_of") - days * 86400)
                  .drop("_earliest_as_of"))
    events = events.select(*KEYS, "known_at_utc", "sched_dep_utc", LABEL,
                           F.lit(None).cast("int").alias("arr_delay"))
    queries = queried.select(*KEYS, F.unix_seconds("as_of_utc").alias("_ts"),
                             F.col("flight_id").alias("_qid"))
    rates = trailing_outcomes(events, queries, KEYS, days * 86400, "_slot")
    return queried.join(rates.withColumnRenamed("_qid", "flight_id"), on="flight_id",
                        how="left").withColumn(
        SCORE, F.coalesce(F.col("_slot_disruption_rate"), F.lit(prior)))
