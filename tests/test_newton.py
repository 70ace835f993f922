"""Newton-boosted trees (lakehouse.newton): each round's leaf values are Newton steps of the log
loss, checked against numpy; the fitted model is plain MLlib stages that save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.linalg import Vectors
from pyspark.sql import SparkSession

from lakehouse.evaluation import positive_probability
from lakehouse.newton import NewtonBoostedTrees, tree_stages

# one binary feature: a depth-1 tree splits the rows into x = 0 and x = 1
X = np.array([0] * 6 + [1] * 6, dtype=float)
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1], dtype=float)  # x = 0: 2 of 6, x = 1: 5 of 6
W = np.array([1.0, 2.0] * 6)


def sigmoid(m: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-m))


def expected_margins(rounds: int, step: float, weights: np.ndarray) -> np.ndarray:
    """Newton boosting by hand: start at the weighted log-odds, then per round and leaf add
    step x sum(w (y - p)) / sum(w p (1 - p))."""
    prior = (weights * Y).sum() / weights.sum()
    margin = np.full(len(Y), np.log(prior / (1 - prior)))
    for _ in range(rounds):
        p = sigmoid(margin)
        for leaf in (X == 0, X == 1):
            value = (weights[leaf] * (Y[leaf] - p[leaf])).sum() / (
                weights[leaf] * p[leaf] * (1 - p[leaf])).sum()
            margin[leaf] += step * value
    return margin


@pytest.mark.parametrize(("rounds", "step", "weighted"), [(1, 1.0, False), (3, 0.5, True)])
def test_leaf_values_are_newton_steps(spark: SparkSession, rounds: int, step: float,
                                      weighted: bool) -> None:
    rows = spark.createDataFrame(
        [(Vectors.dense([float(x)]), float(y), float(w)) for x, y, w in zip(X, Y, W, strict=True)],
        ["features", "label", "w"])
    estimator = NewtonBoostedTrees(labelCol="label", maxIter=rounds, stepSize=step, maxDepth=1,
                                   minInstancesPerNode=1, maxBins=4,
                                   **({"weightCol": "w"} if weighted else {}))
    model = estimator.fit(rows)
    got = np.array([r[0] for r in model.transform(rows).select(positive_probability())
                    .collect()])
    want = sigmoid(expected_margins(rounds, step, W if weighted else np.ones(len(Y))))
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # a first-order step (MLlib's GBT: the leaf's mean of y - p) would give other values
    first_order = np.log(Y.mean() / (1 - Y.mean())) + np.where(
        X == 0, (Y[X == 0] - Y.mean()).mean(), (Y[X == 1] - Y.mean()).mean())
    assert not np.allclose(got, sigmoid(first_order), rtol=1e-3)
    assert len(tree_stages(model)) == rounds


def test_subsampled_rounds_take_their_newton_steps_on_their_samples(spark: SparkSession) -> None:
    """subsamplingRate < 1: each round's tree is fitted on a seeded Bernoulli sample of the
    rows (the one DataFrame.sample draws with the round's seed, seed + round), its leaves the
    Newton steps of that sample's weighted rows, and every row's margin moves by them; the
    same seed gives the same model, and a rate outside (0, 1] is refused when built."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, size=200).astype(float)
    y = (rng.random(200) < np.where(x == 1, 0.7, 0.3)).astype(float)
    w = rng.uniform(0.5, 2.0, size=200)
    rows = spark.createDataFrame(
        [(Vectors.dense([a]), float(b), float(c)) for a, b, c in zip(x, y, w, strict=True)],
        ["features", "label", "w"]).repartition(2).localCheckpoint()
    seed, rate, step, rounds = 7, 0.5, 0.5, 2

    def fitted(**extra: float) -> np.ndarray:
        model = NewtonBoostedTrees(labelCol="label", weightCol="w", maxIter=rounds,
                                   stepSize=step, maxDepth=1, minInstancesPerNode=1, maxBins=4,
                                   seed=seed, **extra).fit(rows)
        return np.array([r[0] for r in model.transform(rows).select(positive_probability())
                         .collect()])

    got = fitted(subsamplingRate=rate)
    # by hand, each round's rows drawn independently with the same sampler and the round's
    # seed (the sample depends on the rows' partitions and order, not on their values)
    ordered = rows.collect()
    rx = np.array([r.features[0] for r in ordered])
    ry, rw = np.array([r.label for r in ordered]), np.array([r.w for r in ordered])
    margin = np.full(len(ry), np.log((rw * ry).sum() / (rw * (1 - ry)).sum()))
    drawn = []
    for number in range(rounds):
        picked = {tuple(r) for r in rows.sample(fraction=rate, seed=seed + number).collect()}
        mask = np.array([tuple(r) in picked for r in ordered])
        assert 0 < mask.sum() < len(ry)
        drawn.append(mask)
        p = sigmoid(margin)
        for leaf in (rx == 0, rx == 1):
            chosen = leaf & mask
            margin[leaf] += step * (rw * (ry - p))[chosen].sum() / (
                rw * p * (1 - p))[chosen].sum()
    assert not (drawn[0] == drawn[1]).all()  # each round draws its own sample
    np.testing.assert_allclose(got, sigmoid(margin), rtol=1e-9)
    assert not np.allclose(got, fitted(), rtol=1e-6)  # all rows give other leaves
    np.testing.assert_array_equal(got, fitted(subsamplingRate=rate))
    with pytest.raises(ValueError, match="subsamplingRate in"):
        NewtonBoostedTrees(subsamplingRate=0.0)


def test_a_fitted_model_is_mllib_stages_that_save_and_load(spark: SparkSession,
                                                           tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=400) > 0).astype(float)
    # a features column of another name: the trees score from it too
    rows = spark.createDataFrame([(Vectors.dense(a.tolist()), float(b))
                                  for a, b in zip(x, y, strict=True)], ["fv", "label"])
    model = NewtonBoostedTrees(featuresCol="fv", labelCol="label", maxIter=4, maxDepth=3,
                               minInstancesPerNode=5).fit(rows)
    model.write().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    before, after = (np.array([(r[0], r[1]) for r in m.transform(rows).select(
        positive_probability(), "prediction").collect()]) for m in (model, loaded))
    np.testing.assert_array_equal(before, after)
    assert set(before[:, 1]) <= {0.0, 1.0}
    assert (before[:, 1] == (before[:, 0] >= 0.5)).all()
    # the class moved to a decision threshold is saved with it and read back from the model
    from lakehouse.models import decision_threshold, with_threshold
    assert decision_threshold(loaded) == 0.5
    with_threshold(model, 0.37).write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    assert decision_threshold(loaded) == 0.37
    moved = np.array([(r[0], r[1]) for r in loaded.transform(rows).select(
        positive_probability(), "prediction").collect()])
    assert (moved[:, 1] == (moved[:, 0] >= 0.37)).all() and (moved[:, 1] != before[:, 1]).any()
    with pytest.raises(ValueError, match="stepSize and subsamplingRate in"):
        NewtonBoostedTrees(labelCol="label", stepSize=0.0).fit(rows)


def test_a_nan_margin_gives_no_probability_rather_than_failing(spark: SparkSession) -> None:
    """The score job marks a row without a probability unscorable, with the reason: the output
    stages pass a NaN through instead of failing the whole job on it."""
    from lakehouse.newton import TREE_PREFIX, output_stages

    rows = spark.createDataFrame([(0.5,), (float("nan"),)], f"{TREE_PREFIX}0 double")
    out = [r[0] for r in PipelineModel(stages=output_stages(-1.0, 0.1, 1)).transform(rows)
           .select(positive_probability()).collect()]
    assert out[0] == pytest.approx(1 / (1 + np.exp(-(-1.0 + 0.1 * 0.5))), rel=1e-12)
    assert np.isnan(out[1])


def split_gain(left: np.ndarray, y: np.ndarray, p: np.ndarray, newton: bool) -> float:
    """The Newton gain GL^2/HL + GR^2/HR of a split, or (first order) minus the residual's
    within-leaf variance."""
    g, h, r = p - y, p * (1 - p), y - p
    if newton:
        return float(g[left].sum() ** 2 / h[left].sum() + g[~left].sum() ** 2 / h[~left].sum())
    return -float(((r[left] - r[left].mean()) ** 2).sum()
                  + ((r[~left] - r[~left].mean()) ** 2).sum())


def boosted_by_hand(x: np.ndarray, y: np.ndarray, rounds: int, newton_splits: bool) -> np.ndarray:
    """Depth-1 boosting by hand over every feature and threshold, leaves -sum(g) / sum(h); the
    split chosen by the Newton gain (newton_splits) or, as a first-order learner chooses it,
    by the variance of the residual y - p."""
    prior = y.mean()
    margin = np.full(len(y), np.log(prior / (1 - prior)))
    candidates = [x[:, f] <= t for f in range(x.shape[1]) for t in np.unique(x[:, f])[:-1]]
    for _ in range(rounds):
        p = sigmoid(margin)
        left = max(candidates, key=lambda c, p=p: split_gain(c, y, p, newton_splits))
        for leaf in (left, ~left):
            margin[leaf] += (y - p)[leaf].sum() / (p * (1 - p))[leaf].sum()
    return margin


def test_each_split_is_the_one_of_largest_newton_gain(spark: SparkSession) -> None:
    """Two features, two rounds: the second round's split, where the rows' hessians differ,
    is the one the Newton gain picks (feature 1 at 3), not the one a first-order learner
    picks by the residual's variance (feature 1 at 0). The data's gains leave no near tie
    (6.65 against 6.30 for the runner-up in that round)."""
    rng = np.random.default_rng(10)
    x = rng.integers(0, 6, size=(60, 2)).astype(float)
    y = (rng.random(60) < sigmoid(0.9 * (x[:, 0] - 2.5) + 0.4 * (x[:, 1] - 2.5))).astype(float)
    rows = spark.createDataFrame([(Vectors.dense(a.tolist()), float(b))
                                  for a, b in zip(x, y, strict=True)], ["features", "label"])
    model = NewtonBoostedTrees(labelCol="label", maxIter=2, stepSize=1.0, maxDepth=1,
                               minInstancesPerNode=1, maxBins=32).fit(rows)
    got = np.array([r[0] for r in model.transform(rows).select(positive_probability())
                    .collect()])
    np.testing.assert_allclose(got, sigmoid(boosted_by_hand(x, y, 2, newton_splits=True)),
                               rtol=1e-9)
    assert not np.allclose(got, sigmoid(boosted_by_hand(x, y, 2, newton_splits=False)),
                           rtol=1e-3)
