"""A small task runner for the daily workflow: dependencies, retries, skips, a status per task.

Tasks run one at a time in a deterministic topological order. A transient failure is retried
with backoff; a permanent one (bad data, a contract halt) is not. A failed task stops only its
transitive dependents; independent tasks still run, and nothing raises: the caller reads the
results. The runner keeps no state, so a rerun runs every task again (the jobs are idempotent)
and the one that failed gets its new chance. Production scheduling belongs to Databricks Jobs,
cron or Airflow calling the same jobs; this runner is for local runs and the replay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

__all__ = ["STATUSES", "DagError", "Task", "TaskResult", "failed", "order", "run_dag",
           "summary"]

log = logging.getLogger("lakehouse.dag")
STATUSES = ("succeeded", "failed", "skipped", "upstream_failed")


@dataclass(frozen=True)
class Task:
    """A unit of the workflow: what to run, what it waits for, retries and an optional skip."""

    name: str
    run: Callable[[], Any]
    depends_on: tuple[str, ...] = ()
    retries: int = 0
    # Given the results so far: None to run the task, or the reason to skip it.
    when: Callable[[dict[str, TaskResult]], str | None] | None = None
    # Retries of the condition (it may ask a registry or read a table); None: as the task's.
    # A task that must not be retried (it trains and registers) can still have its check
    # retried, since asking again repeats no work.
    when_retries: int | None = None


@dataclass
class TaskResult:
    """How a task ended: status, attempts, its return value or error, time and skip reason."""

    name: str
    status: str
    attempts: int
    result: Any
    error: BaseException | None
    seconds: float
    reason: str | None


class DagError(ValueError):
    """A workflow that cannot run: a duplicate task, an unknown dependency or a cycle."""


def _cycle(tasks: Mapping[str, Task]) -> list[str] | None:
    """One dependency cycle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "visiting" while on the current path, then "done"

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = "visiting"
        for dep in tasks[name].depends_on:
            if state.get(dep) == "visiting":
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[name] = "done"
        return None

    for name in tasks:
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def order(tasks: Sequence[Task]) -> list[Task]:
    """The tasks validated and in run order: each after its dependencies, ties by declaration.

    Args:
        tasks: the workflow's tasks, in declaration order.

    Returns:
        The same tasks in the order run_dag runs them.
    """
    by_name: dict[str, Task] = {}
    for task in tasks:
        if task.name in by_name:
            raise DagError(f"task {task.name!r} is declared twice")
        if task.retries < 0 or (task.when_retries or 0) < 0:
            raise DagError(f"task {task.name!r}: retries must be >= 0, got {task.retries} "
                           f"(condition: {task.when_retries})")
        by_name[task.name] = task
    unknown = {t.name: [d for d in t.depends_on if d not in by_name] for t in tasks}
    unknown = {name: deps for name, deps in unknown.items() if deps}
    if unknown:
        raise DagError(f"unknown dependencies {unknown} (task: missing tasks); the tasks are "
                       f"{list(by_name)}")
    cycle = _cycle(by_name)
    if cycle:
        raise DagError(f"dependency cycle: {' -> '.join(cycle)}")
    ordered: list[Task] = []
    done: set[str] = set()
    while len(ordered) < len(tasks):
        ready = next(t for t in tasks if t.name not in done and set(t.depends_on) <= done)
        ordered.append(ready)
        done.add(ready.name)
    return ordered


def _attempts(name: str, call: Callable[[], Any], retries: int,
              is_permanent: Callable[[BaseException], bool], backoff_s: Callable[[int], float],
              sleep: Callable[[float], Any]) -> tuple[str, int, Any, Exception | None]:
    """Call with retries: status, attempts made, return value, last error."""
    for attempt in range(retries + 1):
        try:
            return "succeeded", attempt + 1, call(), None
        except Exception as error:
            if is_permanent(error) or attempt == retries:
                kind = "permanent" if is_permanent(error) else "transient, no retry left"
                log.error("task %s: attempt %d failed (%s): %r", name, attempt + 1, kind,
                          error, exc_info=error)
                return "failed", attempt + 1, None, error
            wait = backoff_s(attempt)
            log.warning("task %s: attempt %d of %d failed (%r); retrying in %.1f s", name,
                        attempt + 1, retries + 1, error, wait)
            sleep(wait)
    raise AssertionError("unreachable: the last attempt returns")


def run_dag(tasks: Sequence[Task], is_permanent: Callable[[BaseException], bool],
            backoff_s: Callable[[int], float] = lambda attempt: 2 ** attempt,
            sleep: Callable[[float], Any] = time.sleep) -> dict[str, TaskResult]:
    """Run the tasks in dependency order; a failure stops only its dependents and never raises.

    Args:
        tasks: the workflow's tasks, in declaration order (the tie-break among ready tasks).
        is_permanent: whether an error cannot be cured by retrying (a data error, a halt).
        backoff_s: seconds to wait after failed attempt n (counted from 0) before the next.
        sleep: how to wait (injected in tests).

    Returns:
        TaskResult by task name, in run order; every task has one.
    """
    results: dict[str, TaskResult] = {}
    for task in order(tasks):
        stopped = [d for d in task.depends_on if results[d].status in ("failed",
                                                                         "upstream_failed")]
        if stopped:
            results[task.name] = TaskResult(task.name, "upstream_failed", 0, None, None, 0.0,
                                            f"upstream failed: {', '.join(stopped)}")
            log.warning("task %s: upstream_failed (%s)", task.name, ", ".join(stopped))
            continue
        started = time.monotonic()
        reason = None
        if task.when is not None:
            # a condition may ask the registry or a table: retried for transient errors too
            retries = task.retries if task.when_retries is None else task.when_retries
            status, tries, reason, error = _attempts(f"{task.name} (condition)",
                                                     partial(task.when, dict(results)), retries,
                                                     is_permanent, backoff_s, sleep)
            if status == "failed":
                results[task.name] = TaskResult(task.name, "failed", tries, None, error,
                                                time.monotonic() - started,
                                                f"condition failed after {tries} attempt(s)")
                continue
        if reason is not None:
            results[task.name] = TaskResult(task.name, "skipped", 0, None, None, 0.0, reason)
            log.info("task %s: skipped (%s)", task.name, reason)
            continue
        log.info("task %s: starting", task.name)
        status, attempts, value, last_error = _attempts(task.name, task.run, task.retries,
                                                        is_permanent, backoff_s, sleep)
        seconds = time.monotonic() - started
        results[task.name] = TaskResult(task.name, status, attempts, value, last_error, seconds,
                                        None)
        log.log(logging.INFO if status == "succeeded" else logging.ERROR,
                "task %s: %s in %.1f s (%d attempt%s)", task.name, status, seconds, attempts,
                "" if attempts == 1 else "s")
    return results


def failed(results: Mapping[str, TaskResult]) -> list[TaskResult]:
    """The tasks that failed themselves (not those stopped by an upstream failure).

    Args:
        results: run_dag's results.

    Returns:
        The failed TaskResults, in run order.
    """
    return [r for r in results.values() if r.status == "failed"]


def summary(results: Mapping[str, TaskResult] | Iterable[TaskResult]) -> str:
    """A per-task status table: task, status, attempts, seconds, and the reason or error.

    Args:
        results: run_dag's results (or the TaskResults themselves).

    Returns:
        The table as text, one line per task in run order.
    """
    rows = list(results.values()) if isinstance(results, Mapping) else list(results)
    width = max([len("task"), *(len(r.name) for r in rows)])
    lines = [f"{'task':<{width}}  {'status':<15} {'attempts':>8} {'seconds':>8}  detail"]
    for r in rows:
        error = f"{type(r.error).__name__}: {r.error}" if r.error else ""
        detail = ": ".join(part for part in (r.reason, error) if part)
        lines.append(f"{r.name:<{width}}  {r.status:<15} {r.attempts:>8} {r.seconds:>8.1f}  "
                     f"{detail}".rstrip())
    return "\n".join(lines)
