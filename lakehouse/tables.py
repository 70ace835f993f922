"""All table IO: Delta reads, writes, merges, landing-zone and Kafka streams, the audit log.

A table location from conf is a Delta path when it contains "/", else a catalog table name.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming.query import StreamingQuery

from lakehouse.config import Config, client_options


def scalar(df: DataFrame) -> Any:
    """The first column of a one-row result (None when there is no row)."""
    row = df.first()
    return row[0] if row is not None else None


def _is_path(location: str) -> bool:
    return "/" in location


def exists(spark: SparkSession, config: Config, name: str) -> bool:
    """Whether the logical table has been created."""
    location = config.table(name)
    if not _is_path(location):
        return bool(spark.catalog.tableExists(location))
    # Not DeltaTable.isDeltaTable: it answers from the session's cached log of the path, so a
    # table another process created after the first look stays "missing" for the session.
    # Delta's Spark Connect client builds forPath's plan without a look at the path: the
    # schema's analysis (on the server there) is what raises for a missing table
    try:
        DeltaTable.forPath(spark, location).toDF().schema  # noqa: B018
    except AnalysisException as error:
        if not missing_table(error):
            raise
        return False
    return True


def delta_table(spark: SparkSession, config: Config, name: str) -> DeltaTable:
    location = config.table(name)
    if _is_path(location):
        return DeltaTable.forPath(spark, location)
    return DeltaTable.forName(spark, location)


def read(spark: SparkSession, config: Config, name: str, version: int | None = None) -> DataFrame:
    """Read a Delta table, optionally as of a version."""
    location = config.table(name)
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(location) if _is_path(location) else reader.table(location)


@dataclass(frozen=True)
class Detail:
    """What Delta's DESCRIBE DETAIL (and, when asked, its latest commit) says of a table."""

    id: str  # a table dropped and made anew under the same name or path has another
    properties: dict[str, str]
    version: int | None  # None unless asked for


# What Delta and Spark raise for a table that is not there, or not yet (DeltaTable.forPath and
# forName: DELTA_MISSING_DELTA_TABLE for a missing path, name or schema and a non-Delta table,
# tried; DELTA_TABLE_NOT_FOUND while another process creates it, seen; the rest from Delta's
# error classes saying so); any other analysis error (a permission refused, a table feature
# this reader lacks) is raised.
MISSING_TABLE = frozenset({"DELTA_MISSING_DELTA_TABLE", "DELTA_TABLE_NOT_FOUND",
                           "DELTA_PATH_DOES_NOT_EXIST", "DELTA_NOT_A_DELTA_TABLE",
                           "DELTA_NO_RELATION_TABLE", "DELTA_EMPTY_DIRECTORY",
                           "TABLE_OR_VIEW_NOT_FOUND", "PATH_NOT_FOUND", "SCHEMA_NOT_FOUND"})


def missing_table(error: AnalysisException) -> bool:
    condition = error.getCondition()
    if condition is None:  # a client or server that sends no error class: Delta's text
        text = str(error)
        return any(m in text for m in ("is not a Delta table", "doesn't exist", "not found"))
    return condition in MISSING_TABLE


def detail(spark: SparkSession, config: Config, name: str,
           with_version: bool = False) -> Detail | None:
    """The table's Delta id and properties (and latest version), None when it does not exist:
    one DESCRIBE DETAIL (and one history read), not an existence check before each. Spark
    Connect builds the plans without a look at the table; running them raises for a missing
    one, as the classic client's forPath/forName do."""
    try:
        table = delta_table(spark, config, name)
        row = table.detail().select("id", "properties").first()
        latest = table.history(1).select("version").first() if with_version else None
    except AnalysisException as error:
        if not missing_table(error):
            raise
        return None
    if row is None:
        return None
    return Detail(str(row["id"]), {str(k): str(v) for k, v in (row["properties"] or {}).items()},
                  None if latest is None else int(latest[0]))


def version(spark: SparkSession, config: Config, name: str) -> int | None:
    """The table's latest Delta version, or None when it does not exist yet."""
    try:
        row = delta_table(spark, config, name).history(1).select("version").first()
    except AnalysisException as error:
        if not missing_table(error):
            raise
        return None
    return None if row is None else int(row[0])


def table_id(spark: SparkSession, config: Config, name: str) -> str | None:
    """Delta's id of the table (DESCRIBE DETAIL), or None when it does not exist: a table
    dropped and made anew under the same name or path has another."""
    found = detail(spark, config, name)
    return None if found is None else found.id


# Commits a table's own maintenance makes right after a write: Databricks compacts after a MERGE
# (auto compaction, always on there) and Delta does when `autoCompact` is set; their metrics
# are the compaction's, not the write's.
MAINTENANCE_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "REORG"})


def last_commit(spark: SparkSession, config: Config, name: str,
                look_back: int = 10) -> tuple[int, dict[str, str]]:
    """The version and Delta's operation metrics (e.g. numOutputRows) of the table's latest
    commit that is not maintenance (MAINTENANCE_OPERATIONS: an auto compaction after the write
    is skipped), from one read of its last look_back commits."""
    history = delta_table(spark, config, name).history(look_back).select(
        "version", "operation", "operationMetrics").orderBy(F.col("version").desc()).collect()
    if not history:  # a Delta table has at least its creating commit
        raise RuntimeError(f"table {config.table(name)} has no commit")
    row = next((r for r in history if r[1] not in MAINTENANCE_OPERATIONS), history[0])
    return int(row[0]), dict(row[2] or {})


def last_operation_metrics(spark: SparkSession, config: Config, name: str) -> dict[str, str]:
    """Delta's operation metrics of the table's latest commit but maintenance (last_commit)."""
    return last_commit(spark, config, name)[1]


def merge_metrics(result: DataFrame) -> dict[str, str]:
    """The rows a MERGE inserted, updated and deleted, from what DeltaMergeBuilder.execute()
    returns (computed by the MERGE itself, classic and Connect alike), named as in Delta's
    history (numTargetRowsInserted...). Not read back from the history: a commit after it (an
    auto compaction, another writer's) would give other metrics. Empty when the MERGE
    returned no row (its counts unknown, not zero)."""
    row = result.first()
    if row is None:
        return {}
    found = row.asDict()
    return {f"numTargetRows{kind.capitalize()}": str(int(found.get(f"num_{kind}_rows") or 0))
            for kind in ("inserted", "updated", "deleted")}


def _save(writer, location: str, tag: str | None = None,  # type: ignore[no-untyped-def]
          spark: SparkSession | None = None) -> None:
    """Write to a path or a catalog table. A catalog table's commit also takes tag from the
    session conf MERGE reads: saveAsTable to Unity Catalog was reported to drop the writer's
    userMetadata option (delta-io/delta#2037, open), which would leave gold's build state
    unrecorded and make every gold run a full build there. Not reproducible with a local
    session catalog, where the option alone works."""
    if _is_path(location):
        writer.save(location)
        return
    if tag is None or spark is None:
        writer.saveAsTable(location)
        return
    with commit_metadata(spark, tag):
        writer.saveAsTable(location)


USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


# The session's conf is shared by its threads: one tagged commit at a time in this process, or
# a thread putting the conf back would strip (or swap) the tag of another's commit in flight.
# The lock is held for the whole write (its job included: the commit ends it).
_COMMIT_METADATA_LOCK = threading.RLock()


@contextmanager
def untagged_commits() -> Iterator[None]:
    """Commits made inside carry no other thread's tag: none is set in the session's conf
    meanwhile (an ALTER of table properties or comment, taking the conf's userMetadata, would
    otherwise take a tag a concurrent MERGE set)."""
    with _COMMIT_METADATA_LOCK:
        yield


@contextmanager
def commit_metadata(spark: SparkSession, tag: str | None) -> Iterator[None]:
    """The session's commit userMetadata set to tag for the commits made inside, then put back
    as it was (a value the user or the cluster set tags their own commits). Tagged commits of
    several threads run one after the other."""
    if tag is None:
        yield
        return
    with _COMMIT_METADATA_LOCK:
        before = spark.conf.get(USER_METADATA, None)
        spark.conf.set(USER_METADATA, tag)
        try:
            yield
        finally:
            if before is None:
                spark.conf.unset(USER_METADATA)
            else:
                spark.conf.set(USER_METADATA, before)


def _properties(config: Config, name: str) -> dict[str, str]:
    """Delta table properties conf gives a logical table (table_properties: <name>: {...})."""
    return {k: str(v) for k, v in
            ((config.values.get("table_properties") or {}).get(name) or {}).items()}


def append(df: DataFrame, config: Config, name: str, txn: tuple[str, int] | None = None,
           merge_schema: bool = False, tag: str | None = None,
           properties: dict[str, str] | None = None) -> None:
    """Append rows; with txn=(app_id, version) Delta skips a write it has already committed.

    tag is stored as the commit's userMetadata; properties (and the table's properties from
    conf) apply when the append creates the table.
    """
    writer = df.write.format("delta").mode("append").option("mergeSchema", str(merge_schema))
    if txn is not None:
        writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
    if tag is not None:
        writer = writer.option("userMetadata", tag)
    for key, value in {**_properties(config, name), **(properties or {})}.items():
        writer = writer.option(key, value)
    _save(writer, config.table(name), tag, df.sparkSession)


class CreatedMeanwhileError(RuntimeError):
    """The table a write was to create exists now: another writer created it meanwhile. Not
    a data error: a rerun finds the table and writes as it would have."""


def create(df: DataFrame, config: Config, name: str) -> None:
    """Create the table with df's rows; fails when it exists (another writer created it since
    the caller looked), where an append would add the rows beside that writer's. Two
    creators racing for version 0: Delta commits one, the other fails with its conflict
    (DELTA_PROTOCOL_CHANGED or DELTA_METADATA_CHANGED, which the workflow does not retry)."""
    writer = df.write.format("delta").mode("errorifexists")
    for key, value in _properties(config, name).items():
        writer = writer.option(key, value)
    try:
        _save(writer, config.table(name), None, df.sparkSession)
    except AnalysisException as error:
        if not any(code in str(error) for code in ("DELTA_PATH_EXISTS",
                                                   "TABLE_OR_VIEW_ALREADY_EXISTS",
                                                   "DELTA_TABLE_ALREADY_EXISTS")):
            raise
        raise CreatedMeanwhileError(
            f"{config.table(name)} was created by another writer after this run found no "
            "table there: nothing was written; run again (it then writes beside that "
            "writer's rows as it would have)") from error


def overwrite(df: DataFrame, config: Config, name: str, tag: str | None = None) -> None:
    """Replace the table's content (earlier content stays reachable through Delta history);
    tag is stored as the commit's userMetadata."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if tag is not None:
        writer = writer.option("userMetadata", tag)
    for key, value in _properties(config, name).items():
        writer = writer.option(key, value)
    _save(writer, config.table(name), tag, df.sparkSession)


def insert_into_empty(df: DataFrame, config: Config, name: str, predicate: str,
                      tag: str | None = None) -> None:
    """Write rows into a slice of the table (predicate: SQL on its columns) that the caller
    found empty, in one pass: Delta's replaceWhere, which removes nothing there, fails a
    commit racing another writer's rows into the slice (a blind append would let both in) and
    refuses rows outside the predicate."""
    writer = (df.write.format("delta").mode("overwrite").option("replaceWhere", predicate))
    if tag is not None:
        writer = writer.option("userMetadata", tag)
    _save(writer, config.table(name), tag, df.sparkSession)


def merge(spark: SparkSession, df: DataFrame, config: Config, name: str, keys: Iterable[str],
          changed_columns: Iterable[str] | None = None, newer: str | None = None,
          known: str | None = None, target_filter: str | None = None, tag: str | None = None,
          delete_flag: str | None = None, skip_unchanged: bool = False,
          insert_only: bool = False, metrics: bool = True) -> dict[str, str]:
    """Upsert df into the table on its natural key; create the table on first use.

    Matched rows are updated only where one of changed_columns differs, so re-running the same
    batch leaves every row as it was; with `newer` (a timestamp column), only by a row at
    least as new as the table's (a late, older event does not undo a newer one; a null on
    either side does not hold the update back; a newer row equal to the table's moves its
    `newer` on); with `known` (a column null while the record is
    incomplete, e.g. a flight's outcome before it is reported), a row where it is null never
    replaces one where it is set. Columns the table lacks are added (Delta's
    schema evolution), so a table written by an earlier version takes new lineage columns.
    target_filter (SQL on the target `t`) narrows the target rows the merge can touch, so
    Delta skips the files outside it. Source rows whose delete_flag column is true delete their
    matched target row. tag is stored as the commit's userMetadata. With skip_unchanged, source
    rows equal to their target row (keys and changed_columns) are dropped first, and a source
    with nothing left commits nothing: Delta's MERGE rewrites every file holding a matched row
    even when no clause updates it. Returns the rows the MERGE inserted, updated and deleted
    (merge_metrics; the append's metrics when it created the table), empty when nothing was
    committed or with metrics=False.

    With insert_only, rows whose key the table holds are left as they are and nothing is
    compared: for a slice the caller found empty (e.g. a new day), Delta's insert-only MERGE
    writes the rows in one pass, deletes nothing, still conflicts with a writer racing rows into
    the slice and evolves the schema as above.
    """
    if insert_only and (delete_flag or newer or known):
        raise ValueError("merge: insert_only inserts new keys only; it takes no delete_flag, "
                         "newer or known")
    if not exists(spark, config, name):
        rows = df.filter(~F.col(delete_flag)).drop(delete_flag) if delete_flag else df
        append(rows, config, name, tag=tag)
        return last_operation_metrics(spark, config, name) if metrics else {}
    same = list(dict.fromkeys([*keys, *(changed_columns if changed_columns is not None
                                        else df.columns)]))
    existing = read(spark, config, name)
    if (skip_unchanged and not insert_only and delete_flag is None
            and set(same) <= set(existing.columns)):
        current = existing.alias("t")
        if target_filter:
            current = current.filter(F.expr(target_filter))
        on = reduce(lambda a, b: a & b, [F.col(f"s.`{c}`").eqNullSafe(F.col(f"t.`{c}`"))
                                         for c in same])
        df = df.alias("s").join(current.select(*same).alias("t"), on, "left_anti")
        if df.isEmpty():
            return {}
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    if target_filter:
        condition = f"({target_filter}) AND {condition}"
    compare = [c for c in (changed_columns if changed_columns is not None else df.columns)
               if c != delete_flag]
    # One struct comparison, not a chain of per-column ones: for a wide table the chain's
    # generated code is large enough to compile slowly or not at all (bench/gold.py).
    differs = (f"NOT (struct({', '.join(f't.`{c}`' for c in compare)}) <=> "
               f"struct({', '.join(f's.`{c}`' for c in compare)}))") if compare else ""
    target = delta_table(spark, config, name)
    target_columns = target.toDF().columns if (newer or known) and differs else []
    has_known = known is not None and known in target_columns
    # a newer row equal to the table's (a repeated event) moves only the table's `newer` on:
    # left at the older time, a late event between the two would pass the guard below
    refresh = (f"coalesce(s.`{newer}` > t.`{newer}`, false) AND NOT ({differs})"
               if newer is not None and newer in target_columns else None)
    if newer is not None and newer in target_columns:
        not_older = f"NOT coalesce(s.`{newer}` < t.`{newer}`, false)"
        if has_known:  # an outcome arriving after a later-stamped schedule still fills it in
            not_older = f"({not_older} OR (s.`{known}` IS NOT NULL AND t.`{known}` IS NULL))"
        differs = f"({differs}) AND {not_older}"
    if has_known:
        differs = f"({differs}) AND NOT (s.`{known}` IS NULL AND t.`{known}` IS NOT NULL)"
    builder = target.alias("t").merge(df.alias("s"), condition).withSchemaEvolution()
    if insert_only:
        builder = builder.whenNotMatchedInsertAll()
    elif delete_flag:
        columns: dict[str, str | Column] = {f"`{c}`": f"s.`{c}`" for c in df.columns
                                            if c != delete_flag}
        builder = (builder.whenMatchedDelete(condition=f"s.`{delete_flag}`")
                   .whenMatchedUpdate(condition=differs or None, set=columns)
                   .whenNotMatchedInsert(condition=f"NOT s.`{delete_flag}`", values=columns))
    else:
        builder = builder.whenMatchedUpdateAll(condition=differs or None)
        if refresh is not None:
            builder = builder.whenMatchedUpdate(condition=refresh,
                                                set={f"`{newer}`": f"s.`{newer}`"})
        builder = builder.whenNotMatchedInsertAll()
    with commit_metadata(spark, tag):  # a MERGE takes its commit's userMetadata from the session
        result = builder.execute()
    return merge_metrics(result) if metrics else {}


def update_columns(spark: SparkSession, config: Config, name: str, df: DataFrame,
                   keys: Iterable[str], columns: Iterable[str]) -> dict[str, str]:
    """Set the given columns of the table's rows whose keys df holds to df's values (a MERGE
    that updates those columns only and inserts nothing); Delta's operation metrics."""
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    with untagged_commits():  # no other thread's tag on this commit
        result = (delta_table(spark, config, name).alias("t").merge(df.alias("s"), condition)
                  .whenMatchedUpdate(set={f"`{c}`": f"s.`{c}`" for c in columns}).execute())
    return merge_metrics(result)


def update(spark: SparkSession, config: Config, name: str, condition: Column,
           values: dict[str, str | Column]) -> None:
    """Set columns of the rows matching condition (Delta UPDATE)."""
    delta_table(spark, config, name).update(condition, values)


def _sql_name(location: str) -> str:
    return f"delta.`{location}`" if _is_path(location) else location


def ensure_properties(spark: SparkSession, config: Config, name: str) -> bool:
    """Give an existing table the properties conf asks for (a table created by an earlier
    version may lack them, e.g. its change data feed); True when something was set."""
    wanted = _properties(config, name)
    found = detail(spark, config, name) if wanted else None
    if found is None:
        return False
    current = found.properties
    missing = {k: v for k, v in wanted.items() if current.get(k) != v}
    if missing:
        settings = ", ".join(f"'{k}' = '{v}'" for k, v in missing.items())
        spark.sql(f"ALTER TABLE {_sql_name(config.table(name))} SET TBLPROPERTIES ({settings})")
    return bool(missing)


def table_property(spark: SparkSession, config: Config, name: str, key: str) -> str | None:
    """A Delta table property's value (DESCRIBE DETAIL), None when unset or no table."""
    found = detail(spark, config, name)
    return None if found is None else found.properties.get(key)


def set_table_property(spark: SparkSession, config: Config, name: str, key: str,
                       value: str) -> None:
    """Set a Delta table property (a commit that keeps the rows: readers of the change feed
    and `rows_unchanged` see no change)."""
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    with untagged_commits():
        spark.sql(f"ALTER TABLE {_sql_name(config.table(name))} "
                  f"SET TBLPROPERTIES ('{key}' = '{quoted}')")


def set_comment(spark: SparkSession, config: Config, name: str, comment: str) -> None:
    """Set the table's comment (its Delta description) unless it already reads so."""
    current = scalar(delta_table(spark, config, name).detail().select("description"))
    if current != comment:
        quoted = comment.replace("\\", "\\\\").replace("'", "\\'")
        spark.sql(f"COMMENT ON TABLE {_sql_name(config.table(name))} IS '{quoted}'")


@dataclass(frozen=True)
class TableInfo:
    """What `lakehouse describe` shows of a table."""

    name: str
    location: str
    comment: str | None
    version: int | None
    rows: int
    columns: list[tuple[str, str, str | None]]  # name, type, comment


def describe(spark: SparkSession, config: Config, name: str) -> TableInfo:
    """A table's comment, version, row count and columns with their types and comments."""
    detail = delta_table(spark, config, name).detail().select("description").first()
    df = read(spark, config, name)
    return TableInfo(name, config.table(name), detail[0] if detail else None,
                     version(spark, config, name), df.count(),
                     [(f.name, f.dataType.simpleString(), f.metadata.get("comment"))
                      for f in df.schema.fields])


def read_changes(spark: SparkSession, config: Config, name: str, start: int,
                 end: int) -> DataFrame:
    """The table's change data feed from version start to end, both included: every row
    inserted, deleted or updated (before and after images), with _change_type."""
    location = config.table(name)
    reader = (spark.read.format("delta").option("readChangeFeed", "true")
              .option("startingVersion", start).option("endingVersion", end))
    return reader.load(location) if _is_path(location) else reader.table(location)


# Commits that leave a table's rows as they were: a job's state stored in an earlier commit
# still describes the table after them.
CONTENT_PRESERVING = ("OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES",
                      "UNSET TBLPROPERTIES", "CHANGE COLUMN", "REORG")


def commits(spark: SparkSession, config: Config, name: str, first: int,
            last: int) -> dict[int, Row]:
    """The table's history rows (version, timestamp, operation) of versions first..last, by
    version (versions whose commits are gone are absent). Delta's history is read from the
    newest commit back: when commits were made after `last`, the read reaches back further."""
    limit = last - first + 1
    for _ in range(5):
        rows = (delta_table(spark, config, name).history(limit)
                .select("version", "timestamp", "operation").collect())
        versions = [r["version"] for r in rows]
        if not rows or len(rows) < limit or min(versions) <= first:
            break  # reached first, or the log holds nothing older
        limit += max(versions) - last  # the commits made since `last`
    return {r["version"]: r for r in rows if first <= r["version"] <= last}


def keeps_rows(history: dict[int, Row], since: int, version: int) -> bool:
    """Whether every commit after version `since` up to `version` is in `history` and kept the
    table's rows (False when `since` is not before `version`)."""
    operations = [history[v]["operation"] for v in range(since + 1, version + 1) if v in history]
    return since < version and len(operations) == version - since and all(
        op in CONTENT_PRESERVING for op in operations)


def rows_unchanged(spark: SparkSession, config: Config, name: str, since: int,
                   version: int) -> bool:
    """Whether every commit of a table after version `since` up to `version` kept its rows
    (Delta's history; False when `since` is not before `version` or its commits are gone)."""
    return since < version and keeps_rows(commits(spark, config, name, since + 1, version),
                                          since, version)


def tagged_state(spark: SparkSession, config: Config, name: str, prefix: str,
                 look_back: int = 50, at_version: int | None = None) -> dict[str, Any] | None:
    """The JSON state a job stored as userMetadata "<prefix> {...}" in its newest commit (at or
    before at_version, when given: the state of the version a reader pinned), or None: no such
    commit among the last look_back, or another write (a RESTORE, a DELETE, a job without the
    tag) came after it, so the state may no longer describe the rows."""
    if not exists(spark, config, name):
        return None
    history = delta_table(spark, config, name).history(look_back)
    if at_version is not None:
        history = history.filter(F.col("version") <= at_version)
    for row in (history.select("version", "operation", "userMetadata")
                .orderBy(F.col("version").desc()).collect()):
        tag = row["userMetadata"] or ""
        if tag.startswith(f"{prefix} "):
            try:
                state = json.loads(tag[len(prefix) + 1:])
            except ValueError:
                return None
            return state if isinstance(state, dict) else None
        if row["operation"] not in CONTENT_PRESERVING:
            return None
    return None


def read_stream(spark: SparkSession, config: Config, name: str,
                max_files_per_trigger: int | None = None) -> DataFrame:
    """Stream the rows appended to a Delta table since the stream's checkpoint
    (max_files_per_trigger: Delta's own limit of a micro-batch's files; None: Delta's
    default, 1000)."""
    location = config.table(name)
    reader = spark.readStream.format("delta")
    if max_files_per_trigger is not None:
        reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
    return reader.load(location) if _is_path(location) else reader.table(location)


# --- landed files ---------------------------------------------------------------------------

FILE_STREAM_SCHEMA = T.StructType([
    T.StructField("path", T.StringType(), False),
    T.StructField("modificationTime", T.TimestampType(), False),
    T.StructField("length", T.LongType(), False),
    T.StructField("content", T.BinaryType(), True),
])
FILE_SOURCES = ("files", "cloudFiles")


class ConcurrentRunError(RuntimeError):
    """Another run holds the lock of the same stream: two runs of one source at once."""


def landed_files(spark: SparkSession, folder: str) -> list[str]:
    """Every file under a landing folder, subfolders included, as Spark's file sources see
    it (names starting with "_" or "." and copies in progress skipped); [] when the folder
    does not exist. Spark lists it on the driver: nothing is read."""
    try:
        listing = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
        return sorted(listing.load(folder).inputFiles())
    except AnalysisException as error:
        if "PATH_NOT_FOUND" in str(error):
            return []
        raise


def ensure_folder(folder: str) -> None:
    """Create a local folder if it is missing (other file systems have no empty folders)."""
    parts = urlparse(folder)
    if parts.scheme in ("", "file"):
        os.makedirs(url2pathname(parts.path) if parts.scheme else folder, exist_ok=True)


def landed_file_stream(spark: SparkSession, folder: str, file_source: str,
                       max_files: int) -> DataFrame:
    """The files landing under a folder (subfolders included) as a stream of their paths:
    each file in one micro-batch of at most max_files, oldest first.

    file_source "files" is Spark's file source: a file is known by its name (fileNameOnly),
    so a data root moved or restored at another path is not read again, and files of any
    age are taken (maxFileAge; by default a file older than the newest by a week is
    skipped). "cloudFiles" is Auto Loader on Databricks (it knows files by full path).
    Only the paths are read here: bronze parses each micro-batch's files itself.
    """
    if file_source == "files":
        reader = (spark.readStream.format("binaryFile").schema(FILE_STREAM_SCHEMA)
                  .option("recursiveFileLookup", "true").option("fileNameOnly", "true")
                  .option("maxFileAge", "36500d").option("maxFilesPerTrigger", max_files))
    elif file_source == "cloudFiles":
        reader = (spark.readStream.format("cloudFiles").option("cloudFiles.format", "binaryFile")
                  .option("cloudFiles.maxFilesPerTrigger", max_files))
    else:
        raise ValueError(f"bronze.file_source must be one of {list(FILE_SOURCES)}, "
                         f"got {file_source!r}")
    return reader.load(folder).select("path", "modificationTime", "length")


def batch_files(batch: DataFrame) -> list[str]:
    """The files of a micro-batch of landed_file_stream (their contents are not read)."""
    return sorted(r[0] for r in batch.select("path").collect())


def read_csv_files(spark: SparkSession, files: list[str], width: int,
                   corrupt_column: str) -> DataFrame:
    """CSV files whose headers have `width` columns, as _col1.._col<width> (all text),
    malformed records kept whole in corrupt_column, plus Spark's _metadata.

    RFC 4180: a quoted field may hold line breaks and "" stands for a quote (multiLine,
    escape). Read as ISO-8859-1, which maps every byte to one character: the landed bytes
    are kept exactly, for bronze to decode in the source's charset.
    """
    schema = T.StructType([*(T.StructField(f"_col{i + 1}", T.StringType()) for i in range(width)),
                           T.StructField(corrupt_column, T.StringType())])
    reader = (spark.read.format("csv").schema(schema)
              .option("header", "true").option("enforceSchema", "true")
              .option("multiLine", "true").option("escape", '"')
              .option("encoding", "ISO-8859-1")
              .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", corrupt_column))
    return reader.load(_reader_paths(files)).select("*", "_metadata")


def read_text_files(spark: SparkSession, files: list[str]) -> DataFrame:
    """Lines of text files with Spark's _metadata; the bytes of each line are kept as landed
    (the text source does not decode them)."""
    return spark.read.format("text").load(_reader_paths(files)).select("value", "_metadata")


def driver_path(uri: str, volumes_mounted: bool | None = None) -> str | None:
    """The driver's own path of a landed file, when it has one: a file: URI, or a Unity
    Catalog volume's file (dbfs:/Volumes/..., mounted at /Volumes on a Databricks driver)."""
    parts = urlparse(uri)
    if parts.scheme == "file":
        return url2pathname(parts.path)
    if parts.scheme == "dbfs" and not parts.netloc and parts.path.startswith("/Volumes/"):
        mounted = os.path.isdir("/Volumes") if volumes_mounted is None else volumes_mounted
        return url2pathname(parts.path) if mounted else None
    return None


def landed_bytes(spark: SparkSession, files: list[str]) -> Iterator[tuple[str, BinaryIO]]:
    """Each landed file's bytes as a stream, to count its records independently of Spark's
    parsers: files the driver can open (local ones, a volume's through its mount) read from
    there, in chunks, whatever their size; files on other file systems through Spark's
    binaryFile source (each whole in the driver's memory, under 2 GiB)."""
    remote = []
    for uri in files:
        path = driver_path(uri)
        if path is not None:
            with open(path, "rb") as stream:
                yield uri, stream
        else:
            remote.append(uri)
    if remote:
        contents = spark.read.format("binaryFile").load(_reader_paths(remote))
        for row in contents.select("path", "content").toLocalIterator():
            yield row["path"], io.BytesIO(row["content"])


def _reader_paths(uris: list[str]) -> list[str]:
    """Percent-encoded URIs as paths a DataFrameReader takes literally: decoded, with the
    characters it would take for a glob pattern escaped."""
    return [literal_path(unquote(uri)) for uri in uris]


def literal_path(path: str) -> str:
    """A path a DataFrameReader takes literally: the characters of a glob pattern escaped."""
    return re.sub(r"([{}\[\]*?\\])", r"\\\1", path)


# --- events ---------------------------------------------------------------------------------

def kafka_options(settings: dict[str, Any], fail_on_data_loss: bool = True) -> dict[str, str]:
    """The Kafka source's options: settings' `options` as they are (kafka.security.protocol,
    kafka.sasl.*, ...), the servers, topic and offsets from the settings and the data-loss
    check from fail_on_data_loss (they win: no conf turns the check off for good), and
    timeouts of about timeout_seconds and read_committed isolation unless `options` sets
    them itself."""
    timeout_ms = int(float(settings.get("timeout_seconds", 10)) * 1000)
    options = client_options(settings, "options")
    request_ms = options.get("kafka.request.timeout.ms", str(timeout_ms))
    # Kafka's AdminClient refuses a default.api.timeout.ms below request.timeout.ms
    api_ms = str(max(timeout_ms, int(request_ms)))
    # read_committed: a transactional producer's aborted records (and those of a transaction
    # still open) are not events; Kafka's consumers read them all by default
    defaults = {"kafka.default.api.timeout.ms": api_ms, "kafka.request.timeout.ms": request_ms,
                "fetchOffset.numRetries": "1", "kafka.isolation.level": "read_committed"}
    return {**defaults, **options,
            "kafka.bootstrap.servers": str(settings["bootstrap_servers"]),
            "subscribe": str(settings["topic"]),
            "startingOffsets": str(settings.get("starting_offsets", "earliest")),
            "maxOffsetsPerTrigger": str(int(settings.get("max_offsets_per_trigger", 20000))),
            "failOnDataLoss": str(fail_on_data_loss).lower()}


def kafka_stream(spark: SparkSession, settings: dict[str, Any],
                 fail_on_data_loss: bool = True) -> DataFrame:
    """A Kafka topic as a stream (Spark's Kafka source, `kafka_options`): each micro-batch at
    most max_offsets_per_trigger records; a broker that does not answer fails the query within
    about timeout_seconds, a missing topic within a few seconds, and events the broker deleted
    before they were read fail it too unless fail_on_data_loss is false (then Spark skips to
    the earliest offset the broker still holds)."""
    return (spark.readStream.format("kafka")
            .options(**kafka_options(settings, fail_on_data_loss)).load())


# --- streaming queries ----------------------------------------------------------------------

def start_stream(df: DataFrame, process: Callable[[DataFrame, int], None], checkpoint: str,
                 name: str, interval: str | None = None) -> StreamingQuery:
    """Start a query that hands each micro-batch to process, its progress in checkpoint:
    every available micro-batch, then stop (interval None), or one every interval."""
    writer = (df.writeStream.foreachBatch(process).option("checkpointLocation", checkpoint)
              .queryName(name))
    trigger = {"availableNow": True} if interval is None else {"processingTime": interval}
    return writer.trigger(**trigger).start()


def new_commit_tagged(spark: SparkSession, config: Config, name: str, tag: str,
                      since: int | None) -> bool:
    """Whether a commit after version `since` (any, when None) carries tag as userMetadata:
    tells a write that Delta made from one it skipped as already committed (txnVersion)."""
    latest = version(spark, config, name)
    if latest is None or (since is not None and latest <= since):
        return False
    commits = latest - since if since is not None else latest + 1
    history = delta_table(spark, config, name).history(commits).select("userMetadata")
    return any(row[0] == tag for row in history.collect())


def tagged_commit_rows(spark: SparkSession, config: Config, name: str, tag: str,
                       look_back: int = 200) -> int | None:
    """The rows the newest commit carrying tag as userMetadata wrote (its numOutputRows),
    among the last look_back commits; None when none carries it or its metrics are off."""
    history = (delta_table(spark, config, name).history(look_back)
               .filter(F.col("userMetadata") == tag).select("version", "operationMetrics")
               .orderBy(F.col("version").desc()).first())
    written = (history["operationMetrics"] or {}).get("numOutputRows") if history else None
    return int(written) if written is not None else None


# Databricks' FUSE mounts look local but are shared storage: an flock there guards one node
# at most, and the mount may refuse it or the in-place rewrite.
SHARED_MOUNTS = ("/Volumes/", "/dbfs/", "/Workspace/")


def shared_mount(path: str) -> bool:
    """Whether a local-looking path (or a file: URI's path) is a Databricks shared mount."""
    return path.startswith(SHARED_MOUNTS)


@contextmanager
def exclusive_run(lock_file: str, what: str) -> Iterator[None]:
    """Hold an exclusive lock for one run of a stream: a second run of it at the same time
    fails at once with ConcurrentRunError naming the first.

    An OS lock (flock) on a local file, released when the process ends however it ends
    (kill -9 included). On other file systems (object stores, Databricks' /Volumes, /dbfs and
    /Workspace mounts, as paths or file: URIs) nothing is locked here: a second run is then
    stopped by Spark's checkpoint (which refuses a batch another run wrote) or Delta's
    transaction check, and nothing is appended twice either way.
    """
    parts = urlparse(lock_file)
    if parts.scheme not in ("", "file") or shared_mount(parts.path):
        yield
        return
    path = url2pathname(parts.path) if parts.scheme else lock_file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConcurrentRunError(
                f"{what} is being run by {holder} (lock {path}); this run stopped before "
                "reading anything. Let that run finish (one run per source at a time).") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


AUDIT_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("job", T.StringType(), False),
    T.StructField("table_name", T.StringType(), False),
    T.StructField("status", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("duration_s", T.DoubleType(), False),
    T.StructField("files", T.LongType(), True),
    T.StructField("rows_landed", T.LongType(), True),
    T.StructField("rows_in", T.LongType(), True),
    T.StructField("rows_out", T.LongType(), True),
    T.StructField("rows_corrupt", T.LongType(), True),
    T.StructField("rows_quarantined", T.LongType(), True),
    T.StructField("rows_duplicate", T.LongType(), True),
    T.StructField("rows_warned", T.LongType(), True),
    T.StructField("version_read", T.LongType(), True),
    T.StructField("version_written", T.LongType(), True),
    T.StructField("message", T.StringType(), True),
])


def create_audit(spark: SparkSession, config: Config) -> None:
    """Create the audit table if it is not there: writers running side by side (streams'
    micro-batches) would otherwise race to create it."""
    if not exists(spark, config, "audit"):
        append(spark.createDataFrame([], AUDIT_SCHEMA), config, "audit")


def write_audit(spark: SparkSession, config: Config, rows: list[dict[str, object]]) -> None:
    """Append audit rows (one per table per job run)."""
    if not rows:
        return
    records = [tuple(row.get(f.name) for f in AUDIT_SCHEMA.fields) for row in rows]
    # mergeSchema: an audit table written by an older version gains the new columns
    append(spark.createDataFrame(records, AUDIT_SCHEMA), config, "audit", merge_schema=True)


def latest_audit(spark: SparkSession, config: Config, limit: int = 20) -> DataFrame:
    """The most recent audit rows, newest first."""
    return read(spark, config, "audit").orderBy(F.col("started_at").desc()).limit(limit)
