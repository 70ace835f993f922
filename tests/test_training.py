"""Training on two real weeks: families searched with failures and concurrency, metrics checked
against scikit-learn, the gate with a real MLflow store, lineage and reproducibility."""

from __future__ import annotations

import itertools
import re
import shutil
import threading
import time
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import mlflow.pyspark.ml
import numpy as np
import pandas
import pyarrow
import pyspark
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from lakehouse import registry, tables, training, workflow
from lakehouse.config import Config
from lakehouse.evaluation import histogram
from lakehouse.features import FeatureSettings, flight_features
from lakehouse.stages import train
from lakehouse.training import TrialControl, Windows, WindowsError
from lakehouse.tuning import (
    Budget,
    SearchSpaceError,
    Trial,
    expected_seconds,
    first_points,
    search,
    search_space,
)
from tests.conftest import make_config
from tests.rows import silver_frames, source_rows

WINDOWS = {"train_from": "2013-01-01", "train_to": "2013-01-10",
           "validation_from": "2013-01-08", "holdout_from": "2013-01-11",
           "holdout_to": "2013-01-14"}
LR_ONLY = {**WINDOWS, "max_evals": 2, "timeout_seconds": 300, "families": ["logistic_regression"],
           "class_weighting": ["none"], "startup_trials": 1, "early_stop_trials": 10,
           "search_space": {"logistic_regression": {"regParam": [0.01, 0.01],
                                                    "elasticNetParam": [0.0, 0.0]}}}
STUMP = {**LR_ONLY, "families": ["gbt"], "max_evals": 1,
         "search_space": {"gbt": {"maxDepth": [1, 1], "maxIter": [1, 1],
                                  "subsamplingRate": [1.0, 1.0]}}}


def day_of(row: dict[str, str]) -> date:
    return date(int(row["year"]), int(row["month"]), int(row["day"]))


@pytest.fixture(scope="module")
def features_root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gold.flight_features of 2013-01-01..14, built from the real rows, in a Delta table."""
    root = tmp_path_factory.mktemp("training")
    config = make_config(root)
    days = {date(2013, 1, 1) + timedelta(days=i) for i in range(14)}
    frames = silver_frames(spark, source_rows("flights", lambda r: day_of(r) in days),
                           source_rows("weather", lambda r: day_of(r) in days))
    settings = FeatureSettings.from_conf(config.section("gold"))
    tables.overwrite(flight_features(frames["flights"], frames["weather"], frames["planes"],
                                     settings), config, "flight_features")
    return root


def config_for(root: Path, tmp_path: Path, train_conf: dict[str, Any], **mlflow: Any) -> Config:
    """The features table of root, an MLflow store of this test's own."""
    return make_config(root, train=train_conf, mlflow={
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "artifact_location": str(tmp_path / "mlruns"), **mlflow})


def test_metrics_agree_with_scikit_learn(spark: SparkSession) -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 4000)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 4000), 0, 1)
    df = spark.createDataFrame([(int(a), float(b)) for a, b in zip(y, p, strict=True)],
                               "disrupted int, p double")
    h = histogram(df, "disrupted", F.col("p"))
    assert h.auc_roc() == pytest.approx(roc_auc_score(y, p), abs=2e-4)
    assert h.log_loss() == pytest.approx(log_loss(y, p), rel=1e-9)
    assert h.brier() == pytest.approx(brier_score_loss(y, p), rel=1e-9)
    threshold = h.best_f1_threshold()
    at = h.at_threshold(threshold)
    predicted = p >= threshold
    assert at["precision"] == pytest.approx((y[predicted] == 1).mean(), abs=1e-9)
    assert at["recall"] == pytest.approx(predicted[y == 1].mean(), abs=1e-9)
    # the conf'd threshold rules
    assert h.threshold_by("max_f1") == threshold and h.threshold_by("fixed:0.4") == 0.4
    # a NaN or null probability is no score (scoring records such a flight unscorable), not a
    # confident positive: the metrics rest on the scored rows alone
    unscored = spark.createDataFrame([(0, float("nan")), (0, None), (1, float("nan"))],
                                     "disrupted int, p double")
    with_unscored = histogram(df.unionByName(unscored), "disrupted", F.col("p"))
    assert with_unscored.rows == h.rows == 4000
    assert with_unscored.auc_roc() == h.auc_roc()
    at_recall = h.threshold_by("recall:0.7")
    assert (p[y == 1] >= at_recall).mean() >= 0.7 > (p[y == 1] >= at_recall + 1e-4).mean()
    with pytest.raises(ValueError, match=r"train.threshold_rule 'recall:2'"):
        h.threshold_by("recall:2")


@pytest.mark.slow  # a bronze run first, then fits in its session
def test_models_fit_and_score_in_a_session_that_ran_bronze(spark: SparkSession,
                                                          tmp_path: Path) -> None:
    """A daily run trains in the session bronze used; models keeping a training summary hold
    that session and must still serialize (Spark's Observation once broke them)."""
    from pyspark.ml.classification import LogisticRegression, RandomForestClassifier
    from pyspark.ml.linalg import Vectors

    from lakehouse.evaluation import positive_probability
    from lakehouse.seed import seed
    from lakehouse.stages import bronze

    config = make_config(tmp_path)
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 1))
    bronze.run(spark, config, "run-1")
    rows = spark.createDataFrame([(Vectors.dense([float(i % 7)]), i % 2) for i in range(60)],
                                 ["features", "disrupted"])
    for estimator in (LogisticRegression(labelCol="disrupted"),
                      RandomForestClassifier(labelCol="disrupted", numTrees=2, seed=1)):
        scored = estimator.fit(rows).transform(rows)
        assert histogram(scored, "disrupted", positive_probability()).rows == 60


def test_a_models_class_is_taken_at_its_decision_threshold(spark: SparkSession,
                                                           tmp_path: Path) -> None:
    """with_threshold sets each MLlib family's class at the threshold, and it is saved with the
    model (the logged model predicts what the score job writes); read back from the model, it
    is what the score job uses for a version with no threshold tag or run metric."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import (
        GBTClassifier,
        LogisticRegression,
        RandomForestClassifier,
    )
    from pyspark.ml.linalg import Vectors

    from lakehouse.evaluation import positive_probability
    from lakehouse.models import decision_threshold, with_threshold
    from lakehouse.stages.score import Scorer, model_threshold, predictions_of

    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, 300)
    rows = spark.createDataFrame([(Vectors.dense([float(v)]), int(rng.uniform() < v))
                                  for v in x], ["features", "disrupted"])
    flights = rows.select(F.monotonically_increasing_id().cast("string").alias("flight_id"),
                          F.lit("2013-01-01").cast("date").alias("flight_date"),
                          F.lit("2013-01-01 12:00:00").cast("timestamp").alias("sched_dep_utc"),
                          *(F.lit(v).alias(c) for c, v in (("carrier", "UA"), ("origin", "EWR"),
                                                            ("dest", "ORD"))),
                          F.lit(True).alias("tail_recorded"), "features")
    for number, estimator in enumerate((
            LogisticRegression(labelCol="disrupted"),
            LogisticRegression(labelCol="disrupted", family="multinomial"),
            RandomForestClassifier(labelCol="disrupted", numTrees=3, maxDepth=3, seed=1),
            GBTClassifier(labelCol="disrupted", maxIter=3, maxDepth=2, seed=1))):
        fitted = estimator.fit(rows)
        assert decision_threshold(PipelineModel(stages=[fitted])) == 0.5  # MLlib's own
        for threshold in (0.3, 0.0, 1.0):
            model = with_threshold(PipelineModel(stages=[fitted]), threshold)
            if threshold == 0.3:  # saved with the model
                model.write().overwrite().save(str(tmp_path / str(number)))
                model = PipelineModel.load(str(tmp_path / str(number)))
                unset = PipelineModel(stages=[estimator.fit(rows)])
                unset.write().overwrite().save(str(tmp_path / f"unset{number}"))
                assert decision_threshold(PipelineModel.load(
                    str(tmp_path / f"unset{number}"))) == 0.5  # read back after a load too
            got = model.transform(rows).select(positive_probability().alias("p"),
                                               "prediction").collect()
            # MLlib: class 1 when p > t; at t = 0 always (the score job: p >= 0), at 1 never
            expected = [1.0 if threshold == 0 else 0.0 if threshold == 1
                        else float(r["p"] > threshold) for r in got]
            assert [r["prediction"] for r in got] == expected, (estimator, threshold)
            untagged = Scorer("m", "1", "", "champion", None)
            assert model_threshold(model, untagged) == pytest.approx(threshold)
            assert model_threshold(model, Scorer("m", "1", "", "champion", 0.6)) == 0.6
            if threshold == 0.3:
                assert 0 < sum(expected) < len(expected)
                # the score job's rows of a version without a tag or run metric
                written = predictions_of(model, untagged, flights, None, 0).collect()
                assert {r["threshold"] for r in written} == {model_threshold(model, untagged)}
                assert model_threshold(model, untagged) == pytest.approx(0.3)
                assert [r["predicted_disrupted"] for r in written] == [
                    int(r["probability"] >= 0.3) for r in written]
                assert 0 < sum(r["predicted_disrupted"] for r in written) < len(written)
    with pytest.raises(ValueError, match="not a probability"):
        with_threshold(model, 1.5)


def test_a_model_fitted_with_balanced_weights_predicts_on_the_rows_own_scale(
        spark: SparkSession, tmp_path: Path) -> None:
    """Balanced class weights make a model predict as if half the flights were disrupted: its
    probabilities are moved back to the rows' own positive share (Bayes' rule on the odds),
    the class at the threshold and the ranking unchanged, in a model MLlib saves and loads."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import GBTClassifier, LogisticRegression
    from pyspark.ml.linalg import Vectors

    from lakehouse.evaluation import positive_probability
    from lakehouse.models import (
        class_weights,
        decision_threshold,
        positive_share,
        prior_share,
        with_prior_correction,
        with_threshold,
        with_weight,
    )
    from lakehouse.newton import NewtonBoostedTrees

    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, 2000)
    y = (rng.uniform(size=x.size) < 1 / (1 + np.exp(-(1.5 * x - 1.5)))).astype(int)
    rows = spark.createDataFrame([(Vectors.dense([float(v)]), int(c))
                                  for v, c in zip(x, y, strict=True)],
                                 ["features", "disrupted"]).cache()
    weights = class_weights(rows)
    share = positive_share(weights)
    assert share == pytest.approx(y.mean())
    assert 0.2 < share < 0.35
    weighted_rows = rows.transform(with_weight(weights))
    for number, estimator in enumerate((
            LogisticRegression(labelCol="disrupted", weightCol="_weight"),
            GBTClassifier(labelCol="disrupted", weightCol="_weight", maxIter=10, maxDepth=2,
                          seed=1),
            NewtonBoostedTrees(labelCol="disrupted", weightCol="_weight", maxIter=10,
                               maxDepth=2, seed=1))):
        fitted = estimator.fit(weighted_rows)
        model = fitted if isinstance(fitted, PipelineModel) else PipelineModel(stages=[fitted])
        before = model.transform(rows).select(positive_probability().alias("q")).toPandas()
        assert before["q"].mean() > share + 0.1, estimator  # the weighted scale
        corrected_model = with_threshold(with_prior_correction(model, share), 0.3)
        assert prior_share(corrected_model) == pytest.approx(share)
        path = str(tmp_path / str(number))
        corrected_model.write().overwrite().save(path)
        loaded = PipelineModel.load(path)  # MLlib's own stages: no Python class needed
        assert prior_share(loaded) == pytest.approx(share)
        assert decision_threshold(loaded) == pytest.approx(0.3)
        got = loaded.transform(rows).select(positive_probability().alias("p"), "prediction",
                                            "disrupted").toPandas()
        # calibrated in the mean: the observed rate, where the weighted model was far above it
        assert got["p"].mean() == pytest.approx(share, abs=0.02), estimator
        # by the odds: q / (1 - q) x share / (1 - share)
        odds = before["q"] / (1 - before["q"]) * share / (1 - share)
        assert np.allclose(got["p"], odds / (1 + odds), atol=1e-9)
        # the class at the threshold on the corrected scale, the ranking the same
        away = (got["p"] - 0.3).abs() > 1e-9
        assert (got["prediction"][away] == (got["p"][away] > 0.3).astype(float)).all()
        assert 0 < got["prediction"].sum() < len(got)
        assert np.array_equal(np.argsort(got["p"].to_numpy(), kind="stable"),
                              np.argsort(before["q"].to_numpy(), kind="stable"))
    with pytest.raises(ValueError, match="corrected already"):
        with_prior_correction(corrected_model, share)
    rows.unpersist()


def test_the_training_rows_are_laid_out_alike_whatever_the_session_ran_before(
        spark: SparkSession) -> None:
    """MLlib's tree learners and the Newton boosting sample each partition by its index, so
    the same rows must land in the same partitions, in the same order, in every session. A
    sort did not do it: its range bounds come from a sample seeded by the RDD's id, which the
    jobs run before move (the same table, conf and seed gave other trees after other jobs)."""
    rows = spark.range(6000, numPartitions=3).select(
        F.format_string("2013-%05d", (F.col("id") * 7919) % 6000).alias("flight_id"))

    def layout() -> list[tuple[int, str]]:
        laid = training.training_rows(rows, 2).select(F.spark_partition_id(), "flight_id")
        return [(r[0], r[1]) for r in laid.collect()]

    first = layout()
    for n in range(6):  # other jobs in between: later RDD ids for the same query
        spark.range(50 + n).groupBy((F.col("id") % 3).alias("k")).count().collect()
    assert layout() == first
    by_partition = {p: [f for q, f in first if q == p] for p in (0, 1)}
    assert all(len(fs) > 2000 and fs == sorted(fs) for fs in by_partition.values())
    assert sorted(f for _, f in first) == sorted(r[0] for r in rows.collect())


def test_no_date_falls_in_two_of_fit_validation_and_holdout() -> None:
    slices = Windows.from_conf(WINDOWS).slices()
    days = {name: {date.fromisoformat(a) + timedelta(days=i) for i in range(
        (date.fromisoformat(b) - date.fromisoformat(a)).days + 1)} for name, (a, b) in
        slices.items()}
    assert not days["fit"] & days["validation"] and not days["validation"] & days["holdout"]
    assert days["fit"] | days["validation"] == days["train"]
    for bad in ({"validation_from": "2013-01-01"}, {"holdout_from": "2013-01-10"},
                {"train_to": "2013-01-07"}):
        with pytest.raises(WindowsError, match="no day in two of fit, validation and holdout"):
            Windows(**{**WINDOWS, **bad})


def test_the_gate_leaves_out_days_the_champion_was_trained_on(spark: SparkSession) -> None:
    """A champion retrained later than the new model's holdout starts is scored only on the
    days after its own training window (the same rows for both models); a champion trained
    on the whole gate window, or a misspelt gate_window, fails before any tuning."""
    days = [date(2013, 11, 1) + timedelta(days=i) for i in range(61)]
    features = spark.createDataFrame([(d, True, i % 2) for i, d in enumerate(days)],
                                     "flight_date date, tail_recorded boolean, disrupted int")
    windows = Windows("2013-01-01", "2013-10-31", "2013-10-01", "2013-11-01", "2013-12-31")
    rows, window = train.gate_rows(features, windows, {"gate_window": "holdout"}, "2013-10-31")
    assert window == "2013-11-01..2013-12-31" and rows.count() == 61
    rows, window = train.gate_rows(features, windows, {"gate_window": "holdout"}, "2013-12-01")
    assert window == "2013-12-02..2013-12-31"
    assert rows.agg(F.min("flight_date")).first()[0] == date(2013, 12, 2) and rows.count() == 30
    rows, window = train.gate_rows(features, windows, {"gate_window": "recent",
                                                       "gate_recent_days": 14}, "2013-12-01")
    assert window == "2013-12-18..2013-12-31" and rows.count() == 14
    with pytest.raises(train.GateWindowError, match=r"trained on days up to 2013-12-31") as e:
        train.gate_rows(features, windows, {"gate_window": "holdout"}, "2013-12-31")
    # a data error, not retried; a champion that cannot be loaded may be transient
    assert workflow.is_permanent(e.value) and not workflow.is_permanent(train.GateError("x"))
    with pytest.raises(ValueError, match=r"train.gate_window: expected holdout or recent"):
        train.gate_rows(features, windows, {"gate_window": "recnt"})
    # a window where AUC-ROC is undefined (one class: one day here) fails, before tuning
    with pytest.raises(train.GateWindowError, match=r"2013-12-31..2013-12-31 holds 1 label"):
        train.gate_rows(features, windows, {"gate_window": "recent", "gate_recent_days": 1})
    for bad in (0, -3, "7", 2.5, True):
        with pytest.raises(ValueError, match=r"train.gate_recent_days: expected a whole number"):
            train.gate_rows(features, windows, {"gate_window": "recent", "gate_recent_days": bad})


def test_a_champion_the_registry_cannot_load_fails_the_gate_without_advising_its_removal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry or artifact store not answering says nothing about the champion: the gate's
    error says to run again, not to remove @champion so an unchecked model takes it."""
    def unreachable(uri: str) -> Any:
        raise MlflowException("API request to /api/2.0/mlflow/model-versions/get failed "
                              "with error code 503")

    monkeypatch.setattr(mlflow.spark, "load_model", unreachable)
    with pytest.raises(train.GateError, match=r"champion m version 3 could not be loaded "
                       r"\(MlflowException: .*503\).*run again once the registry") as error:
        train.champion_auc("m", "3", None)  # type: ignore[arg-type]
    assert "remove the alias" not in str(error.value)

    def deleted(uri: str) -> Any:  # the version (or its files) deleted: running again won't do
        raise MlflowException("Model Version (name=m, version=3) not found",
                              error_code=RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr(mlflow.spark, "load_model", deleted)
    with pytest.raises(train.GateError, match=r"no longer holds it .* remove the alias m@champion"):
        train.champion_auc("m", "3", None)  # type: ignore[arg-type]


def test_a_champion_whose_run_is_gone_is_gated_on_the_whole_window(tmp_path: Path) -> None:
    """A version whose run was purged (or registered from another workspace) has no known
    training window: the gate uses its whole window instead of failing every retraining."""
    registry.configure(config_for(tmp_path, tmp_path, LR_ONLY))
    assert train.trained_to(SimpleNamespace(version="3", run_id="0" * 32)) is None
    assert train.trained_to(None) is None


def test_gate_decision_needs_the_margin() -> None:
    assert registry.decide(0.70, None, None, 0.002).promoted  # the first model
    assert registry.decide(0.703, "1", 0.700, 0.002).promoted
    worse = registry.decide(0.69, "1", 0.70, 0.002)
    assert not worse.promoted and worse.alias == "challenger" and "does not beat" in worse.reason
    assert not registry.decide(0.701, "1", 0.700, 0.002).promoted  # within the margin
    # a gain of exactly the margin promotes, whatever the float rounding of the difference
    assert 0.5126 - 0.5106 < 0.002 and registry.decide(0.5126, "1", 0.5106, 0.002).promoted
    assert not registry.decide(0.5125, "1", 0.5106, 0.002).promoted
    assert not registry.decide(0.7, "1", 0.7, 0.0).promoted  # a tie, even at margin 0
    with pytest.raises(ValueError, match="champion's AUC-ROC on the gate window is needed"):
        registry.decide(0.7, "1", None, 0.002)
    for new, champion in ((float("nan"), 0.7), (0.7, float("nan"))):
        with pytest.raises(ValueError, match="cannot decide on an undefined AUC-ROC"):
            registry.decide(new, "1", champion, 0.002)


def test_search_space_errors_name_the_entry() -> None:
    with pytest.raises(SearchSpaceError, match=r"unknown families \['xgboost'\]"):
        search_space(["gbt"], {"xgboost": {}}, ["none"])
    with pytest.raises(SearchSpaceError, match=r"gbt.stepSize: a log range needs low > 0"):
        search_space(["gbt"], {"gbt": {"stepSize": [0, 0.3, "log"]}}, ["none"])
    with pytest.raises(SearchSpaceError, match=r"class_weighting 'heavy' unknown"):
        search_space(["gbt"], {}, ["heavy"])


def test_a_failing_trial_is_recorded_and_the_search_goes_on() -> None:
    space = search_space(["logistic_regression", "gbt"], {}, ["none"])

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        if family == "gbt":
            raise RuntimeError("maxDepth 31 is out of range")
        return 0.6 + number / 1000, {}

    trials = search(objective, space, Budget(max_evals=8, timeout_s=60, early_stop_trials=100,
                                             startup_trials=3), seed=1)
    assert len(trials) == 8
    failed = [t for t in trials if not t.ok]
    assert failed and all("maxDepth 31" in (t.error or "") for t in failed)
    assert any(t.ok for t in trials)


@pytest.mark.parametrize("copying", [False, True], ids=["as-is", "sonify-copies"])
def test_tpe_learns_from_finished_trials(copying: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the random start, TPE's suggestions follow the results: one family scores far
    better, so most later trials pick it. With bson importable Hyperopt stores a copy of each
    trial (SONify); the search must set results on the stored trial, not its own."""
    import copy

    import hyperopt.base

    if copying:
        monkeypatch.setattr(hyperopt.base, "SONify", lambda arg, memo=None: copy.deepcopy(arg))
    space = search_space(["logistic_regression", "random_forest", "gbt"], {}, ["none"])

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        return (0.9 if family == "gbt" else 0.5), {}

    trials = search(objective, space, Budget(max_evals=30, timeout_s=60, early_stop_trials=100,
                                             startup_trials=6), seed=1)
    later = [t.family for t in trials if t.number > 6]
    assert later.count("gbt") >= 0.6 * len(later), later


def test_the_first_trials_run_first_at_the_centre_of_their_space_and_tpe_counts_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """train.first_trials of the shipped conf, as Hyperopt's points_to_evaluate: the Newton
    trial comes first, at the centre of its conf'd space, with the first class weighting; TPE
    is told its result like any other (read from the trials each suggestion is given), and
    its random start is not shortened by it. A named family the search does not take is left
    out."""
    import hyperopt

    from lakehouse.config import load_config

    conf = load_config("local").section("train")
    families, bounds = ["logistic_regression", "random_forest", "newton_gbt"], \
        conf["search_space"]
    assert conf["first_trials"] == ["newton_gbt"]
    space = search_space(families, bounds, conf["class_weighting"])
    first = first_points([*conf["first_trials"], "gbt"], families, bounds,
                         conf["class_weighting"])
    assert len(first) == 1  # gbt is not among the families searched here
    centre = {"maxDepth": 6.0, "maxIter": 50.0, "stepSize": pytest.approx(0.10),
              "minInstancesPerNode": 60.0, "subsamplingRate": 0.5}
    seen: list[tuple[int, list[tuple[dict[str, Any], dict[str, Any]]]]] = []
    suggest = hyperopt.tpe.suggest

    def recording(ids: Any, domain: Any, trials: Any, seed: int, **kwargs: Any) -> Any:
        seen.append((kwargs["n_startup_jobs"], [(t["misc"], dict(t["result"]))
                                                for t in trials.trials]))
        return suggest(ids, domain, trials, seed, **kwargs)

    monkeypatch.setattr(hyperopt.tpe, "suggest", recording)

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        return (0.9 if family == "newton_gbt" else 0.5), {}

    trials = search(objective, space, Budget(max_evals=4, timeout_s=60, early_stop_trials=100,
                                             startup_trials=3), seed=1, first=first)
    assert (trials[0].number, trials[0].family, trials[0].weighting) == (1, "newton_gbt", "none")
    assert trials[0].params == centre and len(trials) == 4
    assert len(seen) == 3  # TPE suggested the other three
    startup, told = seen[0]
    assert startup == 3 + 1  # the given trial does not take a random trial's place
    misc, result = told[0]
    vals, idxs, tid = misc["vals"], misc["idxs"], misc["tid"]
    assert vals["model"] == [families.index("newton_gbt")] and vals["class_weighting"] == [0]
    assert vals["newton_gbt.maxIter"] == [50.0] and vals["logistic_regression.regParam"] == []
    assert idxs["model"] == idxs["newton_gbt.maxIter"] == [tid]
    assert idxs["logistic_regression.regParam"] == []
    assert result == {"status": "ok", "loss": -0.9}
    # shaped as the docs TPE made itself: the same labels, an index where a value is
    made = seen[-1][1][1][0]
    assert made["vals"].keys() == vals.keys() == idxs.keys() == made["idxs"].keys()
    assert all(bool(idxs[k]) == bool(vals[k]) for k in vals)


def test_first_trials_naming_an_unknown_family_or_one_twice_fail_the_conf() -> None:
    with pytest.raises(training.ConfigError,
                       match=r"train.first_trials: unknown families \['xgboost'\]"):
        training.TrainSettings.from_conf({**LR_ONLY, "seed": 42, "first_trials": ["xgboost"]})
    with pytest.raises(training.ConfigError, match=r"names a family twice"):
        training.TrainSettings.from_conf({**LR_ONLY, "seed": 42,
                                          "first_trials": ["gbt", "gbt"]})
    assert training.TrainSettings.from_conf(
        {**LR_ONLY, "seed": 42, "first_trials": ["gbt"]}).first_trials == ("gbt",)


def test_search_stops_early_when_the_best_does_not_improve() -> None:
    space = search_space(["logistic_regression"], {}, ["none"])
    trials = search(lambda *_: (0.7, {}), space, Budget(max_evals=30, timeout_s=60,
                                                         early_stop_trials=3), seed=1)
    assert len(trials) == 4  # the first sets the best, three more do not improve it
    assert trials.ended.startswith("early stop"), trials.ended


class JavaError(Exception):
    """An error of the shape py4j raises for a failed JVM call (Py4JJavaError needs a live
    JavaObject): py4j's line naming the call first, the Java exception apart."""

    java_exception = SimpleNamespace(toString=lambda: (
        "org.apache.spark.SparkException: Job 7 cancelled part of cancelled job tag trial-2"))

    def __str__(self) -> str:
        return f"An error occurred while calling o123.fit.\n: {self.java_exception.toString()}"


def test_the_time_box_stops_running_trials_once_one_succeeded() -> None:
    """A trial still running when the time box ends is stopped, again until it ends (a stop
    may land before its Spark job starts), and recorded as stopped; the first trial, without
    which there is no model, is let finish."""
    space = search_space(["logistic_regression"], {}, ["none"])
    second_started, stopped_twice = threading.Event(), threading.Event()
    stops: list[int] = []

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        if number == 1:
            second_started.wait(30)
            time.sleep(1.5)  # past the time box: still let finish, it is the only model
            return 0.6, {}
        second_started.set()
        if not stopped_twice.wait(60):  # the first stop "missed" (no job running yet)
            return 0.7, {}
        raise JavaError()

    def stop(number: int) -> None:
        stops.append(number)
        if len(stops) == 2:
            stopped_twice.set()

    started = time.monotonic()
    trials = search(objective, space, Budget(max_evals=5, timeout_s=1.0, early_stop_trials=100,
                                             parallelism=2), seed=1, stop=stop)
    assert time.monotonic() - started < 30
    assert stops[:2] == [2, 2] and set(stops) == {2}
    assert [(t.number, t.ok) for t in sorted(trials, key=lambda t: t.number)] == [(1, True),
                                                                                (2, False)]
    # what it ended with, as the JVM said it (not py4j's line naming the call)
    assert next(t for t in trials if t.number == 2).error == (
        "stopped at the time box (1 s); it ended with JavaError: "
        "org.apache.spark.SparkException: Job 7 cancelled part of cancelled job tag trial-2")


def test_a_trial_that_would_run_past_the_time_box_is_not_started(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 1's fit took 600 s and the box is 60 s: a second trial of its family would be
    stopped at the box, so none starts (three suggestions refused) and the search ends with
    nothing to stop. The refused points do not count toward TPE's random start."""
    import lakehouse.tuning

    space = search_space(["logistic_regression"], {}, ["none"])
    stops: list[int] = []
    startup: list[int] = []
    suggest = lakehouse.tuning.tpe.suggest

    def watched(*args: Any, n_startup_jobs: int, **kwargs: Any) -> Any:
        startup.append(n_startup_jobs)
        return suggest(*args, n_startup_jobs=n_startup_jobs, **kwargs)

    monkeypatch.setattr(lakehouse.tuning.tpe, "suggest", watched)

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        return 0.6, {"fit_seconds": 600.0}

    trials = search(objective, space, Budget(max_evals=5, timeout_s=60.0, early_stop_trials=100),
                    seed=1, stop=stops.append)
    assert [t.number for t in trials] == [1] and not stops
    assert trials.ended.startswith("3 suggested trials in a row would have run past the time "
                                   "box (60 s)"), trials.ended
    assert startup == [5, 5, 6, 7]
    # without a way to stop trials, one started before the box runs to its end: it starts
    assert len(search(objective, space, Budget(max_evals=2, timeout_s=60.0,
                                               early_stop_trials=100), seed=1)) == 2


def test_no_trial_starts_with_less_time_left_than_any_trial_took() -> None:
    """Trial 1 (a GBT, given first) took 0.6 s of a 1 s box: with 0.4 s left, less than any
    trial of the search took, the logistic regression TPE draws next (a family not timed yet,
    which the family rule cannot refuse) is not started to be stopped at the box."""
    families = ["gbt", "logistic_regression"]
    space = search_space(families, {}, ["none"])
    ran: list[str] = []

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        ran.append(family)
        time.sleep(0.6)
        return 0.7, {}

    trials = search(objective, space, Budget(max_evals=5, timeout_s=1.0, early_stop_trials=100,
                                             startup_trials=3), seed=2, stop=lambda _: None,
                    first=first_points(["gbt"], families, {}, ["none"]))
    assert ran == ["gbt"], ran  # with seed 2 TPE's random start draws a logistic regression
    assert "less than the shortest trial of this search (1 s)" in trials.ended, trials.ended


def test_the_time_box_keeps_the_refit_of_the_best_trial() -> None:
    """With refit_scale, the box holds the refit of the best model: once a logistic
    regression whose fit took 40 s is the best, 1.5 x 40 = 60 s of a 75 s box are kept, so
    neither a forest (its 20 s fit + that refit: 80 s) nor another logistic regression (40 s +
    its own refit, 60 s) fits, and none starts; without the scale every suggestion fits the
    box. A best fit whose refit alone fills the box ends the search after that trial, also
    without a way to stop trials."""
    space = search_space(["logistic_regression", "random_forest"], {}, ["none"])

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        seconds = {"logistic_regression": 40.0, "random_forest": 20.0}[family]
        return (0.7 if family == "logistic_regression" else 0.6), {"fit_seconds": seconds}

    def trials_of(scale: float, timeout: float, stop: Any = None) -> Any:
        return search(objective, space, Budget(max_evals=8, timeout_s=timeout,
                                               early_stop_trials=100, startup_trials=8,
                                               refit_scale=scale), seed=3, stop=stop)

    unscaled = trials_of(0.0, 75.0, stop=lambda _: None)
    assert len(unscaled) == 8 and unscaled.ended == "max_evals: 8 trials"
    scaled = trials_of(1.5, 75.0, stop=lambda _: None)
    families = [t.family for t in scaled]
    assert families[-1] == "logistic_regression" and families.count("logistic_regression") == 1
    assert scaled.ended.startswith("3 suggested trials in a row would have run past the time "
                                   "box (75 s) at 0 s (the last ~"), scaled.ended
    alone = trials_of(4.0, 100.0)  # 160 s of refit: the search is over at once
    assert alone.ended == "the time box (100 s), which the best model's refit (~160 s) fills"
    assert [t.family for t in alone][-1] == "logistic_regression"


def test_a_suggested_trial_leaves_room_for_its_own_refit() -> None:
    """A forest whose fit took 50 s is slower than the best model (a logistic regression,
    40 s): a second forest would need its 50 s and, should it be the best, its own refit (1.5 x
    50 s), 125 s of the 120 s box, and does not start; with the best's refit alone (60 s) it
    would fit."""
    space = search_space(["logistic_regression", "random_forest"], {}, ["none"])

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        if family == "logistic_regression":
            return 0.7, {"fit_seconds": 40.0}
        return 0.6, {"fit_seconds": 50.0}

    trials = search(objective, space, Budget(max_evals=8, timeout_s=120.0, early_stop_trials=100,
                                             startup_trials=8, refit_scale=1.5),
                    seed=3, stop=lambda _: None)
    families = [t.family for t in trials]
    assert families.count("random_forest") == 1 and len(families) == 8, families


def test_a_suggested_trial_is_judged_by_its_whole_time() -> None:
    """A trial's time outside its fit (scoring, preparation) counts too, as it does when a
    running trial is cut off: trial 1 took ~1 s, 0.1 s of it the fit; a second, needing ~1 s
    and as long a refit should it be the best, does not fit the ~1.5 s left of a 2.5 s box (its
    0.1 s fit alone would, and the search would then start it)."""
    space = search_space(["logistic_regression"], {}, ["none"])

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        time.sleep(1.0)
        return 0.7, {"fit_seconds": 0.1}

    trials = search(objective, space, Budget(max_evals=3, timeout_s=2.5, early_stop_trials=100,
                                             refit_scale=1.0), seed=1, stop=lambda _: None)
    assert len(trials) == 1 and trials.ended.startswith("3 suggested trials in a row"), (
        len(trials), trials.ended)


def test_a_running_trial_is_stopped_when_a_refit_would_end_past_the_box() -> None:
    """A running trial's own refit, should it be the best, takes no less than it has run: with
    refit_scale 1 and a 6 s box, a trial started at 0 s is stopped at ~3 s, one started then
    at ~4.5 s (the best, a 0.1 s fit, would leave them until 5.9 s). And when the best's refit
    is the larger (a 5 s fit in an 8 s box), a trial started beside it at 0 s is stopped at
    8 - 5 = 3 s, not at its own 4 s. Each stopped trial says when and why."""
    space = search_space(["logistic_regression"], {}, ["none"])

    def searched(timeout: float, best_fit: float, parallelism: int) -> tuple[Any, dict[int, float]]:
        events: dict[int, threading.Event] = {}
        started = time.monotonic()
        when: dict[int, float] = {}

        def objective(number: int, family: str, params: dict[str, Any],
                      weighting: str) -> tuple[float, dict[str, Any]]:
            if number == 1:
                return 0.7, {"fit_seconds": best_fit}
            if not events.setdefault(number, threading.Event()).wait(30):
                return 0.5, {}
            raise RuntimeError("job cancelled")

        def stop(number: int) -> None:
            when.setdefault(number, time.monotonic() - started)
            events.setdefault(number, threading.Event()).set()

        trials = search(objective, space, Budget(max_evals=3, timeout_s=timeout,
                                                 early_stop_trials=100, parallelism=parallelism,
                                                 refit_scale=1.0), seed=1, stop=stop)
        return trials, when

    own = (r"stopped at \d+ s: its own refit, should it be the best \(no shorter than the \d+ s "
           r"it has run\), would end past the time box \(6 s\); it ended with RuntimeError: "
           r"job cancelled")
    trials, when = searched(6.0, 0.1, 1)
    assert [t.number for t in trials if t.ok] == [1]
    assert 2.9 < when[2] < 4.4 and when[2] + 1.4 < when[3] < 5.8, when
    errors = {t.number: t.error for t in trials if not t.ok}
    assert re.fullmatch(own, errors[2]) and re.fullmatch(own, errors[3]), errors

    trials, when = searched(8.0, 5.0, 2)
    assert [t.number for t in trials] == [1, 2] and 2.9 < when[2] < 3.9, when
    (error,) = [t.error for t in trials if not t.ok]
    assert re.fullmatch(r"stopped at \d s: the time box \(8 s, 5 s of it kept for the refit\); "
                        r"it ended with RuntimeError: job cancelled", error), error
    # the next suggestions (5 s + its 5 s refit in the 5 s left) were not started
    assert trials.ended.startswith("3 suggested trials in a row"), trials.ended


def test_the_time_box_counts_what_the_tuning_spent_before_the_search() -> None:
    """spent_s of the box went to the tuning's preparation (caching, window checks): with 2.5 s
    of a 3 s box spent, a running trial is stopped ~0.5 s into the search, not at 3 s."""
    space = search_space(["logistic_regression"], {}, ["none"])
    stopped = threading.Event()

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        if number == 1:
            return 0.7, {}
        if not stopped.wait(30):
            return 0.5, {}
        raise RuntimeError("job cancelled")

    began = time.monotonic()
    trials = search(objective, space, Budget(max_evals=3, timeout_s=3.0, early_stop_trials=100,
                                             spent_s=2.5), seed=1, stop=lambda _: stopped.set())
    assert time.monotonic() - began < 2.0
    assert [t.ok for t in trials] == [True, False] and trials.ended == "the time box (3 s)"


def test_a_trial_stopped_at_the_time_box_does_not_count_toward_the_early_stop() -> None:
    space = search_space(["logistic_regression"], {}, ["none"])
    stopped = threading.Event()

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        if number < 3:
            return (0.7 if number == 1 else 0.6), {}
        if not stopped.wait(30):
            return 0.5, {}
        raise RuntimeError("job cancelled")

    trials = search(objective, space, Budget(max_evals=5, timeout_s=3.0, early_stop_trials=2),
                    seed=1, stop=lambda _: stopped.set())
    assert [t.ok for t in sorted(trials, key=lambda t: t.number)] == [True, True, False]
    assert trials.ended == "the time box (3 s)"


def test_a_trials_expected_time_comes_from_its_familys_fastest_fit() -> None:
    def done(family: str, seconds: float, ok: bool = True, fit: float | None = None,
             **params: Any) -> Trial:
        return Trial(0, family, params, "none", seconds, auc=0.7 if ok else None,
                     error=None if ok else "failed",
                     extra={} if fit is None else {"fit_seconds": fit})

    finished = [done("gbt", 70.0, fit=40.0, maxIter=20, maxDepth=5),  # 30 s scoring
                done("gbt", 90.0, maxIter=30, maxDepth=5),
                done("gbt", 5.0, ok=False, maxIter=60, maxDepth=3),
                done("gbt", 80.0, maxIter=20, maxDepth=8),
                done("random_forest", 30.0, numTrees=20, maxDepth=6),
                done("random_forest", 60.0, numTrees=80, maxDepth=6),
                done("newton_gbt", 100.0),
                done("newton_gbt", 60.0, subsamplingRate=0.5),
                done("newton_gbt", 50.0, subsamplingRate=0.8)]
    # in proportion to the rounds, from the fit alone: 40 s / 20 rounds x 60, not 70 s / 20 x 60
    # (the depth-8 trial scaled down to depth 5: 80 s x 3 x 5 / 8 = 150 s)
    assert expected_seconds("gbt", {"maxIter": 60, "maxDepth": 5}, finished) == 120.0
    # scaled down to a smaller depth (40 s x 3 / 5), never up to a larger one
    assert expected_seconds("gbt", {"maxIter": 20, "maxDepth": 3}, finished) == 24.0
    assert expected_seconds("gbt", {"maxIter": 20, "maxDepth": 8}, finished) == 40.0
    assert expected_seconds("gbt", {"maxIter": 10, "maxDepth": 10}, finished) == 20.0
    # a forest only from forests of no more trees, not scaled by them
    assert expected_seconds("random_forest", {"numTrees": 80, "maxDepth": 6}, finished) == 30.0
    assert expected_seconds("random_forest", {"numTrees": 40, "maxDepth": 6}, finished) == 30.0
    assert expected_seconds("random_forest", {"numTrees": 10, "maxDepth": 6}, finished) is None
    # trees on a sample of the rows only from trials that sampled no more (a trial on more
    # rows, slower, would make the least time too high); rounds unknown: not scaled
    assert expected_seconds("newton_gbt", {"subsamplingRate": 0.5}, finished) == 60.0
    assert expected_seconds("newton_gbt", {"subsamplingRate": 0.8}, finished) == 50.0
    assert expected_seconds("newton_gbt", {"maxIter": 40}, finished) == 50.0
    # (MLlib's GBT samples after binning the rows: its rate is not taken into account)
    assert expected_seconds("gbt", {"maxIter": 20, "maxDepth": 5, "subsamplingRate": 0.9},
                            finished) == 40.0
    assert expected_seconds("logistic_regression", {}, finished) is None  # not tried yet


def test_a_failing_search_stops_its_running_trials_before_the_error_propagates() -> None:
    """An error in the search itself (here logging a finished trial, as an MLflow outage
    would) stops the trials still running instead of waiting for them, then propagates;
    concurrent trials run in pools of distinct free slots."""
    space = search_space(["logistic_regression"], {}, ["none"])
    stopped, pools = threading.Event(), []
    wrapped: list[int] = []

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        if number == 1:
            return 0.6, {}
        if not stopped.wait(60):  # a long fit, until stopped
            return 0.7, {}
        raise RuntimeError("job cancelled")

    def on_done(trial: Any) -> None:
        if trial.number == 1:
            raise OSError("tracking server unavailable")

    def wrap(target: Any) -> Any:  # called in the search's thread at each submission
        wrapped.append(threading.get_ident())
        return target

    started = time.monotonic()
    with pytest.raises(OSError, match="tracking server unavailable"):
        search(objective, space, Budget(max_evals=2, timeout_s=600, early_stop_trials=100,
                                        parallelism=2), seed=1,
               set_pool=lambda p: pools.append(p), on_done=on_done,
               stop=lambda n: stopped.set() if n == 2 else None, wrap=wrap)
    assert time.monotonic() - started < 30 and stopped.is_set()
    assert wrapped == [threading.get_ident()] * 2
    assert sorted(p for p in pools if p) == ["trial-0", "trial-1"]


def test_a_trial_takes_the_pool_of_a_free_slot() -> None:
    """Trial 1 ends while trial 2 runs: trial 3 takes trial 1's pool, not trial 2's."""
    space = search_space(["logistic_regression"], {}, ["none"])
    by_thread: dict[int, str] = {}
    seen: dict[int, str] = {}
    third = threading.Event()

    def set_pool(pool: str | None) -> None:
        if pool is not None:
            by_thread[threading.get_ident()] = pool

    def objective(number: int, family: str, params: dict[str, Any],
                  weighting: str) -> tuple[float, dict[str, Any]]:
        seen[number] = by_thread[threading.get_ident()]
        if number == 2:
            assert third.wait(30), "trial 3 never started beside trial 2"
        if number == 3:
            third.set()
        return 0.6, {}

    search(objective, space, Budget(max_evals=3, timeout_s=600, early_stop_trials=100,
                                    parallelism=2), seed=1, set_pool=set_pool)
    assert seen == {1: "trial-0", 2: "trial-1", 3: "trial-0"}


def test_a_trial_thread_carries_the_callers_job_group(spark: SparkSession) -> None:
    """A trial's thread inherits the caller's Spark properties: cancelling the caller's job
    group (as Databricks cancels a notebook command) cancels the trial's running job."""
    control = TrialControl(spark)
    outcome: dict[str, Any] = {}

    def trial() -> None:
        with control.trial(3, "gbt"):
            try:
                spark.range(0, 10**13, numPartitions=2).agg(F.sum(F.sqrt("id"))).collect()
                outcome["finished"] = True
            except Exception as error:
                outcome["error"] = str(error)

    context = spark.sparkContext
    context.setJobGroup("the-cell", "a notebook command")
    try:
        thread = threading.Thread(target=control.inherit(trial))
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        context.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
    started = time.monotonic()
    thread.start()
    tracker = context.statusTracker()
    while not tracker.getJobIdsForGroup("the-cell"):
        assert time.monotonic() - started < 60, "the trial's job never started in the group"
        time.sleep(0.2)
    context.cancelJobGroup("the-cell")
    thread.join(60)
    assert not thread.is_alive() and "finished" not in outcome
    assert "cancel" in outcome["error"].lower()


def test_a_trials_spark_jobs_are_cancelled_by_its_stop(spark: SparkSession) -> None:
    """The stop the training job gives the search cancels the trial's running Spark job (run
    from the trial's own thread, as the search runs it), and no other trial's; the thread's
    own job group and description are left as they were."""
    control = TrialControl(spark)
    outcome: dict[str, Any] = {}

    def trial() -> None:
        spark.sparkContext.setJobGroup("the-run", "a scheduled run")
        with control.trial(7, "gbt"):
            try:  # a job of hours on the JVM alone (no Python worker)
                spark.range(0, 10**13, numPartitions=2).agg(F.sum(F.sqrt("id"))).collect()
                outcome["finished"] = True
            except Exception as error:
                outcome["error"] = str(error)
        context = spark.sparkContext
        outcome["left"] = (context.getLocalProperty("spark.jobGroup.id"),
                           context.getLocalProperty("spark.job.description"),
                           set(context.getJobTags()))

    thread = threading.Thread(target=trial)
    started = time.monotonic()
    thread.start()
    tracker = spark.sparkContext.statusTracker()
    # the long job runs (its group's, not any stage a test before left in the session)
    while not tracker.getJobIdsForGroup("the-run"):
        assert time.monotonic() - started < 60, "the trial's job never started"
        time.sleep(0.2)
    control.stop(8)  # another trial's tag: nothing happens to this one
    time.sleep(1)
    assert thread.is_alive()
    control.stop(7)
    thread.join(60)
    assert not thread.is_alive() and time.monotonic() - started < 120
    assert "finished" not in outcome and "cancel" in outcome["error"].lower()
    assert outcome["left"] == ("the-run", "a scheduled run", set())
    assert not set(spark.sparkContext.getJobTags())  # nor did the test's own thread get a tag
    assert spark.range(3).count() == 3  # the session goes on


@pytest.mark.slow
def test_concurrent_trials_each_log_a_nested_run_with_lineage(
        spark: SparkSession, features_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    conf = {**LR_ONLY, "max_evals": 4, "parallelism": 2, "families": ["logistic_regression",
                                                                      "gbt"],
            "class_weighting": ["none", "balanced"],
            "search_space": {"gbt": {"maxDepth": [2, 3], "maxIter": [3, 5, 1]},
                             "logistic_regression": {"regParam": [0.001, 0.1, "log"]}}}
    hook = "https://hooks.example.com/services/T000/B000/s3cr3t"  # a webhook's URL: its token
    config = make_config(features_root, train=conf, monitor={"webhook_url": hook}, mlflow={
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "artifact_location": str(tmp_path / "mlruns")})
    given: dict[str, Any] = {}

    def watched(*args: Any, **kwargs: Any) -> Any:
        given.update(kwargs, budget=args[2])
        return search(*args, **kwargs)

    monkeypatch.setattr(training, "search", watched)
    # autologging on, as Databricks turns it on in notebooks: the trials' fits, in driver
    # threads with no active run, must not open top-level runs of their own
    mlflow.pyspark.ml.autolog(log_models=False, log_datasets=False, silent=True)
    try:
        result = train.run(spark, config, "concurrent")
    finally:
        mlflow.pyspark.ml.autolog(disable=True)
    # the search was given the means to stop this session's trials at its time box
    assert isinstance(given["stop"].__self__, TrialControl)
    assert given["stop"].__self__.spark is spark and given["stop"].__self__.classic
    # and its trial threads carry the caller's Spark properties
    assert given["wrap"].__self__ is given["stop"].__self__
    assert given["wrap"].__func__ is TrialControl.inherit
    client = MlflowClient()
    parent = client.get_run(result["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == result["trials"] == 4
    every_run = client.search_runs([parent.info.experiment_id])
    assert {r.info.run_id for r in every_run} == {parent.info.run_id} | {
        c.info.run_id for c in children}
    # the conf logged for lineage, its secrets left out
    logged = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/conf/resolved.json")
    assert logged["monitor"]["webhook_url"] == "<redacted>" and hook not in str(logged)
    assert logged["train"] == config.values["train"] and parent.data.params["partitions"] == "2"
    assert all(c.data.metrics.get("validation_auc_roc") for c in children)
    # each trial's fit timed apart from its run (what the time box's estimates rest on)
    assert all(0 < c.data.metrics["fit_seconds"] < c.data.metrics["trial_seconds"]
               for c in children)
    assert parent.data.tags["search_ended"] == "max_evals: 4 trials"
    # the time box kept the refit of the best trial: its fit times the refit's rows (Jan-Oct
    # here) over a trial's fit rows (Jan-Sep), counted here from the table
    labeled = tables.read(spark, config, "flight_features").filter(
        F.col("tail_recorded") & F.col("disrupted").isNotNull())
    slices = Windows.from_conf(config.section("train")).slices()
    rows = {k: labeled.filter(F.col("flight_date").between(*slices[k])).count()
            for k in ("fit", "train")}
    scale = given["budget"].refit_scale
    assert scale == pytest.approx(rows["train"] / rows["fit"]) and scale > 1
    kept = parent.data.metrics["search_kept_for_refit_seconds"]
    best = max(c.data.metrics["validation_auc_roc"] for c in children)
    assert any(kept == pytest.approx(scale * c.data.metrics["fit_seconds"]) for c in children
               if c.data.metrics["validation_auc_roc"] == best)
    # two trials ran at the same time: their spans overlap
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    params = parent.data.params
    assert int(params["features_delta_version"]) == tables.version(spark, config,
                                                                   "flight_features")
    rebuilt = tables.read(spark, config, "flight_features",
                          version=int(params["features_delta_version"]))
    current = tables.read(spark, config, "flight_features")
    assert rebuilt.exceptAll(current).limit(1).count() == 0
    assert current.exceptAll(rebuilt).limit(1).count() == 0
    assert params["threshold_rule"] == "max_f1" and "code_version" in parent.data.tags
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert artifacts == {"plots/roc.png", "plots/precision_recall.png", "plots/calibration.png",
                         "plots/importances.png"}
    model = client.get_model_version("flight_disruption", result["version"])
    assert float(model.tags["decision_threshold"]) == pytest.approx(result["threshold"])
    info = mlflow.models.get_model_info(f"models:/flight_disruption/{result['version']}")
    inputs = {c["name"] for c in info.signature.inputs.to_dict()}
    assert {"carrier", "origin", "dest", "temp", "plane_age"} <= inputs
    assert info.saved_input_example_info is not None
    # the requirements a serving environment installs: pinned to the versions that trained it
    requirements = set(Path(mlflow.artifacts.download_artifacts(
        f"models:/flight_disruption/{result['version']}/requirements.txt")).read_text()
        .split())
    assert {f"mlflow=={mlflow.__version__}", f"pyspark=={pyspark.__version__}",
            f"pandas=={pandas.__version__}", f"numpy=={np.__version__}",
            f"pyarrow=={pyarrow.__version__}"} <= requirements


@pytest.mark.slow
def test_gate_promotes_better_refuses_worse_and_ties(
        spark: SparkSession, features_root: Path, tmp_path: Path) -> None:
    stump = train.run(spark, config_for(features_root, tmp_path, STUMP), "stump")
    assert stump["promoted"] and stump["decision"] == "no champion yet"
    better = train.run(spark, config_for(features_root, tmp_path, LR_ONLY), "better")
    assert better["promoted"], better["decision"]
    # the same data, conf and seed give the same model: a tie, refused within the margin
    decided: list[tuple[str, str]] = []  # the run id, and the alias as it stood then
    tie = train.run(spark, config_for(features_root, tmp_path,
                                      {**LR_ONLY, "promotion_margin": 0.001}), "tie",
                    on_decided=lambda run_id: decided.append((run_id, str(
                        MlflowClient().get_model_version_by_alias(
                            "flight_disruption", "challenger").version))))
    assert decided == [(tie["run_id"], tie["version"])]
    # (sums of floats across partitions may differ in the last bit)
    assert tie["holdout"] == pytest.approx(better["holdout"], rel=1e-12)
    assert not tie["promoted"] and "gain +0.0000" in tie["decision"]
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("flight_disruption", "champion").version) == \
        better["version"]
    assert str(client.get_model_version_by_alias("flight_disruption", "challenger").version) == \
        tie["version"]
    run = client.get_run(tie["run_id"])
    assert run.data.params["gate_decision"] == "challenger"
    assert run.data.metrics["gate_champion_auc_roc"] == pytest.approx(
        better["holdout"]["auc_roc"])
    # the caller's step after the decision fails: the error and the audit row name the
    # version registered and its alias, so nobody trains another one for it
    config = config_for(features_root, tmp_path, {**LR_ONLY, "promotion_margin": 0.001})

    def unreachable(run_id: str) -> None:
        raise OSError("alerts table unreachable")

    with pytest.raises(train.AfterDecisionError,
                       match=r"flight_disruption version 4 is registered and holds @challenger "
                             r".*failed: alerts table unreachable\. Do not run the train job"):
        train.run(spark, config, "after-decision", on_decided=unreachable,
                  version_tags={"lakehouse_answers_alerts": "a1,a2"})
    fourth = client.get_model_version_by_alias("flight_disruption", "challenger")
    # the caller's tags are set before the alias: the next run finds what this one answered
    assert str(fourth.version) == "4" and fourth.tags["lakehouse_answers_alerts"] == "a1,a2"
    audit = tables.read(spark, config, "audit").filter(F.col("run_id") == "after-decision")
    (row,) = audit.collect()
    assert row["status"] == "failed" and "version 4 is registered" in row["message"]
    # the decision, written before the alias moved, follows the error in the failed row
    assert " | model version 4 (" in row["message"] and ": challenger: " in row["message"]


class _Failing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "down"}')

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


def test_a_registry_error_other_than_a_missing_alias_fails_the_job(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The champion is looked up before anything is read: a registry that answers 503 fails
    the job (recorded in the audit table), it is not taken for "no champion"."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        config = config_for(tmp_path, tmp_path, LR_ONLY,
                            registry_uri=f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(MlflowException, match=r"TEMPORARILY_UNAVAILABLE|503"):
            train.run(spark, config, "registry-down")
    finally:
        server.shutdown()
    failed = tables.read(spark, config, "audit").filter(F.col("job") == "train").first()
    assert failed["status"] == "failed" and "MlflowException" in failed["message"]


@pytest.mark.slow
def test_a_champion_moved_during_training_fails_the_gate_and_registers_nothing(
        spark: SparkSession, features_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run takes @champion while this one searches: this run's gate compared against
    no champion, so it must not promote (MLflow aliases have no compare-and-set)."""
    config = config_for(features_root, tmp_path, LR_ONLY)
    name = registry.configure(config)["model_name"]
    client = MlflowClient()
    real = train.tune_and_fit

    def racing(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        # a concurrent run registers its version and promotes it meanwhile
        client.create_registered_model(name)
        other = client.create_model_version(name, source=str(tmp_path / "other-model"))
        client.set_registered_model_alias(name, registry.CHAMPION, other.version)
        return result

    monkeypatch.setattr(train, "tune_and_fit", racing)
    with pytest.raises(train.ChampionChangedError,
                       match=r"@champion of flight_disruption moved from none to 1 .*nothing "
                             r"was registered"):
        train.run(spark, config, "raced")
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION).version) == "1"
    assert workflow.is_permanent(train.ChampionChangedError("x"))  # a retry would race again
    # the alias moves after this run registered its model, before it sets its alias: the
    # version stays registered without an alias, and the other run's champion stays
    monkeypatch.setattr(train, "tune_and_fit", real)
    log_model = train.mlflow.spark.log_model

    def racing_log(*args: Any, **kwargs: Any) -> Any:
        info = log_model(*args, **kwargs)
        other = client.create_model_version(name, source=str(tmp_path / "third-model"))
        client.set_registered_model_alias(name, registry.CHAMPION, other.version)
        return info

    monkeypatch.setattr(train.mlflow.spark, "log_model", racing_log)
    client.delete_registered_model_alias(name, registry.CHAMPION)  # no champion at the start
    with pytest.raises(train.ChampionChangedError,
                       match=r"moved from none to 3 .*: version 2 stays registered without an "
                             r"alias"):
        train.run(spark, config, "raced-late",
                  on_decided=lambda run_id: pytest.fail("no alias was set: nothing decided"))
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION).version) == "3"
    assert client.get_model_version(name, "2").aliases == []


@pytest.mark.slow  # a champion trained, then four score runs
def test_scoring_gives_every_flight_a_prediction_or_a_reason(
        spark: SparkSession, features_root: Path, tmp_path: Path) -> None:
    """The score job on a fresh table, then on a held range and on a new day: every silver
    flight of the range gets the champion's prediction or a row with the reason (here one
    flight without a feature row, in place of one silver lacks: the same count); the audit
    counts come from what was written; a rerun commits nothing; a flight landed after its day
    was scored is scored by the next `from: latest` run, alone on its day."""
    from lakehouse import workflow
    from lakehouse.stages import score

    own = {"train": STUMP, "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                      "artifact_location": str(tmp_path / "mlruns")},
           "tables": {name: str(tmp_path / name) for name in (
               "silver_flights", "flight_features", "delay_predictions", "audit")}}
    config = make_config(features_root, **own)
    shared = make_config(features_root)
    every = tables.read(spark, shared, "flight_features")
    twelfth = every.filter(F.col("flight_date") == "2013-01-12").orderBy("flight_id")
    # two flights of the 12th land late: one before a promotion, one after
    late_id, after_promotion = (r["flight_id"] for r in twelfth.limit(2).collect())
    tables.overwrite(every.filter(~F.col("flight_id").isin(late_id, after_promotion)), config,
                     "flight_features")
    champion = train.run(spark, config, "champion")
    features = tables.read(spark, config, "flight_features")

    def as_silver(df: Any) -> Any:
        return df.select("flight_id", "flight_date", "sched_dep_utc", "carrier", "origin",
                         "dest", F.when(F.col("tail_recorded"), F.lit("N12345")).alias("tailnum"))

    held = as_silver(features.filter(F.col("flight_date").between("2013-01-11", "2013-01-13")))
    first_of_11th = held.filter(F.col("flight_date") == "2013-01-11").orderBy("flight_id")
    dropped = first_of_11th.first()["flight_id"]  # type: ignore[index]
    orphan = first_of_11th.limit(1).withColumn("flight_id", F.lit("no-features-row"))
    tables.overwrite(held.filter(F.col("flight_id") != dropped).unionByName(orphan), config,
                     "silver_flights")
    featured = features.filter(F.col("flight_date").between("2013-01-11", "2013-01-12")).count()

    # another score run creates the table after this one found none: this one fails, adding
    # nothing beside that run's rows (an append would)
    real_state = score.range_state

    def created_meanwhile(*args: Any) -> Any:
        tables.overwrite(spark.createDataFrame([("other-run",)], "flight_id string"), config,
                         "delay_predictions")
        return real_state(*args)

    with pytest.MonkeyPatch.context() as race:
        race.setattr(score, "range_state", created_meanwhile)
        with pytest.raises(tables.CreatedMeanwhileError,
                           match=r"delay_predictions was created by another writer after this "
                                 r"run found no table there: nothing was written"):
            score.run(spark, config, "raced", "2013-01-11", "2013-01-12")
    assert not workflow.is_permanent(tables.CreatedMeanwhileError("x"))  # a rerun writes
    assert [r[0] for r in tables.read(spark, config, "delay_predictions").collect()] == [
        "other-run"]
    shutil.rmtree(config.table("delay_predictions"))

    first = score.run(spark, config, "first", "2013-01-11", "2013-01-12")
    assert (first["rows"], first["unscorable"]) == (featured, 1)
    # whoever loads the registered model gets the class the job wrote (its threshold, not 0.5)
    registered = mlflow.spark.load_model(f"models:/flight_disruption/{champion['version']}")
    own_class = registered.transform(features).select("flight_id", "prediction")
    written = tables.read(spark, config, "delay_predictions").filter(F.col("status") == "scored")
    pairs = written.join(own_class, "flight_id").select("predicted_disrupted", "prediction",
                                                         "threshold", "probability").collect()
    assert len(pairs) == featured and {r["threshold"] for r in pairs} == {champion["threshold"]}
    assert all(r["predicted_disrupted"] == r["prediction"] for r in pairs)
    # and not the class at MLlib's default of 0.5, which here differs
    assert any(r["prediction"] != (r["probability"] >= 0.5) for r in pairs)
    # through pyfunc too (what spark_udf and a serving endpoint call), on its input columns
    sample = features.filter(F.col("flight_date") == "2013-01-11").orderBy("flight_id").limit(20)
    served = mlflow.pyfunc.load_model(f"models:/flight_disruption/{champion['version']}").predict(
        sample.select(*train.MODEL_INPUTS).toPandas())
    expected = [r["predicted_disrupted"] for r in written.join(sample.select("flight_id"),
                                                                 "flight_id")
                .orderBy("flight_id").collect()]
    assert list(pandas.DataFrame(served).iloc[:, 0]) == expected and len(expected) == 20
    predictions = tables.read(spark, config, "delay_predictions")
    (reason,) = predictions.filter(F.col("status") == "unscorable").collect()
    assert reason["flight_id"] == "no-features-row" and reason["probability"] is None
    assert reason["reason"] == "no row in gold.flight_features"
    assert predictions.filter(F.col("status") == "scored").count() == featured
    audit = tables.read(spark, config, "audit").filter(F.col("run_id") == "first").first()
    assert audit is not None and (audit["rows_in"], audit["rows_out"],
                                  audit["rows_quarantined"]) == (featured + 1, featured, 1)
    assert audit["version_written"] == tables.version(spark, config, "delay_predictions")

    version = tables.version(spark, config, "delay_predictions")
    again = score.run(spark, config, "again", "2013-01-11", "2013-01-12")
    assert (again["rows"], again["unscorable"]) == (featured, 1)
    assert tables.version(spark, config, "delay_predictions") == version

    # a new day whose flights all have a feature row
    day = score.run(spark, config, "day", "2013-01-13", "2013-01-13")
    on_day = features.filter(F.col("flight_date") == "2013-01-13").count()
    assert (day["rows"], day["unscorable"]) == (on_day, 0) and on_day
    assert tables.read(spark, config, "delay_predictions").count() == featured + 1 + on_day

    # a flight of the 12th lands late (silver and gold) once the 13th was scored, and a second
    # version (the same data, conf and seed: a tie) takes @challenger
    late = every.filter(F.col("flight_id") == late_id)
    tables.merge(spark, late, config, "flight_features", ["flight_id"])
    tables.append(as_silver(late), config, "silver_flights")
    challenger = train.run(spark, config, "challenger")
    assert not challenger["promoted"]

    def rows() -> set[tuple[Any, ...]]:
        return {(r["flight_id"], r["flight_date"].day, r["model_version"], r["role"],
                 r["status"], r["scored_at"]) for r in
                tables.read(spark, config, "delay_predictions").collect()}

    before = rows()
    workflow.run_stage(spark, make_config(features_root, score={"from": "latest", "to": "latest"},
                                          **own), "score", "late", ("latest", "latest"))
    after = rows()
    added = after - before
    # nothing held changed; the late flight is scored by both versions, alone on its day; the
    # day after it (the 13th, scored whole) gets the challenger's rows in shadow
    assert before < after
    assert {r[:5] for r in added if r[0] == late_id} == {
        (late_id, 12, champion["version"], "champion", "scored"),
        (late_id, 12, challenger["version"], "challenger", "scored")}
    shadow = [r for r in added if r[0] != late_id]
    assert len(shadow) == on_day and {r[1:4] for r in shadow} == {
        (13, challenger["version"], "challenger")}
    audit = tables.read(spark, config, "audit").filter(F.col("run_id") == "late").first()
    assert audit is not None and "before 2013-01-13: 1 late flight(s) only" in audit["message"]
    assert (audit["rows_in"], audit["rows_out"]) == (2 * on_day + 2, 2 * on_day + 2)

    # the challenger is promoted (by hand, as a user may), and another flight of the 12th lands
    # late: the run scores it alone on its day and rescores the 13th, where the roles move in
    # the score MERGE's own commit, the former champion's rows kept as 'previous' and otherwise
    # untouched; the 12th's rows keep their roles
    from lakehouse import registry

    model_name = config.section("mlflow")["model_name"]
    landed = every.filter(F.col("flight_id") == after_promotion)
    tables.merge(spark, landed, config, "flight_features", ["flight_id"])
    tables.append(as_silver(landed), config, "silver_flights")
    # promoted while a score run that resolved the former champion loads it: that run writes
    # nothing (its rows would take the champion role back from the new champion's)
    version = tables.version(spark, config, "delay_predictions")
    real_load = score.load

    def promoted_meanwhile(scorer: Any) -> Any:
        registry.set_alias(model_name, registry.CHAMPION, challenger["version"])
        registry.delete_alias(model_name, registry.CHALLENGER)
        return real_load(scorer)

    with pytest.MonkeyPatch.context() as race:
        race.setattr(score, "load", promoted_meanwhile)
        with pytest.raises(score.ChampionMovedError,
                           match=rf"@champion of {model_name} moved from version "
                                 rf"{champion['version']} to {challenger['version']} while this "
                                 r"run scored: nothing was written"):
            score.run(spark, config, "raced", "2013-01-13", "2013-01-13")
    assert tables.version(spark, config, "delay_predictions") == version
    assert workflow.is_permanent(score.ChampionMovedError("x")) is False  # a rerun scores
    # promoted during the write (the predictions are computed by it): the run fails after it,
    # before retiring anything, and says a rerun puts the roles right (the run below does)
    registry.set_alias(model_name, registry.CHAMPION, champion["version"])
    registry.set_alias(model_name, registry.CHALLENGER, challenger["version"])
    real_merge = tables.merge

    def promoted_during(*args: Any, **kwargs: Any) -> Any:
        registry.set_alias(model_name, registry.CHAMPION, challenger["version"])
        registry.delete_alias(model_name, registry.CHALLENGER)
        return real_merge(*args, **kwargs)

    with pytest.MonkeyPatch.context() as race:
        race.setattr(tables, "merge", promoted_during)
        with pytest.raises(score.ChampionMovedError,
                           match=r"while this run scored: its rows were written with the former "
                                 r"champion's role; run the score job again"):
            score.run(spark, config, "raced-write", "2013-01-13", "2013-01-13")

    def former() -> set[tuple[Any, ...]]:
        return {(r["flight_id"], r["probability"], r["scored_at"], r["features_version"])
                for r in tables.read(spark, config, "delay_predictions").filter(
                    (F.col("flight_date") == "2013-01-13")
                    & (F.col("model_version") == champion["version"])).collect()}

    kept = former()
    version = tables.version(spark, config, "delay_predictions")
    workflow.run_stage(spark, make_config(features_root, score={"from": "latest", "to": "latest"},
                                          **own), "score", "promoted", ("latest", "latest"))
    assert tables.version(spark, config, "delay_predictions") == version + 1  # type: ignore[operator]
    assert former() == kept

    def roles(day: str) -> dict[tuple[str, str], int]:
        return {(r["model_version"], r["role"]): r["count"] for r in tables.read(
            spark, config, "delay_predictions").filter(F.col("flight_date") == day)
            .groupBy("model_version", "role").count().collect()}

    assert roles("2013-01-13") == {(champion["version"], "previous"): on_day,
                                   (challenger["version"], "champion"): on_day}
    on_12th = featured - features.filter(F.col("flight_date") == "2013-01-11").count()
    assert roles("2013-01-12") == {(champion["version"], "champion"): on_12th + 1,
                                   (challenger["version"], "challenger"): 1,
                                   (challenger["version"], "champion"): 1}
    audit = tables.read(spark, config, "audit").filter(F.col("run_id") == "promoted").first()
    # the new champion's rows of the 13th changed role, and so did the former one's
    assert audit is not None and f"written 1 new, {2 * on_day} changed; rows of " \
        f"{model_name}/{champion['version']} now role 'previous'" in audit["message"], \
        audit["message"]

    # a challenger that cannot be loaded (its artifacts gone) does not stop the champion: the
    # 14th is scored by the champion alone, and the run says why the shadow was not
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_of = client.get_model_version(model_name, challenger["version"]).run_id
    broken = client.create_model_version(model_name, f"runs:/{run_of}/no-such-model",
                                         run_id=run_of)
    registry.set_alias(model_name, registry.CHALLENGER, str(broken.version))
    fourteenth = features.filter(F.col("flight_date") == "2013-01-14")
    tables.append(as_silver(fourteenth), config, "silver_flights")
    alone = score.run(spark, config, "shadowless", "2013-01-14", "2013-01-14")
    assert alone["rows"] == fourteenth.count() > 0 and alone["challenger_version"] is None
    assert alone["challenger_error"], alone
    assert roles("2013-01-14") == {(challenger["version"], "champion"): fourteenth.count()}
    audit = tables.read(spark, config, "audit").filter(F.col("run_id") == "shadowless").first()
    assert audit is not None and audit["status"] == "succeeded"
    assert f"v{broken.version} (challenger) not scored: " in audit["message"], audit["message"]

    # the former champion takes @challenger and scores the 14th in shadow; then it cannot be
    # scored (its decision_threshold tag is not a probability): the rerun scores with the
    # champion alone and leaves its rows as they are, not retired as if no version held the
    # alias (a registry error on the look-up: test_monitoring)
    registry.set_alias(model_name, registry.CHALLENGER, champion["version"])
    shadowed = score.run(spark, config, "shadowed", "2013-01-14", "2013-01-14")
    assert shadowed["challenger_version"] == champion["version"]
    both = {(challenger["version"], "champion"): fourteenth.count(),
            (champion["version"], "challenger"): fourteenth.count()}
    assert roles("2013-01-14") == both
    client.set_model_version_tag(model_name, champion["version"], "decision_threshold", "high")
    unknown = score.run(spark, config, "unknown", "2013-01-14", "2013-01-14")
    assert unknown["challenger_version"] is None
    assert f"v{champion['version']}: ValueError" in (unknown["challenger_error"] or ""), unknown
    assert roles("2013-01-14") == both
    audit = tables.read(spark, config, "audit").filter(F.col("run_id") == "unknown").first()
    assert audit is not None and audit["status"] == "succeeded"
    assert f"@challenger not scored: v{champion['version']}: ValueError" in audit["message"], \
        audit["message"]
    assert "now role 'previous'" not in audit["message"], audit["message"]


def test_a_search_whose_every_trial_fails_releases_what_it_cached(
        spark: SparkSession, features_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed tuning run leaves no cached copy of the features behind (a notebook or a
    replay goes on in the same session): the labeled rows and the fit and validation slices
    are released on the way out, as after a success."""
    from pyspark.storagelevel import StorageLevel

    from lakehouse.features import LABEL, TAIL_RECORDED

    config = make_config(features_root, train=STUMP)
    features = tables.read(spark, config, "flight_features")
    windows = Windows.from_conf(config.section("train"))

    built = training.classifier

    def refused(*args: Any, **kwargs: Any) -> Any:
        def fit(*_: Any) -> Any:
            raise RuntimeError("this trial's fit was refused")

        estimator = built(*args, **kwargs)  # the job checks the space by building these
        estimator.fit = fit
        return estimator

    monkeypatch.setattr(training, "classifier", refused)
    with pytest.raises(training.TrainingDataError, match=r"all 1 trials failed.*refused"):
        training.tune_and_fit(spark, features, windows,
                              training.TrainSettings.from_conf(config.section("train")))
    # the same plans as the job's: a DataFrame's storageLevel is the cache entry of its plan
    labeled = features.filter(F.col(LABEL).isNotNull()).orderBy("flight_id")
    rows = labeled.filter(F.col(TAIL_RECORDED))
    cached = {"labeled": labeled.storageLevel}
    for name in ("fit", "validation"):
        cached[name] = rows.transform(training.between(*windows.slices()[name])).storageLevel
    assert cached == {name: StorageLevel.NONE for name in cached}


def test_a_search_space_the_estimators_refuse_fails_before_anything_is_cached(
        spark: SparkSession, features_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parameter a family does not take, one the job sets itself, or one of the wrong type
    fails the job at once, naming the family (not every trial of it, one warning each), before
    any query on the rows or anything cached; so does an unknown family."""
    from lakehouse.models import UnknownFamilyError
    from lakehouse.tuning import SearchSpaceError

    def reached(*args: Any) -> None:
        raise AssertionError("the windows were queried before the space was checked")

    monkeypatch.setattr(training, "check_window", reached)  # the first query on the rows
    features = tables.read(spark, make_config(features_root), "flight_features")
    windows = Windows.from_conf(WINDOWS)
    for space, error, match in (
            ({"logistic_regression": {"maxIter": [50, 200]}}, SearchSpaceError,
             r"search_space\.logistic_regression \['maxIter'\].*maxIter"),
            ({"logistic_regression": {"regParm": [0.01, 0.1]}}, SearchSpaceError,
             r"logistic_regression \['regParm'\]"),
            ({"gbt": {"maxBins": [32, 64]}}, SearchSpaceError, r"search_space\.gbt"),
            ({"logistic_regression": {"aggregationDepth": [2, 4]}}, SearchSpaceError,
             r"aggregationDepth"),
            ({"logistic_regression": {"threshold": [0.3, 0.6]}}, SearchSpaceError,
             r"\['threshold'\]: set by the train job")):
        family = next(iter(space))
        settings = training.TrainSettings.from_conf(
            {**LR_ONLY, "seed": 42, "families": [family], "search_space": space})
        with pytest.raises(error, match=match):
            training.tune_and_fit(spark, features, windows, settings)
    with pytest.raises(UnknownFamilyError, match="random_forrest"):
        training.tune_and_fit(spark, features, windows, training.TrainSettings.from_conf(
            {**LR_ONLY, "seed": 42, "families": ["logistic_regression", "random_forrest"]}))
    # a space the estimators take goes on to the windows
    with pytest.raises(AssertionError, match="queried before"):
        training.tune_and_fit(spark, features, windows,
                              training.TrainSettings.from_conf({**LR_ONLY, "seed": 42}))


@pytest.mark.slow  # two searches and refits (~45 s)
def test_a_balanced_best_trial_is_refitted_with_its_prior_correction(
        spark: SparkSession, features_root: Path) -> None:
    """The search's best trial fitted with balanced weights: the refitted model predicts on
    the training rows' own positive share, its threshold moved with its probabilities (the
    validation metrics keep the trial's own scale and threshold)."""
    from lakehouse.evaluation import positive_probability
    from lakehouse.models import corrected, decision_threshold, prior_share, uncorrected

    config = make_config(features_root)
    features = tables.read(spark, config, "flight_features")
    windows = Windows.from_conf(WINDOWS)
    settings = training.TrainSettings.from_conf(
        {**LR_ONLY, "max_evals": 1, "seed": 42, "class_weighting": ["balanced"]})
    result = training.tune_and_fit(spark, features, windows, settings)
    train_rows = features.filter(F.col("tail_recorded") & F.col("disrupted").isNotNull()
                                 ).transform(training.between(*windows.slices()["train"]))
    observed = train_rows.agg(F.avg("disrupted")).first()[0]
    assert prior_share(result.model) == pytest.approx(observed)
    assert result.threshold == pytest.approx(corrected(result.validation_threshold, observed))
    assert result.threshold < result.validation_threshold
    assert decision_threshold(result.model) == pytest.approx(result.threshold)
    predicted = result.model.transform(train_rows).agg(
        F.avg(positive_probability())).first()[0]
    assert predicted == pytest.approx(observed, abs=0.03)
    # the holdout's histogram is the corrected model's: its mean near the holdout's rate
    mean_predicted = result.holdout.sum_p.sum() / result.holdout.rows
    observed_rate = result.holdout.positives.sum() / result.holdout.rows
    assert abs(mean_predicted - observed_rate) < 0.1
    # a fixed threshold is meant on the model's output: kept as given, whichever trial wins
    fixed = training.tune_and_fit(spark, features, windows, training.TrainSettings.from_conf(
        {**LR_ONLY, "max_evals": 1, "seed": 42, "class_weighting": ["balanced"],
         "threshold_rule": "fixed:0.4"}))
    assert fixed.threshold == 0.4 and decision_threshold(fixed.model) == pytest.approx(0.4)
    assert fixed.validation_threshold == pytest.approx(uncorrected(0.4, observed))


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["none", "balanced"])
def test_a_newton_model_is_trained_logged_and_scores_as_registered(
        spark: SparkSession, features_root: Path, tmp_path: Path, weighting: str) -> None:
    """The newton_gbt family through the train job: its fitted pipeline is flattened into MLlib
    stages, logged with its importances, and the registered version scores as the job's model
    did on the holdout (its AUC-ROC, read back through MLflow); fitted with balanced weights,
    with its prior correction, registered and loaded through MLflow as MLlib stages."""
    from pyspark.ml.util import JavaMLWritable

    from lakehouse.evaluation import positive_probability
    from lakehouse.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TAIL_RECORDED
    from lakehouse.models import decision_threshold, prior_share
    from lakehouse.newton import tree_stages

    conf = {**LR_ONLY, "families": ["newton_gbt"], "max_evals": 1,
            "class_weighting": [weighting],
            "threshold_rule": "fixed:0.2",  # within this small model's probabilities
            "search_space": {"newton_gbt": {"maxDepth": [2, 2], "maxIter": [3, 3],
                                            "stepSize": [0.1, 0.1],
                                            "minInstancesPerNode": [20, 20]}}}
    if weighting == "balanced":  # its weighted probabilities sit near 0.5: chosen on them
        conf = {**conf, "threshold_rule": "max_f1", "search_space": {"newton_gbt": {
            **conf["search_space"]["newton_gbt"], "stepSize": [0.5, 0.5]}}}
    config = config_for(features_root, tmp_path, conf)
    result = train.run(spark, config, "newton")
    assert result["family"] == "newton_gbt"
    model = mlflow.spark.load_model(f"models:/flight_disruption/{result['version']}")
    assert all(isinstance(s, JavaMLWritable) for s in model.stages)
    params = MlflowClient().get_run(result["run_id"]).data.params
    if weighting == "balanced":
        share = float(params["prior_positive_share"])
        assert prior_share(model) == pytest.approx(share) and 0.1 < share < 0.4
        assert decision_threshold(model) == pytest.approx(result["threshold"])
    else:
        assert prior_share(model) is None and "prior_positive_share" not in params
    assert len(tree_stages(model)) == 3
    importances = mlflow.artifacts.load_dict(
        f"runs:/{result['run_id']}/feature_importances.json")
    assert sum(importances.values()) == pytest.approx(1.0)
    # named by the assembled vector's slots (not f0, f1, ...): one per model feature
    assert len(importances) == len(NUMERIC_FEATURES) + len(CATEGORICAL_FEATURES)
    assert "temp__f" in importances and "carrier__idx" in importances
    holdout = (tables.read(spark, config, "flight_features")
               .filter(F.col(TAIL_RECORDED) & F.col("disrupted").isNotNull())
               .filter(F.col("flight_date").between("2013-01-11", "2013-01-14")))
    scored = model.transform(holdout).select("disrupted", positive_probability().alias("p"),
                                             "prediction")
    rows = scored.collect()
    auc = roc_auc_score([r[0] for r in rows], [r[1] for r in rows])
    assert auc == pytest.approx(result["holdout"]["auc_roc"], abs=2e-3)
    # its class is the one at the logged decision threshold
    assert result["threshold"] == 0.2 or weighting == "balanced"
    assert all(r["prediction"] == float(r["p"] >= result["threshold"]) for r in rows
               if abs(r["p"] - result["threshold"]) > 1e-9)
    assert 0 < sum(r["prediction"] for r in rows) < len(rows)
    assert any(r["prediction"] != float(r["p"] >= 0.5) for r in rows)
    if weighting == "balanced":  # on the flights' own scale: near the holdout's rate
        mean_p = sum(r["p"] for r in rows) / len(rows)
        observed = sum(r["disrupted"] for r in rows) / len(rows)
        assert abs(mean_p - observed) < 0.1, (mean_p, observed)


@pytest.mark.slow  # a champion trained, then two score runs
def test_a_flight_silver_holds_before_gold_does_is_scored_once_gold_has_it(
        spark: SparkSession, features_root: Path, tmp_path: Path) -> None:
    """Silver moved on after gold's build (a stream running on): the flight it added has no
    feature row yet. Scoring reads silver as gold built the features, so it records no row for
    it (read at the latest, it recorded one 'unscorable', which the late-flight pass then took
    as its prediction for good); once gold has the row, `from: latest` scores it."""
    import json

    from lakehouse.lineage import GOLD_TAG
    from lakehouse.stages import score

    own = {"train": STUMP, "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                      "artifact_location": str(tmp_path / "mlruns")},
           "tables": {name: str(tmp_path / name) for name in (
               "silver_flights", "flight_features", "delay_predictions", "audit")}}
    config = make_config(features_root, **own)
    every = tables.read(spark, make_config(features_root), "flight_features")
    late_id = every.filter(F.col("flight_date") == "2013-01-12").orderBy("flight_id").first()[
        "flight_id"]  # type: ignore[index]
    features = every.filter(F.col("flight_id") != late_id)
    tables.overwrite(features, config, "flight_features")
    train.run(spark, config, "champion")

    def as_silver(df: Any) -> Any:
        return df.filter(F.col("flight_date").between("2013-01-12", "2013-01-13")).select(
            "flight_id", "flight_date", "sched_dep_utc", "carrier", "origin", "dest",
            F.when(F.col("tail_recorded"), F.lit("N12345")).alias("tailnum"))

    def built_by_gold(rows: Any) -> None:  # flight_features as gold writes it: its state
        state = {"versions": {"silver_flights": tables.version(spark, config, "silver_flights")},
                 "table_ids": {"silver_flights": tables.table_id(spark, config,
                                                                 "silver_flights")}}
        tables.overwrite(rows, config, "flight_features", tag=f"{GOLD_TAG} {json.dumps(state)}")

    tables.overwrite(as_silver(features), config, "silver_flights")
    built_by_gold(features)
    tables.append(as_silver(every.filter(F.col("flight_id") == late_id)), config,
                  "silver_flights")  # silver moves on
    first = score.run(spark, config, "first", "2013-01-12", "2013-01-13")
    featured = as_silver(features).count()
    assert (first["rows"], first["unscorable"]) == (featured, 0)
    assert tables.read(spark, config, "delay_predictions").filter(
        F.col("flight_id") == late_id).count() == 0
    built_by_gold(every)  # gold caught up
    workflow.run_stage(spark, make_config(features_root, score={"from": "latest", "to": "latest"},
                                          **own), "score", "late", ("latest", "latest"))
    (late,) = tables.read(spark, config, "delay_predictions").filter(
        F.col("flight_id") == late_id).collect()
    assert (late["status"], late["role"]) == ("scored", "champion")
