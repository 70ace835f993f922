"""Timing and recording of one audit row per table per job run.

A job that audits several tables collects their rows in one `audit_batch` and appends them in a
single Delta commit when it ends, failed or not (one commit per table cost ~0.5 s each)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession

from lakehouse import tables
from lakehouse.config import Config

log = logging.getLogger("lakehouse")


@contextmanager
def audit_batch(spark: SparkSession, config: Config) -> Iterator[list[dict[str, Any]]]:
    """Yield a list that `audited(..., batch=...)` fills; append its rows on exit, failed or
    not (list.append is atomic: threads may share one batch)."""
    rows: list[dict[str, Any]] = []
    try:
        yield rows
    except BaseException:
        _write_after_failure(spark, config, rows)
        raise
    tables.write_audit(spark, config, rows)


def _write_after_failure(spark: SparkSession, config: Config, rows: list[dict[str, Any]]) -> None:
    """Write the audit rows of a run that failed; an error writing them is logged, so the
    caller sees the run's own error (which decides whether it is retried), not the audit's."""
    try:
        tables.write_audit(spark, config, rows)
    except Exception:
        log.exception("the audit rows of a failed run could not be written: %s",
                      [(r.get("job"), r.get("table_name"), r.get("run_id")) for r in rows])


Started = tuple[datetime, float]  # the wall clock and time.monotonic() at a start


def started() -> Started:
    return datetime.now(UTC), time.monotonic()


@contextmanager
def audited(spark: SparkSession, config: Config, run_id: str, job: str,
            table_name: str, batch: list[dict[str, Any]] | None = None,
            since: Started | None = None) -> Iterator[dict[str, Any]]:
    """Yield a dict to fill with counts; on exit, failed or not, append it to the audit table
    (or to batch, written when the batch ends). since: when the work began, if before."""
    since = since or started()
    row: dict[str, Any] = {"run_id": run_id, "job": job, "table_name": table_name,
                           "started_at": since[0]}
    start = since[1]
    try:
        yield row
        row.setdefault("status", "succeeded")
    except BaseException as error:
        row["status"] = "failed"
        # the error first, then what the job noted before it failed
        noted = f" | {row['message']}" if row.get("message") else ""
        row["message"] = (f"{type(error).__name__}: {error}"[:2000 - min(len(noted), 1000)]
                          + noted)[:2000]
        row["duration_s"] = round(time.monotonic() - start, 3)
        if batch is None:
            _write_after_failure(spark, config, [row])
        else:
            batch.append(row)
        raise
    row["duration_s"] = round(time.monotonic() - start, 3)
    if batch is None:
        tables.write_audit(spark, config, [row])
    else:
        batch.append(row)


def audit_failure(spark: SparkSession, config: Config, run_id: str, job: str,
                  table_names: Any, error: Exception, batch: list[dict[str, Any]],
                  since: Started) -> None:
    """One failed row per table in batch for an error raised before the tables' own audited
    work began (a job's shared preparation, begun at since): the run is recorded, not only
    logged."""
    for name in table_names:
        try:
            with audited(spark, config, run_id, job, name, batch, since):
                raise error
        except Exception as raised:
            if raised is not error:
                raise
