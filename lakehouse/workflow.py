"""The daily workflow: a small DAG of the stages in one Spark session, with retries of
transient failures and a final report. Production scheduling belongs to Databricks Jobs, cron or
Airflow calling the same jobs; this runner keeps a laptop's or a replay's day in one JVM."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from mlflow.exceptions import MlflowException
from pyspark.errors import (
    AnalysisException,
    ArithmeticException,
    DateTimeException,
    IllegalArgumentException,
    NumberFormatException,
    UnsupportedOperationException,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import registry, tables
from lakehouse.bronze import BronzeAccountingError
from lakehouse.config import Config, number, whole_number
from lakehouse.contracts import ContractViolation
from lakehouse.dag import Task, TaskResult, failed, run_dag, summary
from lakehouse.monitoring import MonitorSettings, end_of_day
from lakehouse.session import ClassicSparkRequiredError
from lakehouse.stages import bronze, gold, monitor, score, silver, train
from lakehouse.tables import ConcurrentRunError
from lakehouse.training import TrainingDataError, Windows, between

log = logging.getLogger("lakehouse")
STAGES = ("bronze", "silver", "gold", "score", "monitor", "train")
TRAIN_MODES = ("auto", "always", "never")
# Errors about the data, not the machine: retrying cannot help. Nor can retrying a run that
# overlapped another run of the same stream: a retry would race it again.
# Spark's own errors about a query or its data (a missing table or column, a cast or
# arithmetic error in ANSI mode, a MERGE with two source rows for one target row) are
# permanent too; a lost executor, a network or storage error, an MLflow 5xx are retried.
PERMANENT_ERRORS = (ContractViolation, TrainingDataError, score.NoChampionError, ValueError,
                    ConcurrentRunError, BronzeAccountingError, bronze.MigrationRequiredError,
                    bronze.CheckpointBehindError,
                    gold.GoldInputError, AnalysisException, ArithmeticException,
                    DateTimeException, NumberFormatException, IllegalArgumentException,
                    UnsupportedOperationException, ClassicSparkRequiredError)
# How Spark's checkpoint and Delta's transaction check report a second writer of one stream
# (where no lock was taken, e.g. a checkpoint on S3) or a second start of one query
# (CONCURRENT_QUERY): the same overlap, found later. And Delta's optimistic-concurrency
# conflicts (a concurrent append, delete, metadata or protocol change won the commit:
# DELTA_CONCURRENT_APPEND, _DELETE_READ, _DELETE_DELETE, _WRITE, _TRANSACTION): another run of
# the job is writing the same table, which a retry would race again. Matched by text: PySpark
# shows Delta's errors as their Java class and error class (delta.exceptions' Python classes
# are installed by no import this job makes), and a streaming query's failure wraps them. Not
# java.util's ConcurrentModificationException by name: Delta's classes extend it, but so does
# a JVM collection modified while iterated, a race inside Spark that a retry may get past.
CONCURRENT_WRITERS = ("DeltaConcurrentModificationException", "ConcurrentTransactionException",
                      "CONCURRENT_STREAM_LOG_UPDATE", "CONCURRENT_QUERY", "DELTA_CONCURRENT_",
                      "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
                      "Multiple streaming queries are concurrently using")


def is_permanent(error: BaseException) -> bool:
    """Whether retrying a stage that failed with error cannot help (or could do harm)."""
    return isinstance(error, PERMANENT_ERRORS) or any(
        marker in str(error) for marker in CONCURRENT_WRITERS)


class UnknownStageError(ValueError):
    """A stage name that the workflow does not have."""


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class RetryPolicy:
    """The conf's `workflow.retries` (how often a transient failure is retried) and
    `workflow.backoff_seconds` (the wait before the first retry, doubled for each next one)."""

    def __init__(self, config: Config) -> None:
        section = config.values.get("workflow") or {}
        self.retries = whole_number(section, "workflow", "retries", 1, minimum=0)
        self.first_wait = number(section, "workflow", "backoff_seconds", 1.0)

    def backoff_s(self, attempt: int) -> float:
        return float(self.first_wait * 2 ** attempt)


def with_retries(step: Callable[[], Any], name: str, retries: int,
                 backoff_s: Callable[[int], float] = lambda attempt: 2.0 ** attempt) -> Any:
    """Run a step alone, retrying transient failures; data errors fail at once."""
    outcome = run_dag([Task(name, step, retries=retries)], is_permanent,
                      backoff_s=backoff_s)[name]
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


LATEST = "latest"


class NoFlightsYetError(ValueError):
    """Scoring 'latest' before silver holds any flight."""


# What `from: latest` catches up on: the day after the last one the step recorded.
DONE_DATE = {"score": ("delay_predictions", "flight_date"),
             "monitor": ("model_monitoring", "monitored_date")}


def resolved(spark: SparkSession, config: Config, score_range: tuple[str, str],
             step: str = "score", cap: str | None = None) -> tuple[str, str]:
    """The flight dates a step covers, with `latest` (conf or --from/--to) resolved when the
    step starts, after this run's silver: `to: latest` is the latest flight date silver holds;
    `from: latest` the day after the last one the step recorded (its table's latest date), so
    a run that failed, was paused or landed two days at once leaves no day unscored or
    unmonitored, at most `score.catch_up_days` back; the end day itself when the step is up to
    date (a rerun repeats it and changes nothing). cap: the last day the range may end on."""
    end = last_day(spark, config) if score_range[1] == LATEST else score_range[1]
    if cap is not None and end > cap:
        log.info("%s: %s has not ended yet: the range ends on %s", step, end, cap)
        end = cap
    start = score_range[0]
    if start == LATEST:
        start = _first_undone(spark, config, step, date.fromisoformat(end)).isoformat()
    if start > end:
        raise ValueError(f"score dates: from {start} is after to {end} (--from or score.from "
                         f"{score_range[0]!r}, --to or score.to {score_range[1]!r})")
    return start, end


def last_day(spark: SparkSession, config: Config) -> str:
    """`to: latest`: the latest flight date silver holds."""
    if not tables.exists(spark, config, "silver_flights"):
        raise NoFlightsYetError("score dates 'latest': silver_flights does not exist yet; "
                                "run bronze and silver first")
    last = tables.scalar(tables.read(spark, config, "silver_flights").agg(F.max("flight_date")))
    if last is None:
        raise NoFlightsYetError("score dates 'latest': silver_flights holds no flight yet")
    return str(last.isoformat())


def _own_rows(spark: SparkSession, config: Config, table: str) -> DataFrame | None:
    """The rows of conf's model name in delay_predictions or model_monitoring (another model
    scored or monitored on the same tables has its own days), None before the table exists."""
    if not tables.exists(spark, config, table):
        return None
    return tables.read(spark, config, table).filter(
        F.col("model_name") == config.section("mlflow")["model_name"])


def _first_undone(spark: SparkSession, config: Config, step: str, end: date) -> date:
    table, column = DONE_DATE[step]
    rows = _own_rows(spark, config, table)
    done = (tables.scalar(rows.filter(F.col(column) <= F.lit(end)).agg(F.max(column)))
            if rows is not None else None)
    if done is None:
        return end
    days = int(config.section("score").get("catch_up_days", 7))
    if days < 1:
        raise ValueError(f"score.catch_up_days: expected a whole number >= 1, got {days}")
    start: date = min(done + timedelta(days=1), end)
    if (end - start).days >= days:
        log.warning("%s: the last day done is %s; catching up on the %d days to %s only "
                    "(score.catch_up_days), run it with --from/--to for the days before", step,
                    done, days, end)
        start = end - timedelta(days=days - 1)
    return start


def late_from(spark: SparkSession, config: Config, score_range: tuple[str, str], start: str,
              end: str) -> str | None:
    """With `from: latest`, the earliest day before start, within `score.catch_up_days` of end
    and not before the first day conf's model scored, holding a silver flight without a row in
    delay_predictions (a flight landed after its day was scored, or a day that had no flight
    when it was scored; a row of any model, as the score job's late pass counts them); None
    when there is none (one small anti-join). The days before the first one scored (a
    replay's bootstrap, scoring begun on a fixed date) are not the schedule's to score."""
    if score_range[0] != LATEST:
        return None
    scored = _own_rows(spark, config, "delay_predictions")
    if scored is None:
        return None
    days = int(config.section("score").get("catch_up_days", 7))
    first = date.fromisoformat(end) - timedelta(days=days - 1)
    last = date.fromisoformat(start) - timedelta(days=1)
    if first > last:
        return None
    # the first day scored, when it lies inside the window: a row before the window says not
    # (Delta's file statistics skip the rest), else the window's own earliest day scored
    if not scored.filter(F.col("flight_date") < F.lit(first)).limit(1).count():
        began: date | None = tables.scalar(scored.transform(between(
            first.isoformat(), last.isoformat())).agg(F.min("flight_date")))
        if began is None:
            return None  # nothing scored before start: no day to catch up on
        first = max(first, began)
    window = between(first.isoformat(), last.isoformat())
    held = tables.read(spark, config, "delay_predictions").transform(window).select("flight_id")
    found: date | None = tables.scalar(
        tables.read(spark, config, "silver_flights").transform(window)
        .join(held, "flight_id", "left_anti").agg(F.min("flight_date")))
    if found is not None:
        log.info("score: flights of %s or later landed after their day was scored: scoring "
                 "them too", found)
    return found.isoformat() if found is not None else None


def score_dates(spark: SparkSession, config: Config, run_id: str, score_range: tuple[str, str],
                dates: tuple[str, str] | None = None) -> dict[str, Any]:
    """Score the resolved range and, with `from: latest`, the late flights of the days before it
    (scored alone: the earlier days' other rows stay as they were)."""
    start, end = dates or resolved(spark, config, score_range)
    late = late_from(spark, config, score_range, start, end)
    if late is None:
        return score.run(spark, config, run_id, start, end)
    return score.run(spark, config, run_id, late, end, new_from=start)


def monitor_range(spark: SparkSession, config: Config, run_id: str,
                  score_range: tuple[str, str], as_of: datetime | None = None) -> dict[str, Any]:
    """Monitor the last day of the range; with `from: latest`, every day not monitored yet up to
    it (each as of its own end, unless as_of is given). Returns the last day's result, with the
    alerts of all and the days monitored. A day is monitored only once it has ended (at
    as_of, else now): silver holds tomorrow's flights once
    their schedule events arrived (the Kafka producer sends them a day ahead), and a day
    monitored before its end would count as done, never to be monitored again with its
    outcomes."""
    days = monitor_days(spark, config, score_range, as_of)
    results = [monitor.run(spark, config, run_id, day, as_of) for day in days]
    return {**results[-1], "days": days,
            "alerts": [alert for result in results for alert in result["alerts"]]}


def monitor_days(spark: SparkSession, config: Config, score_range: tuple[str, str],
                 as_of: datetime | None = None) -> list[str]:
    """The days `monitor_range` monitors (see there)."""
    timezone = config.section("gold")["home_timezone"]
    clock = as_of or datetime.now(UTC)
    cap = last_ended_day(clock, timezone).isoformat()
    if score_range[0] == LATEST:
        start, end = resolved(spark, config, score_range, "monitor", cap)
    else:  # a fixed `from` is where scoring starts: the monitor looks at the last day only
        last = resolved(spark, config, (score_range[1], score_range[1]), "monitor")[1]
        start = end = min(last, cap)
        if cap < last:
            log.warning("monitor: %s has not ended yet (at %s): monitoring %s", last, clock,
                        cap)
    first = date.fromisoformat(start)
    return [(first + timedelta(days=n)).isoformat()
            for n in range((date.fromisoformat(end) - first).days + 1)]


def last_ended_day(at: datetime, timezone: str) -> date:
    """The last day whose end (local midnight after it, `end_of_day`) is at or before at."""
    return at.astimezone(ZoneInfo(timezone)).date() - timedelta(days=1)


def retrain_day(last: date, as_of: datetime | None, timezone: str) -> date:
    """The day a retraining's windows end the day before (and its rate limit counts from): the
    scored range's last day, capped, like the monitor's days, at the last day ended by as_of
    (else now)."""
    return min(last, last_ended_day(as_of or datetime.now(UTC), timezone))


def run_stage(spark: SparkSession, config: Config, stage: str, run_id: str,
              score_range: tuple[str, str], full_gold: bool = False,
              accept_lost_events: bool = False) -> Any:
    """Run one stage by name (full_gold: rebuild gold in full instead of incrementally;
    accept_lost_events: bronze goes on past Kafka events the broker deleted unread)."""
    if stage not in STAGES:
        raise UnknownStageError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    if stage == "score":
        return score_dates(spark, config, run_id, score_range)
    if stage == "monitor":
        return monitor_range(spark, config, run_id, score_range)
    if stage == "gold":
        return gold.run(spark, config, run_id, full=full_gold)
    if stage == "bronze":
        return bronze.run(spark, config, run_id, accept_lost_events=accept_lost_events)
    if stage == "train":
        unanswered = monitor.open_retraining_alerts(spark, config)
        if unanswered:
            log.warning("train: %d open alert(s) of the retraining kind (%s) stay open: "
                        "`lakehouse run train` trains on conf's windows and answers none; "
                        "`lakehouse run daily --stages train` retrains for them and closes "
                        "them", len(unanswered), ", ".join(unanswered[:5]))
    module = {"silver": silver, "train": train}[stage]
    return module.run(spark, config, run_id)


JOBS = ("daily", *STAGES)


def chosen_stages(stages: str | None) -> tuple[str, ...]:
    """The daily workflow's stages a comma-separated --stages names (empty: all)."""
    chosen = tuple(s.strip() for s in stages.split(",")) if stages else STAGES
    for stage in chosen:
        if stage not in STAGES:
            raise UnknownStageError(f"unknown stage {stage!r} in stages; stages are "
                                    f"{list(STAGES)}")
    return chosen


def _day(value: str | None, name: str) -> str | None:
    if not value:
        return None
    if value == LATEST:
        return LATEST
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"{name}: expected a date as YYYY-MM-DD, got {value!r}") from None


class WorkflowFailed(RuntimeError):
    """A task of the daily workflow failed; the others ran as far as they could."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.errors = [r.error for r in failed(results["tasks"]) if r.error is not None]
        first = self.errors[0] if self.errors else None
        super().__init__(f"{len(self.errors)} task(s) failed; first: "
                         f"{type(first).__name__}: {first}\n{summary(results['tasks'])}")


def run_job(spark: SparkSession, config: Config, job: str, start: str | None = None,
            end: str | None = None, train_mode: str = "auto",
            stages: str | None = None, full_gold: bool = False,
            accept_lost_events: bool = False) -> dict[str, Any]:
    """Run one job by name, as `lakehouse run`, spark-submit and the notebooks do.

    Args:
        spark: the session.
        config: the environment's configuration.
        job: "daily" or one stage.
        start, end: the flight dates to score (empty: the conf's score.from/score.to); the
            monitor job monitors the last of them.
        train_mode: daily only: train when no champion exists or monitoring made retraining
            due (auto), always or never.
        stages: daily only: comma-separated subset of STAGES (empty: all).
        full_gold: rebuild gold in full instead of incrementally.
        accept_lost_events: bronze only: Kafka sources go on past the events the broker
            deleted before they were read, their audit rows naming the offsets lost. A
            one-off answer to EventsLostError, not for the daily workflow.

    Returns:
        Each stage's result by name, and the run id.

    Raises:
        WorkflowFailed: a task of the daily workflow failed (after the others ran).
    """
    if job not in JOBS:
        raise UnknownStageError(f"unknown job {job!r}; jobs are {list(JOBS)}")
    score_conf = config.section("score")
    score_range = (_day(start, "from") or _day(str(score_conf["from"]), "score.from") or "",
                   _day(end, "to") or _day(str(score_conf["to"]), "score.to") or "")
    if accept_lost_events and job != "bronze":
        raise ValueError(f"accepting lost events is for the bronze job, run once on its own, "
                         f"not the {job!r} job")
    if job != "daily":
        run_id = new_run_id()
        return {"run_id": run_id, job: run_stage(spark, config, job, run_id, score_range,
                                                 full_gold, accept_lost_events)}
    chosen = chosen_stages(stages)
    results = run_daily(spark, config, score_range, chosen, train_mode, full_gold=full_gold)
    if failed(results["tasks"]):
        raise WorkflowFailed(results)
    return results


def champion_exists(config: Config) -> bool:
    mlflow_conf = registry.configure(config)
    return registry.resolve(mlflow_conf["model_name"], registry.CHAMPION) is not None


# The tags a retraining sets on the version it registers: the alerts it answers, and the day.
# No dot in the keys: Unity Catalog refuses `. , - = / :` in the tag keys of its securables,
# model versions among them. The keys of earlier releases are still read.
ANSWERS_TAG = "lakehouse_answers_alerts"
ANSWERED_ON_TAG = "lakehouse_answered_on"
EARLIER_TAGS = {"lakehouse.answers_alerts": ANSWERS_TAG, "lakehouse.answered_on": ANSWERED_ON_TAG}


def answered_by_challenger(config: Config, alert_ids: tuple[str, ...]
                           ) -> tuple[str, str, tuple[str, ...], date] | None:
    """(version, run id, alert ids, day) when the version holding @challenger was registered
    by a retraining that answered some of these open alerts and failed to close them: they
    are answered, not due. (A version promoted instead answers nothing still open: only the
    champion's alerts count.)"""
    if not alert_ids:
        return None
    found = registry.resolve(registry.configure(config)["model_name"], registry.CHALLENGER)
    tags = dict(found.tags or {}) if found is not None else {}
    tags = {**{EARLIER_TAGS[k]: v for k, v in tags.items() if k in EARLIER_TAGS}, **tags}
    answered = set(tags.get(ANSWERS_TAG, "").split(","))
    ids = tuple(i for i in alert_ids if i in answered)
    if found is None or not ids or not found.run_id or ANSWERED_ON_TAG not in tags:
        return None
    return str(found.version), found.run_id, ids, date.fromisoformat(tags[ANSWERED_ON_TAG])


def retrain_windows(config: Config, latest_labeled: date) -> Windows:
    """Windows ending at the latest labeled day: its last retrain_holdout_days days are the
    holdout (and the gate's window), validation before them, the fit window before that."""
    conf = config.section("monitor")
    days = {key: whole_number(conf, "monitor", key) for key in (
        "retrain_holdout_days", "retrain_validation_days", "retrain_train_days")}
    holdout_from = latest_labeled - timedelta(days=days["retrain_holdout_days"] - 1)
    validation_from = holdout_from - timedelta(days=days["retrain_validation_days"])
    train_from = holdout_from - timedelta(days=days["retrain_train_days"])
    return Windows(train_from.isoformat(), (holdout_from - timedelta(days=1)).isoformat(),
                   validation_from.isoformat(), holdout_from.isoformat(),
                   latest_labeled.isoformat())


def daily_tasks(spark: SparkSession, config: Config, run_id: str, score_range: tuple[str, str],
                stages: tuple[str, ...], train_mode: str, full_gold: bool,
                as_of: datetime | None = None) -> list[Task]:
    """The daily workflow as a DAG: bronze -> silver -> gold -> score -> monitor ->
    train (if no champion, or the alerts table has retraining due) -> score again (if the new
    model was promoted; part of the train task when run alone). Tasks not chosen are left out,
    and so are their dependencies."""
    if train_mode not in TRAIN_MODES:
        raise ValueError(f"--train must be one of {list(TRAIN_MODES)}, got {train_mode!r}")
    policy = RetryPolicy(config)
    retries = policy.retries
    known: list[tuple[str, str]] = []

    def dates() -> tuple[str, str]:  # resolved once, when the first step after gold needs it
        if not known:
            known.append(resolved(spark, config, score_range))
        return known[0]

    anchor: list[date] = []

    def last_day() -> date:
        """The day retraining is anchored on, found once (the check whether it is due and the
        training decide on the same day, even across midnight): the range's last day, but not
        one that has not ended yet (silver holds tomorrow's flights once their schedule events
        arrived): its outcomes are still to come, so a window ending there would be part
        unlabeled."""
        if not anchor:
            anchor.append(retrain_day(date.fromisoformat(dates()[1]), as_of,
                                      config.section("gold")["home_timezone"]))
        return anchor[0]

    due: list[monitor.RetrainingDue] = []

    def train_when(done: dict[str, TaskResult]) -> str | None:
        if train_mode == "never":
            return "--train never"
        if not champion_exists(config):
            return None
        # Read from the alerts table, so a train task run apart from monitor decides the same.
        # (The settings are checked here, not when the DAG is built: a bad monitor setting
        # fails the tasks that read it, not bronze, silver and gold.)
        min_days = MonitorSettings.from_conf(config.section("monitor"),
                                             "UTC").retrain_min_days_between
        due[:] = [monitor.retraining_due(spark, config, last_day(), min_days,
                                         monitor.current_champion(config))]
        registered = answered_by_challenger(config, due[0].alert_ids)
        if registered is not None:
            # a retraining registered its model (kept as @challenger) but failed to close the
            # alerts it answered: close them now, and train only if others are still open
            version, run, ids, on = registered
            with_retries(partial(monitor.mark_handled, spark, config, ids, run, on),
                         "train (closing the alerts a registered retraining answered)",
                         policy.retries, policy.backoff_s)
            log.warning("alerts %s were answered by %s version %s, registered on %s: closed",
                        ", ".join(ids), config.section("mlflow")["model_name"], version, on)
            due[:] = [monitor.retraining_due(spark, config, last_day(), min_days,
                                             monitor.current_champion(config))]
        if train_mode == "always":
            return None  # forced: a retraining all the same when alerts ask for one
        return None if due[0].due else f"a champion exists; retraining not due ({due[0].reason})"

    def run_train() -> Any:
        # A retraining (the recent labeled window; the alerts it answers closed) when one is
        # due, or when forced (--train always) while alerts of the retraining kind are open,
        # rate-limited ones included: left open, the next run would find retraining due and
        # train another version.
        if not due or not (due[0].due or (train_mode == "always" and due[0].alert_ids)):
            return train.run(spark, config, run_id)
        day = last_day()

        answered = due[0].alert_ids

        def close_answered(mlflow_run_id: str) -> None:
            # the gate has decided on the registered model (its alias is set): closing the
            # alerts it answers is retried on its own (the task is not), and comes before the
            # task's audit append, else a failure there would leave them open and the next run
            # would find retraining due and register a second version. Failing still, the
            # error names the alerts left open (and train.run the version).
            try:
                with_retries(partial(monitor.mark_handled, spark, config, answered,
                                     mlflow_run_id, day), "train (closing the alerts answered)",
                             policy.retries, policy.backoff_s)
            except Exception as error:
                raise RuntimeError(
                    f"closing the alerts {', '.join(answered)} in "
                    f"{config.table('alerts')} failed ({error}); set their handled_by_run to "
                    f"{mlflow_run_id!r} and handled_on to {day.isoformat()}") from error

        trained = train.run(spark, config, run_id,
                            windows=retrain_windows(config, day - timedelta(days=1)),
                            labels_known_at=as_of or end_of_day(
                                day, config.section("gold")["home_timezone"]),
                            on_decided=close_answered,
                            version_tags={ANSWERS_TAG: ",".join(answered),
                                          ANSWERED_ON_TAG: day.isoformat()})
        return {**trained, "trigger": due[0].reason if due[0].due else
                f"forced (--train always), answering {len(due[0].alert_ids)} open alert(s) "
                f"({due[0].reason})"}

    def rescore_when(done: dict[str, TaskResult]) -> str | None:
        trained = done.get("train")
        if trained is None or trained.status != "succeeded" or not trained.result["promoted"]:
            return "no new champion"
        return None

    def score_when(done: dict[str, TaskResult]) -> str | None:
        if train_mode != "never" and not champion_exists(config):
            return "no champion yet: the train task trains one, then scores"
        return None

    tasks = [
        Task("bronze", partial(bronze.run, spark, config, run_id), retries=retries),
        Task("silver", partial(silver.run, spark, config, run_id), ("bronze",), retries),
        Task("gold", partial(gold.run, spark, config, run_id, full=full_gold), ("silver",),
             retries),
        Task("score", lambda: score_dates(spark, config, run_id, score_range, dates()),
             ("gold",), retries, when=score_when),
        Task("monitor", lambda: monitor_range(spark, config, run_id, score_range, as_of),
             ("score",), retries,
             when=lambda done: None if done.get("score") is None
             or done["score"].status == "succeeded" else "nothing was scored"),
        # training is not retried (a retry would register a second version), its condition is
        Task("train", run_train, ("gold", "monitor"), 0, when=train_when, when_retries=retries),
        Task("rescore", lambda: score_dates(spark, config, run_id, score_range, dates()),
             ("train",), retries, when=rescore_when),
    ]
    chosen = [t for t in tasks if t.name in stages or (t.name == "rescore" and "train" in stages)]
    names = {t.name for t in chosen}
    return [Task(t.name, t.run, tuple(d for d in t.depends_on if d in names), t.retries, t.when,
                 t.when_retries) for t in chosen]


def run_daily(spark: SparkSession, config: Config, score_range: tuple[str, str],
              stages: tuple[str, ...] = STAGES, train_mode: str = "auto",
              run_id: str | None = None, full_gold: bool = False,
              as_of: datetime | None = None) -> dict[str, Any]:
    """Run the daily DAG in one session; returns each task's result and status (a failed task
    stops only its dependents; transient failures are retried, data errors are not)."""
    run_id = run_id or new_run_id()
    tasks = daily_tasks(spark, config, run_id, score_range, stages, train_mode, full_gold,
                        as_of)
    outcome = run_dag(tasks, is_permanent, backoff_s=RetryPolicy(config).backoff_s)
    log.info("daily workflow %s:\n%s", run_id, summary(outcome))
    results: dict[str, Any] = {"run_id": run_id, "tasks": outcome}
    for name, result in outcome.items():
        if result.status == "succeeded":
            results[name] = result.result
        elif result.status == "skipped":
            results[name] = f"skipped: {result.reason}"
    if isinstance(results.get("rescore"), dict):
        results["score"] = results["rescore"]
    return results


# The report names the champion only after a stage that uses the registry: a bronze, silver or
# gold run neither needs MLflow nor creates its experiment (on Databricks, under a folder that
# may not exist yet).
MODEL_STAGES = ("train", "score", "monitor")
REPORT_TABLES = ("bronze_flights", "bronze_weather", "silver_flights", "silver_weather",
                 "silver_planes", "silver_airports", "silver_airlines", "quarantine",
                 "flight_features", "route_daily_kpis", "delay_predictions", "model_monitoring",
                 "alerts", "audit")


def report(spark: SparkSession, config: Config, results: dict[str, Any]) -> str:
    """A short text report: tables with rows and Delta version, the model, predictions."""
    lines = [f"run {results.get('run_id')}", ""]
    if "tasks" in results:
        lines += [summary(results["tasks"]), ""]
    lines.append(f"{'table':<20} {'rows':>10} {'version':>8}  location")
    for name in REPORT_TABLES:
        if tables.exists(spark, config, name):
            rows = tables.read(spark, config, name).count()
            lines.append(f"{name:<20} {rows:>10} {tables.version(spark, config, name):>8}  "
                         f"{config.table(name)}")
        else:
            lines.append(f"{name:<20} {'-':>10} {'-':>8}  (not created)")
    trained = results.get("train")
    lines.append("")
    if isinstance(trained, dict):
        holdout, every = trained["holdout"], trained["holdout_all_flights"]
        lines.append(f"model: {trained['model_name']} version {trained['version']} "
                     f"({trained['family']}, {trained['trials']} Hyperopt "
                     f"trial{'' if trained['trials'] == 1 else 's'}) -> "
                     f"@{trained['alias']}: {trained['decision']}")
        lines.append(f"holdout {trained['holdout_window']}: AUC-ROC {holdout['auc_roc']:.4f}, "
                     f"AUC-PR {holdout['auc_pr']:.4f}, Brier {holdout['brier']:.4f} (flights "
                     f"with a recorded tail; with the {trained['holdout_untailed_flights']} "
                     f"without one: AUC-ROC {every['auc_roc']:.4f})")
        baseline = trained["baseline"]["auc_roc"]
        verdict = "beats" if holdout["auc_roc"] > baseline else "does NOT beat"
        lines.append(f"historical-rate baseline: AUC-ROC {baseline:.4f} (the model {verdict} it)")
    if any(stage in results for stage in MODEL_STAGES):
        lines += champion_lines(config)
    scored = results.get("score")
    if isinstance(scored, dict):
        shadow = (f", challenger v{scored['challenger_version']} in shadow"
                  if scored.get("challenger_version") else "")
        lines.append(f"predictions: {scored['rows']} flights dated {scored['from']}..{scored['to']}"
                     f" in {scored['table']} (model version {scored['model_version']}{shadow}; "
                     f"{scored['unscorable']} unscorable, with the reason)")
    watched = results.get("monitor")
    if isinstance(watched, dict):
        days = watched.get("days") or [watched["day"]]
        span = watched["day"] if len(days) == 1 else f"{days[0]}..{days[-1]}"
        lines.append(f"monitoring {span}: {watched['values']} values (last day), "
                     f"{len(watched['alerts'])} alert(s) raised; retraining "
                     f"{'due' if watched['retrain_due'] else 'not due'} "
                     f"({watched['retrain_reason']})")
    if any(stage in results for stage in MODEL_STAGES):
        uri = registry.tracking_uri(config)
        lines.append(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000")
    return "\n".join(lines)


def champion_lines(config: Config) -> list[str]:
    """The champion, as the registry names it now. The report comes after the jobs committed:
    a registry it cannot read is named in it, never turned into a failure of the run."""
    try:
        mlflow_conf = registry.configure(config)
        current = registry.champion(mlflow_conf["model_name"], registry.CHAMPION)
    except MlflowException as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        log.warning("report: the model registry could not be read: %s", first)
        return [f"champion: not read from {registry.tracking_uri(config)} ({first[:200]})"]
    if current is None:
        return []
    auc = f"{current.holdout_auc_roc:.4f}" if current.holdout_auc_roc is not None else "n/a"
    return [f"champion: models:/{current.name}@{registry.CHAMPION} = version "
            f"{current.version} (holdout AUC-ROC {auc})"]
