"""MLflow tracking and registry: store set-up, champion look-up and promotion by alias."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lakehouse.config import Config

# The user's MLFLOW_TRACKING_URI, read once: mlflow.set_tracking_uri() later writes this variable
# itself, and a value it wrote must not pin every later config of this process to one store.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    holdout_auc_roc: float | None


def configure(config: Config) -> dict[str, Any]:
    """Point MLflow at the environment's store (MLFLOW_TRACKING_URI wins) and experiment."""
    settings = config.section("mlflow")
    uri = _USER_TRACKING_URI or settings["tracking_uri"]
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")) or ".", exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(settings.get("registry_uri") or uri)  # databricks-uc on Databricks
    name = settings["experiment"]
    if mlflow.get_experiment_by_name(name) is None:
        location = settings.get("artifact_location")
        mlflow.create_experiment(name, artifact_location=_as_uri(location) if location else None)
    mlflow.set_experiment(name)
    return {**settings, "tracking_uri": uri}


def _as_uri(location: str) -> str:
    return location if "://" in location else f"file://{os.path.abspath(location)}"


def champion(name: str, alias: str) -> Champion | None:
    """The model version behind the alias, with the holdout AUC its run logged."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    auc = None
    if version.run_id:
        auc = client.get_run(version.run_id).data.metrics.get("holdout_auc_roc")
    return Champion(name, str(version.version), auc)


def promote_if_better(name: str, version: str, alias: str, holdout_auc: float) -> bool:
    """Move the alias to the new version unless the current champion scored higher."""
    current = champion(name, alias)
    if current is not None and current.holdout_auc_roc is not None \
            and current.holdout_auc_roc > holdout_auc:
        return False
    MlflowClient().set_registered_model_alias(name, alias, version)
    return True
