"""Monitoring of a scored day (pure functions of DataFrames and settings).

Feature drift of every model feature and of the predicted probability against the reference
saved with the model at training time: PSI on quantile bins or categories and the
Jensen-Shannon distance (bounded where PSI explodes on near-empty bins) from one Spark pass over
the day's rows, and each numeric feature's mean shift in reference standard deviations from the
same pass, NaN counted as missing as in the reference (the day's rows of the weather are hourly
readings of one place: their PSI is large every day, while their mean moves only when the
weather does); realized quality (AUC-ROC,
AUC-PR, Brier score, calibration) of the flights whose outcome is known at the monitoring
instant, by gold's own known-at rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.config import number, whole_number
from lakehouse.drift import FeatureReference, bin_counts, drift, mean_shift
from lakehouse.evaluation import Histogram, histogram_counts, histograms_from
from lakehouse.features import LABEL, TAIL_RECORDED

PREDICTION = "prediction"  # the subject name of prediction drift
DAY, TRAILING = "day", "trailing"


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor section of conf (thresholds live in its alerts)."""

    trailing_days: int
    min_labeled: int
    home_timezone: str
    min_scored: int = 0
    webhook_retries: int = 3
    webhook_timeout_seconds: float = 5.0
    retrain_min_days_between: int = 14

    @classmethod
    def from_conf(cls, section: dict[str, Any], home_timezone: str) -> MonitorSettings:
        """Checked when the monitor starts, before it writes: a value that is not a number
        (a quoted one, a list) fails naming its key, as a data error (not retried); a null
        takes the default."""
        where = "monitor"
        return cls(whole_number(section, where, "trailing_days", 7),
                   whole_number(section, where, "min_labeled", 200, minimum=0),
                   home_timezone, whole_number(section, where, "min_scored", 100, minimum=0),
                   whole_number(section, where, "webhook_retries", 3, minimum=0),
                   number(section, where, "webhook_timeout_seconds", 5),
                   whole_number(section, where, "retrain_min_days_between", 14, minimum=0))


def end_of_day(day: date, timezone: str) -> datetime:
    """Local midnight after day, as an aware UTC datetime.

    Aware, because PySpark turns a naive datetime into a timestamp through the driver's OS
    time zone (not the session's): on a laptop in New York a naive 05:00 UTC became 10:00.
    """
    local = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(timezone)) + timedelta(days=1)
    return local.astimezone(ZoneInfo("UTC"))


def drift_rows(rows: DataFrame, refs: dict[str, FeatureReference]) -> list[dict[str, Any]]:
    """PSI and Jensen-Shannon distance per day and feature (and the prediction), one pass.

    rows: a day's predictions joined to their features, with the probability as PREDICTION.
    """
    return _drift_values(bin_counts(rows, refs, ["flight_date"], sums=True).collect(), refs)


def _drift_values(counts: list[Any], refs: dict[str, FeatureReference]) -> list[dict[str, Any]]:
    out = []
    for r in drift(counts, refs, ["flight_date"]):
        for metric in ("psi", "js_distance"):
            out.append({"monitored_date": r["flight_date"], "window": DAY, "metric": metric,
                        "subject": r["feature"], "value": float(r[metric]),
                        "rows": int(r["rows"])})
    # each numeric feature's mean from the same pass: its values' sum and count over the bins
    sums: dict[tuple[Any, str], tuple[float, int]] = {}
    for c in counts:
        if refs[c["feature"]].kind == "numeric":
            key = (c["flight_date"], c["feature"])
            value_sum, values = sums.get(key, (0.0, 0))
            sums[key] = (value_sum + (c["value_sum"] or 0.0), values + c["values"])
    for (day, name), (value_sum, values) in sorted(sums.items()):
        shift = mean_shift(value_sum / values if values else None, refs[name])
        if shift is not None:  # rows: the flights the mean rests on (those with a value)
            out.append({"monitored_date": day, "window": DAY, "metric": "mean_shift",
                        "subject": name, "value": float(shift), "rows": int(values)})
    return out


def day_values(day: DataFrame | None, refs: dict[str, FeatureReference] | None,
               labeled_rows: DataFrame, days: list[date],
               trailing_end: date) -> list[dict[str, Any]]:
    """drift_rows of day (when it and refs are given) and the realized quality of labeled_rows
    per day and over the trailing window (_quality_values), from one
    Spark job: the two aggregates are unioned and collected together (each job costs a fixed
    overhead here that the rows do not)."""
    quality = histogram_counts(labeled_rows, "flight_date", LABEL, F.col("probability")).select(
        F.lit("quality").alias("part"), F.col("_group").alias("flight_date"),
        F.col("bin").alias("hbin"), "neg", "pos", "sum_p", "loss", "se")
    parts = quality
    if day is not None and refs is not None:  # bin_counts refuses references without features
        parts = bin_counts(day, refs, ["flight_date"], sums=True).select(
            F.lit("drift").alias("part"), "flight_date", "feature", "bin", "rows", "value_sum",
            "values").unionByName(quality, allowMissingColumns=True)
    collected = parts.collect()
    counts = [r for r in collected if r["part"] == "drift"]
    by_day = histograms_from(
        {"_group": r["flight_date"], "bin": r["hbin"], "neg": r["neg"], "pos": r["pos"],
         "sum_p": r["sum_p"], "loss": r["loss"], "se": r["se"]}
        for r in collected if r["part"] == "quality")
    drifted = _drift_values(counts, refs) if refs else []
    return drifted + _quality_values(by_day, days, trailing_end)


def labeled(predictions: DataFrame, features: DataFrame, as_of: datetime) -> DataFrame:
    """Predictions whose flight's outcome is known at as_of (gold's known_at_utc), with the
    label; flights without a recorded tail are left out, as in training's evaluation."""
    outcomes = features.select("flight_id", LABEL, "known_at_utc").filter(
        F.col(LABEL).isNotNull() & (F.col("known_at_utc") <= F.lit(as_of)))
    return (predictions.filter((F.col("status") == "scored") & F.col(TAIL_RECORDED))
            .join(outcomes, "flight_id", "inner"))


def _quality_values(by_day: dict[Any, Histogram], days: list[date],
                    trailing_end: date) -> list[dict[str, Any]]:
    """AUC-ROC, AUC-PR, Brier score, log loss and calibration (mean predicted vs observed rate)
    of the labeled rows of each day, and of all of them as the trailing window ending at
    trailing_end, each with the number of labeled flights it rests on."""
    out = [r for d in days for r in _quality(by_day.get(d, Histogram.empty()), DAY, d)]
    trailing = sum((by_day.get(d, Histogram.empty()) for d in days), Histogram.empty())
    return out + _quality(trailing, TRAILING, trailing_end)


def _quality(h: Histogram, window: str, day: date) -> list[dict[str, Any]]:
    n = h.rows
    if not n:
        return []
    values = {"auc_roc": h.auc_roc(), "auc_pr": h.auc_pr(), "brier": h.brier(),
              "log_loss": h.log_loss(), "mean_predicted": float(h.sum_p.sum() / n),
              "observed_rate": float(h.positives.sum() / n)}
    values["calibration_gap"] = values["mean_predicted"] - values["observed_rate"]
    return [{"monitored_date": day, "window": window, "metric": k, "subject": "",
             "value": float(v), "rows": n} for k, v in values.items()]
