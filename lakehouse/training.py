"""Model training: MLlib pipelines tuned by Hyperopt (TPE), evaluated on a time-based holdout.

Pure of IO: takes DataFrames, returns fitted models and metrics. Tracking is done by the caller
through the `on_trial` callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hyperopt import STATUS_OK, Trials, fmin, hp, space_eval, tpe
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import SQLTransformer, StringIndexer, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.features import CATEGORICAL_FEATURES, LABEL, NUMERIC_FEATURES

MISSING = -999.0  # trees split missing values off from every real value
INTEGER_PARAMS = ("maxDepth", "maxIter", "minInstancesPerNode")
DEFAULT_BOUNDS = {"maxDepth": (3, 8), "maxIter": (20, 90), "stepSize": (0.03, 0.3),
                  "subsamplingRate": (0.6, 1.0), "minInstancesPerNode": (1, 60)}


def search_space(bounds: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hyperopt space over GBT parameters from [low, high] bounds (conf: train.search_space).

    Bounds [v, v] pin a parameter at v (a Hyperopt range must be wider than a point).
    """
    b = {**DEFAULT_BOUNDS, **{k: tuple(v) for k, v in (bounds or {}).items()}}
    unknown = set(b) - set(DEFAULT_BOUNDS)
    if unknown:
        raise ValueError(f"unknown search_space parameters {sorted(unknown)}; "
                         f"known are {sorted(DEFAULT_BOUNDS)}")
    ranges: dict[str, Callable[[float, float], Any]] = {
        "maxDepth": lambda low, high: hp.quniform("maxDepth", low, high, 1),
        "maxIter": lambda low, high: hp.quniform("maxIter", low, high, 10),
        "stepSize": lambda low, high: hp.loguniform("stepSize", np.log(low), np.log(high)),
        "subsamplingRate": lambda low, high: hp.uniform("subsamplingRate", low, high),
        "minInstancesPerNode": lambda low, high: hp.quniform("minInstancesPerNode", low, high, 1),
    }
    return {k: low if low == high else ranges[k](low, high) for k, (low, high) in b.items()}


class TrainingDataError(ValueError):
    """A training or holdout window has no rows or a single class."""


@dataclass(frozen=True)
class Windows:
    """Time-based split: fit on [train_from, validation_from), validate on
    [validation_from, train_to], refit on the whole training window, test on the holdout."""

    train_from: str
    train_to: str
    validation_from: str
    holdout_from: str
    holdout_to: str

    @classmethod
    def from_conf(cls, section: dict[str, Any]) -> Windows:
        return cls(**{k: str(section[k]) for k in cls.__dataclass_fields__})


def between(start: str, end: str) -> Callable[[DataFrame], DataFrame]:
    """Rows whose flight_date lies in [start, end]."""
    return lambda df: df.filter(F.col("flight_date").between(F.lit(start).cast("date"),
                                                             F.lit(end).cast("date")))


def feature_pipeline() -> Pipeline:
    """Nulls to a sentinel, categories to indices, everything into one vector."""
    filled = ", ".join(f"coalesce(`{c}`, {MISSING}) AS `{c}__f`" for c in NUMERIC_FEATURES)
    indexers = [StringIndexer(inputCol=c, outputCol=f"{c}__idx", handleInvalid="keep")
                for c in CATEGORICAL_FEATURES]
    assembler = VectorAssembler(
        inputCols=[*(f"{c}__f" for c in NUMERIC_FEATURES),
                   *(f"{c}__idx" for c in CATEGORICAL_FEATURES)],
        outputCol="features", handleInvalid="keep")
    return Pipeline(stages=[SQLTransformer(statement=f"SELECT *, {filled} FROM __THIS__"),
                            *indexers, assembler])


def classifier(params: dict[str, Any], seed: int) -> GBTClassifier:
    typed = {k: int(v) if k in INTEGER_PARAMS else float(v) for k, v in params.items()}
    return GBTClassifier(labelCol=LABEL, featuresCol="features", maxBins=128, seed=seed,
                         **typed)  # type: ignore[arg-type]


def evaluate(predictions: DataFrame) -> dict[str, float]:
    """AUC-ROC and AUC-PR of scored rows."""
    evaluator = BinaryClassificationEvaluator(labelCol=LABEL, rawPredictionCol="rawPrediction")
    return {"auc_roc": evaluator.setMetricName("areaUnderROC").evaluate(predictions),
            "auc_pr": evaluator.setMetricName("areaUnderPR").evaluate(predictions)}


def check_window(df: DataFrame, name: str) -> None:
    """Fail clearly when a window cannot train or test a classifier (one small query)."""
    classes = [r[0] for r in df.select(LABEL).distinct().limit(2).collect()]
    if len(classes) < 2:
        raise TrainingDataError(f"the {name} window has {len(classes)} label class(es) "
                                f"{classes}; it needs flights both disrupted and not")


@dataclass(frozen=True)
class TuningResult:
    model: PipelineModel
    best_params: dict[str, Any]
    validation_metrics: dict[str, float]
    holdout_metrics: dict[str, float]
    trials: int


def tune_and_fit(features: DataFrame, windows: Windows, max_evals: int, timeout_s: int,
                 seed: int, space: dict[str, Any] | None = None,
                 on_trial: Callable[[dict[str, Any], dict[str, float]], None] | None = None,
                 ) -> TuningResult:
    """Tune a GBT classifier with Hyperopt on the validation slice, refit on the training window,
    and score the holdout.

    The feature pipeline is fitted once on the fit slice and its vectors cached, so each trial
    is one distributed MLlib fit.
    """
    fit_rows = features.transform(between(windows.train_from, windows.validation_from)).filter(
        F.col("flight_date") < F.lit(windows.validation_from).cast("date"))
    val_rows = features.transform(between(windows.validation_from, windows.train_to))
    train_rows = features.transform(between(windows.train_from, windows.train_to))
    holdout_rows = features.transform(between(windows.holdout_from, windows.holdout_to))
    for frame, name in ((fit_rows, "fit"), (val_rows, "validation"), (holdout_rows, "holdout")):
        check_window(frame, name)

    prep = feature_pipeline().fit(fit_rows)
    fit_vec = prep.transform(fit_rows).select("features", LABEL).persist()
    val_vec = prep.transform(val_rows).select("features", LABEL).persist()

    def objective(params: dict[str, Any]) -> dict[str, Any]:
        model = classifier(params, seed).fit(fit_vec)
        metrics = evaluate(model.transform(val_vec))
        if on_trial is not None:
            on_trial(params, metrics)
        return {"loss": -metrics["auc_roc"], "status": STATUS_OK, "metrics": metrics}

    trials = Trials()
    space = space or search_space()
    best = space_eval(space, fmin(objective, space, algo=tpe.suggest, max_evals=max_evals,
                                  trials=trials, timeout=timeout_s,
                                  rstate=np.random.default_rng(seed), show_progressbar=False))
    fit_vec.unpersist()
    val_vec.unpersist()
    best_params = {k: (int(v) if k in INTEGER_PARAMS else float(v)) for k, v in best.items()}
    validation = trials.best_trial["result"]["metrics"]

    final = Pipeline(stages=[*feature_pipeline().getStages(), classifier(best_params, seed)])
    model = final.fit(train_rows)
    holdout = evaluate(model.transform(holdout_rows))
    return TuningResult(model, best_params, validation, holdout, len(trials.trials))
