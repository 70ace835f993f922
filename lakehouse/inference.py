"""Batch scoring: features in, prediction rows out (pure; the stage does the IO)."""

from __future__ import annotations

from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

PREDICTION_KEYS = ("flight_id",)
# Columns whose change makes a re-score update a prediction row (scored_at alone does not).
PREDICTION_VALUES = ("probability", "prediction", "model_name", "model_version")


def score(model: PipelineModel, features: DataFrame, model_name: str,
          model_version: str) -> DataFrame:
    """One prediction row per flight: disruption probability, model name and version."""
    scored = model.transform(features)
    return scored.select(
        "flight_id", "flight_date", "sched_dep_utc", "carrier", "origin", "dest",
        F.round(vector_to_array(F.col("probability"))[1], 6).alias("probability"),
        F.col("prediction").cast("int").alias("prediction"),
        F.lit(model_name).alias("model_name"),
        F.lit(model_version).alias("model_version"),
        F.current_timestamp().alias("scored_at"),
    )
