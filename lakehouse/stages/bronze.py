"""Bronze stage: ingest newly landed files exactly once (Structured Streaming, availableNow)."""

from __future__ import annotations

import os
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.bronze import (
    CORRUPT_COLUMN,
    DAILY_FORMATS,
    batch_counts,
    file_name,
    raw_schema,
    with_lineage,
)
from lakehouse.config import Config
from lakehouse.seed import SNAPSHOT_SOURCES
from lakehouse.stages.audit import audited


def ingest_daily(spark: SparkSession, config: Config, source: str, run_id: str) -> dict[str, Any]:
    """Append the files landed since the last run to bronze_<source>; return the counts.

    The stream's checkpoint remembers which files were read; each micro-batch is written with
    txnAppId/txnVersion, so a batch replayed after a crash is not appended twice.
    """
    table = f"bronze_{source}"
    totals = {"files": 0, "rows": 0, "corrupt": 0}
    app_id = f"lakehouse-{table}"

    def write_batch(batch: DataFrame, batch_id: int) -> None:
        rows = batch.transform(with_lineage(run_id, batch_id)).persist()
        try:
            counts = batch_counts(rows)
            if counts["rows"]:
                tables.append(rows, config, table, txn=(app_id, batch_id))
            for key, value in counts.items():
                totals[key] += value
        finally:
            rows.unpersist()

    folder = os.path.join(config.landing, source)
    os.makedirs(folder, exist_ok=True)
    stream = tables.read_landing_stream(spark, folder, DAILY_FORMATS[source], raw_schema(source),
                                        CORRUPT_COLUMN)
    query = (stream.writeStream.foreachBatch(write_batch)
             .option("checkpointLocation", os.path.join(config.checkpoints, table))
             .trigger(availableNow=True).queryName(f"{table}_{run_id}")
             .start())
    query.awaitTermination()
    return totals


def ingest_snapshot(spark: SparkSession, config: Config, source: str,
                    run_id: str) -> dict[str, Any]:
    """Replace bronze_<source> with the newest landed snapshot, unless it is already loaded."""
    table = f"bronze_{source}"
    latest = tables.latest_file(os.path.join(config.landing, "reference", source), "*.csv")
    if latest is None:
        return {"files": 0, "rows": 0, "corrupt": 0}
    if tables.exists(spark, config, table):
        loaded = tables.read(spark, config, table).select(file_name(F.col("_source_file"))).first()
        if loaded is not None and loaded[0] == os.path.basename(latest):
            return {"files": 0, "rows": 0, "corrupt": 0}
    rows = (tables.read_landing_csv(spark, latest, raw_schema(source), CORRUPT_COLUMN)
            .transform(with_lineage(run_id, 0)).persist())
    try:
        counts = batch_counts(rows)
        tables.overwrite(rows, config, table)
    finally:
        rows.unpersist()
    return counts


def run(spark: SparkSession, config: Config, run_id: str) -> list[dict[str, Any]]:
    """Ingest every source; one audit row per bronze table."""
    results = []
    for source in (*SNAPSHOT_SOURCES, *DAILY_FORMATS):
        table = f"bronze_{source}"
        with audited(spark, config, run_id, "bronze", table) as audit:
            ingest = ingest_snapshot if source in SNAPSHOT_SOURCES else ingest_daily
            counts = ingest(spark, config, source, run_id)
            audit.update(files=counts["files"], rows_in=counts["rows"], rows_out=counts["rows"],
                         rows_corrupt=counts["corrupt"],
                         version_written=tables.version(spark, config, table))
            results.append(dict(audit))
    return results
