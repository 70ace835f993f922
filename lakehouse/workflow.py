"""The daily workflow: stages in order in one Spark session, with retries and a final report."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

from pyspark.sql import SparkSession

from lakehouse import registry, tables
from lakehouse.bronze import BronzeAccountingError
from lakehouse.config import Config
from lakehouse.contracts import ContractViolation
from lakehouse.stages import bronze, gold, score, silver, train
from lakehouse.tables import ConcurrentRunError
from lakehouse.training import TrainingDataError

log = logging.getLogger("lakehouse")
STAGES = ("bronze", "silver", "gold", "train", "score")
TRAIN_MODES = ("auto", "always", "never")
# Errors about the data, not the machine: retrying cannot help. Nor can retrying a run that
# overlapped another run of the same stream: a retry would race it again.
PERMANENT_ERRORS = (ContractViolation, TrainingDataError, score.NoChampionError, ValueError,
                    ConcurrentRunError, BronzeAccountingError, bronze.MigrationRequiredError,
                    gold.GoldInputError)
# How Spark's checkpoint and Delta's transaction check report a second writer of one stream
# (where no lock was taken, e.g. a checkpoint on S3): the same overlap, found later.
CONCURRENT_WRITERS = ("ConcurrentModificationException", "ConcurrentTransactionException",
                      "CONCURRENT_STREAM_LOG_UPDATE", "DELTA_CONCURRENT_TRANSACTION",
                      "Multiple streaming queries are concurrently using")


def is_permanent(error: BaseException) -> bool:
    """Whether retrying a stage that failed with error cannot help (or could do harm)."""
    return isinstance(error, PERMANENT_ERRORS) or any(
        marker in str(error) for marker in CONCURRENT_WRITERS)


class UnknownStageError(ValueError):
    """A stage name that the workflow does not have."""


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def with_retries(step: Callable[[], Any], name: str, retries: int) -> Any:
    """Run a stage, retrying transient failures; data errors fail at once."""
    for attempt in range(retries + 1):
        try:
            return step()
        except Exception as error:
            if is_permanent(error) or attempt == retries:
                raise
            log.warning("stage %s failed (attempt %d of %d); retrying", name, attempt + 1,
                        retries + 1, exc_info=True)
            time.sleep(2 ** attempt)
    return None


def run_stage(spark: SparkSession, config: Config, stage: str, run_id: str,
              score_range: tuple[str, str], full_gold: bool = False) -> Any:
    """Run one stage by name (full_gold: rebuild gold in full instead of incrementally)."""
    if stage not in STAGES:
        raise UnknownStageError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    if stage == "score":
        return score.run(spark, config, run_id, *score_range)
    if stage == "gold":
        return gold.run(spark, config, run_id, full=full_gold)
    module = {"bronze": bronze, "silver": silver, "train": train}[stage]
    return module.run(spark, config, run_id)


JOBS = ("daily", *STAGES)


def _day(value: str | None, name: str) -> str | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"{name}: expected a date as YYYY-MM-DD, got {value!r}") from None


def run_job(spark: SparkSession, config: Config, job: str, start: str | None = None,
            end: str | None = None, train_mode: str = "auto",
            stages: str | None = None, full_gold: bool = False) -> dict[str, Any]:
    """Run one job by name, as `lakehouse run`, spark-submit and the notebooks do.

    Args:
        spark: the session.
        config: the environment's configuration.
        job: "daily" or one stage.
        start, end: the flight dates to score (empty: the conf's score.from/score.to).
        train_mode: daily only: train when no champion exists (auto), always or never.
        stages: daily only: comma-separated subset of STAGES (empty: all).
        full_gold: rebuild gold in full instead of incrementally.

    Returns:
        Each stage's result by name, and the run id.
    """
    if job not in JOBS:
        raise UnknownStageError(f"unknown job {job!r}; jobs are {list(JOBS)}")
    score_conf = config.section("score")
    score_range = (_day(start, "from") or str(score_conf["from"]),
                   _day(end, "to") or str(score_conf["to"]))
    if job != "daily":
        run_id = new_run_id()
        return {"run_id": run_id, job: run_stage(spark, config, job, run_id, score_range,
                                                 full_gold)}
    chosen = tuple(stages.split(",")) if stages else STAGES
    for stage in chosen:
        if stage not in STAGES:
            raise UnknownStageError(f"unknown stage {stage!r} in stages; stages are "
                                    f"{list(STAGES)}")
    return run_daily(spark, config, score_range, chosen, train_mode, full_gold=full_gold)


def needs_training(config: Config, mode: str) -> bool:
    if mode not in TRAIN_MODES:
        raise ValueError(f"--train must be one of {list(TRAIN_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "always"
    mlflow_conf = registry.configure(config)
    return registry.champion(mlflow_conf["model_name"], mlflow_conf["alias"]) is None


def run_daily(spark: SparkSession, config: Config, score_range: tuple[str, str],
              stages: tuple[str, ...] = STAGES, train_mode: str = "auto",
              run_id: str | None = None, full_gold: bool = False) -> dict[str, Any]:
    """Bronze, silver, gold, (train), score, in one session; returns each stage's result."""
    run_id = run_id or new_run_id()
    retries = int(config.values.get("workflow", {}).get("retries", 1))
    results: dict[str, Any] = {"run_id": run_id}
    for stage in stages:
        if stage == "train" and not needs_training(config, train_mode):
            results["train"] = "skipped: a champion exists (use --train always to retrain)"
            continue
        started = time.monotonic()
        log.info("stage %s: starting (run %s)", stage, run_id)
        results[stage] = with_retries(
            partial(run_stage, spark, config, stage, run_id, score_range, full_gold), stage,
            retries)
        log.info("stage %s: done in %.1f s", stage, time.monotonic() - started)
    return results


REPORT_TABLES = ("bronze_flights", "bronze_weather", "silver_flights", "silver_weather",
                 "silver_planes", "silver_airports", "silver_airlines", "quarantine",
                 "flight_features", "route_daily_kpis", "delay_predictions", "audit")


def report(spark: SparkSession, config: Config, results: dict[str, Any]) -> str:
    """A short text report: tables with rows and Delta version, the model, predictions."""
    lines = [f"run {results.get('run_id')}", "",
             f"{'table':<20} {'rows':>10} {'version':>8}  location"]
    for name in REPORT_TABLES:
        if tables.exists(spark, config, name):
            rows = tables.read(spark, config, name).count()
            lines.append(f"{name:<20} {rows:>10} {tables.version(spark, config, name):>8}  "
                         f"{config.table(name)}")
        else:
            lines.append(f"{name:<20} {'-':>10} {'-':>8}  (not created)")
    mlflow_conf = registry.configure(config)
    current = registry.champion(mlflow_conf["model_name"], mlflow_conf["alias"])
    trained = results.get("train")
    lines.append("")
    if isinstance(trained, dict):
        holdout, every = trained["holdout"], trained["holdout_all_flights"]
        lines.append(f"model: {trained['model_name']} version {trained['version']} "
                     f"({trained['family']}, {trained['trials']} Hyperopt trials) -> "
                     f"@{trained['alias']}: {trained['decision']}")
        lines.append(f"holdout {trained['holdout_window']}: AUC-ROC {holdout['auc_roc']:.4f}, "
                     f"AUC-PR {holdout['auc_pr']:.4f}, Brier {holdout['brier']:.4f} (flights "
                     f"with a recorded tail; with the {trained['holdout_untailed_flights']} "
                     f"without one: AUC-ROC {every['auc_roc']:.4f})")
        baseline = trained["baseline"]["auc_roc"]
        verdict = "beats" if holdout["auc_roc"] > baseline else "does NOT beat"
        lines.append(f"historical-rate baseline: AUC-ROC {baseline:.4f} (the model {verdict} it)")
    if current is not None:
        auc = f"{current.holdout_auc_roc:.4f}" if current.holdout_auc_roc is not None else "n/a"
        lines.append(f"champion: models:/{current.name}@{mlflow_conf['alias']} = version "
                     f"{current.version} (holdout AUC-ROC {auc})")
    scored = results.get("score")
    if isinstance(scored, dict):
        lines.append(f"predictions: {scored['rows']} flights dated {scored['from']}..{scored['to']}"
                     f" in {scored['table']} (model version {scored['model_version']})")
    uri = mlflow_conf["tracking_uri"]
    lines.append(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000")
    return "\n".join(lines)
