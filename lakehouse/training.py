"""Model training: MLlib pipelines of several families tuned by Hyperopt (TPE), a decision
threshold chosen on validation, evaluated on a time-based holdout against a baseline.

Pure of IO: takes DataFrames, returns fitted models and metrics. Tracking is done by the caller
through the `on_trial` callback.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import is_remote

from lakehouse.config import ConfigError, names, number, whole_number
from lakehouse.evaluation import Histogram, histogram, positive_probability
from lakehouse.features import LABEL, TAIL_RECORDED
from lakehouse.models import (
    FAMILIES,
    TREE_FAMILIES,
    class_weights,
    classifier,
    corrected,
    flattened,
    full_pipeline,
    positive_share,
    prep_for,
    uncorrected,
    with_prior_correction,
    with_threshold,
    with_weight,
)
from lakehouse.session import inherit, pinned_threads
from lakehouse.tuning import (
    Budget,
    SearchSpaceError,
    SearchTrials,
    Trial,
    best_trial,
    first_points,
    search,
    search_space,
    space_points,
)

log = logging.getLogger("lakehouse")


class TrainingDataError(ValueError):
    """A training or holdout window has no rows or a single class."""


class WindowsError(ValueError):
    """The fit, validation and holdout windows are not in order or overlap."""


@dataclass(frozen=True)
class Windows:
    """Time-based split: fit on [train_from, validation_from), validate on
    [validation_from, train_to], refit on the whole training window, test on the holdout."""

    train_from: str
    train_to: str
    validation_from: str
    holdout_from: str
    holdout_to: str

    def __post_init__(self) -> None:
        days = {k: date.fromisoformat(v) for k, v in vars(self).items()}
        order = ("train_from", "validation_from", "train_to", "holdout_from", "holdout_to")
        strictly = {("train_from", "validation_from"), ("train_to", "holdout_from")}
        for a, b in itertools.pairwise(order):
            if days[a] > days[b] or ((a, b) in strictly and days[a] == days[b]):
                raise WindowsError(
                    f"train windows must satisfy train_from < validation_from <= train_to < "
                    f"holdout_from <= holdout_to (no day in two of fit, validation and "
                    f"holdout); got {a}={days[a]}, {b}={days[b]}")

    @classmethod
    def from_conf(cls, section: dict[str, Any]) -> Windows:
        return cls(**{k: str(section[k]) for k in cls.__dataclass_fields__})

    def slices(self) -> dict[str, tuple[str, str]]:
        """Each slice's first and last day (fit ends the day before validation starts)."""
        fit_to = date.fromordinal(date.fromisoformat(self.validation_from).toordinal() - 1)
        return {"fit": (self.train_from, fit_to.isoformat()),
                "validation": (self.validation_from, self.train_to),
                "train": (self.train_from, self.train_to),
                "holdout": (self.holdout_from, self.holdout_to)}


@dataclass(frozen=True)
class TrainSettings:
    """The train section of conf, less the windows."""

    families: list[str]
    class_weighting: list[str]
    search_space: dict[str, dict[str, Any]]
    budget: Budget
    seed: int
    baseline_days: int
    threshold_rule: str = "max_f1"
    promotion_margin: float = 0.0
    first_trials: tuple[str, ...] = ()  # families tried first, at their space's centre
    partitions: int = 2  # the rows' hash partitions (training_rows)

    @classmethod
    def from_conf(cls, section: dict[str, Any]) -> TrainSettings:
        """The settings, checked: an unknown key (a misspelt promotion_margin would otherwise
        be a margin of 0, a misspelt early_stop_trials no early stop) fails here."""
        where = "train"
        unknown = sorted(set(section) - TRAIN_KEYS)
        if unknown:
            raise ConfigError(f"train: unknown settings {unknown}; known are {sorted(TRAIN_KEYS)}")
        margin = section.get("promotion_margin")
        margin = 0.0 if margin is None else margin  # null: the default, as for the others
        if isinstance(margin, bool) or not isinstance(margin, int | float) \
                or not 0 <= margin < 1:
            raise ConfigError(f"train.promotion_margin: expected an AUC-ROC gain in [0, 1), "
                              f"got {margin!r}")
        budget = Budget(max_evals=whole_number(section, where, "max_evals"),
                        timeout_s=number(section, where, "timeout_seconds"),
                        early_stop_trials=whole_number(section, where, "early_stop_trials",
                                                       10**6),
                        parallelism=whole_number(section, where, "parallelism", 1),
                        startup_trials=whole_number(section, where, "startup_trials", 5))
        first = names(section, where, "first_trials", [])
        unknown = sorted(set(first) - set(FAMILIES))
        if unknown:
            raise ConfigError(f"train.first_trials: unknown families {unknown}; families are "
                              f"{list(FAMILIES)}")
        if len(set(first)) < len(first):  # the same point twice: a fit wasted
            raise ConfigError(f"train.first_trials: {first} names a family twice")
        rule = str(section.get("threshold_rule", "max_f1"))
        Histogram.empty().threshold_by(rule)  # a bad rule fails here, before any trial
        return cls(names(section, where, "families", ["gbt"]),
                   names(section, where, "class_weighting", ["none"]),
                   dict(section.get("search_space") or {}), budget,
                   whole_number(section, where, "seed", minimum=0),
                   whole_number(section, where, "baseline_days", 28),
                   rule, float(margin), tuple(first),
                   whole_number(section, where, "partitions", 2))


# Every key of the train section (the windows, the search, the gate): anything else is a typo.
TRAIN_KEYS = frozenset({
    "train_from", "train_to", "validation_from", "holdout_from", "holdout_to", "families",
    "class_weighting", "search_space", "max_evals", "timeout_seconds", "early_stop_trials",
    "startup_trials", "parallelism", "seed", "threshold_rule", "baseline_days",
    "promotion_margin", "gate_window", "gate_recent_days", "first_trials", "partitions"})


def between(start: str, end: str) -> Callable[[DataFrame], DataFrame]:
    """Rows whose flight_date lies in [start, end]."""
    return lambda df: df.filter(F.col("flight_date").between(F.lit(start).cast("date"),
                                                             F.lit(end).cast("date")))


def check_window(df: DataFrame, name: str) -> None:
    """Fail clearly when a window cannot train or test a classifier (one small query)."""
    classes = [r[0] for r in df.select(LABEL).distinct().limit(2).collect()]
    if len(classes) < 2:
        raise TrainingDataError(f"the {name} window has {len(classes)} label class(es) "
                                f"{classes}; it needs flights both disrupted and not")


def scored_histogram(model: PipelineModel, rows: DataFrame) -> Histogram:
    return histogram(model.transform(rows), LABEL, positive_probability())


@dataclass
class TuningResult:
    model: PipelineModel
    family: str
    best_params: dict[str, Any]
    weighting: str
    threshold: float
    validation: Histogram
    holdout: Histogram
    trials: SearchTrials  # with why the search ended
    # Holdout including the flights without a recorded tail (left out of training and of the
    # holdout metrics: they are all cancelled, so their missing plane features give the label
    # away), and how many there were.
    holdout_all_flights: Histogram
    holdout_untailed_flights: int
    # The threshold on the validation histogram's scale (the trial's model): a model fitted
    # with balanced class weights is prior-corrected after its refit (models.
    # with_prior_correction), its `threshold` moved with its probabilities.
    validation_threshold: float


class Vectors:
    """Per feature-preparation kind (trees, linear), the prep fitted once on the fit slice and
    the fit and validation rows as cached vectors, so each trial is one distributed fit."""

    def __init__(self, fit_rows: DataFrame, val_rows: DataFrame) -> None:
        self.fit_rows, self.val_rows = fit_rows, val_rows
        self.weights = class_weights(fit_rows)
        self._cache: dict[str, tuple[PipelineModel, DataFrame, DataFrame]] = {}
        # concurrent trials of one kind prepare it once; a trial of the other kind need not wait
        self._locks = {"trees": threading.Lock(), "linear": threading.Lock()}

    def get(self, family: str) -> tuple[PipelineModel, DataFrame, DataFrame]:
        kind = "trees" if family in TREE_FAMILIES else "linear"
        with self._locks[kind]:
            return self._prepared(kind, family)

    def _prepared(self, kind: str, family: str) -> tuple[PipelineModel, DataFrame, DataFrame]:
        if kind not in self._cache:
            prep = Pipeline(stages=prep_for(family)).fit(self.fit_rows)
            fit = (prep.transform(self.fit_rows).select("features", LABEL)
                   .transform(with_weight(self.weights)).persist())
            val = prep.transform(self.val_rows).select("features", LABEL).persist()
            # filled here, not in the first trial's fit: a trial's fit_seconds is its fit alone
            try:
                fit.count()
                val.count()
            except BaseException:  # e.g. the trial stopped at the time box: nothing is kept
                fit.unpersist()
                val.unpersist()
                raise
            self._cache[kind] = (prep, fit, val)
        return self._cache[kind]

    def release(self) -> None:
        for _, fit, val in self._cache.values():
            fit.unpersist()
            val.unpersist()


class TrialControl:
    """Where a search's trials run in Spark: each trial's jobs in a FAIR pool and under a job
    tag of their own, so that the search's time box can cancel a running trial with Spark's
    own cancellation (its fit then fails with a cancelled job). A tag adds to the thread's
    properties; a job group or description the thread had is left as it was.

    Spark Connect (Databricks standard and serverless compute) has no SparkContext: trials
    then run without pools and tags, in the server's scheduling, and are not cancelled; nor
    are they when PySpark's pinned thread mode is off (a thread's properties would then land
    on whichever JVM thread serves the call).
    """

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.classic = not is_remote() and pinned_threads()
        self.search_id = uuid.uuid4().hex[:12]  # tags unique among searches in one session

    def inherit(self, target: Callable[..., Any]) -> Callable[..., Any]:
        """The target a trial's thread runs, carrying the calling thread's Spark properties
        (`session.inherit`)."""
        return inherit(self.spark, target)

    def set_pool(self, pool: str | None) -> None:
        # None unsets the property (the thread's jobs go back to the default pool)
        self.spark.sparkContext.setLocalProperty("spark.scheduler.pool", pool)  # type: ignore[arg-type]

    def tag(self, number: int) -> str:
        return f"lakehouse-{self.search_id}-trial-{number}"

    @contextmanager
    def trial(self, number: int, family: str) -> Iterator[None]:
        """The calling thread's Spark jobs tagged as the trial's (and described by family)."""
        if not self.classic:
            yield
            return
        context = self.spark.sparkContext
        description = context.getLocalProperty("spark.job.description")
        context.setJobDescription(f"trial {number}: {family}")
        context.addJobTag(self.tag(number))
        try:
            yield
        finally:
            context.removeJobTag(self.tag(number))
            context.setJobDescription(description)  # type: ignore[arg-type]

    def stop(self, number: int) -> None:
        """Cancel the trial's running jobs (the search calls it again while the trial runs:
        a job it starts later is not cancelled by an earlier call)."""
        self.spark.sparkContext.cancelJobsWithTag(self.tag(number))


def training_rows(rows: DataFrame, partitions: int) -> DataFrame:
    """rows in `partitions` partitions by a hash of flight_id, each in flight_id order: the
    same rows always land in the same partition at the same place. MLlib's tree learners
    sample each partition with the seed and the partition's index (split candidates, the
    forests' and GBT's bagging), as does the Newton boosting's row sample, so the partitions
    decide the model. A sort (`orderBy`) does not fix them: its range bounds come from a
    sample seeded by the id of the RDD, which depends on the jobs the session ran before, and
    adaptive execution then merges ranges by size. A repartition to a number is not merged."""
    return rows.repartition(partitions, "flight_id").sortWithinPartitions("flight_id")


def tune_and_fit(spark: SparkSession, features: DataFrame, windows: Windows,
                 settings: TrainSettings,
                 on_trial: Callable[[Trial], None] | None = None) -> TuningResult:
    """Search families and parameters on the validation slice, refit the best on the training
    window, choose the threshold (max F1) on validation, and score the holdout.

    Flights without a recorded tail number are left out of fitting, validation and the holdout
    metrics (see lakehouse.features), and so are flights whose outcome is not reported yet.
    The rows are laid out by training_rows, so that the same table version, conf and seed give
    the same samples to every fit.
    """
    began = time.monotonic()  # the time box counts from here (train.timeout_seconds)
    every_flight = training_rows(features.filter(F.col(LABEL).isNotNull()),
                                 settings.partitions).persist()
    try:  # a failure releases what was cached too (a notebook or replay session goes on)
        return _tune_and_fit(spark, every_flight, windows, settings, on_trial, began)
    finally:
        every_flight.unpersist()


@dataclass
class SearchResult:
    trials: SearchTrials
    histograms: dict[int, Histogram]  # each successful trial's validation scores, by number


def _search(spark: SparkSession, vectors: Vectors, space: dict[str, Any],
            settings: TrainSettings,
            on_trial: Callable[[Trial], None] | None) -> SearchResult:
    """Run the trials on the cached fit and validation vectors; release those on the way out."""
    histograms: dict[int, Histogram] = {}

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        with control.trial(number, family):
            _, fit, val = vectors.get(family)  # the first trial of a kind prepares it
            began = time.monotonic()
            model = classifier(family, params, settings.seed, weighting == "balanced").fit(fit)
            fit_seconds = time.monotonic() - began  # what the search's time estimates rest on
            scored = histogram(model.transform(val), LABEL, positive_probability())
        histograms[number] = scored
        return scored.auc_roc(), {"fit_seconds": fit_seconds}

    control = TrialControl(spark)
    try:
        trials = search(objective, space, settings.budget, settings.seed,
                        set_pool=control.set_pool if control.classic else None,
                        on_done=on_trial, stop=control.stop if control.classic else None,
                        wrap=control.inherit,
                        first=first_points(list(settings.first_trials), settings.families,
                                           settings.search_space, settings.class_weighting))
    finally:
        vectors.release()
    return SearchResult(trials, histograms)


def check_space(settings: TrainSettings) -> None:
    """Build each family's estimator at a point of its space (no data, no fit): a parameter it
    does not take, takes from this job already (labelCol, seed, maxBins...) or of the wrong
    type raises here, naming the family."""
    for family, params in space_points(settings.families, settings.search_space, settings.seed):
        try:
            classifier(family, params, settings.seed, weighted=True)
        except (TypeError, ValueError) as error:
            raise SearchSpaceError(f"train.search_space.{family} {sorted(params)}: not "
                                   f"parameters this job can give {family}: {error}") from None


def _tune_and_fit(spark: SparkSession, every_flight: DataFrame, windows: Windows,
                  settings: TrainSettings, on_trial: Callable[[Trial], None] | None,
                  began: float) -> TuningResult:
    # The space is checked before anything is cached or fitted: a parameter a family does not
    # take (or one this job sets itself) fails the job here, not every trial of that family.
    space = search_space(settings.families, settings.search_space, settings.class_weighting)
    check_space(settings)
    rows = every_flight.filter(F.col(TAIL_RECORDED))
    slices = windows.slices()
    parts = {name: rows.transform(between(*span)) for name, span in slices.items()}
    for name in ("fit", "validation", "holdout"):
        check_window(parts[name], name)
    fit_rows, val_rows = parts["fit"].persist(), parts["validation"].persist()
    try:
        # the time box holds the preparation above and the refit of the best model on both
        # slices: the refit takes the best trial's fit time in proportion to the rows (the
        # counts fill the cached rows, which the first trial's preparation would do otherwise)
        fit_n, val_n = fit_rows.count(), val_rows.count()
        settings = replace(settings, budget=replace(
            settings.budget, refit_scale=(fit_n + val_n) / fit_n,
            spent_s=time.monotonic() - began))
        trials = _search(spark, Vectors(fit_rows, val_rows), space, settings, on_trial)
    finally:
        fit_rows.unpersist()
        val_rows.unpersist()
    best = best_trial(trials.trials)
    if best is None:
        errors = sorted({t.error or "no AUC" for t in trials.trials})
        raise TrainingDataError(f"all {len(trials.trials)} trials failed: {errors[:3]}")
    validation = trials.histograms[best.number]
    validation_threshold = validation.threshold_by(settings.threshold_rule)
    threshold = validation_threshold
    weighted = best.weighting == "balanced"
    train = parts["train"]
    model = flattened(full_pipeline(best.family, best.params, settings.seed, weighted).fit(
        train.transform(with_weight(weights := class_weights(train))) if weighted else train))
    if weighted:  # its probabilities back on the rows' own scale, the threshold with them
        share = positive_share(weights)
        model = with_prior_correction(model, share)
        if settings.threshold_rule.startswith("fixed:"):  # P is meant on the model's output
            validation_threshold = uncorrected(threshold, share)
        else:  # chosen on the trial's (weighted) probabilities: moved with them
            threshold = corrected(threshold, share)
    model = with_threshold(model, threshold)
    holdout_all = every_flight.transform(between(*slices["holdout"]))
    untailed = holdout_all.filter(~F.col(TAIL_RECORDED)).count()
    return TuningResult(model, best.family, best.params, best.weighting, threshold, validation,
                        scored_histogram(model, parts["holdout"]), trials.trials,
                        scored_histogram(model, holdout_all), untailed, validation_threshold)
