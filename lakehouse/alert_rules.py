"""Alert rules of the monitor job, from conf: which monitoring values cross which threshold,
for how many days, and whether the alert makes retraining due (pure functions)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from typing import Any

from lakehouse.alerts import held_since, held_until
from lakehouse.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from lakehouse.monitoring import DAY, PREDICTION, TRAILING

KINDS = ("feature_drift", "prediction_drift", "quality_drop", "calibration")
DRIFT_METRICS = ("psi", "js_distance", "mean_shift")
MODEL_FEATURES = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)


class AlertRuleError(ValueError):
    """A monitor.alerts entry of conf is malformed."""


@dataclass(frozen=True)
class AlertRule:
    """One threshold on one monitoring metric.

    feature_drift and prediction_drift compare a daily drift statistic with `above`;
    quality_drop compares the trailing realized AUC-ROC with the model's training holdout AUC
    less `below_training_by`; calibration compares the trailing |mean predicted - observed|
    with `above`. Quality rules need at least min_labeled labeled flights, drift rules a day of
    at least min_scored scored flights (a day landed in part, e.g. from the event stream, is
    not judged on a handful of flights).
    """

    name: str
    metric: str
    above: float | None
    below_training_by: float | None
    persist_days: int
    retrain: bool
    features: tuple[str, ...] = ()  # feature_drift: only these (default: every model feature)

    @property
    def window(self) -> str:
        return DAY if self.name in ("feature_drift", "prediction_drift") else TRAILING

    def subjects(self, available: set[str]) -> list[str]:
        if self.name == "feature_drift":
            return sorted(s for s in available if s and s != PREDICTION
                          and (not self.features or s in self.features))
        return [PREDICTION] if self.name == "prediction_drift" else [""]

    def crossed(self, value: float | None, rows: int | None, training_auc: float | None,
                min_labeled: int, min_scored: int = 0) -> bool | None:
        """Whether value crosses the rule's threshold; None when the day cannot be judged (too
        few flights, or no value): that is not the condition cleared (see alerts.held_since)."""
        if (rows or 0) < (min_labeled if self.window == TRAILING else min_scored) or (
                value is None or math.isnan(value)):
            return None
        if self.name == "quality_drop":
            return training_auc is not None and value < training_auc - float(
                self.below_training_by or 0.0)
        if self.name == "calibration":
            return abs(value) > float(self.above or 0.0)
        if self.metric == "mean_shift":  # either way: warmer or colder than the reference
            return abs(value) >= float(self.above or 0.0)
        return value >= float(self.above or 0.0)

    def threshold_text(self, training_auc: float | None) -> str:
        if self.name == "quality_drop":
            return f"< {training_auc:.4f} - {self.below_training_by}" if training_auc else "n/a"
        if self.name == "calibration":
            return f"|x| > {self.above}"
        return f"{'|x| >= ' if self.metric == 'mean_shift' else '>= '}{self.above}"


RULE_KEYS = {"metric", "above", "below_training_by", "persist_days", "retrain", "features"}


def drift_features(name: str, given: Any) -> tuple[str, ...]:
    """A rule's `features`: a list of model feature names (a misspelt one would never fire)."""
    if given is None:
        return ()
    if name != "feature_drift":
        raise AlertRuleError(f"monitor.alerts.{name}.features: only feature_drift takes features")
    if not isinstance(given, list) or not all(isinstance(f, str) for f in given):
        raise AlertRuleError(f"monitor.alerts.{name}.features: expected a list of feature "
                             f"names, got {given!r}")
    unknown = sorted(set(given) - set(MODEL_FEATURES))
    if unknown:
        raise AlertRuleError(f"monitor.alerts.{name}.features: {unknown} not model features; "
                             f"they are {list(MODEL_FEATURES)}")
    return tuple(given)


def rules_from_conf(section: dict[str, Any]) -> list[AlertRule]:
    rules = []
    for name, spec in (section or {}).items():
        if name not in KINDS:
            raise AlertRuleError(f"monitor.alerts.{name}: unknown rule; rules are {list(KINDS)}")
        if spec is None:  # `rule: null` in an env's conf turns a base rule off
            continue
        if not isinstance(spec, dict):
            raise AlertRuleError(f"monitor.alerts.{name}: expected a mapping, got {spec!r}")
        unknown = sorted(set(spec) - RULE_KEYS)
        if unknown:
            raise AlertRuleError(f"monitor.alerts.{name}: unknown keys {unknown}; a rule takes "
                                 f"{sorted(RULE_KEYS)}")
        threshold = "below_training_by" if name == "quality_drop" else "above"
        value = spec.get(threshold)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                threshold == "above" and value == 0):
            raise AlertRuleError(f"monitor.alerts.{name}.{threshold}: expected a number "
                                 f"{'>= 0' if threshold == 'below_training_by' else '> 0'}, "
                                 f"got {value!r}")
        persist = spec.get("persist_days", 1)
        if isinstance(persist, bool) or not isinstance(persist, int) or persist < 1:
            raise AlertRuleError(f"monitor.alerts.{name}.persist_days: expected a whole number "
                                 f">= 1, got {persist!r}")
        metric = {"quality_drop": "auc_roc", "calibration": "calibration_gap"}.get(
            name, str(spec.get("metric", "psi")))
        if name in ("feature_drift", "prediction_drift") and metric not in DRIFT_METRICS:
            raise AlertRuleError(f"monitor.alerts.{name}.metric: {metric!r} unknown; use one of "
                                 f"{list(DRIFT_METRICS)}")
        retrain = spec.get("retrain", False)
        if not isinstance(retrain, bool):  # YAML's "false" in quotes is a string, and true
            raise AlertRuleError(f"monitor.alerts.{name}.retrain: expected true or false, got "
                                 f"{retrain!r}")
        rules.append(AlertRule(name, metric, spec.get("above"), spec.get("below_training_by"),
                               int(spec.get("persist_days", 1)), retrain,
                               drift_features(name, spec.get("features"))))
    return rules


@dataclass(frozen=True)
class Crossing:
    """An alert raised for one rule and subject on one day."""

    rule: AlertRule
    subject: str
    day: date
    value: float
    rows: int
    threshold: str
    since: date | None = None  # the first day of the run of crossed days holding day
    until: date | None = None  # its last day known (later than day when day is run again)

    @property
    def alert_id(self) -> str:
        return f"{self.rule.name}|{self.subject}|{self.day}"

    def message(self, model: str) -> str:
        what = f"{self.rule.metric} of {self.subject}" if self.subject else self.rule.metric
        window = "that day" if self.rule.window == DAY else "over the trailing window"
        return (f"{model}: {what} = {self.value:.4f} {window} ({self.rows} flights), threshold "
                f"{self.threshold}, for {self.rule.persist_days} day(s) running"
                + ("; retraining is due" if self.rule.retrain else ""))


def raised_on(day: date, history: list[dict[str, Any]], rules: list[AlertRule],
              training_auc: float | None, min_labeled: int,
              min_scored: int = 0) -> list[Crossing]:
    """The rules whose condition has held on day for at least their persist_days consecutive
    days (history: monitoring rows of one model version, days after day included when day is
    run again), each with the run's first and last days: `raise_alerts` raises those whose
    run no recorded alert falls in, once per episode."""
    series: dict[tuple[str, str, str], dict[date, dict[str, Any]]] = defaultdict(dict)
    for row in history:
        series[(row["window"], row["metric"], row["subject"])][row["monitored_date"]] = row
    subjects = {row["subject"] for row in history}
    # The days the version was monitored: on one of them a subject without a row had nothing
    # to measure (no reading of a feature that day, no outcome known yet), which is a day not
    # judged, not the condition cleared; a day not monitored at all ends a run. Only the rows
    # a monitor run writes for its own day say so (drift, the trailing window): each run also
    # writes the per-day quality of the days before it, which were not monitored for that.
    monitored = sorted({row["monitored_date"] for row in history
                        if row["window"] == TRAILING or row["metric"] in DRIFT_METRICS})
    out = []
    for rule in rules:
        for subject in rule.subjects(subjects):
            by_day = series.get((rule.window, rule.metric, subject), {})
            flags = [(d, rule.crossed(by_day[d]["value"], by_day[d]["rows"], training_auc,
                                      min_labeled, min_scored) if d in by_day else None)
                     for d in monitored]
            since = held_since(flags, day, rule.persist_days)
            if since is not None:
                row = by_day[day]
                out.append(Crossing(rule, subject, day, row["value"], row["rows"],
                                    rule.threshold_text(training_auc), since,
                                    held_until(flags, day)))
    return out
