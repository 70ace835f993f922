"""MLflow tracking and registry: store set-up, alias look-up and the promotion gate.

Only "this alias (or model) does not exist" counts as "no champion": any other registry error
(an unreachable server, a broken store, a permission error) is raised, so a model is never
promoted unchecked because the champion could not be looked up.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lakehouse.config import Config, is_url

log = logging.getLogger("lakehouse.registry")

# The user's MLFLOW_TRACKING_URI, read once: mlflow.set_tracking_uri() later writes this variable
# itself, and a value it wrote must not pin every later config of this process to one store.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
_USER_REGISTRY_URI = os.environ.get("MLFLOW_REGISTRY_URI")  # likewise (set_registry_uri)
CHAMPION, CHALLENGER = "champion", "challenger"
# The model version tag holding the decision threshold the train job chose (also the metric's
# name on the training run).
THRESHOLD_TAG = "decision_threshold"


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    holdout_auc_roc: float | None
    run_id: str | None = None


class RegistryConfigError(ValueError):
    """The mlflow section of conf names a store MLflow cannot use."""


def tracking_uri(config: Config) -> str:
    """The environment's MLflow store: MLFLOW_TRACKING_URI when set, else the conf's."""
    return str(_USER_TRACKING_URI or config.section("mlflow")["tracking_uri"])


def spark_models_through_volume(config: Config) -> str | None:
    """MLflow's Spark flavor saves and loads a model through the folder MLFLOW_DFS_TMP names
    (default /tmp/mlflow: the DBFS root on Databricks, which a workspace may disable, and which
    shared and serverless compute refuse). With the data root in a Unity Catalog volume, that
    is a folder of it, unless the variable is set. Returns the folder set, or None."""
    if os.environ.get("MLFLOW_DFS_TMP") or not config.data_root.startswith("/Volumes/"):
        return None
    folder = posixpath.join(config.data_root, "tmp", "mlflow")
    os.environ["MLFLOW_DFS_TMP"] = folder
    swept = sweep_model_copies(folder)
    if swept:
        log.info("MLflow's model copies: removed %d older than %s from %s", swept,
                 MODEL_COPIES_KEPT, folder)
    return folder


# How long a model copy MLflow's Spark flavor leaves in MLFLOW_DFS_TMP is kept: longer than any
# job that may still read it (the bundle's tasks time out within two hours).
MODEL_COPIES_KEPT = timedelta(days=2)


def sweep_model_copies(folder: str, kept: timedelta = MODEL_COPIES_KEPT) -> int:
    """Remove the copies of loaded models older than kept from folder; returns how many.
    On Databricks, `mlflow.spark.load_model` copies the model into a new folder of
    MLFLOW_DFS_TMP named by a UUID and never removes it (Spark may read it while the model is
    in use), so a daily job loading two to four models would fill the volume. Only folders
    named by a UUID are looked at (the rest of folder is not MLflow's), aged by their newest
    file (one being written, a model saved or copied now, is recent)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:  # not there yet
        return 0
    cutoff = (datetime.now(UTC) - kept).timestamp()
    removed = 0
    for entry in entries:
        try:
            is_copy = entry.is_dir(follow_symlinks=False) and str(uuid.UUID(entry.name)) \
                == entry.name
        except ValueError:
            continue
        newest = _newest_file(entry.path) if is_copy else None
        if newest is not None and newest < cutoff:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += not os.path.exists(entry.path)
    return removed


def _newest_file(folder: str) -> float | None:
    """When anything under folder last changed: its files' latest modification or status
    change (a copy keeps its source's modification time, not its status change time); with no
    file, the folder's own (None when the mount does not keep it: kept). A file another
    sweeper removed meanwhile is skipped."""
    def changed(path: str) -> float | None:
        try:
            found = os.stat(path)
        except FileNotFoundError:
            return None
        return max(found.st_mtime, found.st_ctime) or None

    times = [t for root, _, names in os.walk(folder) for name in names
             if (t := changed(os.path.join(root, name))) is not None]
    return max(times) if times else changed(folder)


def configure(config: Config) -> dict[str, Any]:
    """Point MLflow at the environment's store and registry (MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI win over conf) and experiment."""
    spark_models_through_volume(config)
    settings = config.section("mlflow")
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///") and is_url(uri.removeprefix("sqlite:///")):
        raise RegistryConfigError(
            f"MLflow store {uri}: a SQLite store needs a local file, and the data root is a URL "
            "(object storage): set MLFLOW_TRACKING_URI or mlflow.tracking_uri to an MLflow "
            "server (or databricks), and mlflow.artifact_location to where its artifacts go")
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")) or ".", exist_ok=True)
    mlflow.set_tracking_uri(uri)
    # MLFLOW_REGISTRY_URI wins as MLFLOW_TRACKING_URI does (e.g. databricks-uc from a job's
    # environment); else conf's registry_uri, else the tracking store's own registry
    mlflow.set_registry_uri(_USER_REGISTRY_URI or settings.get("registry_uri") or uri)
    name = settings["experiment"]
    if mlflow.get_experiment_by_name(name) is None:
        location = settings.get("artifact_location")
        mlflow.create_experiment(name, artifact_location=_as_uri(location) if location else None)
    mlflow.set_experiment(name)
    return {**settings, "tracking_uri": uri}


def _as_uri(location: str) -> str:
    """An artifact location as MLflow takes it: a local path as file://; Hadoop's s3a:// (the
    data root's scheme on a Spark cluster) as s3://, the same bucket, which MLflow knows."""
    if location.startswith("s3a://"):
        return "s3://" + location.removeprefix("s3a://")
    return location if "://" in location else f"file://{os.path.abspath(location)}"


def _missing(error: MlflowException) -> bool:
    """Whether a registry error says the model or the alias does not exist."""
    code = getattr(error, "error_code", "")
    text = str(error).lower()
    return run_gone(error) or (
        code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text)


def run_gone(error: MlflowException) -> bool:
    """Whether an MLflow error says what was asked for does not exist: a run (deleted and
    purged, or its version registered from another workspace), a model."""
    return getattr(error, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def resolve(name: str, alias: str) -> ModelVersion | None:
    """The model version behind name@alias, or None when the model or alias does not exist.

    Raises:
        MlflowException: any other registry error.
    """
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if _missing(error):
            return None
        raise


def holder(name: str, alias: str) -> str | None:
    """The version name@alias points at now, as a string; None when nothing holds it. What a
    job checks again before (and after) acting on a version it resolved earlier: MLflow's
    aliases have no compare-and-set."""
    found = resolve(name, alias)
    return None if found is None else str(found.version)


def champion(name: str, alias: str = CHAMPION) -> Champion | None:
    """The version behind the alias, with the holdout AUC-ROC its run logged."""
    version = resolve(name, alias)
    if version is None:
        return None
    auc = None
    if version.run_id:
        auc = MlflowClient().get_run(version.run_id).data.metrics.get("holdout_auc_roc")
    return Champion(name, str(version.version), auc, version.run_id)


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


@dataclass(frozen=True)
class GateDecision:
    """The outcome of comparing a new model with the champion on one labeled window."""

    promoted: bool
    alias: str
    reason: str
    new_auc: float
    champion_version: str | None
    champion_auc: float | None
    margin: float

    def as_params(self) -> dict[str, Any]:
        return {"gate_decision": "promoted" if self.promoted else "challenger",
                "gate_reason": self.reason[:500], "gate_margin": self.margin,
                "gate_champion_version": self.champion_version or "none"}


MARGIN_TOLERANCE = 1e-12


def decide(new_auc: float, champion_version: str | None, champion_auc: float | None,
           margin: float) -> GateDecision:
    """Promote when there is no champion, or when the new model's AUC-ROC beats the champion's
    on the same window by at least margin (and by more than nothing); otherwise the new model
    is the challenger."""
    if math.isnan(new_auc) or (champion_auc is not None and math.isnan(champion_auc)):
        # a NaN compares false with everything: it would make every new model a challenger
        raise ValueError(f"the gate cannot decide on an undefined AUC-ROC (new {new_auc}, "
                         f"champion {champion_auc}): a window without both classes, or scores "
                         f"that are not numbers")
    if champion_version is None:
        return GateDecision(True, CHAMPION, "no champion yet", new_auc, None, None, margin)
    if champion_auc is None:
        raise ValueError("the champion's AUC-ROC on the gate window is needed to decide")
    gain = new_auc - champion_auc
    # a tie never promotes, even at margin 0; a gain of the margin does, whatever the float
    # rounding of the difference (0.5126 - 0.5106 is 0.00199999...)
    promoted = gain > 0 and gain >= margin - MARGIN_TOLERANCE
    verb = "beats" if promoted else "does not beat"
    reason = (f"new AUC-ROC {new_auc:.4f} {verb} champion v{champion_version}'s "
              f"{champion_auc:.4f} by the margin {margin:.4f} (gain {gain:+.4f})")
    return GateDecision(promoted, CHAMPION if promoted else CHALLENGER, reason, new_auc,
                        champion_version, champion_auc, margin)


def delete_alias(name: str, alias: str) -> None:
    """Remove an alias if it is set."""
    try:
        MlflowClient().delete_registered_model_alias(name, alias)
    except MlflowException as error:
        if not _missing(error):
            raise
