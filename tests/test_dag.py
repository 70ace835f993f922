"""The task runner: order, retries of transient failures only, skips, failures that stop only
their dependents, invalid workflows, and a rerun after a failure."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from lakehouse.dag import DagError, Task, TaskResult, failed, order, run_dag, summary


class DataError(ValueError):
    """Stands for a contract halt or an empty window: retrying cannot help."""


def is_permanent(error: BaseException) -> bool:
    return isinstance(error, DataError)


class Recorder:
    """Tasks that record their runs; a task can be told to fail its first n attempts."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.waits: list[float] = []
        self.failures: dict[str, tuple[int, Exception]] = {}

    def task(self, name: str, *deps: str, retries: int = 0,
             when: Callable[[dict[str, TaskResult]], str | None] | None = None,
             when_retries: int | None = None) -> Task:
        def run() -> str:
            self.calls.append(name)
            left, error = self.failures.get(name, (0, RuntimeError()))
            if left:
                self.failures[name] = (left - 1, error)
                raise error
            return f"{name} done"

        return Task(name, run, tuple(deps), retries, when, when_retries)

    def run(self, tasks: list[Task]) -> dict[str, TaskResult]:
        return run_dag(tasks, is_permanent, sleep=self.waits.append)


def daily(rec: Recorder, retries: int = 2) -> list[Task]:
    """The shape of the daily workflow, plus a report task that needs only gold."""
    return [rec.task("bronze", retries=retries), rec.task("silver", "bronze", retries=retries),
            rec.task("gold", "silver", retries=retries), rec.task("score", "gold", retries=retries),
            rec.task("monitor", "score"), rec.task("kpis", "gold"),
            rec.task("train", "monitor",
                     when=lambda r: None if r["monitor"].result == "due" else "not due"),
            rec.task("rescore", "train")]


def statuses(results: dict[str, TaskResult]) -> dict[str, str]:
    return {name: r.status for name, r in results.items()}


def test_order_follows_dependencies_then_declaration() -> None:
    rec = Recorder()
    tasks = [rec.task("report", "score", "kpis"), rec.task("score", "gold"),
             rec.task("kpis", "gold"), rec.task("gold")]
    assert [t.name for t in order(tasks)] == ["gold", "score", "kpis", "report"]
    results = rec.run(tasks)
    assert rec.calls == ["gold", "score", "kpis", "report"] == list(results)
    assert all(r.status == "succeeded" and r.attempts == 1 for r in results.values())
    assert results["kpis"].result == "kpis done" and not failed(results)


def test_transient_failure_is_retried_with_backoff_and_the_workflow_completes(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    rec.failures["silver"] = (1, ConnectionError("executor lost"))
    with caplog.at_level(logging.INFO, logger="lakehouse.dag"):
        results = run_dag(daily(rec), is_permanent, backoff_s=lambda n: 5.0 * (n + 1),
                          sleep=rec.waits.append)
    assert rec.calls[:4] == ["bronze", "silver", "silver", "gold"]
    assert results["silver"].status == "succeeded" and results["silver"].attempts == 2
    assert rec.waits == [5.0]  # slept once, through the injected sleep: no real waiting
    assert statuses(results) == {
        "bronze": "succeeded", "silver": "succeeded", "gold": "succeeded", "score": "succeeded",
        "monitor": "succeeded", "kpis": "succeeded", "train": "skipped", "rescore": "succeeded"}
    assert not failed(results)
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert retries == ["task silver: attempt 1 of 3 failed (ConnectionError('executor lost')); "
                       "retrying in 5.0 s"]
    assert any(r.getMessage().startswith("task silver: succeeded in") and "2 attempts" in
               r.getMessage() for r in caplog.records)


def test_transient_failures_beyond_the_retries_fail_the_task() -> None:
    rec = Recorder()
    rec.failures["gold"] = (5, TimeoutError("metastore"))
    results = rec.run(daily(rec))
    assert rec.calls.count("gold") == 3 and rec.waits == [1, 2]  # default backoff 2**n
    assert [r.name for r in failed(results)] == ["gold"]
    assert isinstance(results["gold"].error, TimeoutError)


def test_permanent_error_is_not_retried_and_stops_only_its_dependents() -> None:
    rec = Recorder()
    rec.failures["score"] = (1, DataError("empty window"))
    results = rec.run(daily(rec, retries=3))
    assert rec.calls.count("score") == 1 and rec.waits == []  # though 3 retries were allowed
    assert statuses(results) == {
        "bronze": "succeeded", "silver": "succeeded", "gold": "succeeded", "score": "failed",
        "monitor": "upstream_failed", "kpis": "succeeded", "train": "upstream_failed",
        "rescore": "upstream_failed"}
    assert results["monitor"].reason == "upstream failed: score"
    assert results["train"].reason == "upstream failed: monitor"
    assert "train" not in rec.calls and "kpis" in rec.calls
    table = summary(results)
    assert "score    failed" in table and "DataError: empty window" in table
    assert "rescore  upstream_failed" in table


def test_skip_by_condition_counts_as_done_for_dependents() -> None:
    rec = Recorder()
    tasks = [rec.task("monitor"),
             rec.task("train", "monitor", when=lambda r: f"{r['monitor'].result}: not due"),
             rec.task("rescore", "train", when=lambda r: None if r["train"].status == "skipped"
                      else "train ran")]
    results = rec.run(tasks)
    assert statuses(results) == {"monitor": "succeeded", "train": "skipped",
                                 "rescore": "succeeded"}
    assert results["train"].reason == "monitor done: not due" and results["train"].attempts == 0
    assert rec.calls == ["monitor", "rescore"]


def test_a_broken_condition_fails_its_task() -> None:
    rec = Recorder()
    results = rec.run([rec.task("a", when=lambda r: r["missing"].reason), rec.task("b", "a")])
    assert statuses(results) == {"a": "failed", "b": "upstream_failed"}
    assert isinstance(results["a"].error, KeyError) and rec.calls == []
    # the status table names the condition's error, not only that it failed
    assert summary(results).splitlines()[1].endswith(
        "condition failed after 1 attempt(s): KeyError: 'missing'")


def test_a_condition_failing_transiently_is_retried_a_data_error_in_it_is_not() -> None:
    """A condition asks the registry or a table (is there a champion? is retraining due?):
    a transient error there is retried like the task; a data error fails the task at once."""
    rec = Recorder()
    asked: list[str] = []

    def flaky(results: dict[str, TaskResult]) -> str | None:
        asked.append("train")
        if len(asked) == 1:
            raise ConnectionError("registry: 503")
        return None

    def broken(results: dict[str, TaskResult]) -> str | None:
        asked.append("score")
        raise DataError("alerts table unreadable")

    results = rec.run([rec.task("train", retries=2, when=flaky),
                       rec.task("score", "train", retries=2, when=broken)])
    assert statuses(results) == {"train": "succeeded", "score": "failed"}
    assert asked == ["train", "train", "score"] and rec.calls == ["train"]
    assert len(rec.waits) == 1 and isinstance(results["score"].error, DataError)
    assert results["score"].attempts == 1 and results["score"].reason.endswith("1 attempt(s)")


def test_a_task_run_once_can_have_its_condition_retried() -> None:
    """The train task is not retried (a retry would register a second model version), but its
    condition (champion? retraining due?) only reads, so its own retry count applies."""
    rec = Recorder()
    asked: list[int] = []

    def flaky(results: dict[str, TaskResult]) -> str | None:
        asked.append(1)
        if len(asked) < 3:
            raise ConnectionError("registry: 503")
        return None

    results = rec.run([rec.task("train", retries=0, when=flaky, when_retries=2)])
    assert statuses(results) == {"train": "succeeded"} and len(asked) == 3
    assert rec.calls == ["train"] and len(rec.waits) == 2
    rec, asked[:] = Recorder(), []
    results = rec.run([rec.task("train", retries=0, when=flaky)])  # none given: the task's 0
    assert statuses(results) == {"train": "failed"} and results["train"].attempts == 1
    assert isinstance(results["train"].error, ConnectionError) and rec.calls == []


@pytest.mark.parametrize(("tasks", "message"), [
    ([("a", ()), ("b", ("a", "x")), ("c", ("y",))],
     r"unknown dependencies \{'b': \['x'\], 'c': \['y'\]\}.*the tasks are \['a', 'b', 'c'\]"),
    ([("a", ("c",)), ("b", ("a",)), ("c", ("b",)), ("d", ())],
     "dependency cycle: a -> c -> b -> a"),
    ([("a", ("a",))], "dependency cycle: a -> a"),
    ([("a", ()), ("a", ())], "task 'a' is declared twice"),
])
def test_invalid_workflows_raise_naming_the_tasks(tasks: list[tuple[str, tuple[str, ...]]],
                                                  message: str) -> None:
    rec = Recorder()
    with pytest.raises(DagError, match=message):
        rec.run([rec.task(name, *deps) for name, deps in tasks])
    assert rec.calls == []  # validated before anything runs


def test_rerun_after_a_failure_runs_the_failed_task_again() -> None:
    rec = Recorder()
    rec.failures["score"] = (1, DataError("contract halt"))
    first = rec.run(daily(rec))
    assert [r.name for r in failed(first)] == ["score"]
    rec.calls.clear()
    second = rec.run(daily(rec))  # the data was fixed: the failure is used up
    assert not failed(second) and second["score"].attempts == 1
    assert rec.calls == ["bronze", "silver", "gold", "score", "monitor", "kpis", "rescore"]
    assert second["train"].status == "skipped" and second["rescore"].status == "succeeded"


def test_summary_lists_every_task() -> None:
    results: dict[str, Any] = {"a": TaskResult("a", "succeeded", 1, 3, None, 1.24, None)}
    assert summary(results).splitlines() == [
        "task  status          attempts  seconds  detail",
        "a     succeeded              1      1.2"]


def test_the_workflow_retries_only_what_is_transient() -> None:
    from pyspark.errors import AnalysisException, NumberFormatException

    from lakehouse import workflow
    from lakehouse.session import ClassicSparkRequiredError
    from lakehouse.training import TrainingDataError

    permanent = [AnalysisException(message="[TABLE_OR_VIEW_NOT_FOUND] silver.flights"),
                 NumberFormatException(message="[CAST_INVALID_INPUT] 'x' cannot be cast"),
                 TrainingDataError("the holdout window has no labeled flight"),
                 RuntimeError("io.delta.exceptions.ConcurrentTransactionException: ..."),
                 # Delta's conflict as PySpark shows it: the class, then its error class
                 RuntimeError("io.delta.exceptions.ConcurrentAppendException: "
                              "[DELTA_CONCURRENT_APPEND.WITHOUT_HINT] ConcurrentAppendException: "
                              "Files were added to the root of the table by a concurrent "
                              "update. Please try the operation again."),
                 RuntimeError("io.delta.exceptions.MetadataChangedException: "
                              "[DELTA_METADATA_CHANGED] MetadataChangedException: The metadata "
                              "of the Delta table has been changed by a concurrent update.")]
    permanent += [RuntimeError("[CONCURRENT_QUERY] Another instance of this query was just "
                               "started by a concurrent session."),
                  RuntimeError("java.util.ConcurrentModificationException: Multiple streaming "
                               "queries are concurrently using file:/checkpoint/offsets"),
                  # a Spark Connect session: the next try has the same session
                  ClassicSparkRequiredError("the bronze job needs classic Spark")]
    transient = [OSError("Connection reset by peer"),
                 RuntimeError("Job aborted due to stage failure: ExecutorLostFailure"),
                 # a JVM collection modified while iterated: a race inside Spark, not a writer
                 RuntimeError("An error occurred while calling o123.collectToPython.\n: "
                              "java.util.ConcurrentModificationException\n\tat java.base/"
                              "java.util.HashMap$HashIterator.nextNode(HashMap.java:1605)")]
    assert [workflow.is_permanent(e) for e in permanent] == [True] * len(permanent)
    assert [workflow.is_permanent(e) for e in transient] == [False] * len(transient)


@pytest.mark.parametrize("batched", [False, True])
def test_an_audit_write_that_fails_does_not_hide_the_jobs_own_error(
        batched: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The job's error decides whether the workflow retries it (a contract halt is not
    retried): an audit table that cannot be written after it is logged, not raised instead."""
    from lakehouse.contracts import ContractViolation
    from lakehouse.stages import audit

    written: list[list[dict[str, Any]]] = []

    def unwritable(spark: Any, config: Any, rows: list[dict[str, Any]]) -> None:
        written.append(list(rows))
        raise OSError("audit table unreachable")

    monkeypatch.setattr("lakehouse.tables.write_audit", unwritable)
    halt = ContractViolation("silver_flights: 3 rows break dep_time_valid")
    with caplog.at_level(logging.ERROR, logger="lakehouse"), pytest.raises(ContractViolation):
        if batched:
            with audit.audit_batch(None, None) as batch:  # type: ignore[arg-type]
                with audit.audited(None, None, "r1", "silver", "silver_flights",  # type: ignore[arg-type]
                                   batch=batch):
                    raise halt
        else:
            with audit.audited(None, None, "r1", "silver", "silver_flights"):  # type: ignore[arg-type]
                raise halt
    assert [[(r["status"], r["table_name"]) for r in rows] for rows in written] == [
        [("failed", "silver_flights")]]
    assert "audit rows of a failed run could not be written" in caplog.text
    # a run that succeeded still fails when its audit row cannot be written
    with pytest.raises(OSError, match="audit table unreachable"):
        with audit.audited(None, None, "r2", "silver", "silver_flights"):  # type: ignore[arg-type]
            pass


def test_the_alerts_a_retraining_answered_are_closed_despite_a_transient_failure(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The train task is not retried (a retry would register a second version), so closing
    the alerts its model answered is retried on its own: left open, the next run would find
    retraining due again and train and register another version."""
    from lakehouse import workflow
    from lakehouse.config import load_config
    from lakehouse.stages import monitor, train

    config = load_config("local", overrides={"data_root": str(tmp_path),
                                             "workflow": {"backoff_seconds": 7}})
    monkeypatch.setattr(workflow, "champion_exists", lambda config: True)
    waits: list[float] = []  # what the retry of closing the alerts waited (the conf's backoff)
    monkeypatch.setattr(workflow, "run_dag", lambda *args, **kwargs: run_dag(
        *args, **kwargs, sleep=waits.append))
    monkeypatch.setattr(workflow, "resolved", lambda spark, config, dates: dates)
    monkeypatch.setattr(monitor, "current_champion", lambda config: ("m", "1"))
    monkeypatch.setattr(monitor, "retraining_due", lambda *args: monitor.RetrainingDue(
        True, "1 open alert(s): a1", ("a1", "a0")))
    trained: list[dict[str, Any]] = []

    def fit(spark: Any, config: Any, run_id: str, **kwargs: Any) -> dict[str, Any]:
        trained.append(kwargs)
        kwargs["on_decided"]("mlflow-run-1")  # the gate set the alias
        if len(trained) == 2:
            raise OSError("the audit append failed")  # after the decision: not retried
        return {"run_id": "mlflow-run-1", "promoted": False}

    closed: list[tuple[Any, ...]] = []

    def mark_handled(spark: Any, config: Any, ids: tuple[str, ...], run_id: str,
                     day: Any) -> None:
        closed.append((ids, run_id, day.isoformat()))
        if len(closed) == 1:
            raise OSError("storage throttled")

    monkeypatch.setattr(train, "run", fit)
    monkeypatch.setattr(monitor, "mark_handled", mark_handled)
    tasks = workflow.daily_tasks(None, config, "r1",  # type: ignore[arg-type]
                                 ("2013-11-01", "2013-11-30"), ("train",), "auto", False)
    results = run_dag(tasks, workflow.is_permanent, sleep=lambda s: None)
    assert statuses(results) == {"train": "succeeded", "rescore": "skipped"}
    assert len(trained) == 1 and trained[0]["windows"].holdout_to == "2013-11-29"
    assert trained[0]["version_tags"] == {workflow.ANSWERS_TAG: "a1,a0",
                                          workflow.ANSWERED_ON_TAG: "2013-11-30"}
    assert closed == [(("a1", "a0"), "mlflow-run-1", "2013-11-30")] * 2
    assert waits == [7.0]
    # a failure after the gate decided (the audit append) fails the task, but the alerts its
    # registered model answered are closed: the next run does not train another version
    closed.clear()
    closed.append(("an earlier call",))  # no transient failure this time
    results = run_dag(workflow.daily_tasks(None, config, "r2",  # type: ignore[arg-type]
                                           ("2013-11-01", "2013-11-30"), ("train",), "auto",
                                           False), workflow.is_permanent, sleep=lambda s: None)
    assert statuses(results) == {"train": "failed", "rescore": "upstream_failed"}
    assert len(trained) == 2 and closed[1:] == [(("a1", "a0"), "mlflow-run-1", "2013-11-30")]
    # closing them failing on every retry: the error says which alerts are left open, and how
    # to close them by hand (train.run adds the version it registered: test_training)
    monkeypatch.setattr(monitor, "mark_handled", lambda *args: (_ for _ in ()).throw(
        OSError("storage down")))
    results = run_dag(workflow.daily_tasks(None, config, "r3",  # type: ignore[arg-type]
                                           ("2013-11-01", "2013-11-30"), ("train",), "auto",
                                           False), workflow.is_permanent, sleep=lambda s: None)
    assert statuses(results)["train"] == "failed" and len(trained) == 3
    assert str(results["train"].error).startswith(
        "closing the alerts a1, a0 in ") and "failed (storage down); set their handled_by_run " \
        "to 'mlflow-run-1' and handled_on to 2013-11-30" in str(results["train"].error)


def test_the_retry_policy_comes_from_conf_and_a_bad_value_is_named(tmp_path: Any) -> None:
    from lakehouse.config import ConfigError, load_config
    from lakehouse.workflow import RetryPolicy

    def policy(**workflow: Any) -> RetryPolicy:
        return RetryPolicy(load_config("local", overrides={"data_root": str(tmp_path),
                                                           "workflow": workflow}))

    default = policy()
    assert (default.retries, [default.backoff_s(n) for n in range(3)]) == (1, [1.0, 2.0, 4.0])
    mine = policy(retries=0, backoff_seconds=30)
    assert (mine.retries, mine.backoff_s(1)) == (0, 60.0)
    for key, bad in (("retries", -1), ("retries", "2"), ("backoff_seconds", 0),
                     ("backoff_seconds", "5s")):
        with pytest.raises(ConfigError, match=f"workflow.{key}"):
            policy(**{key: bad})


def test_a_forced_training_answers_the_open_alerts_as_a_retraining_would(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--train always` with a champion: while alerts of the retraining kind are open (here
    rate-limited) it trains on the recent labeled window and closes them, else the next
    `auto` run would find retraining due and register another version; with none open it
    trains on conf's windows and closes nothing."""
    from lakehouse import workflow
    from lakehouse.config import load_config
    from lakehouse.stages import monitor, train

    config = load_config("local", overrides={"data_root": str(tmp_path)})
    monkeypatch.setattr(workflow, "champion_exists", lambda config: True)
    monkeypatch.setattr(workflow, "resolved", lambda spark, config, dates: dates)
    monkeypatch.setattr(monitor, "current_champion", lambda config: ("m", "1"))
    trained: list[dict[str, Any]] = []
    closed: list[tuple[str, ...]] = []
    monkeypatch.setattr(train, "run", lambda spark, config, run_id, **kwargs: (
        trained.append(kwargs) or ("on_decided" in kwargs and kwargs["on_decided"]("run-1"))
        or {"run_id": "mlflow-run-1", "promoted": False}))
    monkeypatch.setattr(monitor, "mark_handled",
                        lambda spark, config, ids, run_id, day: closed.append(ids))
    for due, windows, answered in (
            (monitor.RetrainingDue(False, "rate-limited: last retraining on 2013-11-20",
                                   ("a1",)), True, [("a1",)]),
            (monitor.RetrainingDue(False, "no open alert of the retraining kind"), False, [])):
        trained.clear()
        closed.clear()
        monkeypatch.setattr(monitor, "retraining_due", lambda *args, due=due: due)
        tasks = workflow.daily_tasks(None, config, "r1",  # type: ignore[arg-type]
                                     ("2013-11-01", "2013-11-30"), ("train",), "always", False)
        results = run_dag(tasks, workflow.is_permanent, sleep=lambda s: None)
        assert statuses(results) == {"train": "succeeded", "rescore": "skipped"}
        assert len(trained) == 1 and ("windows" in trained[0]) == windows
        assert closed == answered
        if answered:  # the record says it was forced, not that it was not due
            assert results["train"].result["trigger"].startswith(
                "forced (--train always), answering 1 open alert(s) (rate-limited")


def test_alerts_a_registered_retraining_failed_to_close_are_closed_by_the_next_run(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A retraining whose model was kept as @challenger but whose closing of the alerts failed
    on every retry: the next run finds them answered by that version's tags and closes them
    (with its run and day) instead of training and registering another version; an alert
    raised since still makes retraining due."""
    from types import SimpleNamespace

    from lakehouse import registry, workflow
    from lakehouse.config import load_config
    from lakehouse.stages import monitor, train

    config = load_config("local", overrides={"data_root": str(tmp_path)})
    monkeypatch.setattr(workflow, "champion_exists", lambda config: True)
    monkeypatch.setattr(workflow, "resolved", lambda spark, config, dates: dates)
    monkeypatch.setattr(monitor, "current_champion", lambda config: ("m", "1"))
    challenger = SimpleNamespace(version="7", run_id="run-7", tags={
        workflow.ANSWERS_TAG: "a1,a0", workflow.ANSWERED_ON_TAG: "2013-11-28"})
    monkeypatch.setattr(registry, "resolve", lambda name, alias: (
        challenger if alias == registry.CHALLENGER else None))
    for open_ids, trains in ((("a1", "a0"), False), (("a1", "a2"), True)):
        closed: list[tuple[Any, ...]] = []
        trained: list[dict[str, Any]] = []

        def due(*args: Any, open_ids: tuple[str, ...] = open_ids,
                closed: list[tuple[Any, ...]] = closed) -> monitor.RetrainingDue:
            still = tuple(i for i in open_ids if not any(i in c[0] for c in closed))
            return monitor.RetrainingDue(bool(still), f"{len(still)} open alert(s)", still)

        monkeypatch.setattr(monitor, "retraining_due", due)
        monkeypatch.setattr(monitor, "mark_handled", lambda spark, config, ids, run_id, day,
                            closed=closed: closed.append((ids, run_id, day.isoformat())))
        monkeypatch.setattr(train, "run", lambda spark, config, run_id, trained=trained,
                            **kwargs: trained.append(kwargs) or kwargs["on_decided"]("run-8")
                            or {"run_id": "run-8", "promoted": False})
        tasks = workflow.daily_tasks(None, config, "r1",  # type: ignore[arg-type]
                                     ("2013-11-01", "2013-11-30"), ("train",), "auto", False)
        results = run_dag(tasks, workflow.is_permanent, sleep=lambda s: None)
        assert closed[0] == (("a1",) if trains else ("a1", "a0"), "run-7", "2013-11-28")
        assert (len(trained) == 1) == trains
        assert statuses(results)["train"] == ("succeeded" if trains else "skipped")
        if trains:  # a2, raised since, is answered by the new retraining
            assert closed[1] == (("a2",), "run-8", "2013-11-30")
    # a version registered by an earlier release carries the dotted keys, still read
    challenger.tags = {"lakehouse.answers_alerts": "a1,a0", "lakehouse.answered_on": "2013-11-28"}
    from datetime import date

    assert workflow.answered_by_challenger(config, ("a0", "a5")) == (
        "7", "run-7", ("a0",), date(2013, 11, 28))
    assert all("." not in key for key in (workflow.ANSWERS_TAG, workflow.ANSWERED_ON_TAG))
