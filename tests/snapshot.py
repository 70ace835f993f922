"""Table contents to compare across runs: what the data says, not when or where it was written.

Columns that record when a row was written or by which run are left out; a landed file's path
is cut to its name (runs compared here read copies of one landing zone).
"""

from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.config import Config

WHEN_OR_WHICH_RUN = ("_ingested_at", "_run_id", "_batch_id", "scored_at", "quarantined_at",
                     "model_run_id", "features_version")
CONTENT_TABLES = ("bronze_flights", "bronze_weather", "bronze_planes", "bronze_airports",
                  "bronze_airlines", "silver_flights", "silver_weather", "silver_planes",
                  "silver_airports", "silver_airlines", "quarantine", "flight_features",
                  "route_daily_kpis", "delay_predictions")
# The audit row of a table in a run, less its run id, times and durations.
AUDIT_CONTENT = ("job", "table_name", "status", "files", "rows_landed", "rows_in", "rows_out",
                 "rows_corrupt", "rows_quarantined", "rows_duplicate", "version_read",
                 "version_written")


def rows(spark: SparkSession, config: Config, name: str) -> list[Row]:
    """The table's rows, sorted, without run-specific columns."""
    df = tables.read(spark, config, name)
    df = df.drop(*[c for c in WHEN_OR_WHICH_RUN if c in df.columns])
    if "_source_file" in df.columns:
        df = df.withColumn("_source_file", F.element_at(F.split("_source_file", "/"), -1))
    return sorted(df.collect(), key=lambda r: [str(v) for v in r])


def content(spark: SparkSession, config: Config,
            names: Iterable[str] = CONTENT_TABLES) -> dict[str, list[Row]]:
    """Rows of each named table that exists (an absent table maps to None)."""
    return {name: rows(spark, config, name) if tables.exists(spark, config, name) else None
            for name in names}


def audit(spark: SparkSession, config: Config) -> list[tuple]:
    """The audit rows of every run, in order, as (job, table, status, counts, versions)."""
    present = [c for c in AUDIT_CONTENT if c in tables.read(spark, config, "audit").columns]
    return sorted(tuple(r) for r in tables.read(spark, config, "audit").select(*present)
                  .collect())
