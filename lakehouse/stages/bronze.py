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
    SOURCE_COLUMNS,
    check_accounting,
    file_name,
    header_drift,
    per_file_counts,
    raw_schema,
    with_lineage,
)
from lakehouse.config import Config
from lakehouse.seed import SNAPSHOT_SOURCES
from lakehouse.stages.audit import audited


def empty_counts() -> dict[str, Any]:
    return {"files": 0, "rows": 0, "corrupt": 0, "landed": 0, "drift": []}


def account_batch(spark: SparkSession, rows: DataFrame, source: str, fmt: str,
                  totals: dict[str, Any]) -> bool:
    """Check landed lines against records per file, note header drift, add to totals.

    Returns whether the batch holds any record. Raises BronzeAccountingError before anything
    is written when a file's lines and records disagree.
    """
    counts = per_file_counts(rows)
    files = [f for f, _, _ in counts]
    profile = tables.landed_lines(spark, files, header=fmt == "csv")
    landed = {f: lines for f, (lines, _) in profile.items()}
    check_accounting({f: n for f, n, _ in counts}, landed)
    if fmt == "csv":
        for f, (_, first) in sorted(profile.items()):
            drift = header_drift(first, SOURCE_COLUMNS[source])
            if drift:
                totals["drift"].append(f"{f.rsplit('/', 1)[-1]}: {drift}")
    totals["files"] += len(files)
    totals["rows"] += sum(n for _, n, _ in counts)
    totals["corrupt"] += sum(c for _, _, c in counts)
    totals["landed"] += sum(landed.values())
    return bool(files)


def ingest_daily(spark: SparkSession, config: Config, source: str, run_id: str) -> dict[str, Any]:
    """Append the files landed since the last run to bronze_<source>; return the counts.

    The stream's checkpoint remembers which files were read; each micro-batch is written with
    txnAppId/txnVersion, so a batch replayed after a crash is not appended twice.
    """
    table = f"bronze_{source}"
    totals = empty_counts()
    app_id = f"lakehouse-{table}"
    fmt = DAILY_FORMATS[source]

    def write_batch(batch: DataFrame, batch_id: int) -> None:
        rows = batch.transform(with_lineage(run_id, batch_id)).persist()
        try:
            if account_batch(spark, rows, source, fmt, totals):
                tables.append(rows, config, table, txn=(app_id, batch_id))
        finally:
            rows.unpersist()

    folder = os.path.join(config.landing, source)
    os.makedirs(folder, exist_ok=True)
    stream = tables.read_landing_stream(spark, folder, fmt, raw_schema(source), CORRUPT_COLUMN)
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
    totals = empty_counts()
    if latest is None:
        return totals
    if tables.exists(spark, config, table):
        loaded = tables.read(spark, config, table).select(file_name(F.col("_source_file"))).first()
        if loaded is not None and loaded[0] == os.path.basename(latest):
            return totals
    rows = (tables.read_landing_csv(spark, latest, raw_schema(source), CORRUPT_COLUMN)
            .transform(with_lineage(run_id, 0)).persist())
    try:
        account_batch(spark, rows, source, "csv", totals)
        tables.overwrite(rows, config, table)
    finally:
        rows.unpersist()
    return totals


def run(spark: SparkSession, config: Config, run_id: str) -> list[dict[str, Any]]:
    """Ingest every source; one audit row per bronze table."""
    results = []
    for source in (*SNAPSHOT_SOURCES, *DAILY_FORMATS):
        table = f"bronze_{source}"
        with audited(spark, config, run_id, "bronze", table) as audit:
            ingest = ingest_snapshot if source in SNAPSHOT_SOURCES else ingest_daily
            counts = ingest(spark, config, source, run_id)
            audit.update(files=counts["files"], rows_landed=counts["landed"],
                         rows_in=counts["rows"], rows_out=counts["rows"],
                         rows_corrupt=counts["corrupt"],
                         version_written=tables.version(spark, config, table))
            if counts["drift"]:
                audit["message"] = "schema drift: " + "; ".join(counts["drift"])[:1900]
            results.append(dict(audit))
    return results
