"""What the exploration notebook plots, as small pandas frames computed in Spark.

Pure of IO except for `champion_run`, which reads the champion's MLflow run; every other
function takes DataFrames and returns a frame of a few hundred rows at most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.features import LABEL

RATE_DIMENSIONS = {"hour": F.col("sched_dep_hour"), "carrier": F.col("carrier"),
                   "month": F.month("flight_date")}


def disruption_rates(features: DataFrame, by: str) -> pd.DataFrame:
    """Flights and disruption rate per value of one dimension (hour, carrier or month)."""
    if by not in RATE_DIMENSIONS:
        raise ValueError(f"unknown dimension {by!r}; dimensions are {sorted(RATE_DIMENSIONS)}")
    return (features.groupBy(RATE_DIMENSIONS[by].alias(by))
            .agg(F.count("*").alias("flights"),
                 F.avg(F.col(LABEL).cast("double")).alias("disruption_rate"))
            .orderBy(by).toPandas())


def feature_histograms(features: DataFrame, columns: Sequence[str],
                       bins: int = 20) -> dict[str, pd.DataFrame]:
    """Per column, counts of disrupted and other flights in equal-width bins of its range.

    Nulls are left out (the model sees them as a sentinel value, not as part of the range).
    """
    bounds = features.agg(*(F.min(c).alias(f"{c}__min") for c in columns),
                          *(F.max(c).alias(f"{c}__max") for c in columns)).first()
    histograms = {}
    for column in columns:
        low, high = bounds[f"{column}__min"], bounds[f"{column}__max"]  # type: ignore[index]
        if low is None:
            continue
        width = (float(high) - float(low)) / bins or 1.0
        bucket = F.least(F.floor((F.col(column) - F.lit(low)) / width), F.lit(bins - 1))
        label = F.col(LABEL).cast("long")
        counts: pd.DataFrame = (
            features.filter(F.col(column).isNotNull()).groupBy(bucket.alias("bin"))
            .agg(F.sum(label).alias("disrupted"), F.sum(1 - label).alias("other"))
            .orderBy("bin").toPandas())
        counts["left"] = float(low) + counts["bin"] * width
        histograms[column] = counts
    return histograms


def roc_curve(scored: DataFrame, probability: str = "probability",
              points: int = 200) -> pd.DataFrame:
    """False and true positive rates at thresholds on a grid of `points` steps over [0, 1].

    Scores are rounded to the grid (one Spark aggregation); the curve runs from (0, 0) to (1, 1).
    """
    step = 1.0 / points
    grid = F.round(F.col(probability) / step).cast("int")
    label = F.col(LABEL).cast("long")
    per_score: pd.DataFrame = (
        scored.groupBy(grid.alias("score"))
        .agg(F.sum(label).alias("positives"), F.sum(1 - label).alias("negatives"))
        .orderBy(F.col("score").desc()).toPandas())
    tpr = per_score["positives"].cumsum() / max(per_score["positives"].sum(), 1)
    fpr = per_score["negatives"].cumsum() / max(per_score["negatives"].sum(), 1)
    return pd.DataFrame({"fpr": [0.0, *fpr], "tpr": [0.0, *tpr],
                         "threshold": [1.0, *(per_score["score"] * step)]})


def area_under(curve: pd.DataFrame) -> float:
    """The area under a ROC curve by the trapezoid rule."""
    fpr, tpr = curve["fpr"].to_numpy(), curve["tpr"].to_numpy()
    return float(((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2).sum())


def with_outcomes(predictions: DataFrame, features: DataFrame) -> DataFrame:
    """Prediction rows (flight_id, probability) joined with each flight's outcome."""
    return predictions.select("flight_id", "probability").join(
        features.select("flight_id", LABEL), on="flight_id", how="inner")


def calibration(scored: DataFrame, buckets: int = 10) -> pd.DataFrame:
    """Predictions against outcomes: per tenth of predicted probability, the flights, the mean
    prediction and the share of them that was disrupted (scored: see with_outcomes)."""
    bucket = F.least(F.floor(F.col("probability") * buckets), F.lit(buckets - 1))
    return (scored.groupBy(bucket.alias("bucket"))
            .agg(F.count("*").alias("flights"), F.avg("probability").alias("predicted"),
                 F.avg(F.col(LABEL).cast("double")).alias("observed"))
            .orderBy("bucket").toPandas())


@dataclass(frozen=True)
class ChampionRun:
    """The champion model version and what its MLflow run logged."""

    model_uri: str
    version: str
    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    feature_importances: dict[str, float]


def champion_run(model_name: str, alias: str) -> ChampionRun:
    """Read the run behind models:/<model_name>@<alias>: params, metrics, importances."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    version = client.get_model_version_by_alias(model_name, alias)
    if not version.run_id:
        raise ValueError(f"models:/{model_name}@{alias} (version {version.version}) names no "
                         "MLflow run: it was not registered by the train job")
    run = client.get_run(version.run_id)
    importances: dict[str, Any] = mlflow.artifacts.load_dict(
        f"runs:/{version.run_id}/feature_importances.json")
    return ChampionRun(f"models:/{model_name}@{alias}", str(version.version), version.run_id,
                       dict(run.data.params), dict(run.data.metrics),
                       {k: float(v) for k, v in importances.items()})
