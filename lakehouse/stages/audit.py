"""Timing and recording of one audit row per table per job run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession

from lakehouse import tables
from lakehouse.config import Config


@contextmanager
def audited(spark: SparkSession, config: Config, run_id: str, job: str,
            table_name: str) -> Iterator[dict[str, Any]]:
    """Yield a dict to fill with counts; append it to the audit table on exit, failed or not."""
    row: dict[str, Any] = {"run_id": run_id, "job": job, "table_name": table_name,
                           "started_at": datetime.now(UTC)}
    start = time.monotonic()
    try:
        yield row
        row.setdefault("status", "succeeded")
    except BaseException as error:
        row["status"] = "failed"
        row["message"] = f"{type(error).__name__}: {error}"[:2000]
        raise
    finally:
        row["duration_s"] = round(time.monotonic() - start, 3)
        tables.write_audit(spark, config, [row])
