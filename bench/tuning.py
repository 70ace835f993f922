"""Benchmark the tuning job on the full year against what a Spark user reaches for, in one run.

Three learners on the same gold features (flights with a recorded tail), the same training
window (Jan-Oct) and the same holdout (Nov-Dec):
  hyperopt  this job's search (families, TPE, conf budget: fit Jan-Sep, validate Oct, refit
            Jan-Oct), timed from the cached features to the refitted model;
  grid      MLlib's grid tuning over a ParamGridBuilder grid of GBT parameters on the same
            split (fit Jan-Sep, validate Oct, refit the best on Jan-Oct), timed alike;
  hgb       scikit-learn's HistGradientBoostingClassifier on the same features, converted once
            to pandas (single machine; AUC only): with its default settings, and, when the
            search's best is the Newton family, with that model's depth, rounds, step, leaf
            size and class weighting and its trees grown level by level as MLlib's are (like
            with like).
Prints each learner's holdout AUC-ROC and wall time, then the time ratio hyperopt / grid
(goal: the grid's AUC or better in at most half its time).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# the bench's own MLflow store under its data root, never the one a user's environment names
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)

from pyspark.ml import Pipeline
from pyspark.ml.classification import GBTClassifier
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.tuning import ParamGridBuilder
from pyspark.sql import functions as F

from bench.common import build_year, data_root
from lakehouse import tables
from lakehouse.config import load_config
from lakehouse.features import CATEGORICAL_FEATURES, LABEL, NUMERIC_FEATURES, TAIL_RECORDED
from lakehouse.models import MAX_BINS, tree_prep
from lakehouse.newton import NewtonBoostedTrees
from lakehouse.session import build_session
from lakehouse.training import TrainSettings, Windows, between, scored_histogram, tune_and_fit


def grid_search(train, holdout, windows: Windows):  # type: ignore[no-untyped-def]
    """MLlib's grid tuning on this job's split: every ParamGridBuilder point fitted on Jan-Sep
    (Estimator.fitMultiple, as CrossValidator does for each fold), scored on October with
    BinaryClassificationEvaluator, the best refitted on Jan-Oct. CrossValidator itself cannot
    take one fixed split (with foldCol every fold is validated once, so it would also fit on
    October and validate on Jan-Sep). Timed like the search: from the cached features, vector
    preparation fitted on the fit slice for the selection (as the job's), the best point
    refitted with its preparation on Jan-Oct, the holdout scored."""
    started = time.perf_counter()
    spans = windows.slices()
    fit_rows = train.transform(between(*spans["fit"]))
    prep = Pipeline(stages=tree_prep()).fit(fit_rows)
    fit = prep.transform(fit_rows).select("features", LABEL).persist()
    validation = prep.transform(train.transform(between(*spans["validation"]))).select(
        "features", LABEL).persist()
    gbt = GBTClassifier(labelCol=LABEL, featuresCol="features", maxBins=MAX_BINS, seed=42)
    grid = (ParamGridBuilder().addGrid(gbt.maxDepth, [4, 6, 8])
            .addGrid(gbt.maxIter, [50, 100]).addGrid(gbt.stepSize, [0.1]).build())
    evaluator = BinaryClassificationEvaluator(labelCol=LABEL, metricName="areaUnderROC")
    scores = [0.0] * len(grid)
    for index, model in gbt.fitMultiple(fit, grid):
        scores[index] = evaluator.evaluate(model.transform(validation))
    fit.unpersist()
    validation.unpersist()
    chosen = grid[max(range(len(grid)), key=scores.__getitem__)]
    model = Pipeline(stages=[*tree_prep(), gbt.copy(chosen)]).fit(train)
    auc = scored_histogram(model, holdout).auc_roc()  # the holdout AUC as the search's is taken
    took = time.perf_counter() - started
    best = {p.name: v for p, v in chosen.items()}
    return auc, took, best


def single_machine(train, holdout, family: str,  # type: ignore[no-untyped-def]
                   params: dict, weighting: str) -> list[tuple[str, float]]:
    """HistGradientBoosting on the same columns (categories as ordinal codes), converted once:
    with its default settings (trees grown leaf-wise, best split first, up to 31 leaves), and,
    when the search's best is the Newton family (second-order steps, as HistGradientBoosting
    takes; MLlib's GBT takes first-order ones, so its step is not the same), with that model's
    depth, rounds, step, leaf size and class weighting and trees grown level by level as
    MLlib grows them (like with like: what is left between the two is the learner, not its
    settings)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    columns = [*CATEGORICAL_FEATURES, *NUMERIC_FEATURES]
    fit = train.select(*columns, LABEL).toPandas()
    test = holdout.select(*columns, LABEL).toPandas()
    for c in CATEGORICAL_FEATURES:
        categories = sorted(fit[c].dropna().unique())
        fit[c] = fit[c].astype("category").cat.set_categories(categories).cat.codes
        test[c] = test[c].astype("category").cat.set_categories(categories).cat.codes
    settings = [("default settings", {})]
    if family == "newton_gbt":
        # the tuned values, else the estimator's defaults (a parameter the conf leaves out)
        defaults = {p.name: v for p, v in NewtonBoostedTrees().extractParamMap().items()}
        tuned = {**defaults, **params}
        # minInstancesPerNode counts a round's sampled rows; HistGradientBoosting has no row
        # subsampling, so its leaves hold the same share of all the rows
        rate = float(tuned["subsamplingRate"])
        settings.append((
            f"level-wise, the tuned {family}'s depth, rounds, step, leaf size and weighting", {
                "max_depth": int(tuned["maxDepth"]), "max_leaf_nodes": None,
                "max_iter": int(tuned["maxIter"]), "learning_rate": float(tuned["stepSize"]),
                "min_samples_leaf": max(1, round(int(tuned["minInstancesPerNode"]) / rate)),
                # balanced: each class weighs half of the rows, as models.class_weights
                "class_weight": "balanced" if weighting == "balanced" else None,
                "early_stopping": False, "max_bins": min(MAX_BINS, 255)}))
    aucs = []
    for name, options in settings:
        model = HistGradientBoostingClassifier(categorical_features=list(CATEGORICAL_FEATURES),
                                               random_state=42, **options)
        model.fit(fit[columns], fit[LABEL])
        aucs.append((name, float(roc_auc_score(test[LABEL],
                                               model.predict_proba(test[columns])[:, 1]))))
    return aucs


def compare_parallelism(spark, features, windows, settings, trials: int) -> None:  # type: ignore[no-untyped-def]
    """The same random search (same seed and trials, no time box, no early stop) with one
    trial at a time and with two at once, alternated twice; prints wall times and their
    ratio."""
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(2):
        for parallelism in (1, 2):
            # all trials random from the same seed: both searches fit the same models
            conf = {**settings, "parallelism": parallelism, "max_evals": trials,
                    "startup_trials": trials, "first_trials": [], "timeout_seconds": 10**6,
                    "early_stop_trials": 10**6}
            started = time.perf_counter()
            tuned = tune_and_fit(spark, features, windows, TrainSettings.from_conf(conf))
            times[parallelism].append(time.perf_counter() - started)
            print(f"parallelism {parallelism}: {len(tuned.trials)} trials + refit in "
                  f"{times[parallelism][-1]:.1f} s, holdout AUC-ROC {tuned.holdout.auc_roc():.4f}",
                  flush=True)
    best = {p: min(t) for p, t in times.items()}
    print(f"time parallelism 2 / parallelism 1 = {best[2] / best[1]:.2f} (best of two each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parallelism-only", action="store_true",
                        help="only time the same search with train.parallelism 1 and 2")
    parser.add_argument("--trials", type=int, default=8,
                        help="trials per search with --parallelism-only")
    parser.add_argument("--data-root", type=Path,
                        help="build the year here and keep it; a year built there before is "
                             "reused (default: a temporary folder, removed after)")
    args = parser.parse_args()
    # the job's own progress: one line per finished trial
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("lakehouse").setLevel(logging.INFO)
    work, keep = data_root(args.data_root, "bench-tuning-")
    try:
        config = load_config("local", overrides={"data_root": str(work)})
        spark = build_session(config)
        spark.sparkContext.setLogLevel("ERROR")
        build_year(spark, config, work)
        features = tables.read(spark, config, "flight_features").persist()
        features.count()
        settings = config.section("train")
        windows = Windows.from_conf(settings)
        if args.parallelism_only:
            compare_parallelism(spark, features, windows, settings, args.trials)
            return
        started = time.perf_counter()
        tuned = tune_and_fit(spark, features, windows, TrainSettings.from_conf(settings))
        hyperopt_s = time.perf_counter() - started
        labeled = features.filter(F.col(TAIL_RECORDED) & F.col(LABEL).isNotNull())
        train = labeled.transform(between(windows.train_from, windows.train_to))
        holdout = labeled.transform(between(windows.holdout_from, windows.holdout_to))
        check = scored_histogram(tuned.model, holdout).auc_roc()
        # each line printed as soon as measured: the grid alone takes tens of minutes
        lines = [f"hyperopt: holdout AUC-ROC {tuned.holdout.auc_roc():.4f} in {hyperopt_s:7.1f} s "
                 f"({len(tuned.trials)} trials, best {tuned.family} {tuned.best_params}; "
                 f"rescored {check:.4f})"]
        print(lines[-1], flush=True)
        for name, hgb_auc in single_machine(train, holdout, tuned.family, tuned.best_params,
                                            tuned.weighting):
            lines.append(f"hgb:      holdout AUC-ROC {hgb_auc:.4f} (scikit-learn "
                         f"HistGradientBoosting, single machine, {name})")
            print(lines[-1], flush=True)
        grid_auc, grid_s, grid_best = grid_search(train, holdout, windows)
        lines.append(f"grid:     holdout AUC-ROC {grid_auc:.4f} in {grid_s:7.1f} s "
                     f"(6 GBT points on the same split, best {grid_best})")
        print(lines[-1], flush=True)
        print("\n".join(lines))  # the three lines together, then the ratio last
        print(f"time hyperopt / grid = {hyperopt_s / grid_s:.2f}  (goal ≤ 0.50 with AUC ≥ grid's)")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
