"""Train stage: tune on gold.flight_features, log every trial, register, and let the gate decide
between @champion and @challenger on the same labeled window."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import mlflow
import mlflow.spark
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.utils.autologging_utils import disable_autologging
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import plots, registry, tables
from lakehouse.baseline import SCORE, historical_rate
from lakehouse.config import Config
from lakehouse.drift import FeatureReference, reference, references_to_json, with_moments
from lakehouse.evaluation import Histogram, histogram, positive_probability
from lakehouse.features import CATEGORICAL_FEATURES, LABEL, NUMERIC_FEATURES, TAIL_RECORDED
from lakehouse.lineage import code_version, redacted, table_versions
from lakehouse.models import importances, prior_share
from lakehouse.monitoring import PREDICTION
from lakehouse.stages.audit import audited
from lakehouse.training import (
    TrainingDataError,
    TrainSettings,
    TuningResult,
    Windows,
    between,
    check_space,
    scored_histogram,
    tune_and_fit,
)
from lakehouse.tuning import Trial

log = logging.getLogger("lakehouse")
MODEL_INPUTS = (*CATEGORICAL_FEATURES, *NUMERIC_FEATURES)
REFERENCE_ARTIFACT = "monitoring/reference.json"


class AfterDecisionError(RuntimeError):
    """The model is registered and its alias set, but a step the caller asked for after the
    decision (`on_decided`) failed: named with the version, so nobody trains another."""


class GateError(RuntimeError):
    """The champion could not be scored on the gate window, so the gate cannot decide."""


class GateWindowError(GateError, ValueError):
    """The gate window holds no day after the champion's training window: a data error,
    which retrying cannot cure (a ValueError, so the workflow does not retry it)."""


class ChampionChangedError(GateError, ValueError):
    """Another run moved @champion while this one trained: its gate compared against a model
    that no longer holds the alias. Not retried by the workflow (a ValueError): a retry would
    race that run again; run the train job again once it is done."""


def check_champion_unchanged(name: str, gated: Any, new_version: str | None = None) -> None:
    """Fail when @champion is no longer the version the gate compared against. MLflow's
    registry has no compare-and-set for aliases: this is checked before the model is
    registered and again just before its alias is set, which leaves only that moment open."""
    before = None if gated is None else str(gated.version)
    after = registry.holder(name, registry.CHAMPION)
    if before != after:
        registered = (f"version {new_version} stays registered without an alias"
                      if new_version else "nothing was registered")
        raise ChampionChangedError(
            f"@champion of {name} moved from {before or 'none'} to {after or 'none'} while this "
            f"run trained (another train run?); its gate compared against {before or 'none'}, "
            f"so it decides nothing: {registered}; run the train job again")


def model_requirements() -> list[str]:
    """The logged model's pip requirements, pinned to the versions this job runs with: pyspark
    (as MLflow's Spark flavor pins it), and pandas, numpy and pyarrow, which its pyfunc flavor
    loads with (MLflow adds itself). Given explicitly because MLflow would otherwise infer them
    by loading the model in a subprocess that starts a Spark session of its own: ~30 s a model
    on 2 cores, more than the fit of a small one."""
    from importlib.metadata import version

    # a local version label (+...) is dropped, as MLflow does: PyPI holds no such version
    return [*mlflow.spark.get_default_pip_requirements(),
            *(f"{name}=={version(name).split('+')[0]}" for name in ("pandas", "numpy",
                                                                    "pyarrow"))]


def trial_logger(parent_run_id: str, experiment_id: str):  # type: ignore[no-untyped-def]
    """Log each finished trial as a nested run of the parent (thread-safe client calls, with
    the trial's own start and end times)."""
    client = MlflowClient()

    def log_trial(trial: Trial) -> None:
        run = client.create_run(experiment_id, start_time=int(trial.started_at * 1000), tags={
            MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: f"trial-{trial.number}",
            "family": trial.family, "class_weighting": trial.weighting})
        now = int(time.time() * 1000)
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        params += [Param("family", trial.family), Param("class_weighting", trial.weighting)]
        metrics = [Metric("trial_seconds", trial.seconds, now, 0)]
        if "fit_seconds" in trial.extra:
            metrics.append(Metric("fit_seconds", trial.extra["fit_seconds"], now, 0))
        if trial.ok and trial.auc is not None:
            metrics.append(Metric("validation_auc_roc", trial.auc, now, 0))
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        if trial.error:
            client.set_tag(run.info.run_id, "error", trial.error[:5000])
        client.set_terminated(run.info.run_id, "FINISHED" if trial.ok else "FAILED",
                              end_time=int((trial.started_at + trial.seconds) * 1000))

    return log_trial


def gate_rows(features: DataFrame, windows: Windows, settings: dict[str, Any],
              champion_trained_to: str | None = None) -> tuple[DataFrame, str]:
    """The labeled window both models are scored on: the holdout, or its last N days; in
    either case only days after the champion's training window (a champion scored on days it
    was fitted on would look better than it is)."""
    start, end = windows.holdout_from, windows.holdout_to
    kind = settings.get("gate_window", "holdout")
    if kind not in ("holdout", "recent"):
        raise ValueError(f"train.gate_window: expected holdout or recent, got {kind!r}")
    if kind == "recent":
        days = settings.get("gate_recent_days")
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"train.gate_recent_days: expected a whole number of days >= 1, "
                             f"got {days!r}")
        start = max(start, (date.fromisoformat(end) - timedelta(days=days - 1)).isoformat())
    if champion_trained_to is not None and champion_trained_to >= start:
        start = (date.fromisoformat(champion_trained_to) + timedelta(days=1)).isoformat()
        if start > end:
            raise GateWindowError(f"the champion was trained on days up to {champion_trained_to}, "
                            f"which covers the whole gate window (..{end}): no day scores both "
                            f"models on rows neither was fitted on; train with a holdout "
                            f"after {champion_trained_to}")
    rows = features.filter(F.col(TAIL_RECORDED) & F.col(LABEL).isNotNull()).transform(
        between(start, end))
    # AUC-ROC needs both classes: without them it is NaN and no comparison would mean anything
    classes = [r[0] for r in rows.select(LABEL).distinct().limit(2).collect()]
    if len(classes) < 2:
        raise GateWindowError(f"the gate window {start}..{end} holds {len(classes)} label "
                              f"class(es) {classes} among its labeled flights with a recorded "
                              f"tail: AUC-ROC is undefined there, so the gate cannot compare "
                              f"models; widen the window (train.gate_recent_days, the holdout)")
    return rows, f"{start}..{end}"


def trained_to(version: Any) -> str | None:
    """The last day of a registered version's training window, as its run logged it."""
    if version is None or not getattr(version, "run_id", None):
        return None
    try:
        run = MlflowClient().get_run(version.run_id)
    except MlflowException as error:
        # the run was deleted, or the version was registered from another workspace: the
        # gate then uses its whole window (any other registry error fails the job)
        if not registry.run_gone(error):
            raise
        log.warning("champion version %s: its run %s is gone, so its training window is "
                    "unknown; the gate scores both models on the whole gate window",
                    getattr(version, "version", "?"), version.run_id)
        return None
    last: str | None = run.data.params.get("window_train_to")
    if last is None:  # registered by hand, or by a run that logged no windows
        log.warning("champion version %s: its run %s logged no window_train_to, so its "
                    "training window is unknown; the gate scores both models on the whole "
                    "gate window, which may hold days the champion was fitted on",
                    getattr(version, "version", "?"), version.run_id)
    return last


def champion_auc(name: str, version: str, rows: DataFrame) -> float:
    """The champion, loaded by version (resolved once), scored on the gate rows. Its loading
    failing (the registry or its artifact store not answering) says nothing about the model:
    the error says to run again, not to give up the champion."""
    try:
        model = mlflow.spark.load_model(f"models:/{name}/{version}")
    except Exception as error:
        gone = isinstance(error, MlflowException) and registry.run_gone(error)
        raise GateError(f"champion {name} version {version} could not be loaded "
                        f"({type(error).__name__}: {str(error)[:300]}); the gate cannot "
                        f"compare, nothing was registered: "
                        + (f"the registry no longer holds it or its model files; if so, remove "
                           f"the alias {name}@{registry.CHAMPION} so the new model takes it"
                           if gone else "run again once the registry and its artifact store "
                           "answer")) from error
    try:
        return scored_histogram(model, rows).auc_roc()
    except Exception as error:
        raise GateError(f"champion {name} version {version} cannot score the gate window "
                        f"({type(error).__name__}: {str(error)[:300]}); the gate cannot compare. "
                        f"If the features changed on purpose, remove the alias "
                        f"{name}@{registry.CHAMPION} so the new model takes it") from error


def drift_reference(model: Any, features: DataFrame,
                    windows: Windows) -> dict[str, FeatureReference]:
    """What the monitor compares each day with: the model features over the training window
    and the predicted probability over the holdout."""
    rows = features.filter(F.col(TAIL_RECORDED) & F.col(LABEL).isNotNull())
    # each reference takes four passes (cut points, top categories, bin counts, moments):
    # cached, the gold table is read and the model applied once, not four times
    train_rows = rows.transform(between(windows.train_from, windows.train_to)).select(
        *MODEL_INPUTS).persist()
    predicted = model.transform(rows.transform(between(windows.holdout_from,
                                                       windows.holdout_to)))
    scores = predicted.select(positive_probability().alias(PREDICTION)).persist()
    try:
        return {**with_moments(train_rows, reference(train_rows, list(NUMERIC_FEATURES),
                                                     list(CATEGORICAL_FEATURES))),
                **with_moments(scores, reference(scores, [PREDICTION], []))}
    finally:
        train_rows.unpersist()
        scores.unpersist()


def log_evaluation(result: TuningResult, baseline: Histogram, names: dict[str, float]) -> None:
    """Metrics, plots and importances of the tuned model on the parent run."""
    mlflow.log_metrics({
        **{f"validation_{k}": v
           for k, v in result.validation.metrics(result.validation_threshold).items()},
        **{f"holdout_{k}": v for k, v in result.holdout.metrics(result.threshold).items()},
        **{f"holdout_all_flights_{k}": v for k, v in
           result.holdout_all_flights.metrics(result.threshold).items()},
        "holdout_untailed_flights": result.holdout_untailed_flights,
        "baseline_holdout_auc_roc": baseline.auc_roc(),
        "baseline_holdout_auc_pr": baseline.auc_pr(),
        registry.THRESHOLD_TAG: result.threshold,
        "trials": len(result.trials),
        "failed_trials": sum(not t.ok for t in result.trials),
        "search_kept_for_refit_seconds": result.trials.kept_for_refit})
    mlflow.set_tag("search_ended", result.trials.ended[:5000])
    figures = {"plots/roc.png": plots.roc(result.holdout, baseline, "holdout ROC"),
               "plots/precision_recall.png": plots.precision_recall(
                   result.holdout, result.threshold, "holdout precision-recall"),
               "plots/calibration.png": plots.calibration(result.holdout, "holdout calibration"),
               "plots/importances.png": plots.importances(
                   names, "feature importances" if result.family != "logistic_regression"
                   else "coefficients (standardized features)")}
    for path, figure in figures.items():
        mlflow.log_figure(figure, path)
        plots.close(figure)
    mlflow.log_dict(names, "feature_importances.json")
    mlflow.log_dict({"trials": [
        {"number": t.number, "family": t.family, "class_weighting": t.weighting,
         "params": t.params, "validation_auc_roc": t.auc, "seconds": round(t.seconds, 2),
         "fit_seconds": (round(t.extra["fit_seconds"], 2) if "fit_seconds" in t.extra
                         else None), "error": t.error}
        for t in sorted(result.trials, key=lambda t: t.number)], "ended": result.trials.ended},
        "trials.json")


def run(spark: SparkSession, config: Config, run_id: str, windows: Windows | None = None,
        labels_known_at: datetime | None = None,
        on_decided: Callable[[str], None] | None = None,
        version_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Tune, fit, evaluate and register a model; the gate sets @champion or @challenger.

    Args:
        windows: fit, validation and holdout windows (default: conf's train section).
        labels_known_at: use only flights whose outcome was known by then (a retraining
            during the day uses what that day knows, by gold's known-at rule).
        on_decided: called with the MLflow run id once the gate's alias is set, after the
            audit row's message, before its append (a retraining closes the alerts it answers
            there); its failure fails the job with AfterDecisionError.
        version_tags: set on the registered version before its alias (what the caller finds
            it by later: the alerts a retraining answers).
    """
    settings = config.section("train")
    mlflow_conf = registry.configure(config)
    name = mlflow_conf["model_name"]
    windows = windows or Windows.from_conf(settings)
    train_settings = TrainSettings.from_conf(settings)
    check_space(train_settings)  # a space the estimators refuse fails before any run or query
    margin = train_settings.promotion_margin
    with audited(spark, config, run_id, "train", name) as audit:
        current = registry.resolve(name, registry.CHAMPION)  # a registry error fails here
        features_version = tables.version(spark, config, "flight_features")
        if features_version is None:
            raise TrainingDataError(f"flight_features does not exist at "
                                    f"{config.table('flight_features')}: run the gold job first")
        features = tables.read(spark, config, "flight_features", version=features_version)
        if labels_known_at is not None:
            features = features.filter(F.col("known_at_utc") <= F.lit(labels_known_at))
        # before tuning: a gate that cannot compare fails the job before its longest step
        rows, window = gate_rows(features, windows, settings, trained_to(current))
        with mlflow.start_run(run_name=f"tune-{run_id}") as parent:
            mlflow.set_tags({"lakehouse.run_id": run_id, "code_version": code_version()})
            mlflow.log_params({
                **{f"window_{k}": v for k, v in vars(windows).items()},
                "labels_known_at": str(labels_known_at or "all"),
                **table_versions(spark, config, features_version),
                "families": ",".join(train_settings.families),
                # the ones tried: a family not searched is left out (lakehouse.tuning)
                "first_trials": ",".join(f for f in train_settings.first_trials
                                         if f in train_settings.families) or "none",
                "class_weighting": ",".join(train_settings.class_weighting),
                "max_evals": train_settings.budget.max_evals,
                "timeout_seconds": train_settings.budget.timeout_s,
                "early_stop_trials": train_settings.budget.early_stop_trials,
                "parallelism": train_settings.budget.parallelism, "seed": train_settings.seed,
                "partitions": train_settings.partitions,
                "threshold_rule": train_settings.threshold_rule, "promotion_margin": margin})
            mlflow.log_dict(redacted(config.values), "conf/resolved.json")
            started = time.monotonic()
            # MLflow's autologging off for the tuning: Databricks turns it on for notebooks, and
            # each trial's fit, in a driver thread with no active run, would open a top-level
            # run of its own (and log inside the timed fit); the job logs what it fits itself.
            # MLflow's own scoped switch (mlflow.autolog(disable=True) would stay off after).
            with disable_autologging():
                result = tune_and_fit(spark, features, windows, train_settings,
                                      on_trial=trial_logger(parent.info.run_id,
                                                            parent.info.experiment_id))
            share = prior_share(result.model)
            mlflow.log_params({"best_family": result.family,
                               "best_class_weighting": result.weighting,
                               **({} if share is None else {"prior_positive_share": share}),
                               **{f"best_{k}": v for k, v in result.best_params.items()}})
            mlflow.log_metric("tuning_seconds", time.monotonic() - started)
            labeled = features.filter(F.col(TAIL_RECORDED)).transform(
                between(windows.holdout_from, windows.holdout_to))
            prior = tables.scalar(features.transform(between(
                windows.train_from, windows.train_to)).agg(F.avg(LABEL))) or 0.0
            baseline = histogram(historical_rate(features, train_settings.baseline_days,
                                                 float(prior), windows.holdout_from,
                                                 windows.holdout_to).filter(F.col(TAIL_RECORDED)),
                                 LABEL, F.col(SCORE))
            log_evaluation(result, baseline, importances(result.model, labeled))
            mlflow.log_text(references_to_json(drift_reference(result.model, features,
                                                               windows)),
                            REFERENCE_ARTIFACT)

            new_auc = (result.holdout.auc_roc() if window == f"{windows.holdout_from}.."
                       f"{windows.holdout_to}" else scored_histogram(result.model, rows).auc_roc())
            old_auc = champion_auc(name, str(current.version), rows) if current else None
            decision = registry.decide(new_auc, str(current.version) if current else None,
                                       old_auc, margin)
            mlflow.log_params({**decision.as_params(), "gate_window": window})
            mlflow.log_metrics({"gate_new_auc_roc": new_auc,
                                **({"gate_champion_auc_roc": old_auc} if old_auc is not None
                                   else {})})
            check_champion_unchanged(name, current)
            sample = labeled.select(*MODEL_INPUTS).limit(5)
            example = sample.toPandas()
            signature = infer_signature(example, result.model.transform(sample)
                                        .select("prediction").toPandas())
            info = mlflow.spark.log_model(result.model, artifact_path="model",
                                          registered_model_name=name, signature=signature,
                                          input_example=example,
                                          pip_requirements=model_requirements())
        version = str(info.registered_model_version)
        client = MlflowClient()
        tags = {registry.THRESHOLD_TAG: str(result.threshold), **(version_tags or {})}
        try:
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
        except Exception as error:
            raise RuntimeError(
                f"model {name} version {version} was registered, but setting its tags "
                f"{sorted(tags)} failed ({type(error).__name__}: {str(error)[:300]}); it holds "
                f"no alias and nothing scores with it: run the training again (the version "
                f"can be deleted)") from error
        check_champion_unchanged(name, current, version)
        decided = (f"model version {version} ({result.family}), holdout AUC-ROC "
                   f"{result.holdout.auc_roc():.4f}, baseline {baseline.auc_roc():.4f}; gate on "
                   f"{window}: {decision.alias}: {decision.reason}")
        # in the audit row before the alias moves: a failure from here on keeps it in the
        # failed row (after the error)
        audit.update(version_read=features_version, message=decided)
        registry.set_alias(name, decision.alias, version)
        log.info("model %s version %s: %s", name, version, decision.reason)
        if baseline.auc_roc() >= result.holdout.auc_roc():
            log.warning("the model (holdout AUC-ROC %.4f) does not beat the historical-rate "
                        "baseline (%.4f)", result.holdout.auc_roc(), baseline.auc_roc())
        try:
            if decision.promoted:  # the former challenger lost to the former champion
                registry.delete_alias(name, registry.CHALLENGER)
            if on_decided is not None:
                on_decided(parent.info.run_id)
        except Exception as error:
            rescore = (" The new champion has not scored the dates the old one did: run the "
                       "score job for them." if decision.promoted else "")
            raise AfterDecisionError(
                f"{name} version {version} is registered and holds @{decision.alias} "
                f"({decision.reason}), but what follows the decision failed: {error}. Do "
                "not run the train job again for it (it would register another version); "
                f"mend the cause and finish that step (a promotion removes @"
                f"{registry.CHALLENGER}).{rescore}") from error
    return {"model_name": name, "version": version, "promoted": decision.promoted,
            "alias": decision.alias, "decision": decision.reason, "gate_window": window,
            "run_id": parent.info.run_id, "family": result.family,
            "weighting": result.weighting, "best_params": result.best_params,
            "threshold": result.threshold,
            "holdout": result.holdout.metrics(result.threshold),
            "holdout_all_flights": result.holdout_all_flights.metrics(result.threshold),
            "holdout_untailed_flights": result.holdout_untailed_flights,
            "baseline": {"auc_roc": baseline.auc_roc(), "auc_pr": baseline.auc_pr()},
            "trials": len(result.trials),
            "failed_trials": sum(not t.ok for t in result.trials),
            "holdout_window": f"{windows.holdout_from}..{windows.holdout_to}"}
