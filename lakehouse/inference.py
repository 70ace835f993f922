"""Batch scoring: features in, prediction rows out (pure; the stage does the IO).

Predictions are kept per model version: a flight scored by the champion and by a challenger in
shadow has one row for each. A flight that cannot be scored gets a row too, with the reason.
"""

from __future__ import annotations

from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakehouse.evaluation import positive_probability
from lakehouse.features import TAIL_RECORDED

PREDICTION_KEYS = ("flight_id", "model_name", "model_version")  # versions restart per model name
# Columns whose change makes a re-score update a prediction row (scored_at and the features
# version read alone do not): a rerun with the same model changes no row.
PREDICTION_VALUES = ("probability", "predicted_disrupted", "threshold", "status", "reason",
                     "role", "model_run_id")
FLIGHT_COLUMNS = ("flight_id", "flight_date", "sched_dep_utc", "carrier", "origin", "dest",
                  TAIL_RECORDED)


def model_columns(model_name: str, version: str, run_id: str, role: str, threshold: float,
                  features_version: int) -> list[Column]:
    return [F.lit(model_name).alias("model_name"), F.lit(version).alias("model_version"),
            F.lit(run_id).alias("model_run_id"), F.lit(role).alias("role"),
            F.lit(float(threshold)).alias("threshold"),
            F.lit(int(features_version)).cast("long").alias("features_version"),
            F.current_timestamp().alias("scored_at")]


def score(model: PipelineModel, features: DataFrame, model_name: str, version: str,
          run_id: str, role: str, threshold: float, features_version: int) -> DataFrame:
    """One prediction row per flight: the disruption probability and the class at the model's
    decision threshold; rows the model gave no probability are marked unscorable."""
    # The probability is taken from the model's output once, in its own projection: every
    # column below reads it, and inlined into each of them the model's prediction would be
    # computed once per reference (bench/scoring.py: twice the plain transform's time).
    # The class is taken from the unrounded probability, as the model's own `prediction`
    # (its threshold set by the train job: models.with_threshold); the stored probability is
    # rounded to 6 decimals.
    probabilities = model.transform(features).select(
        *FLIGHT_COLUMNS, positive_probability().alias("_p"))
    p = F.col("_p")
    ok = p.isNotNull() & ~F.isnan(p)
    return probabilities.select(
        *FLIGHT_COLUMNS,
        F.when(ok, F.round(p, 6)).alias("probability"),
        F.when(ok, (p >= threshold).cast("int")).alias("predicted_disrupted"),
        F.when(ok, F.lit("scored")).otherwise(F.lit("unscorable")).alias("status"),
        F.when(ok, F.lit(None).cast("string"))
        .otherwise(F.lit("the model returned no probability")).alias("reason"),
        *model_columns(model_name, version, run_id, role, threshold, features_version))


def unscorable(flights: DataFrame, reason: str, model_name: str, version: str, run_id: str,
               role: str, threshold: float, features_version: int) -> DataFrame:
    """Rows for flights that reached silver but have no feature row to score, with the reason."""
    return flights.select(
        "flight_id", "flight_date", "sched_dep_utc", "carrier", "origin", "dest",
        F.col("tailnum").isNotNull().alias(TAIL_RECORDED),
        F.lit(None).cast("double").alias("probability"),
        F.lit(None).cast("int").alias("predicted_disrupted"),
        F.lit("unscorable").alias("status"), F.lit(reason).alias("reason"),
        *model_columns(model_name, version, run_id, role, threshold, features_version))
