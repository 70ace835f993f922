"""The model families the tuning job searches, as MLlib pipelines over gold's features.

Trees (random forest, gradient-boosted trees, Newton-boosted trees: lakehouse.newton) take
numeric features with missing values as a
sentinel below every real value and categories as indices (categorical splits). Logistic
regression takes numeric features imputed with the training mean plus a missing-value indicator
each, categories one-hot encoded, everything standardized.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.ml import Estimator, Pipeline, PipelineModel
from pyspark.ml.classification import (
    GBTClassifier,
    LogisticRegression,
    LogisticRegressionModel,
    ProbabilisticClassificationModel,
    RandomForestClassifier,
)
from pyspark.ml.feature import (
    ElementwiseProduct,
    Imputer,
    Normalizer,
    OneHotEncoder,
    SQLTransformer,
    StandardScaler,
    StringIndexer,
    VectorAssembler,
)
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.features import CATEGORICAL_FEATURES, LABEL, NUMERIC_FEATURES
from lakehouse.newton import NewtonBoostedTrees, set_threshold, threshold_of, tree_stages

FAMILIES = ("logistic_regression", "random_forest", "gbt", "newton_gbt")
TREE_FAMILIES = ("random_forest", "gbt", "newton_gbt")
MISSING = -999.0  # trees split missing values off from every real value
WEIGHT = "_weight"
# A model fitted with balanced class weights learns probabilities for classes of equal weight;
# its prior correction (with_prior_correction) turns them back into the training rows' own.
WEIGHTED_PROBABILITY = "_weighted_probability"
PRIOR_SCALED = "_prior_scaled"
INTEGER_PARAMS = ("maxDepth", "maxIter", "minInstancesPerNode", "numTrees")
# Set by the train job itself (with_threshold), never by the search space.
JOB_PARAMS = ("threshold", "thresholds")
MAX_BINS = 128  # above the number of destinations (105 in 2013), so each is its own category


class UnknownFamilyError(ValueError):
    """A model family that the tuning job does not know."""


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise UnknownFamilyError(f"unknown model family {family!r}; families are {list(FAMILIES)}")
    return family


def tree_prep() -> list[Any]:
    """Nulls to a sentinel, categories to indices, everything into one vector."""
    filled = ", ".join(f"coalesce(`{c}`, {MISSING}) AS `{c}__f`" for c in NUMERIC_FEATURES)
    indexers = [StringIndexer(inputCol=c, outputCol=f"{c}__idx", handleInvalid="keep")
                for c in CATEGORICAL_FEATURES]
    assembler = VectorAssembler(
        inputCols=[f"{c}__f" for c in NUMERIC_FEATURES]
        + [f"{c}__idx" for c in CATEGORICAL_FEATURES],
        outputCol="features", handleInvalid="keep")
    return [SQLTransformer(statement=f"SELECT *, {filled} FROM __THIS__"), *indexers, assembler]


def linear_prep() -> list[Any]:
    """Mean-imputed numbers with missing indicators, one-hot categories, standardized."""
    flags = ", ".join(f"CAST(`{c}` IS NULL AS DOUBLE) AS `{c}__missing`" for c in NUMERIC_FEATURES)
    imputer = Imputer(inputCols=list(NUMERIC_FEATURES),
                      outputCols=[f"{c}__imp" for c in NUMERIC_FEATURES], strategy="mean")
    indexers = [StringIndexer(inputCol=c, outputCol=f"{c}__idx", handleInvalid="keep")
                for c in CATEGORICAL_FEATURES]
    encoder = OneHotEncoder(inputCols=[f"{c}__idx" for c in CATEGORICAL_FEATURES],
                            outputCols=[f"{c}__oh" for c in CATEGORICAL_FEATURES],
                            handleInvalid="keep")
    assembler = VectorAssembler(
        inputCols=[f"{c}__imp" for c in NUMERIC_FEATURES]
        + [f"{c}__missing" for c in NUMERIC_FEATURES]
        + [f"{c}__oh" for c in CATEGORICAL_FEATURES],
        outputCol="raw_features", handleInvalid="keep")
    scaler = StandardScaler(inputCol="raw_features", outputCol="features", withMean=True,
                            withStd=True)
    return [SQLTransformer(statement=f"SELECT *, {flags} FROM __THIS__"), imputer, *indexers,
            encoder, assembler, scaler]


def prep_for(family: str) -> list[Any]:
    return linear_prep() if check_family(family) == "logistic_regression" else tree_prep()


def typed(params: dict[str, Any]) -> dict[str, Any]:
    return {k: int(v) if k in INTEGER_PARAMS else (v if isinstance(v, str) else float(v))
            for k, v in params.items()}


def classifier(family: str, params: dict[str, Any], seed: int,
               weighted: bool) -> Estimator[Any]:
    """An unfitted MLlib classifier of the family with the given parameters."""
    common: dict[str, Any] = {"labelCol": LABEL, "featuresCol": "features"}
    if weighted:
        common["weightCol"] = WEIGHT
    values = typed(params)
    if taken := sorted(set(values) & set(JOB_PARAMS)):
        raise ValueError(f"{taken}: set by the train job (the decision threshold, chosen on "
                         f"validation by train.threshold_rule), not a search parameter")
    if check_family(family) == "logistic_regression":
        return LogisticRegression(maxIter=100, standardization=False, **common, **values)
    if family == "random_forest":
        return RandomForestClassifier(maxBins=MAX_BINS, seed=seed, **common, **values)
    if family == "newton_gbt":
        return NewtonBoostedTrees(maxBins=MAX_BINS, seed=seed, **common, **values)
    return GBTClassifier(maxBins=MAX_BINS, seed=seed, **common, **values)


def class_weights(df: DataFrame) -> tuple[float, float]:
    """Balanced weights (negative, positive): each class weighs half of the rows in total."""
    row = df.agg(F.count(F.lit(1)), F.sum(LABEL)).first()
    total, positives = (float(row[0]), float(row[1] or 0)) if row is not None else (0.0, 0.0)
    negatives = total - positives
    if not positives or not negatives:
        return 1.0, 1.0
    return total / (2 * negatives), total / (2 * positives)


def with_weight(weights: tuple[float, float]) -> Any:
    """Add the class weight column."""
    negative, positive = weights
    return lambda df: df.withColumn(WEIGHT, F.when(F.col(LABEL) == 1, positive)
                                    .otherwise(negative))


def full_pipeline(family: str, params: dict[str, Any], seed: int, weighted: bool) -> Pipeline:
    return Pipeline(stages=[*prep_for(family), classifier(family, params, seed, weighted)])


def flattened(model: PipelineModel) -> PipelineModel:
    """The fitted pipeline with a nested PipelineModel stage (a Newton model) spliced in: every
    stage an MLlib one, so MLlib saves it as one Java pipeline."""
    stages: list[Any] = []
    for stage in model.stages:
        stages.extend(stage.stages if isinstance(stage, PipelineModel) else [stage])
    return PipelineModel(stages=stages)


def positive_share(weights: tuple[float, float]) -> float:
    """The positive class's share of the rows that class_weights balanced: weights n / 2N and
    n / 2P give w_negative / (w_negative + w_positive) = P / n."""
    negative, positive = weights
    return negative / (negative + positive)


def corrected(q: float, share: float) -> float:
    """A probability q learnt with balanced class weights (classes of equal weight) as the
    probability under the rows' own positive share: the odds q / (1 - q) times
    share / (1 - share) (Bayes' rule with the other prior)."""
    return q * share / (q * share + (1.0 - q) * (1.0 - share)) if 0.0 < q < 1.0 else q


def uncorrected(p: float, share: float) -> float:
    """The inverse of corrected: the weighted model's probability behind a corrected p."""
    return corrected(p, 1.0 - share)


def with_prior_correction(model: PipelineModel, share: float) -> PipelineModel:
    """The pipeline of a model fitted with balanced class weights, its `probability` moved to
    the rows' own positive share (`corrected`): weights that give each class half the total
    make the model predict ~0.5 on average where ~0.2-0.3 of flights are disrupted, so its
    probabilities, Brier score, log loss and calibration would mislead whoever reads them. The
    ranking (AUC) and the class at the decision threshold do not change: the threshold moves
    with the probability (with_threshold takes it on the corrected scale).

    Two MLlib stages after the classifier, so that MLlib alone saves and loads the model (as
    a Newton model's): [1 - q, q] times [1 - share, share] (ElementwiseProduct), divided by
    its sum (Normalizer, p = 1). The classifier's own probability is kept as
    _weighted_probability; its `prediction` (at the weighted threshold) is unchanged."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"positive share {share!r} is not in (0, 1)")
    if prior_share(model) is not None:
        raise ValueError("the model's probability is corrected already")
    last: Any = model.stages[-1]
    if isinstance(last, VectorAssembler) and last.getOutputCol() == "probability":
        last.setOutputCol(WEIGHTED_PROBABILITY)  # a Newton model's probability vector
    elif isinstance(last, ProbabilisticClassificationModel):
        last.setProbabilityCol(WEIGHTED_PROBABILITY)
    else:
        raise TypeError(f"{type(last).__name__}: not a classifier whose probability can be "
                        f"corrected")
    return PipelineModel(stages=[
        *model.stages,
        ElementwiseProduct(scalingVec=Vectors.dense([1.0 - share, share]),
                           inputCol=WEIGHTED_PROBABILITY, outputCol=PRIOR_SCALED),
        Normalizer(p=1.0, inputCol=PRIOR_SCALED, outputCol="probability")])


def prior_share(model: PipelineModel) -> float | None:
    """The positive share a model's probability was corrected to (None: not corrected)."""
    if len(model.stages) < 3:
        return None
    scale, normalize = model.stages[-2:]
    if not (isinstance(scale, ElementwiseProduct) and isinstance(normalize, Normalizer)
            and scale.getInputCol() == WEIGHTED_PROBABILITY):
        return None
    negative, positive = (float(v) for v in scale.getScalingVec().toArray())
    return positive / (negative + positive)


def classifier_part(model: PipelineModel) -> PipelineModel:
    """The pipeline without its prior correction (the same stage objects)."""
    return PipelineModel(stages=model.stages[:-2]) if prior_share(model) is not None else model


def with_threshold(model: PipelineModel, threshold: float) -> PipelineModel:
    """The fitted pipeline with its `prediction` column the class at the decision threshold
    (not MLlib's 0.5), so that whoever loads the logged model (`mlflow.pyfunc`, `spark_udf`, a
    serving endpoint) gets the class the score job writes. A logistic regression takes it as
    `threshold` t, the tree ensembles as `thresholds` [1 - t, t] (class 1 when p > t, both);
    a Newton model's probability stage as p >= t, as the score job; the two differ only for a
    probability exactly at t. Changes the model in place and returns it."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"decision threshold {threshold!r} is not a probability in [0, 1]")
    share = prior_share(model)
    if share is not None:  # the classifier's class is taken on its weighted probability
        with_threshold(classifier_part(model), uncorrected(threshold, share))
        return model
    if set_threshold(model, threshold):
        return model
    last: Any = model.stages[-1]
    if isinstance(last, LogisticRegressionModel) and last.getFamily() != "multinomial":
        # (a multinomial one predicts by `thresholds` alone, below)
        # its own setter clears `thresholds` (the generic one leaves `threshold` set, and Spark
        # refuses the two together) and keeps t exact (from [1 - t, t] it derives t again)
        last.setThreshold(threshold)
    elif isinstance(last, ProbabilisticClassificationModel):
        last.setThresholds([1.0 - threshold, threshold])
    else:
        raise TypeError(f"{type(last).__name__}: not a classifier whose threshold can be set")
    return model


def decision_threshold(model: PipelineModel) -> float | None:
    """The threshold a fitted pipeline's `prediction` is the class at (what `with_threshold`
    set; MLlib's 0.5 when nothing did), read back from the model; None when its last stage is
    no binary classifier. Two class thresholds [t0, t1] give class 1 when p1 / t1 > p0 / t0,
    that is p1 > t1 / (t0 + t1). A model with a prior correction: on the corrected scale."""
    share = prior_share(model)
    if share is not None:
        weighted = decision_threshold(classifier_part(model))
        return None if weighted is None else corrected(weighted, share)
    newton = threshold_of(model)
    if newton is not None:
        return newton
    last: Any = model.stages[-1]
    if not isinstance(last, ProbabilisticClassificationModel):
        return None
    if not last.isSet("thresholds"):
        # a binomial logistic regression's own `threshold`; a multinomial one (and every other
        # classifier) then takes the class of highest probability
        binomial = (isinstance(last, LogisticRegressionModel)
                    and last.getFamily() != "multinomial")
        return float(last.getOrDefault("threshold")) if binomial else 0.5
    thresholds = [float(t) for t in last.getThresholds()]
    if len(thresholds) != 2:
        return None
    return thresholds[1] / sum(thresholds)


def feature_names(model: PipelineModel, sample: DataFrame) -> list[str]:
    """Names of the assembled feature vector's slots (from the vector's ML attributes)."""
    model = classifier_part(model)
    trees = tree_stages(model)  # a Newton model: the stages before its first tree
    prep = model.stages[:model.stages.index(trees[0])] if trees else model.stages[:-1]
    schema = PipelineModel(stages=prep).transform(sample.limit(1)).schema
    # The scaler of the linear pipeline drops the names: they are on its input vector.
    for column in ("features", "raw_features"):
        if column in schema.fieldNames():
            attrs = schema[column].metadata.get("ml_attr", {}).get("attrs", {})
            slots = sorted((a["idx"], a["name"]) for group in attrs.values() for a in group)
            if slots:
                return [name for _, name in slots]
    return []


def importances(model: PipelineModel, sample: DataFrame) -> dict[str, float]:
    """Feature importances (trees) or coefficients (logistic regression), by feature name,
    largest magnitude first."""
    model = classifier_part(model)
    last: Any = model.stages[-1]  # a tree model or a LogisticRegressionModel
    trees = tree_stages(model)
    if trees:  # Newton boosting: each tree's importances (normalized per tree, the only ones
        # MLlib's Python API gives), summed and normalized, as MLlib's random forest (its GBT
        # sums the raw gains)
        total = np.sum([t.featureImportances.toArray() for t in trees], axis=0)
        values = total / total.sum() if total.sum() > 0 else total
    else:
        values = (last.featureImportances if hasattr(last, "featureImportances")
                  else last.coefficients).toArray()
    names = feature_names(model, sample)
    if len(names) != len(values):
        names = [f"f{i}" for i in range(len(values))]
    pairs = sorted(zip(names, (float(v) for v in values), strict=True), key=lambda kv: -abs(kv[1]))
    return dict(pairs)
