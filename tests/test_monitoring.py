"""The loop that keeps a model honest, on real days: predictions per model version, drift and
realized quality, alerts once per episode to a real webhook, retraining due and decided."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables, workflow
from lakehouse.alert_rules import AlertRuleError, raised_on, rules_from_conf
from lakehouse.config import ConfigError
from lakehouse.monitoring import end_of_day
from lakehouse.replay import bootstrap, recorded_alerts, replay_day
from lakehouse.seed import daily_path, seed
from lakehouse.stages import monitor, score
from tests import snapshot
from tests.conftest import make_config

MODEL = "flight_disruption"  # conf's mlflow.model_name
RULES = {"feature_drift": {"metric": "mean_shift", "above": 2.0, "persist_days": 2,
                           "retrain": True},
         "quality_drop": {"below_training_by": 0.05, "persist_days": 1, "retrain": True}}


def row(day: int, metric: str, value: float, subject: str = "", window: str = "day",
        rows: int = 500) -> dict[str, Any]:
    return {"monitored_date": date(2013, 12, day), "window": window, "metric": metric,
            "subject": subject, "value": value, "rows": rows}


def test_an_alert_is_raised_once_per_episode_after_persisting() -> None:
    rules = rules_from_conf(RULES)
    history = [row(d, "mean_shift", v, "temp") for d, v in
               [(1, 0.5), (2, -2.5), (3, -2.6), (4, -3.0), (5, 0.1), (6, 2.2), (7, 2.4)]]
    raised = {d: raised_on(date(2013, 12, d), history, rules, 0.75, 200) for d in range(1, 8)}
    # 2 days running, then a new run: each day's crossing names its run's first day
    # (raise_alerts records one alert per run: test_an_episode_is_alerted_once...)
    assert {d: c[0].since.day for d, c in raised.items() if c} == {3: 2, 4: 2, 7: 6}
    (alert,) = raised[3]
    assert alert.alert_id == "feature_drift|temp|2013-12-03"
    assert "mean_shift of temp = -2.6000" in alert.message("m v1")
    assert "retraining is due" in alert.message("m v1")


@pytest.mark.slow
def test_only_the_champions_open_alerts_make_retraining_due(
        spark: SparkSession, tmp_path: Path) -> None:
    """An open alert of a model no longer champion does not make retraining due; the next
    retraining closes it with the champion's. An alert is one per rule, subject and day,
    whichever version crossed it."""
    config = make_config(tmp_path, mlflow={"model_name": "m"})
    rules = rules_from_conf(RULES)
    history = [row(d, "mean_shift", v, "temp") for d, v in [(1, 2.5), (2, 2.6)]]
    (crossing,) = raised_on(date(2013, 12, 2), history, rules, 0.75, 200)
    (first,) = monitor.raise_alerts(spark, config, [crossing],
                                    {"model_name": "m", "model_version": "1"}, {})
    assert first["alert_id"] == "feature_drift|temp|2013-12-02"
    # the same day's crossing by the version promoted that day: the same episode
    assert monitor.raise_alerts(spark, config, [crossing],
                                {"model_name": "m", "model_version": "2"}, {}) == []
    day = date(2013, 12, 20)  # past the rate limit
    due = monitor.retraining_due(spark, config, day, 14, ("m", "1"))
    assert due.due and due.alert_ids == (first["alert_id"],)
    due = monitor.retraining_due(spark, config, day, 14, ("m", "2"))
    assert not due.due and due.reason == "no open alert of the retraining kind"
    # a later crossing by v2 makes retraining due; it closes v1's alert too
    later = [row(d, "mean_shift", 2.7, "temp") for d in (5, 6)]
    (crossing2,) = raised_on(date(2013, 12, 6), later, rules, 0.75, 200)
    (second,) = monitor.raise_alerts(spark, config, [crossing2],
                                     {"model_name": "m", "model_version": "2"}, {})
    due = monitor.retraining_due(spark, config, day, 14, ("m", "2"))
    assert due.due and sorted(due.alert_ids) == sorted([first["alert_id"], second["alert_id"]])
    # another model name monitored on the same tables: its own episode, alert and retraining
    (other,) = monitor.raise_alerts(spark, config, [crossing2],
                                    {"model_name": "other", "model_version": "1"}, {})
    assert other["alert_id"] == second["alert_id"]
    assert monitor.retraining_due(spark, config, day, 14, ("other", "1")).alert_ids == (
        other["alert_id"],)
    # what `run train` warns of: conf's model name's open alerts, whichever version raised them
    assert monitor.open_retraining_alerts(spark, config) == sorted(due.alert_ids)
    monitor.mark_handled(spark, config, due.alert_ids, "run-3", day, "m")
    assert monitor.open_retraining_alerts(spark, config) == []
    assert not monitor.retraining_due(spark, config, day, 14, ("m", "2")).due
    still = monitor.retraining_due(spark, config, day, 14, ("other", "1"))
    assert still.due and still.alert_ids == (other["alert_id"],)  # m's retraining: not other's


@pytest.mark.slow
def test_an_episode_is_alerted_once_whatever_the_history_says(
        spark: SparkSession, tmp_path: Path) -> None:
    """Whether an episode was alerted is read from the alerts recorded, not replayed from the
    version's history: a version that crossed while it was challenger (no alert raised then)
    raises the alert on its first crossed day as champion, once per episode."""
    config = make_config(tmp_path)
    rules = rules_from_conf(RULES)
    model = {"model_name": "m", "model_version": "3"}
    history = [row(d, "mean_shift", 2.5, "temp") for d in (4, 5, 6)]  # 4-5 as challenger

    def crossing(day: int) -> Any:
        (found,) = raised_on(date(2013, 12, day), history, rules, 0.75, 200)
        return found

    assert crossing(6).since == date(2013, 12, 4)
    (alert,) = monitor.raise_alerts(spark, config, [crossing(6)], model, {})
    assert alert["alert_id"] == "feature_drift|temp|2013-12-06"
    history.append(row(7, "mean_shift", 2.6, "temp"))  # the episode goes on: not again
    assert monitor.raise_alerts(spark, config, [crossing(7)], model, {}) == []
    assert monitor.raise_alerts(spark, config, [crossing(6)], model, {}) == []  # a rerun
    # a rerun of a day before the alert's, in the same run of crossed days
    assert crossing(5).until == date(2013, 12, 7)
    assert monitor.raise_alerts(spark, config, [crossing(5)], model, {}) == []
    history += [row(8, "mean_shift", 0.1, "temp"), *(row(d, "mean_shift", 2.5, "temp")
                                                     for d in (9, 10))]
    assert [a["alert_id"] for a in monitor.raise_alerts(spark, config, [crossing(10)], model,
                                                        {})] == ["feature_drift|temp|2013-12-10"]


def test_quality_rules_need_enough_labeled_flights() -> None:
    rules = rules_from_conf(RULES)
    thin = [row(1, "auc_roc", 0.60, window="trailing", rows=50)]
    enough = [row(1, "auc_roc", 0.60, window="trailing", rows=500)]
    assert raised_on(date(2013, 12, 1), thin, rules, 0.75, 200) == []
    (alert,) = raised_on(date(2013, 12, 1), enough, rules, 0.75, 200)
    assert alert.rule.name == "quality_drop" and alert.threshold == "< 0.7500 - 0.05"


def test_drift_rules_need_a_day_of_enough_scored_flights() -> None:
    """A day landed in part (a handful of flights so far) is not judged for drift."""
    rules = rules_from_conf(RULES)
    thin = [row(d, "mean_shift", 3.0, "temp", rows=40) for d in (1, 2)]
    enough = [row(d, "mean_shift", 3.0, "temp", rows=400) for d in (1, 2)]
    assert raised_on(date(2013, 12, 2), thin, rules, 0.75, 200, min_scored=100) == []
    (alert,) = raised_on(date(2013, 12, 2), enough, rules, 0.75, 200, min_scored=100)
    assert alert.subject == "temp"


def test_a_day_too_thin_to_judge_neither_ends_an_episode_nor_counts_towards_it() -> None:
    """Too few flights to judge (a day landed in part, a mostly-null feature) is not the
    condition cleared: the drift crossing Dec 1-2 and again Dec 4-5 around a thin Dec 3 is one
    episode (its crossing on the 5th names the 1st, so the alert raised on the 2nd covers it:
    no second alert, no second retraining), and the thin day adds nothing to persist_days."""
    rules = rules_from_conf(RULES)
    history = [row(d, "mean_shift", 3.0, "temp", rows=40 if d == 3 else 400)
               for d in range(1, 6)]
    crossing = {d: raised_on(date(2013, 12, d), history, rules, 0.75, 200, min_scored=100)
                for d in range(1, 6)}
    assert crossing[1] == crossing[3] == []  # one day of two; not judged
    assert {d: (c[0].since, c[0].until) for d, c in crossing.items() if c} == {
        d: (date(2013, 12, 1), date(2013, 12, 5)) for d in (2, 4, 5)}
    # a NaN value (e.g. an AUC of one class) is not judged either; a cleared day still ends it
    history[2] = row(3, "mean_shift", float("nan"), "temp")
    assert raised_on(date(2013, 12, 5), history, rules, 0.75, 200)[0].since == date(2013, 12, 1)
    history[2] = row(3, "mean_shift", 0.5, "temp")
    assert raised_on(date(2013, 12, 5), history, rules, 0.75, 200)[0].since == date(2013, 12, 4)
    # a monitored day with no value at all for the feature (no reading that day: no row) is
    # not judged either; a day not monitored at all ends the episode
    history[2] = row(3, "mean_shift", 0.1, "dewp")
    assert raised_on(date(2013, 12, 5), history, rules, 0.75, 200)[0].since == date(2013, 12, 1)
    del history[2]
    assert raised_on(date(2013, 12, 5), history, rules, 0.75, 200)[0].since == date(2013, 12, 4)
    # thin days between two crossed ones: persist_days counts the crossed days only
    two = [row(1, "mean_shift", 3.0, "temp"), row(2, "mean_shift", 3.0, "temp", rows=40)]
    assert raised_on(date(2013, 12, 2), two, rules, 0.75, 200, min_scored=100) == []
    (third,) = raised_on(date(2013, 12, 3), [*two, row(3, "mean_shift", 3.0, "temp")], rules,
                         0.75, 200, min_scored=100)
    assert third.since == date(2013, 12, 1)


def test_days_holding_only_the_per_day_quality_of_a_later_run_were_not_monitored() -> None:
    """Each monitor run writes the realized quality of every day of its trailing window: a day
    holding only those rows had no drift judged, so it ends a run of crossed days rather than
    being stepped over. Dec 9-10 crossed (alerted on the 10th), Dec 11-12 not monitored (a
    later run wrote their quality), Dec 13-14 crossed: a new episode from Dec 13, so it is
    alerted; and with Dec 14 unmonitored too, Dec 13 alone does not make two days running."""
    rules = rules_from_conf(RULES)
    quality = [row(d, metric, 0.7) for d in (11, 12) for metric in ("auc_roc", "brier")]
    history = [*(row(d, "mean_shift", 3.0, "temp") for d in (9, 10, 13, 14)), *quality]
    (crossing,) = raised_on(date(2013, 12, 14), history, rules, 0.75, 200)
    assert crossing.since == date(2013, 12, 13)
    early = [*(row(d, "mean_shift", 3.0, "temp") for d in (10, 13)), *quality]
    assert raised_on(date(2013, 12, 13), early, rules, 0.75, 200) == []


def test_the_end_of_a_day_is_the_same_instant_whatever_the_drivers_time_zone(
        spark: SparkSession, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    expected = "2013-01-18 05:00:00"  # New York's midnight after Jan 17 (EST, UTC-5), in UTC
    try:
        for zone in ("America/New_York", "Asia/Tokyo", "UTC"):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            instant = end_of_day(date(2013, 1, 17), "America/New_York")
            shown = spark.range(1).select(F.lit(instant).cast("string")).first()
            assert shown is not None and shown[0] == expected, zone
    finally:
        monkeypatch.undo()
        time.tzset()


def test_bad_alert_rules_are_named() -> None:
    with pytest.raises(AlertRuleError, match=r"monitor\.alerts\.drift: unknown rule"):
        rules_from_conf({"drift": {}})
    with pytest.raises(AlertRuleError, match=r"feature_drift\.metric: 'ks' unknown"):
        rules_from_conf({"feature_drift": {"metric": "ks", "above": 0.2}})
    # a rule without its threshold would fire every day (and keep retraining due)
    with pytest.raises(AlertRuleError, match=r"prediction_drift\.above: expected a number > 0"):
        rules_from_conf({"prediction_drift": {"metric": "psi", "persist_days": 2}})
    with pytest.raises(AlertRuleError, match=r"quality_drop\.below_training_by: expected"):
        rules_from_conf({"quality_drop": {"above": 0.05}})
    with pytest.raises(AlertRuleError, match=r"calibration: unknown keys \['abvoe'\]"):
        rules_from_conf({"calibration": {"abvoe": 0.1}})
    with pytest.raises(AlertRuleError, match=r"calibration\.persist_days: expected a whole"):
        rules_from_conf({"calibration": {"above": 0.1, "persist_days": 0}})
    # a string is not a list of features (its letters would be), nor a misspelt name one:
    # either rule would never fire
    with pytest.raises(AlertRuleError, match=r"features: expected a list of feature names"):
        rules_from_conf({"feature_drift": {"above": 2, "features": "temp"}})
    with pytest.raises(AlertRuleError, match=r"features: \['tmep'\] not model features"):
        rules_from_conf({"feature_drift": {"above": 2, "features": ["tmep"]}})
    assert rules_from_conf({"feature_drift": {"above": 2, "features": ["temp"]}})[0].features \
        == ("temp",)
    # a quoted "false" is a string, which bool() makes true
    with pytest.raises(AlertRuleError, match=r"calibration\.retrain: expected true or false"):
        rules_from_conf({"calibration": {"above": 0.1, "retrain": "false"}})


class Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


LOOP_TRAIN = {"max_evals": 1, "timeout_seconds": 120, "families": ["logistic_regression"],
              "class_weighting": ["none"], "startup_trials": 1,
              "search_space": {"logistic_regression": {"regParam": [0.01, 0.01],
                                                       "elasticNetParam": [0.0, 0.0]}}}
LOOP_MONITOR = {"trailing_days": 3, "min_labeled": 100, "retrain_min_days_between": 14,
                "retrain_train_days": 9, "retrain_validation_days": 2,
                "retrain_holdout_days": 2,
                "alerts": {"feature_drift": {"metric": "mean_shift", "features": ["temp"],
                                             "above": 2.0, "persist_days": 1,
                                             "retrain": True},
                           # off: a model trained on nine January days is poor and drifts
                           "prediction_drift": None, "quality_drop": None,
                           "calibration": None}}


@pytest.mark.slow
def test_injected_weather_drift_raises_one_alert_and_a_retraining_the_gate_decides(
        spark: SparkSession, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Webhook.received.clear()
    config = make_config(tmp_path, train=LOOP_TRAIN, monitor={
        **LOOP_MONITOR, "webhook_url": f"http://127.0.0.1:{server.server_port}/hook"})
    try:
        landing = Path(config.landing)
        # the replay's own start: the days before the 15th landed and built, a first champion
        first = bootstrap(spark, config, date(2013, 1, 15))
        assert first is not None and first["promoted"]
        silver_read = {t: tables.version(spark, config, t)
                       for t in ("silver_flights", "silver_weather", "silver_planes")}
        # lineage: the silver versions gold was built from, recorded by the gold job; trained
        # on the outcomes known by the end of the 14th, as a retraining that day would be
        params = MlflowClient().get_run(first["run_id"]).data.params
        assert {t: int(params[f"{t}_delta_version"]) for t in silver_read} == silver_read
        assert params["labels_known_at"] == str(end_of_day(date(2013, 1, 14), "America/New_York"))
        # scoring a day not landed yet creates the predictions table, empty, and nothing else
        assert score.run(spark, config, "early", "2013-01-15", "2013-01-15")["rows"] == 0
        assert tables.read(spark, config, "delay_predictions").count() == 0
        # Temperatures of the 17th shifted by +15 °F in the landed file (a sensor gone wrong).
        # The days' mean temperature of flights, in the reference's standard deviations: the
        # 15th -0.7, the 16th -1.3, the 17th 0.0 (3.0 shifted); the threshold is 2.0.
        seed(landing, date(2013, 1, 15), date(2013, 1, 17))
        path = daily_path(landing, "weather", date(2013, 1, 17))
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**r, "temp": r["temp"] + 15 if r["temp"] is not None
                                            else None}) + "\n" for r in lines))
        replayed_from = datetime.now(UTC)
        days = [replay_day(spark, config, date(2013, 1, 15) + timedelta(days=i))
                for i in range(3)]
        # the daily workflow run again on the last day sends nothing and changes nothing ...
        before = snapshot.content(spark, config, (*snapshot.CONTENT_TABLES, "model_monitoring",
                                                  "alerts"))
        again = replay_day(spark, config, date(2013, 1, 17))
        after = snapshot.content(spark, config, (*snapshot.CONTENT_TABLES, "model_monitoring",
                                                 "alerts"))
    finally:
        server.shutdown()
    # ... except that the version the 17th's retraining registered now scores that day too
    # (as champion, or as challenger in shadow) and is monitored on it
    assert days[2].retrained is not None
    new = days[2].retrained["version"]
    for table in ("delay_predictions", "model_monitoring"):
        added = [r for r in after[table] if r["model_version"] == new]
        after[table] = [r for r in after[table] if r["model_version"] != new]
        before[table] = [r for r in before[table] if r["model_version"] != new]
        assert {r["flight_date"] if table == "delay_predictions" else r["monitored_date"]
                for r in added} <= {date(2013, 1, 17)}
    assert again.alerts == [] and again.retrained is None and after == before
    assert [len(d.alerts) for d in days] == [0, 0, 1]
    (alert,) = days[2].alerts
    assert alert["alert_id"] == "feature_drift|temp|2013-01-17" and alert["webhook_delivered"]
    assert [p["alert"]["alert_id"] for p in Webhook.received] == [alert["alert_id"]]
    # the replay's report and picture take the alerts from their table, by monitored day
    assert {d: [a["alert_id"] for a in alerts] for d, alerts in recorded_alerts(
        spark, config, date(2013, 1, 15), date(2013, 1, 17), replayed_from).items()} == {
        date(2013, 1, 17): [alert["alert_id"]]}
    assert recorded_alerts(spark, config, date(2013, 1, 15), date(2013, 1, 17),
                           datetime.now(UTC)) == {}  # a later replay's are its own
    assert "temp" in Webhook.received[0]["text"]
    # retraining was due on the 17th only; the gate decided between the two models on the
    # latest labeled days
    assert [d.retrained is not None for d in days] == [False, False, True]
    assert days[0].statuses["train"] == days[1].statuses["train"] == "skipped"
    retrained = days[2].retrained
    assert retrained is not None and retrained["gate_window"] == "2013-01-15..2013-01-16"
    assert retrained["alias"] in ("champion", "challenger") and "AUC-ROC" in retrained["decision"]
    handled = tables.read(spark, config, "alerts").first()
    assert handled is not None and handled["handled_by_run"] == retrained["run_id"]

    # nothing lost: each silver run's rows in = rows out + quarantined + duplicates
    for run in tables.read(spark, config, "audit").filter(
            F.col("table_name") == "silver_flights").collect():
        assert run["rows_in"] == run["rows_out"] + run["rows_quarantined"] + run["rows_duplicate"]
    # every flight of the replayed days has a champion prediction or a recorded reason
    flights = tables.read(spark, config, "silver_flights").filter(
        F.col("flight_date").between("2013-01-15", "2013-01-17"))
    predictions = tables.read(spark, config, "delay_predictions").filter(
        F.col("role") == "champion")
    assert flights.join(predictions, "flight_id", "left_anti").limit(1).count() == 0
    assert predictions.filter((F.col("status") == "unscorable")
                              & F.col("reason").isNull()).limit(1).count() == 0
    # one champion prediction per flight, whatever the gate decided (a promotion rescored the
    # 17th: the former champion's rows of that day are kept as role 'previous')
    assert predictions.groupBy("flight_id").count().filter(F.col("count") > 1).limit(1).count() == 0
    if retrained["alias"] == "champion":
        roles = {(r["model_version"], r["role"]) for r in tables.read(
            spark, config, "delay_predictions").filter(F.col("flight_date") == "2013-01-17")
            .select("model_version", "role").distinct().collect()}
        assert roles == {(first["version"], "previous"),
                         (retrained["version"], "champion")}
    # each replayed day, a date the existing table held no row of, was written by an insert-only
    # MERGE (nothing compared, nothing deleted): the first version's rows of the day
    inserts = {d: int(r["metrics"]["numTargetRowsInserted"]) for r in tables.delta_table(
        spark, config, "delay_predictions").history().filter(
        (F.col("operation") == "MERGE")
        & (F.col("operationParameters.matchedPredicates") == "[]"))
        .select(F.col("operationParameters.predicate").alias("predicate"),
                F.col("operationMetrics").alias("metrics")).collect()
        for d in ("2013-01-15", "2013-01-16", "2013-01-17") if d in r["predicate"]}
    first_rows = {d: tables.read(spark, config, "delay_predictions").filter(
        (F.col("flight_date") == d) & (F.col("model_version") == first["version"])).count()
        for d in ("2013-01-15", "2013-01-16", "2013-01-17")}
    assert inserts == first_rows and all(first_rows.values()), (inserts, first_rows)
    # a rerun of scoring with the same models changes no row
    version = tables.version(spark, config, "delay_predictions")
    score.run(spark, config, "again", "2013-01-17", "2013-01-17")
    assert tables.version(spark, config, "delay_predictions") == version
    # and a day without flights landed yet commits nothing
    assert score.run(spark, config, "early", "2013-01-18", "2013-01-18")["rows"] == 0
    assert tables.version(spark, config, "delay_predictions") == version
    # realized quality counts only outcomes known by the end of the monitored day
    monitored = tables.read(spark, config, "model_monitoring").filter(
        (F.col("monitored_date") == "2013-01-17") & (F.col("window") == "day")
        & (F.col("metric") == "auc_roc")).first()
    features = tables.read(spark, config, "flight_features")
    known = features.filter((F.col("flight_date") == "2013-01-17") & F.col("tail_recorded")
                            # New York's midnight after Jan 17 (EST, UTC-5)
                            & (F.col("known_at_utc") <= F.lit("2013-01-18 05:00:00")
                               .cast("timestamp"))).count()
    total = features.filter((F.col("flight_date") == "2013-01-17")
                            & F.col("tail_recorded")).count()
    assert monitored is not None and monitored["rows"] == known < total


def test_a_former_champions_rescored_rows_become_previous(spark: SparkSession,
                                                          tmp_path: Path) -> None:
    from datetime import datetime

    config = make_config(tmp_path)
    rows = [(f"f{day}{n}", date(2013, 12, day), name, version, role)
            for day in (1, 2) for n in range(2)
            for name, version, role in (("flight_disruption", "1", "champion"),
                                        ("flight_disruption", "2", "challenger"),
                                        # versions restart per model name: another model's
                                        # v2 is not the current v2
                                        ("earlier_model", "2", "champion"))]
    tables.overwrite(spark.createDataFrame(rows, "flight_id string, flight_date date, "
                                                 "model_name string, model_version string, "
                                                 "role string")
                     .withColumn("scored_at", F.lit(datetime(2013, 12, 3)))
                     .withColumn("status", F.lit("scored")),
                     config, "delay_predictions")
    promoted = [score.Scorer("flight_disruption", "2", "run-2", "champion", 0.5)]
    assert score.retire_others(spark, config, "2013-12-02", "2013-12-02",
                               promoted) == ["earlier_model/2", "flight_disruption/1"]
    roles = {(r["flight_date"].day, r["model_name"][0], r["model_version"], r["role"]) for r in
             tables.read(spark, config, "delay_predictions").collect()}
    # the 2nd was rescored by v2 (its own rows' role is the score MERGE's business);
    # the 1st was not, and keeps its history as it was
    assert roles == {(1, "f", "1", "champion"), (1, "f", "2", "challenger"),
                     (1, "e", "2", "champion"), (2, "f", "1", "previous"),
                     (2, "f", "2", "challenger"), (2, "e", "2", "previous")}


def test_of_two_champion_versions_on_a_day_the_one_that_scored_most_comes_first(
        spark: SparkSession) -> None:
    """A late flight scored by a newer champion leaves its day with two champion versions: the
    monitor raises the alerts of the version that scored most of the day (the first champion
    of day_models), whichever registered later; retired versions are not monitored."""
    rows = [(f"f{n}", date(2013, 12, 2), "9", "r9", "champion") for n in range(3)]
    rows += [("late", date(2013, 12, 2), "10", "r10", "champion"),
             ("f0", date(2013, 12, 2), "11", "r11", "challenger"),
             ("f0", date(2013, 12, 2), "8", "r8", "previous"),
             ("f9", date(2013, 12, 3), "10", "r10", "champion")]
    predictions = spark.createDataFrame(rows, "flight_id string, flight_date date, "
                                              "model_version string, model_run_id string, "
                                              "role string").withColumn(
        "model_name", F.lit("flight_disruption"))
    found = [(m["model_version"], m["role"], m["rows"])
             for m in monitor.day_models(predictions, date(2013, 12, 2))]
    assert found == [("11", "challenger", 1), ("9", "champion", 3), ("10", "champion", 1)]
    # a challenger promoted by hand scores a late flight of the day as champion: monitored
    # once (its monitoring rows are keyed by version), as champion, after the day's champion
    hand = spark.createDataFrame(
        [("f1", date(2013, 12, 2), "11", "r11", "challenger"),
         ("late2", date(2013, 12, 2), "11", "r11", "champion")],
        "flight_id string, flight_date date, model_version string, model_run_id string, "
        "role string").withColumn("model_name", F.lit("flight_disruption"))
    found = [(m["model_version"], m["role"], m["rows"])
             for m in monitor.day_models(predictions.unionByName(hand), date(2013, 12, 2))]
    assert found == [("9", "champion", 3), ("11", "champion", 3), ("10", "champion", 1)]


def test_an_insert_only_merge_refuses_deletes_and_newer() -> None:
    for extra in ({"delete_flag": "_delete"}, {"newer": "scored_at"}, {"known": "status"}):
        with pytest.raises(ValueError, match="insert_only inserts new keys only"):
            tables.merge(None, None, None, "delay_predictions", ("flight_id",),  # type: ignore[arg-type]
                         insert_only=True, **extra)


def test_monitor_before_anything_was_scored_succeeds_and_says_so(spark: SparkSession,
                                                                  tmp_path: Path) -> None:
    """On a first scheduled run there is no champion, so nothing is scored: the monitor task
    (a separate task on Databricks) must not fail, or the train task after it never runs."""
    config = make_config(tmp_path)
    result = monitor.run(spark, config, "first-run", "2013-12-02")
    assert result["models"] == [] and result["values"] == 0 and not result["retrain_due"]
    assert not tables.exists(spark, config, "model_monitoring")
    audit = tables.read(spark, config, "audit").filter(F.col("job") == "monitor").collect()
    assert len(audit) == 1 and "nothing scored yet" in audit[0]["message"]
    # a misspelt alert rule fails the first run too, not the first run with a champion
    typo = make_config(tmp_path, monitor={"alerts": {"calibration": {"abvoe": 0.1}}})
    with pytest.raises(AlertRuleError, match=r"calibration: unknown keys \['abvoe'\]"):
        monitor.run(spark, typo, "typo", "2013-12-02")
    # so does a setting that is not a number (a TypeError later would have been retried as
    # transient every day); a null takes the default
    quoted = make_config(tmp_path, monitor={"webhook_retries": "3"})
    with pytest.raises(ConfigError, match=r"monitor.webhook_retries: expected a whole number"):
        monitor.run(spark, quoted, "quoted", "2013-12-02")
    assert workflow.is_permanent(ConfigError("x"))
    unset = make_config(tmp_path, monitor={"webhook_retries": None, "min_scored": None})
    assert monitor.run(spark, unset, "unset", "2013-12-02")["models"] == []


@pytest.mark.slow
def test_latest_score_dates_resolve_to_silvers_last_flight_date_when_needed(
        spark: SparkSession, tmp_path: Path) -> None:
    """The cluster and Databricks confs score `latest`: a scheduled run passing no dates scores
    and monitors the day it landed, read when the step starts (after this run's silver), and
    the days a failed or paused run left behind."""
    config = make_config(tmp_path, score={"from": "latest", "to": "latest"})
    with pytest.raises(workflow.NoFlightsYetError, match="silver_flights does not exist yet"):
        workflow.resolved(spark, config, ("latest", "latest"))
    with pytest.raises(ValueError, match=r"to: expected a date as YYYY-MM-DD, got 'lastest'"):
        workflow.run_job(spark, config, "score", None, "lastest")
    days = spark.createDataFrame([(date(2013, 12, d),) for d in (3, 1, 2)], "flight_date date")
    tables.overwrite(days, config, "silver_flights")
    assert workflow.resolved(spark, config, ("latest", "latest")) == ("2013-12-03", "2013-12-03")
    assert workflow.resolved(spark, config, ("2013-11-30", "latest")) == ("2013-11-30",
                                                                          "2013-12-03")
    tables.append(spark.createDataFrame([(date(2013, 12, 4),)], "flight_date date"), config,
                  "silver_flights")
    tasks = {t.name: t for t in workflow.daily_tasks(spark, config, "r", ("latest", "latest"),
                                                     ("monitor",), "never", False)}
    retries = {t.name: (t.retries, t.when_retries) for t in workflow.daily_tasks(
        spark, config, "r", ("latest", "latest"), workflow.STAGES, "auto", False)}
    assert retries["train"] == (0, 1)  # training runs once; asking whether it is due retries
    # monitor resolves when it runs: the day landed after the DAG was built
    assert tasks["monitor"].run()["day"] == "2013-12-04"
    # a step that fell behind catches up: from the day after the last one it recorded
    monitored = spark.createDataFrame([(date(2013, 12, 1), MODEL)],
                                      "monitored_date date, model_name string")
    tables.overwrite(monitored, config, "model_monitoring")
    assert tasks["monitor"].run()["days"] == ["2013-12-02", "2013-12-03", "2013-12-04"]
    # a fixed `from` is where scoring starts: the monitor watches the last day, even one
    # before it (`run monitor --to D` with the local conf's from)
    assert workflow.monitor_range(spark, config, "r", ("2013-12-05", "2013-12-03"))["days"] == [
        "2013-12-03"]
    assert workflow.monitor_range(spark, config, "r", ("2013-12-01", "latest"))["days"] == [
        "2013-12-04"]
    # another model scored on the same table: its days are not this model's
    scored = spark.createDataFrame([(date(2013, 12, 1), MODEL), (date(2013, 12, 3), "other")],
                                   "flight_date date, model_name string")
    tables.overwrite(scored, config, "delay_predictions")
    assert workflow.resolved(spark, config, ("latest", "latest")) == ("2013-12-02", "2013-12-04")
    capped = make_config(tmp_path, score={"from": "latest", "to": "latest", "catch_up_days": 2})
    assert workflow.resolved(spark, capped, ("latest", "latest")) == ("2013-12-03", "2013-12-04")
    tables.append(spark.createDataFrame([(date(2013, 12, 4), MODEL)],
                                        "flight_date date, model_name string"), config,
                  "delay_predictions")  # up to date: the end day again (a rerun changes nothing)
    assert workflow.resolved(spark, config, ("latest", "latest")) == ("2013-12-04", "2013-12-04")
    with pytest.raises(ValueError, match=r"from 2013-12-05 is after to 2013-12-04"):
        workflow.resolved(spark, config, ("2013-12-05", "latest"))
    assert workflow.is_permanent(workflow.NoFlightsYetError("x"))


def test_the_monitor_waits_for_a_day_to_end(spark: SparkSession, tmp_path: Path) -> None:
    """Silver holds tomorrow's flights once their schedule events arrived (the producer sends
    them a day ahead): a day monitored before it ends would count as done, and never be
    monitored again with its outcomes."""
    config = make_config(tmp_path, score={"from": "latest", "to": "latest"})
    timezone = config.section("gold")["home_timezone"]
    today = datetime.now(ZoneInfo(timezone)).date()
    days = [today + timedelta(days=n) for n in (-2, -1, 0, 1)]
    tables.overwrite(spark.createDataFrame([(d,) for d in days], "flight_date date"), config,
                     "silver_flights")
    latest = ("latest", "latest")
    assert workflow.monitor_range(spark, config, "r", latest)["days"] == [str(days[1])]
    tables.overwrite(spark.createDataFrame([(days[0], MODEL)],
                                           "monitored_date date, model_name string"), config,
                     "model_monitoring")
    assert workflow.monitor_days(spark, config, latest) == [str(days[1])]
    # a fixed `to` that has not ended yet: the last day that has
    assert workflow.monitor_days(spark, config, (str(days[0]), str(days[3]))) == [str(days[1])]
    # as of a given instant (a replay's), the days ended by then
    assert workflow.monitor_days(spark, config, latest, end_of_day(days[3], timezone)) == [
        str(d) for d in days[1:]]
    # retraining likewise: its windows end the day before the last ended day, not tomorrow's
    anchor = workflow.retrain_day(days[3], None, timezone)
    assert anchor == days[1]
    windows = workflow.retrain_windows(make_config(tmp_path, monitor=LOOP_MONITOR),
                                       anchor - timedelta(days=1))
    assert windows.holdout_to == str(days[0])
    assert workflow.retrain_day(days[3], end_of_day(days[3], timezone), timezone) == days[3]


def test_latest_scoring_also_finds_flights_landed_after_their_day_was_scored(
        spark: SparkSession, tmp_path: Path) -> None:
    """A flight that reached silver after its day was scored has no prediction row: `from:
    latest` scores it too (from its day, within score.catch_up_days), and only it there."""
    config = make_config(tmp_path, score={"from": "latest", "to": "latest"})
    latest = ("latest", "latest")
    dates = [date(2013, 12, d) for d in (1, 2, 3, 4)]
    flights = spark.createDataFrame([(f"f{d.day}", d) for d in dates],
                                    "flight_id string, flight_date date")
    tables.overwrite(flights, config, "silver_flights")
    tables.overwrite(flights.withColumn("model_name", F.lit(MODEL)), config, "delay_predictions")
    assert workflow.resolved(spark, config, latest) == ("2013-12-04", "2013-12-04")
    assert workflow.late_from(spark, config, latest, "2013-12-04", "2013-12-04") is None
    late = spark.createDataFrame([("f2b", date(2013, 12, 2))], "flight_id string, flight_date date")
    tables.append(late, config, "silver_flights")
    assert workflow.late_from(spark, config, latest, "2013-12-04", "2013-12-04") == "2013-12-02"
    # explicit dates score what they name; a late flight before the catch-up window waits for
    # them (catch_up_days 2: Dec 3 and 4)
    assert workflow.late_from(spark, config, ("2013-12-04", "latest"), "2013-12-04",
                              "2013-12-04") is None
    capped = make_config(tmp_path, score={"from": "latest", "to": "latest", "catch_up_days": 2})
    assert workflow.late_from(spark, capped, latest, "2013-12-04", "2013-12-04") is None
    # an unscorable row (a flight recorded with the reason) is a row: nothing is late
    tables.append(late.withColumn("model_name", F.lit(MODEL)), config, "delay_predictions")
    assert workflow.late_from(spark, config, latest, "2013-12-04", "2013-12-04") is None
    # a day never scored (before the first day scored: a replay's bootstrap days) is not late
    before = spark.createDataFrame([("f30", date(2013, 11, 30))],
                                   "flight_id string, flight_date date")
    tables.append(before, config, "silver_flights")
    assert workflow.late_from(spark, config, latest, "2013-12-04", "2013-12-04") is None
    # a day after the first one scored that had no flight when it was scored (the 2nd: no
    # row) is caught up once its flights land
    def predictions(*rows: tuple[str, date, str]) -> None:
        tables.overwrite(spark.createDataFrame(
            rows, "flight_id string, flight_date date, model_name string"), config,
            "delay_predictions")

    predictions(("f1", dates[0], MODEL), ("f3", dates[2], MODEL), ("f4", dates[3], MODEL))
    assert workflow.late_from(spark, config, latest, "2013-12-04", "2013-12-04") == "2013-12-02"
    # a flight another model scored holds a row (the score job's late pass counts any)
    predictions(("f1", dates[0], MODEL), ("f3", dates[2], MODEL), ("f4", dates[3], MODEL),
                ("f2", dates[1], "other"), ("f2b", dates[1], "other"))
    assert workflow.late_from(spark, config, latest, "2013-12-04", "2013-12-04") is None
    # the first day scored is this model's: another model's earlier day does not open the
    # days before it (the 30th, never scored by this model)
    predictions(*((i, d, MODEL) for i, d in (("f1", dates[0]), ("f2", dates[1]),
                                             ("f2b", dates[1]), ("f3", dates[2]),
                                             ("f4", dates[3]))),
                ("x28", date(2013, 11, 28), "other"))
    assert workflow.late_from(spark, config, latest, "2013-12-04", "2013-12-04") is None


def quality_only(persist_days: int) -> dict[str, Any]:
    return {"trailing_days": 1, "min_labeled": 50,
            "alerts": {"quality_drop": {"below_training_by": 0.05,
                                        "persist_days": persist_days, "retrain": True},
                       "feature_drift": None, "prediction_drift": None, "calibration": None}}


def monitored_day(spark: SparkSession, tmp_path: Path, days: tuple[int, ...] = (2,),
                  persist_days: int = 1, run_gone: bool = False) -> Any:
    """A champion's scored December days whose realized AUC-ROC (~0.5: probabilities drawn
    apart from the outcomes) is far below the 0.99 its run logged: the quality_drop rule's
    condition holds on each (with run_gone, the predictions name a run that does not exist)."""
    import random
    from datetime import datetime

    import mlflow

    from lakehouse import registry

    config = make_config(tmp_path, monitor=quality_only(persist_days))
    registry.configure(config)
    with mlflow.start_run() as run:  # no drift reference: quality only
        mlflow.log_metric("holdout_auc_roc", 0.99)
    run_id = "0123456789abcdef0123456789abcdef" if run_gone else run.info.run_id
    rng = random.Random(7)
    flights = [(f"f{d}-{i}", date(2013, 12, d), rng.random(), int(rng.random() < 0.3))
               for d in days for i in range(300)]
    tables.overwrite(spark.createDataFrame(
        [(i, day, "flight_disruption", "1", run_id, "champion", "scored", p, True)
         for i, day, p, _ in flights],
        "flight_id string, flight_date date, model_name string, model_version string, "
        "model_run_id string, role string, status string, probability double, "
        "tail_recorded boolean"), config, "delay_predictions")
    tables.overwrite(spark.createDataFrame(
        [(i, day, label, datetime(day.year, day.month, day.day, 15))
         for i, day, _, label in flights],
        "flight_id string, flight_date date, disrupted int, known_at_utc timestamp"),
        config, "flight_features")
    return config


@pytest.mark.slow
def test_an_episode_raises_once_its_condition_held_on_the_days_already_monitored(
        spark: SparkSession, tmp_path: Path) -> None:
    """persist_days 2: the first day raises nothing; the second raises, from the first day's
    row read back from model_monitoring and its own, not yet written; a rerun of the second
    day raises nothing more."""
    config = monitored_day(spark, tmp_path, days=(1, 2), persist_days=2)
    assert monitor.run(spark, config, "run-1", "2013-12-01")["alerts"] == []
    second = monitor.run(spark, config, "run-2", "2013-12-02")
    assert [a["alert_id"] for a in second["alerts"]] == ["quality_drop||2013-12-02"]
    assert monitor.run(spark, config, "run-3", "2013-12-02")["alerts"] == []
    assert tables.read(spark, config, "alerts").count() == 1


@pytest.mark.slow
def test_a_rerun_of_an_earlier_day_leaves_a_later_runs_quality_rows(
        spark: SparkSession, tmp_path: Path) -> None:
    """Each run writes the trailing days' per-day quality as of its own instant: Dec 2's run
    counts the Dec 1 flights whose outcome came in on Dec 2. Running Dec 1 again (as of its
    end, fewer outcomes known) must not roll those rows back."""
    from datetime import datetime

    monitored_day(spark, tmp_path, days=(1, 2))
    config = make_config(tmp_path, monitor={**quality_only(1), "trailing_days": 2})
    features = tables.read(spark, config, "flight_features").toPandas()
    late = (features["flight_date"] == date(2013, 12, 1)) & (features.index % 2 == 0)
    features.loc[late, "known_at_utc"] = datetime(2013, 12, 2, 15)
    tables.overwrite(spark.createDataFrame(
        features, "flight_id string, flight_date date, disrupted int, known_at_utc timestamp"),
        config, "flight_features")

    def first_day() -> dict[str, Any]:
        return {(r["window"], r["metric"], r["subject"]): (r["value"], r["rows"], r["as_of_utc"])
                for r in tables.read(spark, config, "model_monitoring")
                .filter(F.col("monitored_date") == date(2013, 12, 1)).collect()}

    monitor.run(spark, config, "run-1", "2013-12-01")
    as_of_first = first_day()
    assert as_of_first[("day", "auc_roc", "")][1] == 150  # half the outcomes known
    monitor.run(spark, config, "run-2", "2013-12-02")
    as_of_second = first_day()
    assert as_of_second[("day", "auc_roc", "")][1] == 300
    monitor.run(spark, config, "run-3", "2013-12-01")
    assert first_day() == as_of_second


@pytest.mark.slow
def test_a_day_whose_alert_was_not_recorded_is_not_counted_as_monitored(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An episode raises its alert on one day only, and `from: latest` starts after the last
    monitored day: if recording the alert fails (a storage error), the day's monitoring rows
    must not be written either, so the next run monitors the day again and raises it, once."""
    config = monitored_day(spark, tmp_path)
    append = tables.append

    def alerts_unwritable(df: Any, conf: Any, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "alerts":
            raise OSError("storage unavailable")
        append(df, conf, name, *args, **kwargs)

    monkeypatch.setattr(tables, "append", alerts_unwritable)
    with pytest.raises(OSError, match="storage unavailable"):
        monitor.run(spark, config, "run-1", "2013-12-02")
    assert not tables.exists(spark, config, "model_monitoring")
    monkeypatch.undo()
    first = monitor.run(spark, config, "run-2", "2013-12-02")
    assert [a["rule"] for a in first["alerts"]] == ["quality_drop"] and first["retrain_due"]
    again = monitor.run(spark, config, "run-3", "2013-12-02")
    assert again["alerts"] == [] and again["values"] == first["values"] > 0
    assert tables.read(spark, config, "alerts").count() == 1
    days = {r[0] for r in tables.read(spark, config, "model_monitoring")
            .select("monitored_date").distinct().collect()}
    assert days == {date(2013, 12, 2)}


def test_a_monitored_models_run_that_is_gone_gives_no_reference_nor_training_auc(
        tmp_path: Path) -> None:
    """A purged run, or a version registered from another workspace: the monitor goes on
    without drift and without the quality_drop rule (the train task after it must still be
    able to run); any other tracking error still fails."""
    from mlflow.exceptions import MlflowException

    from lakehouse import registry

    registry.configure(make_config(tmp_path))
    gone = "0123456789abcdef0123456789abcdef"
    assert monitor.reference_of(gone) is None
    assert monitor.training_auc(gone) is None and monitor.training_auc("") is None
    with pytest.raises(MlflowException):
        monitor.training_auc("not a run id/../x")


def test_the_registry_uri_of_the_environment_wins_over_conf(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from lakehouse import registry

    config = make_config(tmp_path)
    registry.configure(config)
    assert mlflow.get_registry_uri() == mlflow.get_tracking_uri()
    elsewhere = f"sqlite:///{tmp_path}/registry.db"
    # the variable as the user set it, read when the module loads (MLflow's set_registry_uri
    # writes the variable itself afterwards)
    monkeypatch.setattr(registry, "_USER_REGISTRY_URI", elsewhere)
    registry.configure(config)
    assert mlflow.get_registry_uri() == elsewhere != mlflow.get_tracking_uri()


def test_a_versions_threshold_is_its_tag_else_its_runs_metric_and_must_be_a_probability(
        tmp_path: Path) -> None:
    """The train job tags each version it registers; a version registered by hand from the
    run (or whose tag failed to be set) takes the threshold its run logged; one without a run
    takes the one its model was saved with (None here: test_training); a tag that is not a
    probability fails instead of predicting no flight disrupted."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from lakehouse import registry

    registry.configure(make_config(tmp_path))
    client = MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_metric("decision_threshold", 0.31)
    client.create_registered_model("m")
    by_hand = client.create_model_version("m", f"runs:/{run.info.run_id}/model",
                                          run_id=run.info.run_id)
    assert score.threshold_of("m", by_hand) == pytest.approx(0.31)
    no_run = client.create_model_version("m", f"runs:/{run.info.run_id}/model")
    assert score.threshold_of("m", no_run) is None
    client.set_model_version_tag("m", by_hand.version, "decision_threshold", "0.27")
    client.set_registered_model_alias("m", "champion", by_hand.version)
    champion = score.Scorer.resolve("m", "champion")
    assert champion is not None and champion.threshold == pytest.approx(0.27)
    for bad in ("nan", "1.5", "-0.1", "high"):
        client.set_model_version_tag("m", by_hand.version, "decision_threshold", bad)
        with pytest.raises(ValueError, match=rf"m version 1: decision_threshold tag '{bad}' is "
                                             r"not a probability"):
            score.Scorer.resolve("m", "champion")
    # a challenger whose threshold is bad is left out of scoring, not the champion with it
    client.set_registered_model_alias("m", "challenger", by_hand.version)
    client.set_registered_model_alias("m", "champion", no_run.version)
    # and the rows it scored keep their role: it still holds @challenger
    versions = score.scorers("m", "champion")
    assert [s.version for s in versions.models] == [str(no_run.version)]
    assert versions.spared == (f"m/{by_hand.version}",) and versions.roles == score.ROLES
    assert versions.challenger_error is not None
    assert "ValueError" in versions.challenger_error and "'high'" in versions.challenger_error


def test_a_registry_error_on_the_challenger_look_up_retires_no_challenger_rows(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry error other than "alias not found" on @challenger (a 503, a timeout) leaves
    which version holds it unknown: the champion scores alone and no row holding the
    challenger role is retired (an earlier champion's still are)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
    from mlflow.tracking import MlflowClient

    from lakehouse import registry

    config = make_config(tmp_path)
    registry.configure(config)
    client = MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_metric("decision_threshold", 0.4)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", f"runs:/{run.info.run_id}/model",
                                    run_id=run.info.run_id)
    client.set_registered_model_alias("m", "champion", "3")
    client.set_registered_model_alias("m", "challenger", "2")
    real = registry.resolve

    def unavailable_for_challenger(name: str, alias: str) -> Any:
        if alias == registry.CHALLENGER:  # injected: the registry fails on this call only
            raise MlflowException("503 Service Unavailable", error_code=TEMPORARILY_UNAVAILABLE)
        return real(name, alias)

    monkeypatch.setattr(registry, "resolve", unavailable_for_challenger)
    versions = score.scorers("m", "champion")
    assert [s.version for s in versions.models] == ["3"] and versions.spared == ()
    assert versions.roles == (registry.CHAMPION,)
    assert (versions.challenger_error or "").startswith("look-up failed: MlflowException")
    rows = [(f"f{n}", date(2013, 12, 1), "m", version, role) for n in range(2)
            for version, role in (("1", "champion"), ("2", "challenger"))]
    tables.overwrite(spark.createDataFrame(rows, "flight_id string, flight_date date, "
                                                 "model_name string, model_version string, "
                                                 "role string")
                     .withColumn("status", F.lit("scored")), config, "delay_predictions")
    assert score.retire_others(spark, config, "2013-12-01", "2013-12-01", versions.models,
                               versions=versions) == ["m/1"]
    assert {(r["model_version"], r["role"]) for r in
            tables.read(spark, config, "delay_predictions").collect()} == {
        ("1", "previous"), ("2", "challenger")}


def test_a_champion_whose_run_is_gone_is_monitored_without_drift_and_quality_drop(
        spark: SparkSession, tmp_path: Path) -> None:
    config = monitored_day(spark, tmp_path, run_gone=True)
    result = monitor.run(spark, config, "run-1", "2013-12-02")
    # the day's realized quality is recorded; the rule comparing it with the training AUC-ROC
    # cannot be checked, so it raises nothing
    assert result["values"] > 0 and result["alerts"] == []
    metrics = {r["metric"] for r in tables.read(spark, config, "model_monitoring").collect()}
    assert "auc_roc" in metrics and "psi" not in metrics


def test_after_a_failed_delivery_the_runs_next_alerts_are_posted_once_each(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A webhook that is down (503 on every POST, a real server on loopback) costs one retried
    delivery per run: the run's next alerts are tried once each, and every row says it was not
    delivered. Its URL (its path is an incoming webhook's token) comes from the environment
    and is not logged whole."""
    from tests.test_alerts import Hook

    server = Hook([503])
    server.thread.start()
    monkeypatch.setenv("LAKEHOUSE_TEST_HOOK", server.url + "/T0K3N")
    try:
        rules = rules_from_conf(RULES)
        history = [row(d, "mean_shift", 2.5, feature) for d in (1, 2)
                   for feature in ("temp", "dewp", "humid")]
        crossings = raised_on(date(2013, 12, 2), history, rules, 0.75, 200)
        assert len(crossings) == 3
        raised = monitor.raise_alerts(
            spark, make_config(tmp_path), crossings, {"model_name": "m", "model_version": "1"},
            {"webhook_url": "env:LAKEHOUSE_TEST_HOOK", "webhook_retries": 2,
             "webhook_timeout_seconds": 2})
    finally:
        server.server.shutdown()
        server.server.server_close()
    assert "webhook http://127.0.0.1:" in caplog.text and "T0K3N" not in caplog.text
    assert not any("T0K3N" in str(a["webhook_error"]) for a in raised)
    assert [a["webhook_attempts"] for a in raised] == [3, 1, 1]
    assert [a["webhook_delivered"] for a in raised] == [False, False, False]
    assert len(server.received) == 5


def test_a_webhook_read_from_an_unset_variable_fails_the_monitor_before_it_measures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lakehouse.config import ConfigError

    monkeypatch.delenv("LAKEHOUSE_UNSET_HOOK", raising=False)
    config = make_config(tmp_path, monitor={"webhook_url": "env:LAKEHOUSE_UNSET_HOOK"})
    with pytest.raises(ConfigError, match=r"monitor\.webhook_url reads the environment variable "
                                          r"LAKEHOUSE_UNSET_HOOK, which is not set"):
        monitor.run(None, config, "r1", "2013-11-01")  # type: ignore[arg-type]
    assert not (tmp_path / "delta").exists()  # nothing read or written
    # a URL no POST can reach fails before any alert too (it showed only on the first alert,
    # where the malformed one failed the monitor), its path (the hook's token) not shown
    for bad, why in (("http://[::1/T0K3N", "not a URL"),
                     ("hooks.slack.com/services/T0K3N", "expected an http"),
                     ("ftp://files.example.com/T0K3N", "expected an http"),
                     ("https:///T0K3N", "expected an http"),
                     ("https://hooks.example.com:port/T0K3N", "not a URL"),
                     ("https://hooks.example.com/T0K 3N", "not a URL")):
        monkeypatch.setenv("LAKEHOUSE_UNSET_HOOK", bad)
        with pytest.raises(ConfigError, match=rf"monitor\.webhook_url: {why}") as refused:
            monitor.run(None, config, "r1", "2013-11-01")  # type: ignore[arg-type]
        assert "T0K" not in str(refused.value)
    monkeypatch.setenv("LAKEHOUSE_UNSET_HOOK", "https://hooks.example.com:8443/T0K3N")
    assert monitor.webhook_url(config.section("monitor")) == (
        "https://hooks.example.com:8443/T0K3N")
    # a secret read from a file ends in a newline: dropped, as urllib drops it
    monkeypatch.setenv("LAKEHOUSE_UNSET_HOOK", "https://hooks.example.com:8443/T0K3N\n")
    assert monitor.webhook_url(config.section("monitor")) == (
        "https://hooks.example.com:8443/T0K3N")
