"""`lakehouse replay`: land real days one at a time and run the daily workflow for each, so that
scoring, monitoring, alerts and retraining play out over weeks of real data, then report it.

Before the first replayed day, everything earlier is landed and built, and a champion is trained
on windows that end the day before (so the replayed days are new to it); a champion the
registry holds already is kept, unless it was trained on a replayed day (refused).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import registry, tables, workflow
from lakehouse.alert_rules import rules_from_conf
from lakehouse.config import Config, deep_merge
from lakehouse.dag import failed
from lakehouse.monitoring import end_of_day
from lakehouse.replay_report import DayOutcome, DriftRule, picture, report
from lakehouse.seed import local_dir, seed
from lakehouse.stages import train

log = logging.getLogger("lakehouse")
FIRST_DAY = date(2013, 1, 1)


class ReplayError(ValueError):
    """The replay's range is not a range of landed-able days."""


def days(start: date, end: date) -> list[date]:
    if end < start:
        raise ReplayError(f"--to {end} is before --from {start}")
    if start <= FIRST_DAY:
        raise ReplayError(f"--from must be after {FIRST_DAY}: the days before it are the "
                          "history the first model is trained on")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def check_champion(config: Config, start: date) -> None:
    """A champion the registry holds already is replayed as it is, unless it was trained on
    days the replay monitors: they would not be new to it (its quality inflated, its drift
    near nil) and every retraining's gate window would fall inside its training window."""
    name = registry.configure(config)["model_name"]
    found = registry.resolve(name, registry.CHAMPION)
    last = train.trained_to(found)
    if found is not None and last is not None and date.fromisoformat(last[:10]) >= start:
        raise ReplayError(
            f"{name}@{registry.CHAMPION} is version {found.version}, trained on days up to "
            f"{last}, not before --from {start}: the replayed days would not be new to it. "
            f"Replay from a day after {last}, or with another data root or mlflow.model_name "
            f"(a new registry or model gets a champion trained on the days before --from)")


def bootstrap(spark: SparkSession, config: Config, start: date) -> dict[str, Any] | None:
    """Land and build everything before start; train a champion on windows ending the day
    before start, on the outcomes known by that day's end, unless one exists."""
    seed(local_dir(config.landing, "landing"), FIRST_DAY, start - timedelta(days=1))
    before = start - timedelta(days=1)
    built = workflow.run_daily(spark, config, (before.isoformat(), before.isoformat()),
                               ("bronze", "silver", "gold"))
    if failed(built["tasks"]):
        raise workflow.WorkflowFailed(built)
    if workflow.champion_exists(config):
        return None
    # as a retraining in the daily workflow: only outcomes known by the end of that day
    return train.run(spark, config, workflow.new_run_id(),
                     windows=workflow.retrain_windows(config, before),
                     labels_known_at=end_of_day(before, config.section("gold")["home_timezone"]))


def drift_rules(config: Config) -> tuple[DriftRule, DriftRule]:
    """The feature- and prediction-drift rules of conf, as the picture plots them."""
    rules = {r.name: r for r in rules_from_conf(config.section("monitor").get("alerts") or {})}
    plotted = []
    for name, default in (("feature_drift", DriftRule("mean_shift", 2.0)),
                          ("prediction_drift", DriftRule("psi", 0.2))):
        rule = rules.get(name)
        plotted.append(DriftRule(rule.metric, rule.above, rule.features) if rule is not None
                       and rule.above is not None else default)
    return plotted[0], plotted[1]


def champion_version(config: Config) -> str | None:
    conf = registry.configure(config)
    found = registry.resolve(conf["model_name"], registry.CHAMPION)
    return str(found.version) if found is not None else None


def replay_day(spark: SparkSession, config: Config, day: date,
               first: date | None = None) -> DayOutcome:
    """Land day and run the daily workflow for it, as of the end of that day. Scored and
    monitored from `latest` to day, as a scheduled run is: an earlier day whose score or
    monitor task failed (past its retries) is scored or monitored again by the next day's run,
    at most `score.catch_up_days` back (`workflow.resolved`; `replay` keeps that window inside
    the replayed days). first: score from that day instead (`from: latest` starts at the day
    itself while nothing was scored: the replay's first days, until one scores)."""
    started = time.monotonic()
    seed(local_dir(config.landing, "landing"), day, day)
    results = workflow.run_daily(spark, config, (first.isoformat() if first else workflow.LATEST,
                                                 day.isoformat()),
                                 as_of=end_of_day(day, config.section("gold")["home_timezone"]))
    tasks = results["tasks"]
    watched = results.get("monitor")
    trained = results.get("train")
    return DayOutcome(day, champion_version(config),
                      {name: r.status for name, r in tasks.items()},
                      list(watched["alerts"]) if isinstance(watched, dict) else [],
                      trained if isinstance(trained, dict) else None,
                      time.monotonic() - started)


def recorded_alerts(spark: SparkSession, config: Config, start: date, end: date,
                    since: datetime) -> dict[date, list[dict[str, Any]]]:
    """The alerts of the conf's model recorded since (the replay's start) for the days
    start..end, by monitored day, in the order raised. A monitor run retried after its alerts
    were recorded returns none (they are raised once per episode), so the report and the
    picture read them from the alerts table; an earlier replay's alerts on the same data root
    are not this one's."""
    if not tables.exists(spark, config, "alerts"):
        return {}
    name = registry.configure(config)["model_name"]
    by_day: dict[date, list[dict[str, Any]]] = {}
    for row in (tables.read(spark, config, "alerts")
                .filter(F.col("monitored_date").between(F.lit(start), F.lit(end))
                        & (F.col("model_name") == name) & (F.col("raised_at") >= F.lit(since)))
                .orderBy("raised_at", "alert_id").collect()):
        by_day.setdefault(row["monitored_date"], []).append(row.asDict())
    return by_day


def replay(spark: SparkSession, config: Config, start: date, end: date,
           on_day: Callable[[DayOutcome], None] | None = None) -> tuple[str, Path, int]:
    """Replay start..end; returns the text report, the picture's path and the number of
    tasks that failed over the replayed days (the report names them)."""
    began, since = time.monotonic(), datetime.now(UTC)
    wanted = days(start, end)
    check_champion(config, start)  # before anything is landed
    first = bootstrap(spark, config, start)
    if first is not None:
        log.info("replay: first champion v%s (%s), holdout AUC-ROC %.4f", first["version"],
                 first["family"], first["holdout"]["auc_roc"])
    outcomes = []
    catch_up = int(config.section("score").get("catch_up_days", 7))
    scored = False  # whether a replayed day's score (or rescore) task succeeded yet
    for day in wanted:
        # `from: latest` catches up at most score.catch_up_days back; here no further back
        # than start: a data root an earlier run scored and monitored holds days before it
        outcome = replay_day(spark, replace(config, values=deep_merge(config.values, {
            "score": {"catch_up_days": min(catch_up, (day - start).days + 1)}})), day,
            None if scored else start)
        outcomes.append(outcome)
        scored = scored or "succeeded" in (outcome.statuses.get("score"),
                                           outcome.statuses.get("rescore"))
        log.info("replay %s: %s; champion v%s; %d alert(s)%s in %.0f s", day,
                 ", ".join(f"{k} {v}" for k, v in outcome.statuses.items()), outcome.champion,
                 len(outcome.alerts), "; retrained" if outcome.retrained else "",
                 outcome.seconds)
        if on_day is not None:
            on_day(outcome)
    recorded = recorded_alerts(spark, config, start, end, since)
    for outcome in outcomes:  # the record, not what each monitor run returned (see there)
        outcome.alerts = recorded.get(outcome.day, [])
    monitoring = [r.asDict() for r in tables.read(spark, config, "model_monitoring").filter(
        F.col("monitored_date").between(F.lit(start), F.lit(end))
        & (F.col("model_name") == registry.configure(config)["model_name"])).collect()
    ] if tables.exists(
        spark, config, "model_monitoring") else []
    path = local_dir(config.data_root, "data_root") / "reports" / f"replay_{start}_{end}.png"
    picture(monitoring, outcomes, path, *drift_rules(config))
    failures = sum(s == "failed" for o in outcomes for s in o.statuses.values())
    return report(outcomes, path, time.monotonic() - began), path, failures
