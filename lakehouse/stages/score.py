"""Score stage: the champion model scores a date range into gold.delay_predictions (MERGE)."""

from __future__ import annotations

from typing import Any

import mlflow.spark
from pyspark.sql import SparkSession

from lakehouse import registry, tables
from lakehouse.config import Config
from lakehouse.inference import PREDICTION_KEYS, PREDICTION_VALUES, score
from lakehouse.stages.audit import audited
from lakehouse.training import between


class NoChampionError(RuntimeError):
    """No model version holds the champion alias yet: run the train job first."""


def run(spark: SparkSession, config: Config, run_id: str, start: str,
        end: str) -> dict[str, Any]:
    """Score flights dated start..end with models:/<name>@<alias>; idempotent by flight_id."""
    mlflow_conf = registry.configure(config)
    name, alias = mlflow_conf["model_name"], mlflow_conf["alias"]
    with audited(spark, config, run_id, "score", "delay_predictions") as audit:
        current = registry.resolve(name, alias)  # once: a promotion meanwhile changes nothing
        if current is None:
            raise NoChampionError(f"no version of model {name!r} has alias {alias!r} in "
                                  f"{mlflow_conf['tracking_uri']}; run the train job first")
        model = mlflow.spark.load_model(f"models:/{name}/{current.version}")
        version_read = tables.version(spark, config, "flight_features")
        features = tables.read(spark, config, "flight_features", version=version_read)
        predictions = score(model, features.transform(between(start, end)), name,
                            str(current.version)).persist()
        rows = predictions.count()
        tables.merge(spark, predictions, config, "delay_predictions", PREDICTION_KEYS,
                     changed_columns=PREDICTION_VALUES)
        predictions.unpersist()
        audit.update(rows_in=rows, rows_out=rows, version_read=version_read,
                     version_written=tables.version(spark, config, "delay_predictions"),
                     message=f"{name} v{current.version} scored {start}..{end}")
    return {"model_name": name, "model_version": str(current.version), "rows": rows,
            "table": config.table("delay_predictions"), "from": start, "to": end}
