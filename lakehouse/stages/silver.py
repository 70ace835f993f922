"""Silver stage: bronze rows to contract-checked silver tables, failing rows to quarantine."""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import threading
from collections.abc import Callable
from functools import reduce
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import is_remote

from lakehouse import tables
from lakehouse.bronze import CORRUPT_COLUMN
from lakehouse.config import Config, whole_number
from lakehouse.contracts import (
    Contract,
    ContractViolation,
    contracts,
    validate,
    with_rule_results,
)
from lakehouse.contracts.core import (
    FAILED_RULES,
    WARNED_RULES,
    ContractAnswers,
    ValidationReport,
    counts_of,
    kept,
    sample_keys,
    valid,
)
from lakehouse.seed import SNAPSHOT_SOURCES
from lakehouse.session import require_classic
from lakehouse.silver import (
    EVENT_TIME,
    LINEAGE,
    OUTCOME_KNOWN,
    OUTPUT,
    QUARANTINE_SCHEMA,
    RAW,
    REFERENCE_COLUMNS,
    SOURCE_MODIFIED,
    clean_weather,
    from_flight_events,
    parse_columns,
    to_quarantine,
    to_silver,
    with_flight_times,
    with_reference_columns,
    with_weather_time,
)
from lakehouse.stages.audit import audit_batch, audited

log = logging.getLogger("lakehouse")


def enforce_thresholds(contract: Contract, checked: DataFrame, counts: dict[str, int],
                       max_share: float, min_count: int = 1) -> None:
    """Halt the batch when a fail rule is broken or a rule quarantines too large a share of
    its rows, and at least min_count of them (a quiet events stream's micro-batch of a few
    events would otherwise halt on one bad event)."""
    total = max(counts["_rows"], 1)
    for rule in contract.rules:
        broken = counts[rule.name]
        too_many = (rule.action == "quarantine" and broken / total > max_share
                    and broken >= min_count)
        if broken and (rule.action == "fail" or too_many):
            keys = sample_keys(contract, checked, rule.name)
            raise ContractViolation(
                f"silver.{contract.table}: rule {rule.name!r} ({rule.description}) broken by "
                f"{broken} of {counts['_rows']} rows ({broken / total:.1%}, action {rule.action}, "
                f"max quarantine share {max_share:.1%}"
                f"{f', halting from {min_count} rows' if min_count > 1 else ''}); "
                f"sample keys: {keys}")


def enforce_batch_rules(contract: Contract, report: ValidationReport,
                        profile: dict[str, Any] | None = None) -> list[str]:
    """Raise on schema errors and broken fail-level batch rules (as pandera reported them),
    naming each rule with what was measured (profile: the batch's, when it has one).

    Returns the warn-level batch rules that failed (row rules are judged by their counts).
    """
    rules = {r.name: r for r in contract.batch_rules}
    broken = [n for n in report.failed_checks if n in rules and rules[n].action != "warn"]
    if report.schema_errors or broken:
        def named(name: str) -> str:
            rule = rules[name]
            measured = (profile or {}).get(f"_measure_{name}")
            found = (f": {rule.shown(*measured)}" if rule.shown is not None
                     and measured is not None else "")
            return f"rule {name!r} ({rule.description}) broken{found}"

        raise ContractViolation(f"silver.{contract.table}: contract broken: " + "; ".join(
            [*report.schema_errors, *(named(n) for n in broken)]) + "; nothing was written")
    return [n for n in report.failed_checks if n in rules]


def enrich(spark: SparkSession, config: Config, table: str) -> Callable[[DataFrame], DataFrame]:
    """The table-specific typing step (flights need airports and planes from silver)."""
    if table == "flights":
        return with_flight_times(tables.read(spark, config, "silver_airports"),
                                 tables.read(spark, config, "silver_planes"))
    if table == "weather":
        return with_weather_time
    return lambda df: df


def carried(table: str) -> Callable[[DataFrame], DataFrame]:
    """What a checked batch carries into its split: the silver table's columns (those its
    pandera model checks), lineage, the rule results, and the raw record (and corrupt text)
    of rows going to quarantine only. Measured by bench/silver.py: the narrower rows make the
    rank's shuffle and the materialized batch ~1 s cheaper on the full year of flights.
    """

    def transform(df: DataFrame) -> DataFrame:
        quarantined = ~valid()
        return df.select(*OUTPUT[table], *LINEAGE, SOURCE_MODIFIED, FAILED_RULES, WARNED_RULES,
                         F.when(quarantined, F.col(RAW)).alias(RAW),
                         F.when(quarantined, F.col(CORRUPT_COLUMN)).alias(CORRUPT_COLUMN))

    return transform


def materialized(df: DataFrame) -> DataFrame:
    """The frame computed once, at its first action, and its rows kept for the actions after.

    A local checkpoint keeps the rows as they are, on the executors; the columnar cache of
    persist() costs more to build and to read back when every column is read again (measured
    by bench/silver.py). The rows cannot be recomputed: a lost executor fails the batch, which
    a rerun replays (the silver stream's checkpoint has not moved).
    """
    return df.localCheckpoint(eager=False)


def release(df: DataFrame) -> None:
    """Drop the rows a materialized frame holds now, instead of when the JVM collects it.

    PySpark has no public call to unpersist a local checkpoint, so this reaches the JVM (the
    checkpointed RDD under the plan); a Spark Connect DataFrame has no JVM handle, and there
    the server frees the rows when the client's DataFrame is garbage-collected, so this does
    nothing."""
    # a Connect DataFrame raises PySparkAttributeError (an AttributeError) for _jdf
    jdf = None if is_remote() else getattr(df, "_jdf", None)
    if jdf is None:
        return
    jdf.queryExecution().analyzed().rdd().unpersist(False)


def refine_batch(spark: SparkSession, config: Config, contract: Contract, bronze_rows: DataFrame,
                 batch_id: int, stream: str | None = None) -> dict[str, Any]:
    """Type, check, split, deduplicate and write one bronze batch of a table.

    The typed batch, with the rules each row breaks and its rank within its natural key, is
    materialized once; one aggregation over it answers every count and every pandera check, and
    the writes read it back. Nothing is written unless the batch passes its contract. stream:
    the id of the streaming query whose micro-batch this is (its quarantine writes are
    idempotent per query and batch: a stream started afresh, on a new checkpoint, numbers its
    batches from 0 again under a new id), or of the snapshot a reference table is rebuilt from.
    (Observing
    the same profile while materializing, with no aggregation job, measured ~2 s slower on the
    full year of flights: CollectMetrics updates its ~40 aggregates row by row.)
    """
    table = contract.table
    settings = config.section("silver")
    checked = materialized(bronze_rows.transform(parse_columns(table))
                           .transform(enrich(spark, config, table))
                           .transform(with_rule_results(contract, carried(table))))
    try:
        answers = ContractAnswers(contract)
        report = validate(contract, checked, answers)
        # the profile pandera's checks computed (None when the batch lacks a column)
        profile = answers.profile(checked)
        batch_warnings = enforce_batch_rules(contract, report, profile)
        assert profile is not None  # a missing column is a schema error, raised above
        counts = counts_of(profile)
        enforce_thresholds(contract, checked, counts, float(settings["max_quarantine_share"]),
                           int(settings.get("min_quarantined_to_halt", 1)))
        rows = checked.filter(kept())
        if table == "weather":
            rows = rows.transform(clean_weather(float(settings["max_wind_speed_mph"]),
                                                float(settings["max_wind_gust_mph"])))
        silver_rows = rows.transform(to_silver(table))
        n_out = counts["_rows"] - counts["_quarantined"] - counts["_duplicates"]
        applied = n_out
        if table in SNAPSHOT_SOURCES:
            tables.overwrite(silver_rows, config, f"silver_{table}")
        else:
            merged = tables.merge(spark, silver_rows, config, f"silver_{table}", contract.keys,
                                  changed_columns=OUTPUT[table], newer=EVENT_TIME,
                                  known=OUTCOME_KNOWN.get(table))
            # what the MERGE itself wrote; the table's first write appends every row (and when
            # the MERGE returns no counts, none is claimed unwritten)
            if "numTargetRowsInserted" in merged:
                applied = (int(merged["numTargetRowsInserted"])
                           + int(merged.get("numTargetRowsUpdated", 0)))
        # After silver's write, which a replay repeats harmlessly: written first, the batch's
        # quarantine rows were kept by their txn when silver's write then failed, and a replay
        # judged against changed references (or rules) quarantining more rows skipped its
        # append as committed, those rows in neither table.
        if counts["_quarantined"]:
            quarantined = checked.filter(~valid()).transform(to_quarantine(table, FAILED_RULES))
            quarantined = not_yet_quarantined(spark, config, table, quarantined)
            tables.append(quarantined, config, "quarantine",
                          txn=(f"lakehouse-quarantine-{stream or table}", batch_id))
    finally:  # a halted batch releases its rows too
        release(checked)
    n_quarantined, duplicates = counts["_quarantined"], counts["_duplicates"]
    # rows_out passed the contract and went to silver's MERGE; of those, the ones it did not
    # write (an event older than the row silver holds, a row the same as it) are counted apart
    return {"rows_in": counts["_rows"], "rows_out": n_out,
            "rows_not_applied": max(n_out - applied, 0),
            "rows_quarantined": n_quarantined, "rows_duplicate": duplicates,
            "rows_warned": sum(counts[r.name] for r in contract.rules if r.action == "warn"),
            "batch_warnings": batch_warnings}


# What makes a quarantine row the same record judged the same way (run and time aside).
QUARANTINE_KEY = ("table_name", "source_file", "raw_record", "corrupt_record", "rules")


def not_yet_quarantined(spark: SparkSession, config: Config, table: str,
                        rows: DataFrame) -> DataFrame:
    """rows less those quarantine already holds (same table, file, record and rules): a
    silver stream started afresh on a new checkpoint reads bronze again from its start, and
    its batches' ids are new, so their idempotent appends would add every earlier bad record
    a second time. Identical records within one batch are all kept."""
    if not tables.exists(spark, config, "quarantine"):
        return rows
    held = (tables.read(spark, config, "quarantine").filter(F.col("table_name") == table)
            .select(*QUARANTINE_KEY).distinct().alias("q"))
    on = [F.col(f"r.{c}").eqNullSafe(F.col(f"q.{c}")) for c in QUARANTINE_KEY]
    return rows.alias("r").join(held, on, "left_anti")


def refine_snapshot(spark: SparkSession, config: Config, contract: Contract,
                    run_id: str) -> dict[str, Any]:
    """Rebuild a reference table from its bronze snapshot when bronze's rows changed since the
    version the last build read: not for commits that keep the rows (OPTIMIZE, VACUUM,
    properties: Databricks' predictive optimization makes them on its own), but for any other,
    a table recreated or restored to an earlier version included.

    The quarantine append is idempotent per snapshot (the landed files it was read from), not
    per bronze version: a rebuild of the same snapshot (after a restore, or a version bump)
    adds no duplicate, and a snapshot restored to an earlier version is not taken for one
    already written."""
    name = f"bronze_{contract.table}"
    bronze_version = tables.version(spark, config, name)
    done = last_version_read(spark, config, f"silver_{contract.table}")
    if bronze_version is None or bronze_version == done or (
            done is not None and tables.rows_unchanged(spark, config, name, done, bronze_version)):
        return {"rows_in": 0, "rows_out": 0, "version_read": done}
    bronze_rows = tables.read(spark, config, name, version=bronze_version)
    modified = (F.col(SOURCE_MODIFIED) if SOURCE_MODIFIED in bronze_rows.columns
                else F.lit(None))  # absent from tables written by earlier versions
    files = sorted(f"{r[0]}@{r[1]}" for r in bronze_rows.select(
        "_source_file", modified).distinct().collect())
    snapshot = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
    counts = refine_batch(spark, config, contract, bronze_rows, 0,
                          stream=f"{contract.table}-snapshot-{snapshot}")
    return {**counts, "version_read": bronze_version}


def recent_rows_per_file(spark: SparkSession, config: Config, exclude_run: str,
                         runs: int = 30) -> dict[str, float]:
    """Average records per landed file over the recent successful bronze runs, per source."""
    if not tables.exists(spark, config, "audit"):
        return {}
    recent = (tables.read(spark, config, "audit")
              .filter((F.col("job") == "bronze") & (F.col("status") == "succeeded")
                      & (F.col("files") > 0) & (F.col("run_id") != exclude_run))
              .orderBy(F.col("started_at").desc()).limit(runs * 5)
              .groupBy("table_name").agg((F.sum("rows_in") / F.sum("files")).alias("per_file"))
              .collect())
    return {r["table_name"].removeprefix("bronze_"): float(r["per_file"]) for r in recent}


def last_version_read(spark: SparkSession, config: Config, table: str) -> int | None:
    """The bronze version the last successful silver build of a table read."""
    if not tables.exists(spark, config, "audit"):
        return None
    row = (tables.read(spark, config, "audit")
           .filter((F.col("table_name") == table) & (F.col("status") == "succeeded")
                   & F.col("version_read").isNotNull())
           .orderBy(F.col("started_at").desc()).select("version_read").first())
    return None if row is None else int(row[0])


# Bronze tables of events that feed a silver table besides its landed files, and how their
# records become the bronze rows of that table.
EVENT_SOURCES: dict[str, tuple[str, Callable[[DataFrame], DataFrame]]] = {
    "flights": ("bronze_flight_events", from_flight_events),
}


def new_totals() -> dict[str, Any]:
    return {"rows_in": 0, "rows_out": 0, "rows_quarantined": 0, "rows_duplicate": 0,
            "rows_warned": 0, "rows_not_applied": 0, "batch_warnings": []}


def refine_stream(spark: SparkSession, config: Config, contract: Contract,
                  run_id: str, totals: dict[str, Any] | None = None) -> dict[str, Any]:
    """Process the bronze rows appended since the last run, one micro-batch at a time: the
    table's landed files, then its events (same contract, same quarantine). totals (new_totals)
    is added to as each micro-batch commits: after a failure it holds what was committed."""
    table = contract.table
    totals = new_totals() if totals is None else totals
    streams = [(f"bronze_{table}", f"silver_{table}", contract, lambda df: df)]
    if table in EVENT_SOURCES:
        bronze_table, as_rows = EVENT_SOURCES[table]
        # Each event is its own record: the rows-per-file rule does not apply.
        settings = {**config.section("silver"), "recent_rows_per_file": {}}
        streams.append((bronze_table, f"silver_{table}_from_{bronze_table}",
                        contracts(settings)[table], as_rows))
    for bronze_table, checkpoint, checked_by, as_rows in streams:
        if tables.exists(spark, config, bronze_table):
            refine_bronze(spark, config, checked_by, bronze_table, checkpoint, as_rows, totals)
    return totals


def refine_bronze(spark: SparkSession, config: Config, contract: Contract, bronze_table: str,
                  checkpoint: str, as_rows: Callable[[DataFrame], DataFrame],
                  totals: dict[str, Any]) -> None:
    failure: list[BaseException] = []
    query_id: list[str] = []
    started = threading.Event()

    def process(batch: DataFrame, batch_id: int) -> None:
        try:
            started.wait()  # the first batch can begin before start() returns the query
            for key, value in refine_batch(spark, config, contract, as_rows(batch),
                                           batch_id, query_id[0]).items():
                totals[key] += value
        except BaseException as error:  # keep the original error; Spark wraps it otherwise
            failure.append(error)
            raise

    source = tables.read_stream(spark, config, bronze_table, max_files_per_trigger=whole_number(
        config.section("silver"), "silver", "max_files_per_trigger", 1000))  # checked in
    # contracts (check_settings), before any table is written
    query = (source.writeStream.foreachBatch(process)
             .option("checkpointLocation", os.path.join(config.checkpoints, checkpoint))
             .trigger(availableNow=True).start())
    query_id.append(str(query.id))  # kept in the checkpoint: the same on every restart
    started.set()
    try:
        query.awaitTermination()
    except Exception:
        if failure:
            raise failure[0] from None
        raise


# silver_flights' table property: the airports and planes tables (Delta id and version, and a
# fingerprint of what the flights take from them) its rows' reference columns were computed from.
REFERENCES_PROPERTY = "lakehouse.silver.references"
REFERENCE_TABLES = {"silver_airports": ("faa", "tzone"), "silver_planes": ("tailnum",)}
# The flights rules that judge the reference columns: a flight a new snapshot would now
# quarantine keeps the columns it has (see reconcile_references).
REFERENCE_RULES = ("origin_in_airports", "sched_arr_after_dep")


def reference_versions(spark: SparkSession, config: Config) -> dict[str, list[Any]] | None:
    """[Delta id, version] of the airports and planes tables, None while one does not exist
    (lists: the state's JSON gives them back as lists)."""
    found = {name: tables.detail(spark, config, name, with_version=True)
             for name in REFERENCE_TABLES}
    return {name: [f.id, f.version] for name, f in found.items() if f is not None} if all(
        f is not None for f in found.values()) else None


def reference_frames(spark: SparkSession, config: Config,
                     versions: dict[str, list[Any]]) -> dict[str, DataFrame]:
    """The reference tables at the versions given."""
    return {name: tables.read(spark, config, name, version=version)
            for name, (_, version) in versions.items()}


def reference_fingerprints(frames: dict[str, DataFrame]) -> dict[str, str]:
    """A hash per reference table of the columns flights take from it (one Spark job): a
    snapshot rebuilt with the same airports' time zones and the same tails, or a commit that
    keeps the rows (OPTIMIZE, which Databricks' predictive optimization runs on its own),
    changes no flight."""
    def digest(name: str) -> DataFrame:
        row = F.concat_ws("\t", *(F.coalesce(F.col(c).cast("string"), F.lit("\\N"))
                                   for c in REFERENCE_TABLES[name]))
        return frames[name].agg(F.sha2(F.concat_ws("\n", F.sort_array(F.collect_list(row))),
                                       256).alias("digest")).select(F.lit(name).alias("name"),
                                                                    "digest")
    names = list(REFERENCE_TABLES)
    union = digest(names[0])
    for name in names[1:]:
        union = union.unionByName(digest(name))
    return {r["name"]: r["digest"] for r in union.collect()}


def reconcile_references(spark: SparkSession, config: Config,
                         contract: Contract) -> str | None:
    """Recompute the reference columns (UTC schedule, `dest_known`, `plane_known`) of the
    flights silver holds when the airports or planes snapshot changed what flights take from
    it (a time zone, a known airport or tail) since they were computed: a destination added to
    airports gives its earlier flights their scheduled arrival (gold's known-at and turnaround
    read it), a corrected time zone moves their UTC times, as a rebuild from bronze would. Only
    rows whose columns change are rewritten (an UPDATE through MERGE, which gold's change-feed
    read follows, recomputing their days). Run before the flights batches, which are typed
    against the same snapshots: a run that fails after them leaves rows and state agreeing.

    Not as a rebuild: a flight the new snapshot would quarantine (its origin gone from
    airports, or times that now break `sched_arr_after_dep`) keeps the columns it has, counted
    in the message (silver holds no raw record to quarantine), unless they are more than
    `silver.max_quarantine_share` of the flights held, which halts as a batch would, nothing
    rewritten; a flight an earlier snapshot quarantined stays in quarantine until landed again
    (judged then against the new one).

    Returns a note for the audit message, None when nothing was to be done."""
    flights = tables.detail(spark, config, "silver_flights")
    if flights is None:
        return None  # the first batches make it, typed against the current snapshots
    versions = reference_versions(spark, config)
    if versions is None:
        return None  # no snapshot loaded yet: flights could not have been typed either
    try:
        held = json.loads(flights.properties.get(REFERENCES_PROPERTY) or "{}")
    except ValueError:
        held = {}
    if not isinstance(held, dict):
        held = {}
    if held.get("versions") == versions:
        return None
    # the versions just looked at, not the latest: a run committing a snapshot meanwhile
    # leaves these rows and the state recorded saying the same
    frames = reference_frames(spark, config, versions)
    fingerprints = reference_fingerprints(frames)
    state = json.dumps({"versions": versions, "fingerprints": fingerprints}, sort_keys=True)
    if held.get("fingerprints") == fingerprints:  # the same content: no flight changes
        tables.set_table_property(spark, config, "silver_flights", REFERENCES_PROPERTY, state)
        return None
    current = tables.read(spark, config, "silver_flights")
    was = {c: f"_was_{c}" for c in REFERENCE_COLUMNS}
    recomputed = (current.select("flight_id", "year", "month", "day", "sched_dep_time",
                                 "sched_arr_time", "origin", "dest", "tailnum",
                                 *(F.col(c).alias(w) for c, w in was.items()))
                  .transform(with_reference_columns(frames["silver_airports"],
                                                    frames["silver_planes"])))
    rules = {r.name: r for r in contract.rules}
    differs = F.expr(f"NOT (struct({', '.join(REFERENCE_COLUMNS)}) <=> "
                     f"struct({', '.join(was.values())}))")
    judged = (recomputed.withColumn("_differs", differs)
              .withColumns({f"_breaks_{n}": ~F.expr(rules[n].passed()) for n in REFERENCE_RULES})
              .filter("_differs")
              .withColumn("_passes", ~reduce(operator.or_, (F.col(f"_breaks_{n}")
                                                            for n in REFERENCE_RULES)))
              .select("flight_id", *REFERENCE_COLUMNS, "_passes",
                      *(f"_breaks_{n}" for n in REFERENCE_RULES))).localCheckpoint()
    try:
        totals = judged.agg(F.count("*").alias("changed"),
                            F.count_if("_passes").alias("updated"),
                            *(F.count_if(f"_breaks_{n}").alias(n) for n in REFERENCE_RULES)
                            ).first()
        assert totals is not None  # an aggregate without grouping has one row
        updated, kept = int(totals["updated"]), int(totals["changed"]) - int(totals["updated"])
        if kept:
            settings = config.section("silver")
            share = float(settings["max_quarantine_share"])
            held_rows = current.count()
            if kept / max(held_rows, 1) > share and kept >= int(
                    settings.get("min_quarantined_to_halt", 1)):
                broken = ", ".join(f"{n} {int(totals[n])}" for n in REFERENCE_RULES
                                   if totals[n])
                raise ContractViolation(
                    f"silver.flights: the new airports/planes snapshot would quarantine {kept} "
                    f"of the {held_rows} flights silver holds ({kept / max(held_rows, 1):.1%}, "
                    f"max quarantine share {share:.1%}; {broken}); nothing was rewritten: land "
                    f"a corrected snapshot, or raise silver.max_quarantine_share to keep them "
                    f"as they are")
        if updated:
            # marked first: a run failing between the update and the state below leaves a
            # state no snapshot matches, so the next run recomputes (not one that matches the
            # snapshot before, which a revert to it would take as current)
            tables.set_table_property(spark, config, "silver_flights", REFERENCES_PROPERTY,
                                      json.dumps({"updating": True}))
            tables.update_columns(spark, config, "silver_flights",
                                  judged.filter("_passes").select("flight_id",
                                                                  *REFERENCE_COLUMNS),
                                  ("flight_id",), REFERENCE_COLUMNS)
    finally:
        release(judged)
    tables.set_table_property(spark, config, "silver_flights", REFERENCES_PROPERTY, state)
    if not (updated or kept):
        return None
    note = (f"airports/planes snapshot changed: {updated} held flight(s) recomputed "
            f"({', '.join(REFERENCE_COLUMNS)})"
            + (f"; {kept} kept as they were: the new snapshot would quarantine them "
               f"({', '.join(f'{n} {int(totals[n])}' for n in REFERENCE_RULES if totals[n])})"
               if kept else ""))
    log.warning("silver_flights: %s", note)
    return note


def record_references(spark: SparkSession, config: Config) -> None:
    """Record the snapshots a silver_flights made by this run's batches was typed against."""
    versions = reference_versions(spark, config)
    if versions is None or tables.detail(spark, config, "silver_flights") is None:
        return
    fingerprints = reference_fingerprints(reference_frames(spark, config, versions))
    tables.set_table_property(spark, config, "silver_flights", REFERENCES_PROPERTY, json.dumps(
        {"versions": versions, "fingerprints": fingerprints}, sort_keys=True))


def run(spark: SparkSession, config: Config, run_id: str) -> list[dict[str, Any]]:
    """Build every silver table: references first (flights are typed against them)."""
    require_classic(spark, "silver")
    if not tables.exists(spark, config, "quarantine"):
        tables.append(spark.createDataFrame([], QUARANTINE_SCHEMA), config, "quarantine")
    results = []
    # Compared with the runs before this one: this run's own bronze rows are left out.
    settings = {**config.section("silver"),
                "recent_rows_per_file": recent_rows_per_file(spark, config, exclude_run=run_id)}
    with audit_batch(spark, config) as batch:
        for table, contract in contracts(settings).items():
            with audited(spark, config, run_id, "silver", f"silver_{table}", batch) as audit:
                notes = []
                existed = table == "flights" and tables.exists(spark, config, "silver_flights")
                if existed:  # before the batches: they are typed against the same snapshots
                    notes.append(reconcile_references(spark, config, contract) or "")
                if table in SNAPSHOT_SOURCES:
                    counts = refine_snapshot(spark, config, contract, run_id)
                else:
                    committed = new_totals()
                    try:
                        counts = refine_stream(spark, config, contract, run_id, committed)
                    except BaseException:
                        # the micro-batches merged before the failure stay in silver (a rerun
                        # goes on after them): the failed run's row counts them
                        audit.update({k: v for k, v in committed.items()
                                      if k not in ("batch_warnings", "rows_not_applied")})
                        raise
                if table == "flights" and not existed:
                    record_references(spark, config)
                warnings = counts.pop("batch_warnings", [])
                not_applied = counts.pop("rows_not_applied", 0)
                audit.update(counts)
                if not_applied:
                    notes.append(f"{not_applied} of rows_out not written: older than, or the "
                                 f"same as, the row silver holds, or a schedule after its "
                                 f"known outcome (bronze keeps them)")
                if warnings:
                    notes.append(f"batch rules warned: {sorted(set(warnings))}")
                if any(notes):
                    audit["message"] = "; ".join(n for n in notes if n)
                audit["version_written"] = tables.version(spark, config, f"silver_{table}")
                results.append(dict(audit))
    return results
