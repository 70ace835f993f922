"""The replay's picture and report: realized quality, calibration and the top drifting features
per day, with alerts and model changes marked (matplotlib PNG, plain text)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.dates import DateFormatter

from lakehouse import plots  # noqa: F401  (selects the Agg backend before pyplot loads)

TOP_FEATURES = 5


@dataclass
class DayOutcome:
    """What the daily workflow did on one replayed day."""

    day: date
    champion: str | None
    statuses: dict[str, str]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    retrained: dict[str, Any] | None = None
    seconds: float = 0.0


def champion_rows(monitoring: list[dict[str, Any]],
                  days: Sequence[DayOutcome] = ()) -> list[dict[str, Any]]:
    """The monitoring values of whichever model was champion on each day: one version a day.
    Around a promotion two versions hold champion rows for a day: the one in place when the
    day was scored and monitored (whose values raised that day's alerts), and the one promoted
    that day, which scored it again. The first is kept: the champion the replay recorded at the
    end of the day before, else the oldest version."""
    kept = [r for r in monitoring if r.get("role") == "champion"]
    versions: dict[date, set[str]] = defaultdict(set)
    for r in kept:
        versions[r["monitored_date"]].add(str(r.get("model_version")))
    ordered = sorted(days, key=lambda o: o.day)
    before = {o.day: p.champion for p, o in pairwise(ordered)}

    def chosen(day: date) -> str:
        held = versions[day]
        if before.get(day) in held:
            return str(before[day])
        return min(held, key=lambda v: (len(v), v))  # numerically: "9" before "10"

    return [r for r in kept if len(versions[r["monitored_date"]]) == 1
            or str(r.get("model_version")) == chosen(r["monitored_date"])]


def series(rows: list[dict[str, Any]], window: str, metric: str,
           subject: str = "") -> list[tuple[date, float]]:
    return sorted((r["monitored_date"], r["value"]) for r in rows
                  if r["window"] == window and r["metric"] == metric
                  and r["subject"] == subject and r["value"] is not None)


def top_drifting(rows: list[dict[str, Any]], metric: str, n: int = TOP_FEATURES,
                 features: tuple[str, ...] = ()) -> list[str]:
    """The n features (of features, when given) whose daily value of metric peaked highest
    in size (a mean shift alerts either way)."""
    peak: dict[str, float] = defaultdict(float)
    for r in rows:
        if (r["window"] == "day" and r["metric"] == metric and r["subject"] != "prediction"
                and (not features or r["subject"] in features)):
            peak[r["subject"]] = max(peak[r["subject"]], abs(r["value"] or 0.0))
    return [k for k, _ in sorted(peak.items(), key=lambda kv: -kv[1])[:n]]


@dataclass(frozen=True)
class DriftRule:
    """The metric an alert rule watches, its threshold and the features it watches (none
    named: all), as the drift panels plot them."""

    metric: str
    above: float
    features: tuple[str, ...] = ()

    def thresholds(self) -> tuple[list[float], str]:
        """The lines to draw and their label: a mean shift alerts at |x| >= above, either
        way (`AlertRule.crossed`); the other metrics at x >= above."""
        if self.metric == "mean_shift":
            return [self.above, -self.above], f"alert at |x| >= {self.above}"
        return [self.above], f"alert at >= {self.above}"


def threshold_lines(ax: Any, rule: DriftRule) -> None:
    values, label = rule.thresholds()
    for i, value in enumerate(values):
        ax.axhline(value, color="grey", linestyle=":", label=label if i == 0 else None)


def picture(monitoring: list[dict[str, Any]], days: list[DayOutcome], path: Path,
            feature_rule: DriftRule = DriftRule("mean_shift", 2.0),
            prediction_rule: DriftRule = DriftRule("psi", 0.2)) -> Path:
    """Four panels over the replayed days: realized AUC-ROC (daily and trailing), calibration
    (mean predicted vs observed rate, trailing), the feature-drift rule's metric for the top
    drifting features and the prediction-drift rule's metric, each with its alert threshold;
    alerts as red bands, promotions as green dashed lines."""
    rows = champion_rows(monitoring, days)
    fig, (auc, cal, drift, pred) = plt.subplots(4, 1, figsize=(12, 12), sharex=True)
    for window, style in (("day", ":"), ("trailing", "-")):
        points = series(rows, window, "auc_roc")
        auc.plot([d for d, _ in points], [v for _, v in points], style, marker=".",
                 label=f"realized AUC-ROC ({window})")
    auc.set(ylabel="AUC-ROC", title="champion's realized quality, drift, alerts and model changes")
    for metric, label in (("mean_predicted", "mean predicted"), ("observed_rate", "observed rate")):
        points = series(rows, "trailing", metric)
        cal.plot([d for d, _ in points], [v for _, v in points], marker=".", label=label)
    cal.set(ylabel="disruption rate (trailing)")
    for feature in top_drifting(rows, feature_rule.metric, features=feature_rule.features):
        points = series(rows, "day", feature_rule.metric, feature)
        drift.plot([d for d, _ in points], [v for _, v in points], marker=".", label=feature)
    threshold_lines(drift, feature_rule)
    drift.set(ylabel=f"feature {feature_rule.metric}")
    points = series(rows, "day", prediction_rule.metric, "prediction")
    pred.plot([d for d, _ in points], [v for _, v in points], "--", marker=".",
              label="prediction")
    threshold_lines(pred, prediction_rule)
    pred.set(ylabel=f"prediction {prediction_rule.metric}", xlabel="flight date")
    panels = (auc, cal, drift, pred)
    for outcome in days:
        for alert in outcome.alerts:
            for ax in panels:
                ax.axvline(outcome.day, color="red", alpha=0.25, linewidth=4)
            auc.annotate(alert["rule"], (outcome.day, auc.get_ylim()[0]), rotation=90,
                         fontsize=7, color="red", va="bottom")
        if outcome.retrained and outcome.retrained.get("promoted"):
            for ax in panels:
                ax.axvline(outcome.day, color="green", linestyle="--")
            auc.annotate(f"v{outcome.retrained['version']} promoted",
                         (outcome.day, auc.get_ylim()[1]), rotation=90, fontsize=8,
                         color="green", va="top")
    for ax in panels:
        ax.legend(loc="best", fontsize=7)
        ax.grid(alpha=0.3)
    pred.xaxis.set_major_formatter(DateFormatter("%m-%d"))  # type: ignore[no-untyped-call]
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(days: list[DayOutcome], picture_path: Path | None, seconds: float) -> str:
    """The replay in text: days, alerts, retrainings with their gate decisions, champions."""
    lines = [f"replayed {len(days)} day(s) "
             f"{days[0].day}..{days[-1].day} in {seconds / 60:.1f} min" if days else "no day"]
    failed = [(o.day, t) for o in days for t, s in o.statuses.items() if s == "failed"]
    lines.append(f"tasks failed: {len(failed)}" + (f" {failed[:5]}" if failed else ""))
    alerts = [(o.day, a) for o in days for a in o.alerts]
    lines.append(f"alerts raised: {len(alerts)}")
    lines += [f"  {d} {a['rule']}: {a['message']}" for d, a in alerts]
    retrained = [(o.day, o.retrained) for o in days if o.retrained]
    lines.append(f"retrainings: {len(retrained)}")
    lines += [f"  {d} v{r['version']} ({r['family']}) -> @{r['alias']}: {r['decision']}"
              for d, r in retrained]
    lines.append("champion over time:")
    current, since = None, None
    for o in days:
        if o.champion != current:
            if current is not None:
                lines.append(f"  v{current} {since}..{o.day}")
            current, since = o.champion, o.day
    if current is not None and days:
        lines.append(f"  v{current} {since}..{days[-1].day}")
    if picture_path is not None:
        lines.append(f"picture: {picture_path}")
    return "\n".join(lines)
