"""Train stage: tune on gold.flight_features, log every trial, register, promote by alias."""

from __future__ import annotations

import time
from typing import Any

import mlflow
import mlflow.spark
from pyspark.sql import SparkSession

from lakehouse import registry, tables
from lakehouse.config import Config
from lakehouse.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from lakehouse.stages.audit import audited
from lakehouse.training import Windows, search_space, tune_and_fit


def run(spark: SparkSession, config: Config, run_id: str) -> dict[str, Any]:
    """Tune, fit and register a model; returns name, version, metrics and whether promoted."""
    settings = config.section("train")
    mlflow_conf = registry.configure(config)
    windows = Windows.from_conf(settings)
    with audited(spark, config, run_id, "train", mlflow_conf["model_name"]) as audit:
        features_version = tables.version(spark, config, "flight_features")
        features = tables.read(spark, config, "flight_features", version=features_version).persist()
        with mlflow.start_run(run_name=f"tune-{run_id}") as parent:
            mlflow.log_params({**{f"window_{k}": v for k, v in vars(windows).items()},
                               "features_table": config.table("flight_features"),
                               "features_delta_version": features_version,
                               "silver_flights_delta_version":
                                   tables.version(spark, config, "silver_flights"),
                               "numeric_features": ",".join(NUMERIC_FEATURES),
                               "categorical_features": ",".join(CATEGORICAL_FEATURES),
                               "max_evals": settings["max_evals"],
                               "timeout_seconds": settings["timeout_seconds"]})
            mlflow.set_tag("lakehouse.run_id", run_id)
            trial_no = iter(range(10**6))

            def log_trial(params: dict[str, Any], metrics: dict[str, float]) -> None:
                with mlflow.start_run(run_name=f"trial-{next(trial_no)}", nested=True):
                    mlflow.log_params(params)
                    mlflow.log_metrics({f"validation_{k}": v for k, v in metrics.items()})

            started = time.monotonic()
            result = tune_and_fit(features, windows, int(settings["max_evals"]),
                                  int(settings["timeout_seconds"]), int(settings["seed"]),
                                  search_space(settings.get("search_space")), on_trial=log_trial)
            mlflow.log_params({f"best_{k}": v for k, v in result.best_params.items()})
            mlflow.log_metrics({**{f"validation_{k}": v
                                   for k, v in result.validation_metrics.items()},
                                **{f"holdout_{k}": v for k, v in result.holdout_metrics.items()},
                                "trials": result.trials,
                                "tuning_seconds": time.monotonic() - started})
            classifier = result.model.stages[-1]
            importances = classifier.featureImportances.toArray().tolist()  # type: ignore[attr-defined]
            names = [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]
            ranked = sorted(zip(names, importances, strict=True), key=lambda kv: -kv[1])
            mlflow.log_dict(dict(ranked), "feature_importances.json")
            info = mlflow.spark.log_model(result.model, artifact_path="model",
                                          registered_model_name=mlflow_conf["model_name"])
        version = str(info.registered_model_version)
        promoted = registry.promote_if_better(mlflow_conf["model_name"], version,
                                              mlflow_conf["alias"],
                                              result.holdout_metrics["auc_roc"])
        features.unpersist()
        audit.update(version_read=features_version,
                     message=f"model version {version}, holdout AUC-ROC "
                             f"{result.holdout_metrics['auc_roc']:.4f}, promoted={promoted}")
    return {"model_name": mlflow_conf["model_name"], "version": version, "promoted": promoted,
            "run_id": parent.info.run_id, "holdout": result.holdout_metrics,
            "validation": result.validation_metrics, "best_params": result.best_params,
            "trials": result.trials,
            "holdout_window": f"{windows.holdout_from}..{windows.holdout_to}"}
