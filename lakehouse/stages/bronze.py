"""Bronze stage: ingest newly landed files exactly once (a file ledger per table)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.bronze import (
    CORRUPT_COLUMN,
    DAILY_FORMATS,
    SOURCE_COLUMNS,
    BronzeAccountingError,
    base_name,
    check_accounting,
    file_name,
    header_drift,
    raw_schema,
    records_per_file,
    with_lineage,
)
from lakehouse.config import Config
from lakehouse.ledger import Batch, FileLedger, LandedFile, LedgerError
from lakehouse.seed import SNAPSHOT_SOURCES
from lakehouse.stages.audit import audited

# Bronze is raw text read whole by the silver stream: min/max statistics on it would cost
# every append and never skip a file.
BRONZE_PROPERTIES = {"delta.dataSkippingNumIndexedCols": "0"}


def empty_counts() -> dict[str, Any]:
    return {"files": 0, "rows": 0, "corrupt": 0, "landed": 0, "drift": [], "replayed": [],
            "changed": [], "gone": [], "gone_committed": False}


def write_accounted(spark: SparkSession, rows: DataFrame, files: list[str], source: str,
                    totals: dict[str, Any], write: Callable[[DataFrame], None],
                    replayed: bool = False) -> None:
    """Write a batch of landed files in one pass and account for every landed line.

    The landed lines of the batch's files are counted first (header drift noted); the records
    are counted by an observation on the write itself, so the files are parsed once. When the
    counts differ, the run fails naming the files whose lines and records disagree: the check
    follows the commit, so the records read stay in bronze and the ledger leaves the batch
    open; a rerun replays the batch (replayed=True: it is not written again) and checks the
    files again, until they are mended.
    """
    table = f"bronze_{source}"
    fmt = DAILY_FORMATS.get(source, "csv")
    profile = tables.landed_lines(spark, files, header=fmt == "csv")
    landed = {f: n for f, (n, _) in profile.items()}
    if fmt == "csv":
        for f, (_, first) in sorted(profile.items()):
            drift = header_drift(first, SOURCE_COLUMNS[source])
            if drift:
                totals["drift"].append(f"{base_name(f)}: {drift}")
    totals["files"] += len(files)
    if not sum(landed.values()):
        return
    if replayed:  # an interrupted run committed this batch: check what it committed
        check_accounting(landed, records_per_file(rows))
        totals["replayed"].append(len(files))
        return
    observed = Observation(f"{table}-{uuid.uuid4().hex}")
    write(rows.observe(observed, F.count(F.lit(1)).alias("rows"),
                       F.count(CORRUPT_COLUMN).alias("corrupt")))
    metrics = observed.get
    if metrics["rows"] != sum(landed.values()):
        check_accounting(landed, records_per_file(rows))
        raise BronzeAccountingError(f"{table}: {sum(landed.values())} lines landed, "
                                    f"{metrics['rows']} records written")
    totals["rows"] += metrics["rows"]
    totals["corrupt"] += metrics["corrupt"]
    totals["landed"] += sum(landed.values())


def committed(spark: SparkSession, config: Config, table: str, ledger: str, batch_id: int) -> bool:
    """Whether the newest commit made through this table's ledger is this batch: the run that
    planned it crashed after the Delta commit and before the ledger marked it done.

    The guarantee of Delta's txnAppId/txnVersion, read from the commits' userMetadata: bronze
    has one ledger per table, so the newest commit made through a ledger answers (other
    commits, e.g. OPTIMIZE, are stepped over). txn options cost ~0.4 s per append here: Delta
    rebuilds its state to find the app's version.
    """
    for tag in tables.commit_tags(spark, config, table):
        if tag and tag.startswith("ledger "):  # the newest commit made through a ledger
            return tag.split()[1:4] == [ledger, "batch", str(batch_id)]
    return False


def ingest_daily(spark: SparkSession, config: Config, source: str, run_id: str) -> dict[str, Any]:
    """Append the files landed since the last run to bronze_<source>; return the counts.

    The table's file ledger remembers which files were read. Each batch is planned in the
    ledger before it is read and its Delta commit is tagged with the ledger and batch, so a
    batch an interrupted run left open is taken again first and is not appended twice.
    """
    table = f"bronze_{source}"
    totals = empty_counts()
    ledger = FileLedger(spark, os.path.join(config.checkpoints, table, "ledger"))
    if ledger.empty and tables.exists(spark, config, table):
        raise LedgerError(
            f"{table} exists but its file ledger {ledger.folder} is empty (deleted, or the "
            "table was written by an earlier version that read landed files as a stream): "
            f"reading the landing zone would append every file again. Restore the ledger, or "
            f"move {table} aside to ingest the landing zone from scratch.")

    def ingest(batch: Batch, replayed: bool, gone: frozenset[str] = frozenset()) -> None:
        paths = [p for p in batch.paths if p not in gone]
        if paths:
            tag = f"ledger {ledger.id} batch {batch.id} run {run_id}"
            rows = tables.read_landing(spark, paths, DAILY_FORMATS[source],
                                       raw_schema(source), CORRUPT_COLUMN)
            write_accounted(spark, rows.transform(with_lineage(run_id, batch.id)), paths,
                            source, totals,
                            lambda rows: tables.append(rows, config, table, tag=tag,
                                                       properties=BRONZE_PROPERTIES),
                            replayed=replayed)
        ledger.done(batch)

    listing = [LandedFile(*f) for f in
               tables.list_files(spark, os.path.join(config.landing, source))]
    if ledger.open is not None:  # left open by an interrupted run: take it again first
        replayed = committed(spark, config, table, ledger.id, ledger.open.id)
        gone = ledger.take_open(listing, replayed)
        totals["gone"] = [base_name(path) for path in gone]
        totals["gone_committed"] = replayed
        ingest(ledger.open, replayed, frozenset(gone))
    totals["changed"] = [base_name(f.path) for f in ledger.changed(listing)]
    while (batch := ledger.plan(listing)) is not None:
        ingest(batch, replayed=False)
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
        if loaded is not None and base_name(loaded[0]) == os.path.basename(latest):
            return totals
    files = [Path(latest).absolute().as_uri()]
    rows = (tables.read_landing(spark, files, "csv", raw_schema(source), CORRUPT_COLUMN)
            .transform(with_lineage(run_id, 0)))
    write_accounted(spark, rows, files, source, totals,
                    lambda df: tables.overwrite(df, config, table))
    return totals


def ingest_daily_sources(spark: SparkSession, config: Config, run_id: str,
                         ingest: Callable[[str], Any] | None = None) -> list[Any]:
    """Ingest the daily drops side by side, one thread per source: a new day's cost is mostly
    the fixed latency of a small read and Delta commit, which two threads overlap. Each source
    runs to its end; the first failure is raised after both."""
    ingest = ingest or (lambda source: ingest_daily(spark, config, source, run_id))
    with ThreadPoolExecutor(len(DAILY_FORMATS), thread_name_prefix="bronze") as pool:
        futures = [pool.submit(ingest, source) for source in DAILY_FORMATS]
    return [future.result() for future in futures]


def audit_notes(counts: dict[str, Any]) -> list[str]:
    """What the audit message says beside the counts: drift, files skipped or gone, replays."""
    notes = []
    if counts["drift"]:
        notes.append("schema drift: " + "; ".join(counts["drift"]))
    if counts["changed"]:
        notes.append(f"{len(counts['changed'])} file(s) changed after they were read, not read "
                     f"again: {', '.join(counts['changed'])}")
    if counts["gone"]:
        kept = ("committed before: their records stay in bronze" if counts["gone_committed"]
                else "not read")
        notes.append(f"{len(counts['gone'])} file(s) of a batch left open by an interrupted run "
                     f"were gone when it was taken again ({kept}): {', '.join(counts['gone'])}")
    if counts["replayed"]:
        notes.append(f"{len(counts['replayed'])} batch(es) of {sum(counts['replayed'])} files "
                     "already committed by an interrupted run: not written again")
    return notes


def run(spark: SparkSession, config: Config, run_id: str) -> list[dict[str, Any]]:
    """Ingest every source; one audit row per bronze table."""

    def ingest_audited(source: str) -> dict[str, Any]:
        table = f"bronze_{source}"
        with audited(spark, config, run_id, "bronze", table) as audit:
            ingest = ingest_snapshot if source in SNAPSHOT_SOURCES else ingest_daily
            counts = ingest(spark, config, source, run_id)
            audit.update(files=counts["files"], rows_landed=counts["landed"],
                         rows_in=counts["rows"], rows_out=counts["rows"],
                         rows_corrupt=counts["corrupt"],
                         version_written=tables.version(spark, config, table))
            notes = audit_notes(counts)
            if notes:
                audit["message"] = " | ".join(notes)[:1900]
            return dict(audit)

    # Snapshots first, one by one: they also create the audit table the daily threads append to.
    results = [ingest_audited(source) for source in SNAPSHOT_SOURCES]
    return results + ingest_daily_sources(spark, config, run_id, ingest_audited)
