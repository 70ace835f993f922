"""Scored rows to metrics, threshold, curves and calibration, from one Spark aggregation.

The rows' probabilities are counted into a fine histogram (positives, negatives, sums for log
loss and Brier score per bin) in one job; every metric and curve is then read from it on the
driver, so an evaluation costs one pass whatever is asked of it. With 10,000 bins the areas
agree with an exact computation to about 1e-4 (rows within one bin count as ties).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

BINS = 10_000
EPSILON = 1e-15


def positive_probability(column: str = "probability") -> Column:
    """The probability of the positive class from an MLlib probability vector."""
    return vector_to_array(F.col(column))[1]


@dataclass(frozen=True)
class Histogram:
    """Per probability bin (ascending): negatives, positives, sum of p, log-loss and Brier
    sums."""

    negatives: np.ndarray
    positives: np.ndarray
    sum_p: np.ndarray
    log_loss_sum: float
    brier_sum: float

    def __add__(self, other: Histogram) -> Histogram:
        """The histogram of both sets of rows (e.g. days summed into a trailing window)."""
        return Histogram(self.negatives + other.negatives, self.positives + other.positives,
                         self.sum_p + other.sum_p, self.log_loss_sum + other.log_loss_sum,
                         self.brier_sum + other.brier_sum)

    @classmethod
    def empty(cls) -> Histogram:
        return cls(np.zeros(BINS), np.zeros(BINS), np.zeros(BINS), 0.0, 0.0)

    @property
    def rows(self) -> int:
        return int(self.negatives.sum() + self.positives.sum())

    def _cumulative(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives when predicting positive from each bin upward (index i:
        threshold at bin i's lower edge), plus the all-negative point at the end."""
        tp = np.concatenate([np.cumsum(self.positives[::-1])[::-1], [0]])
        fp = np.concatenate([np.cumsum(self.negatives[::-1])[::-1], [0]])
        return tp.astype(float), fp.astype(float)

    def auc_roc(self) -> float:
        tp, fp = self._cumulative()
        pos, neg = tp[0], fp[0]
        if not pos or not neg:
            return float("nan")
        tpr, fpr = tp[::-1] / pos, fp[::-1] / neg
        return float(np.trapezoid(tpr, fpr))

    def auc_pr(self) -> float:
        """Area under the precision-recall curve by the trapezoid rule, starting at recall 0
        with the first point's precision (as MLlib's areaUnderPR)."""
        tp, fp = self._cumulative()
        if not tp[0]:
            return float("nan")
        keep = (tp + fp) > 0
        recall = (tp[keep] / tp[0])[::-1]
        precision = (tp[keep] / (tp[keep] + fp[keep]))[::-1]
        recall = np.concatenate([[0.0], recall])
        precision = np.concatenate([[precision[0]], precision])
        return float(np.trapezoid(precision, recall))

    def log_loss(self) -> float:
        return self.log_loss_sum / max(self.rows, 1)

    def brier(self) -> float:
        return self.brier_sum / max(self.rows, 1)

    def at_threshold(self, threshold: float) -> dict[str, float]:
        """Precision, recall and F1 when flights with p >= threshold are called disrupted."""
        first = min(int(np.floor(threshold * BINS + 1e-9)), BINS)
        tp = float(self.positives[first:].sum())
        fp = float(self.negatives[first:].sum())
        pos = float(self.positives.sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / pos if pos else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}

    def best_f1_threshold(self) -> float:
        """The bin edge that maximizes F1 (the decision threshold rule `max_f1`)."""
        tp, fp = self._cumulative()
        pos = tp[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(tp > 0, 2 * tp / (tp + fp + pos), 0.0)
        return float(np.argmax(f1[:BINS]) / BINS)

    def threshold_by(self, rule: str) -> float:
        """The decision threshold a conf'd rule picks on these rows: `max_f1`, `recall:R` (the
        highest threshold that still catches a share R of the disrupted flights) or `fixed:P`.
        """
        name, _, value = rule.partition(":")
        if name == "max_f1" and not value:
            return self.best_f1_threshold()
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if name == "fixed" and 0 <= number <= 1:
            return number
        if name == "recall" and 0 < number <= 1:
            tp, _ = self._cumulative()
            reached = np.nonzero(tp[:BINS] >= number * tp[0])[0]
            return float(reached[-1] / BINS) if len(reached) else 0.0
        raise ValueError(f"train.threshold_rule {rule!r}: use max_f1, recall:R (0 < R <= 1) "
                         "or fixed:P (0 <= P <= 1)")

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        tp, fp = self._cumulative()
        return fp[::-1] / max(fp[0], 1), tp[::-1] / max(tp[0], 1)

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        tp, fp = self._cumulative()
        keep = (tp + fp) > 0
        return tp[keep] / max(tp[0], 1), tp[keep] / (tp[keep] + fp[keep])

    def calibration(self, groups: int = 10) -> list[tuple[float, float, int]]:
        """Per equal-width probability group with rows: mean predicted, observed rate, rows."""
        out = []
        for part in np.array_split(np.arange(BINS), groups):
            n = float(self.negatives[part].sum() + self.positives[part].sum())
            if n:
                out.append((float(self.sum_p[part].sum() / n),
                            float(self.positives[part].sum() / n), int(n)))
        return out

    def metrics(self, threshold: float | None = None) -> dict[str, float]:
        """AUC-ROC, AUC-PR, log loss, Brier score, rows and positive rate (and precision,
        recall and F1 at threshold when given)."""
        out = {"auc_roc": self.auc_roc(), "auc_pr": self.auc_pr(), "log_loss": self.log_loss(),
               "brier": self.brier(), "rows": float(self.rows),
               "positive_rate": float(self.positives.sum() / max(self.rows, 1))}
        if threshold is not None:
            out.update({f"{k}_at_threshold": v for k, v in self.at_threshold(threshold).items()})
        return out


def histogram(scored: DataFrame, label: str, score: Column) -> Histogram:
    """Count scored rows into probability bins in one Spark job."""
    return histograms_by(scored.withColumn("_all", F.lit(0)), "_all", label, score).get(
        0, Histogram.empty())


def histograms_by(scored: DataFrame, group: str, label: str,
                  score: Column) -> dict[Any, Histogram]:
    """One histogram per value of the group column (e.g. per day), in one Spark job; rows
    without a label or a score are not counted."""
    return histograms_from(histogram_counts(scored, group, label, score).collect())


def histogram_counts(scored: DataFrame, group: str, label: str, score: Column) -> DataFrame:
    """histograms_by's aggregate, not yet collected (to collect it with another in one job):
    one row per group (`_group`) and probability bin (`bin`) with the negatives, positives,
    and the sums of the probability, log loss and squared error."""
    # a NaN probability is no score (scoring records its flight unscorable); clipped into
    # [0, 1] it would count as a confident positive
    scored = scored.filter(F.col(label).isNotNull() & score.isNotNull()
                           & ~F.isnan(score.cast("double")))
    p = F.least(F.greatest(score.cast("double"), F.lit(0.0)), F.lit(1.0))
    y = F.col(label).cast("double")
    clipped = F.least(F.greatest(p, F.lit(EPSILON)), F.lit(1 - EPSILON))
    loss = -(y * F.log(clipped) + (1 - y) * F.log(1 - clipped))
    return (scored.select(F.col(group).alias("_group"),
                          F.least(F.floor(p * BINS), F.lit(BINS - 1)).cast("int").alias("bin"),
                          y.alias("y"), p.alias("p"), loss.alias("loss"),
                          ((p - y) * (p - y)).alias("se"))
            .groupBy("_group", "bin").agg(F.sum(1 - F.col("y")).alias("neg"),
                                          F.sum("y").alias("pos"), F.sum("p").alias("sum_p"),
                                          F.sum("loss").alias("loss"), F.sum("se").alias("se")))


def histograms_from(rows: Iterable[Any]) -> dict[Any, Histogram]:
    """The histograms of histogram_counts' collected rows, by group."""
    out: dict[Any, Histogram] = {}
    for r in rows:
        h = out.setdefault(r["_group"], Histogram.empty())
        h.negatives[r["bin"]], h.positives[r["bin"]], h.sum_p[r["bin"]] = (
            r["neg"], r["pos"], r["sum_p"])
        out[r["_group"]] = Histogram(h.negatives, h.positives, h.sum_p,
                                     h.log_loss_sum + r["loss"], h.brier_sum + r["se"])
    return out
