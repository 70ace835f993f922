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


def historical_rate(features: DataFrame, days: int, prior: float) -> DataFrame:
    """gold.flight_features rows with SCORE: the slot's trailing disruption rate at as-of.

    Args:
        features: gold.flight_features (its label and known_at_utc are the events; every row
            is also a query at its as_of_utc).
        days: length of the trailing window.
        prior: the score of a slot without known outcomes in the window.
    """
    events = features.select(*KEYS, "known_at_utc", "sched_dep_utc", LABEL,
                             F.lit(None).cast("int").alias("arr_delay"))
    queries = features.select(*KEYS, F.unix_seconds("as_of_utc").alias("_ts"),
                              F.col("flight_id").alias("_qid"))
    rates = trailing_outcomes(events, queries, KEYS, days * 86400, "_slot")
    return features.join(rates.withColumnRenamed("_qid", "flight_id"), on="flight_id",
                         how="left").withColumn(
        SCORE, F.coalesce(F.col("_slot_disruption_rate"), F.lit(prior)))
