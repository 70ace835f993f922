"""Monitor stage: drift and realized quality of the models that scored a day, alerts once per
episode (table, ERROR log line, webhook), and whether retraining is due."""

from __future__ import annotations

import logging
import posixpath
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse import registry, tables
from lakehouse.alert_rules import Crossing, raised_on, rules_from_conf
from lakehouse.alerts import deliver, shown_url, slack_payload, unreachable
from lakehouse.config import Config, ConfigError, secret
from lakehouse.drift import FeatureReference, references_from_json
from lakehouse.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TAIL_RECORDED
from lakehouse.monitoring import (
    PREDICTION,
    MonitorSettings,
    day_values,
    end_of_day,
    labeled,
)
from lakehouse.stages.audit import audited
from lakehouse.stages.train import REFERENCE_ARTIFACT

log = logging.getLogger("lakehouse")
R = TypeVar("R")
MONITOR_KEYS = ("monitored_date", "model_name", "model_version", "window", "metric", "subject")
MONITOR_SCHEMA = T.StructType([
    T.StructField("monitored_date", T.DateType(), False),
    T.StructField("model_name", T.StringType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("role", T.StringType(), True),
    T.StructField("window", T.StringType(), False),
    T.StructField("metric", T.StringType(), False),
    T.StructField("subject", T.StringType(), False),
    T.StructField("value", T.DoubleType(), True),
    T.StructField("rows", T.LongType(), True),
    T.StructField("as_of_utc", T.TimestampType(), False),
    T.StructField("run_id", T.StringType(), True),
])
ALERT_SCHEMA = T.StructType([
    T.StructField("alert_id", T.StringType(), False),
    T.StructField("rule", T.StringType(), False),
    T.StructField("monitored_date", T.DateType(), False),
    T.StructField("model_name", T.StringType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("subject", T.StringType(), True),
    T.StructField("metric", T.StringType(), True),
    T.StructField("value", T.DoubleType(), True),
    T.StructField("threshold", T.StringType(), True),
    T.StructField("message", T.StringType(), True),
    T.StructField("retrain", T.BooleanType(), False),
    T.StructField("webhook_delivered", T.BooleanType(), True),
    T.StructField("webhook_attempts", T.IntegerType(), True),
    T.StructField("webhook_error", T.StringType(), True),
    T.StructField("raised_at", T.TimestampType(), False),
    T.StructField("handled_by_run", T.StringType(), True),
    T.StructField("handled_on", T.DateType(), True),
])


def unless_run_gone(run_id: str, fetch: Callable[[], R], lost: str) -> R | None:
    """fetch(), or None with a warning saying what is lost when the model's MLflow run is gone
    (purged, or the version was registered from another workspace); any other MLflow error
    is raised."""
    try:
        return fetch()
    except MlflowException as error:
        if not registry.run_gone(error):
            raise
        log.warning("run %s of the monitored model is gone: %s", run_id, lost)
        return None


def reference_of(run_id: str) -> dict[str, FeatureReference] | None:
    """The drift reference saved with a model at training time (None for a model without).

    Only a run that holds no reference, or that is gone (purged, or the version was
    registered from another workspace), gives None; any other MLflow or storage error fails the
    task (retried as transient) rather than skipping the day's drift silently.
    """
    if not run_id:  # a version registered without a run
        return None
    folder = posixpath.dirname(REFERENCE_ARTIFACT)
    listed = unless_run_gone(run_id, lambda: {
        a.path for a in MlflowClient().list_artifacts(run_id, folder or None)},
        "no drift reference, its drift is not measured")
    if listed is None or REFERENCE_ARTIFACT not in listed:
        return None
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT)
    return references_from_json(Path(path).read_text())


def of_model(model: Any) -> Column:
    """The rows of one registered model version (versions restart per model name)."""
    same: Column = ((F.col("model_name") == model["model_name"])
                    & (F.col("model_version") == model["model_version"]))
    return same


def day_rows(predictions: DataFrame, features: DataFrame, day: date, model: Any) -> DataFrame:
    """A model's scored flights of the day with their features and the probability."""
    # the day's feature rows only: Delta skips the other days' files on flight_date
    inputs = features.filter(F.col("flight_date") == F.lit(day)).select(
        "flight_id", *CATEGORICAL_FEATURES, *NUMERIC_FEATURES)
    return (predictions.filter((F.col("flight_date") == F.lit(day)) & of_model(model)
                               & (F.col("status") == "scored")
                               # the population of the training reference: a flight without a
                               # recorded tail (all cancelled in 2013) is scored but flagged
                               & F.col(TAIL_RECORDED))
            .select("flight_id", "flight_date", F.col("probability").alias(PREDICTION))
            .join(inputs, "flight_id", "inner"))


def day_models(predictions: DataFrame, day: date) -> list[Any]:
    """The versions holding an alias for the day's flights (not those a promotion retired),
    each once, challenger before champion; of two champion versions, as when a late flight was
    scored by a newer champion, the one that scored most of the day as champion first (its
    alerts are raised). A version holding both roles on the day (a challenger promoted by hand,
    then scoring a late flight as champion) is monitored once, as champion: its rows are keyed
    by version, not role."""
    is_champion = (F.col("role") == registry.CHAMPION).cast("int")
    return (predictions.filter((F.col("flight_date") == F.lit(day))
                               & F.col("role").isin(registry.CHAMPION, registry.CHALLENGER))
            .groupBy("model_name", "model_version", "model_run_id")
            .agg(F.count(F.lit(1)).alias("rows"), F.sum(is_champion).alias("champion_rows"))
            .withColumn("role", F.when(F.col("champion_rows") > 0, F.lit(registry.CHAMPION))
                        .otherwise(F.lit(registry.CHALLENGER)))
            .orderBy("role", F.desc("champion_rows"), F.desc("rows"), "model_name",
                     F.col("model_version").cast("long").desc_nulls_last()).collect())


def measure(spark: SparkSession, predictions: DataFrame, features: DataFrame, day: date,
            as_of: datetime, settings: MonitorSettings,
            model: Any) -> tuple[list[dict[str, Any]], bool]:
    """Drift and realized quality of one model version, from one Spark job."""
    refs = reference_of(model["model_run_id"])
    days = [day - timedelta(days=i) for i in range(settings.trailing_days - 1, -1, -1)]
    window = predictions.filter(of_model(model) & F.col("flight_date").isin(days))
    rows = day_values(day_rows(predictions, features, day, model) if refs is not None else None,
                      refs, labeled(window, features.filter(F.col("flight_date").isin(days)),
                                    as_of), days, day)
    for row in rows:
        row.update(model_name=model["model_name"], model_version=model["model_version"],
                   role=model["role"])
    return rows, refs is not None


def training_auc(run_id: str) -> float | None:
    """The holdout AUC-ROC the model's run logged; None without a run, or when it is gone
    (the rules comparing with it then do not fire: see alert_rules)."""
    if not run_id:
        return None
    return unless_run_gone(
        run_id, lambda: MlflowClient().get_run(run_id).data.metrics.get("holdout_auc_roc"),
        "its training AUC-ROC is unknown, so the quality_drop rule is not checked")


def champion_history(spark: SparkSession, config: Config, champion: Any,
                     rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The champion's monitoring values as the table will hold them once this run's rows are
    merged: the rows held (days after day too, when day is run again: they tell whether its
    episode went on), with this run's rows in place of those of the same key."""
    held = []
    if tables.exists(spark, config, "model_monitoring"):
        held = [r.asDict() for r in tables.read(spark, config, "model_monitoring").filter(
            of_model(champion)).collect()]
    mine = [r for r in rows
            if (r["model_name"], r["model_version"]) == (champion["model_name"],
                                                          champion["model_version"])]
    merged = {tuple(r[k] for k in MONITOR_KEYS): r for r in held}
    merged.update({tuple(r[k] for k in MONITOR_KEYS): r for r in mine})
    return list(merged.values())


def webhook_url(settings: dict[str, Any]) -> str | None:
    """monitor.webhook_url; written `env:NAME`, the environment variable NAME's (an incoming
    webhook's URL holds its token), which must be set."""
    value = settings.get("webhook_url")
    if not value:
        return None
    # surrounding whitespace dropped, as urllib drops it (a secret read from a file ends in a
    # newline); one inside is refused below
    url = secret(str(value), "monitor.webhook_url").strip()
    # checked before any alert: a URL no POST can reach would show only on the first alert
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- a port that is no number raises here
    except ValueError as error:
        raise ConfigError(f"monitor.webhook_url: not a URL ({error}): {shown_url(url)}") from None
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"monitor.webhook_url: not a URL (holds a space or control "
                          f"character; percent-encode it): {shown_url(url)}")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"monitor.webhook_url: expected an http(s) URL with a host, got "
                          f"{shown_url(url)}")
    return url


def raise_alerts(spark: SparkSession, config: Config, crossings: list[Crossing], model: Any,
                 settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Record the alerts of crossings whose episode has none yet, log each at ERROR and POST
    it to the webhook."""
    # One alert per rule and subject per episode (the run of crossed days up to the crossing),
    # whichever version crossed it: a champion promoted that day, or during the run, crossing
    # the rule the replaced one crossed is the same episode of the data, not news. The alerts
    # recorded decide, not a replay of the history (a version that was challenger for part of
    # the run, or persist_days changed meanwhile, raised nothing then). Alerts are the model
    # name's own: another model monitored on the same tables has its episodes.
    ident = [c.alert_id for c in crossings]
    alerted: set[tuple[str, str, date]] = set()
    if ident and tables.exists(spark, config, "alerts"):
        first = min(c.since or c.day for c in crossings)
        last = max(c.until or c.day for c in crossings)
        alerted = {(r[0], r[1], r[2]) for r in tables.read(spark, config, "alerts")
                   .filter(F.col("rule").isin(sorted({c.rule.name for c in crossings}))
                           & (F.col("model_name") == model["model_name"])
                           & F.col("monitored_date").between(F.lit(first), F.lit(last)))
                   .select("rule", "subject", "monitored_date").collect()}

    def episode_alerted(c: Crossing) -> bool:
        return any(rule == c.rule.name and subject == c.subject
                   and (c.since or c.day) <= day <= (c.until or c.day)
                   for rule, subject, day in alerted)

    known = {c.alert_id for c in crossings if episode_alerted(c)}
    url = webhook_url(settings)
    checked = MonitorSettings.from_conf(settings, "UTC")  # the time zone is not read here
    retries = checked.webhook_retries
    # after a delivery that failed as a webhook that is down fails, the day's next alerts are
    # tried once each (a delivery that succeeds restores the retries): it costs one retried
    # delivery per monitored day, not one per alert (~27 s each with the defaults)
    failed = False
    new = []
    for c, alert_id in ((c, i) for c, i in zip(crossings, ident, strict=True)
                        if i not in known):
        alert = {"alert_id": alert_id, "rule": c.rule.name, "monitored_date": c.day,
                 "model_name": model["model_name"], "model_version": model["model_version"],
                 "subject": c.subject, "metric": c.rule.metric, "value": c.value,
                 "threshold": c.threshold, "message": c.message(
                     f"{model['model_name']} v{model['model_version']}"),
                 "retrain": c.rule.retrain,
                 "raised_at": datetime.now(UTC),
                 "webhook_delivered": None, "webhook_attempts": None, "webhook_error": None,
                 "handled_by_run": None, "handled_on": None}
        log.error("ALERT %s: %s", alert_id, alert["message"])
        if url:
            sent = deliver(url, slack_payload({**alert, "monitored_date": str(c.day),
                                               "raised_at": str(alert["raised_at"])}),
                           retries=0 if failed else retries,
                           timeout_s=checked.webhook_timeout_seconds)
            failed = unreachable(sent)
            alert.update(webhook_delivered=sent.delivered, webhook_attempts=sent.attempts,
                         webhook_error=sent.error)
        new.append(alert)
    if new:
        # insert-only by id and model name: a second monitor of the same day running at the
        # same moment conflicts here instead of recording the alert twice
        tables.merge(spark, spark.createDataFrame(new, ALERT_SCHEMA), config, "alerts",
                     ["alert_id", "model_name"], insert_only=True, metrics=False)
    return new


@dataclass(frozen=True)
class RetrainingDue:
    due: bool
    reason: str
    alert_ids: tuple[str, ...] = ()


def _open_retraining(name: str) -> Column:
    """model name's alerts of the retraining kind that no retraining has answered yet."""
    return F.col("retrain") & F.col("handled_by_run").isNull() & (F.col("model_name") == name)


def retraining_due(spark: SparkSession, config: Config, day: date, min_days_between: int,
                   champion: tuple[str, str] | None = None) -> RetrainingDue:
    """Due when an alert of the retraining kind is open, unless the last retraining is more
    recent than min_days_between days. champion (model name, version): only its alerts count;
    an alert raised on a model since replaced speaks of a model no longer serving. Only the
    alerts and retrainings of the champion's model name (else conf's mlflow.model_name)."""
    if not tables.exists(spark, config, "alerts"):
        return RetrainingDue(False, "no alert yet")
    name = champion[0] if champion else config.section("mlflow")["model_name"]
    # one small read: the open alerts of the retraining kind, and when a retraining last
    # answered any
    rows = (tables.read(spark, config, "alerts")
            .filter((F.col("monitored_date") <= F.lit(day)) & (F.col("model_name") == name))
            .select("alert_id", "model_name", "model_version", "handled_on",
                    _open_retraining(name).alias("open"))
            .filter(F.col("open") | F.col("handled_on").isNotNull()).collect())
    pending = [(r["alert_id"], (r["model_name"], r["model_version"])) for r in rows
               if r["open"]]
    open_ = [i for i, model in pending if champion is None or model == champion]
    # a retraining answers them all: the champion's, and those of models it replaced
    every = tuple(i for i, _ in pending)
    last = max((r["handled_on"] for r in rows if r["handled_on"] is not None), default=None)
    if not open_:
        return RetrainingDue(False, "no open alert of the retraining kind")
    if last is not None and (day - last).days < min_days_between:
        return RetrainingDue(False, f"rate-limited: last retraining on {last}, next on "
                                    f"{last + timedelta(days=min_days_between)}", every)
    return RetrainingDue(True, f"{len(open_)} open alert(s): {', '.join(open_[:5])}", every)


def open_retraining_alerts(spark: SparkSession, config: Config) -> list[str]:
    """The ids of the open alerts of the retraining kind of conf's model name."""
    if not tables.exists(spark, config, "alerts"):
        return []
    name = config.section("mlflow")["model_name"]
    return [r[0] for r in tables.read(spark, config, "alerts")
            .filter(_open_retraining(name)).select("alert_id").orderBy("alert_id").collect()]


def current_champion(config: Config) -> tuple[str, str] | None:
    """The model name and version holding @champion now (None before the first)."""
    name = registry.configure(config)["model_name"]
    found = registry.resolve(name, registry.CHAMPION)
    return (name, str(found.version)) if found is not None else None


def mark_handled(spark: SparkSession, config: Config, ids: tuple[str, ...], run_id: str,
                 day: date, model_name: str | None = None) -> None:
    """Close the alerts a retraining of model_name (default: conf's mlflow.model_name)
    answered."""
    name = model_name or config.section("mlflow")["model_name"]
    tables.update(spark, config, "alerts",
                  F.col("alert_id").isin(list(ids)) & (F.col("model_name") == name),
                  {"handled_by_run": F.lit(run_id), "handled_on": F.lit(day)})


def run(spark: SparkSession, config: Config, run_id: str, day: str,
        as_of: datetime | None = None) -> dict[str, Any]:
    """Monitor the models that scored day, as known at as_of (default: the end of that day)."""
    gold = config.section("gold")
    conf = config.section("monitor")
    settings = MonitorSettings.from_conf(conf, gold["home_timezone"])
    rules = rules_from_conf(conf.get("alerts") or {})  # a bad rule fails before any write
    webhook_url(conf)  # and an env:NAME webhook whose variable is not set
    when = date.fromisoformat(day)
    as_of = as_of or end_of_day(when, settings.home_timezone)
    registry.configure(config)
    with audited(spark, config, run_id, "monitor", "model_monitoring") as audit:
        if not tables.exists(spark, config, "delay_predictions"):
            # nothing scored yet (no champion on a first run): nothing to monitor, and no
            # error, so a scheduler's train task after this one still runs
            audit.update(rows_out=0, message=f"{day}: nothing scored yet (no delay_predictions)")
            return {"day": day, "as_of": as_of, "models": [], "values": 0, "alerts": [],
                    "retrain_due": False, "retrain_reason": "nothing scored yet",
                    "retrain_alerts": ()}
        predictions = tables.read(spark, config, "delay_predictions")
        features = tables.read(spark, config, "flight_features")
        models = day_models(predictions, when)
        rows: list[dict[str, Any]] = []
        notes = []
        for model in models:
            measured, has_reference = measure(spark, predictions, features, when, as_of,
                                              settings, model)
            rows += measured
            if not has_reference:
                notes.append(f"v{model['model_version']} has no drift reference")
        # The alerts are raised before the day's rows are written: a day counts as monitored
        # (from: latest starts after it) once its rows are in model_monitoring, and an episode
        # is alerted once, so a failure between the two must leave the day unmonitored, to be
        # run again (raise_alerts skips an episode the alerts recorded already hold).
        champion = next((m for m in models if m["role"] == registry.CHAMPION), None)
        new: list[dict[str, Any]] = []
        if champion is not None:
            crossings = raised_on(when, champion_history(spark, config, champion, rows),
                                  rules, training_auc(champion["model_run_id"]),
                                  settings.min_labeled, settings.min_scored)
            new = raise_alerts(spark, config, crossings, champion, conf)
        if rows:
            frame = spark.createDataFrame(
                [{**r, "as_of_utc": as_of, "run_id": run_id} for r in rows], MONITOR_SCHEMA)
            dates = sorted({r["monitored_date"] for r in rows})
            # the monitored dates' rows only: Delta reads and rewrites no other day's files.
            # A row as of an earlier instant does not replace a later one: a rerun of an
            # earlier day leaves the trailing days' quality rows a later day's run wrote (with
            # more outcomes known) as they are.
            tables.merge(spark, frame, config, "model_monitoring", MONITOR_KEYS,
                         changed_columns=("value", "rows", "role"), newer="as_of_utc",
                         metrics=False,
                         target_filter=f"t.monitored_date BETWEEN DATE'{dates[0]}' AND "
                                       f"DATE'{dates[-1]}'")
        due = retraining_due(spark, config, when, settings.retrain_min_days_between,
                             current_champion(config))
        audit.update(rows_out=len(rows), message="; ".join(
            [f"{day}: {len(models)} model(s), {len(rows)} values, {len(new)} alert(s) raised, "
             f"retraining {'due' if due.due else 'not due'} ({due.reason})", *notes])[:1900])
    return {"day": day, "as_of": as_of, "models": [m["model_version"] for m in models],
            "values": len(rows), "alerts": new, "retrain_due": due.due,
            "retrain_reason": due.reason, "retrain_alerts": due.alert_ids}
