"""All table IO: Delta reads, writes, merges, landing-zone readers and the audit log.

A table location from conf is a Delta path when it contains "/", else a catalog table name.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse.config import Config


def _is_path(location: str) -> bool:
    return "/" in location


def exists(spark: SparkSession, config: Config, name: str) -> bool:
    """Whether the logical table has been created."""
    location = config.table(name)
    if _is_path(location):
        return DeltaTable.isDeltaTable(spark, location)
    return bool(spark.catalog.tableExists(location))


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


def version(spark: SparkSession, config: Config, name: str) -> int | None:
    """The table's latest Delta version, or None when it does not exist yet."""
    if not exists(spark, config, name):
        return None
    return int(delta_table(spark, config, name).history(1).select("version").first()[0])  # type: ignore[index]


def last_operation_metrics(spark: SparkSession, config: Config, name: str) -> dict[str, str]:
    """Delta's operation metrics of the table's latest commit (e.g. numOutputRows)."""
    row = delta_table(spark, config, name).history(1).select("operationMetrics").first()
    return dict(row[0] or {}) if row is not None else {}


def _save(writer, location: str) -> None:  # type: ignore[no-untyped-def]
    if _is_path(location):
        writer.save(location)
    else:
        writer.saveAsTable(location)


def append(df: DataFrame, config: Config, name: str, txn: tuple[str, int] | None = None,
           merge_schema: bool = False, tag: str | None = None,
           properties: dict[str, str] | None = None) -> None:
    """Append rows; with txn=(app_id, version) Delta skips a write it has already committed.

    tag is stored as the commit's userMetadata; properties apply when the append creates the
    table.
    """
    writer = df.write.format("delta").mode("append").option("mergeSchema", str(merge_schema))
    if txn is not None:
        writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
    if tag is not None:
        writer = writer.option("userMetadata", tag)
    for key, value in (properties or {}).items():
        writer = writer.option(key, value)
    _save(writer, config.table(name))


def overwrite(df: DataFrame, config: Config, name: str) -> None:
    """Replace the table's content (earlier content stays reachable through Delta history)."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    _save(writer, config.table(name))


def commit_tags(spark: SparkSession, config: Config, name: str) -> Iterator[str | None]:
    """The userMetadata of the table's commits, newest first, read from its Delta log files.

    Each step costs one small file read (the listing is done once), where DeltaTable.history()
    plans a query.
    """
    location = config.table(name)
    if not _is_path(location):
        location = spark.sql(f"DESCRIBE DETAIL {location}").first()["location"]  # type: ignore[index]
    fs, log = _hadoop_fs(spark, f"{location}/_delta_log")
    if not fs.exists(log):
        return
    # Each commit is opened by its Hadoop Path: a location with a space or % in it has no
    # string spelling that every file system reads back the same.
    commits = {int(name.split(".")[0]): status.getPath() for status in fs.listStatus(log)
               if (name := status.getPath().getName()).endswith(".json")}
    for version in sorted(commits, reverse=True):
        infos = [json.loads(line).get("commitInfo") for line in
                 _hadoop_read_path(spark, fs, commits[version]).splitlines()
                 if "commitInfo" in line]
        yield next((info.get("userMetadata") for info in infos if info), None)


def merge(spark: SparkSession, df: DataFrame, config: Config, name: str, keys: Iterable[str],
          changed_columns: Iterable[str] | None = None) -> None:
    """Upsert df into the table on its natural key; create the table on first use.

    Matched rows are updated only where one of changed_columns differs, so re-running the same
    batch leaves every row as it was.
    """
    if not exists(spark, config, name):
        append(df, config, name)
        return
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    compare = list(changed_columns) if changed_columns is not None else df.columns
    differs = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in compare)
    (delta_table(spark, config, name).alias("t")
     .merge(df.alias("s"), condition)
     .whenMatchedUpdateAll(condition=differs or None)
     .whenNotMatchedInsertAll()
     .execute())


def read_stream(spark: SparkSession, config: Config, name: str) -> DataFrame:
    """Stream the rows appended to a Delta table since the stream's checkpoint."""
    location = config.table(name)
    reader = spark.readStream.format("delta")
    return reader.load(location) if _is_path(location) else reader.table(location)


def read_landing(spark: SparkSession, files: list[str], fmt: str, schema: T.StructType,
                 corrupt_column: str) -> DataFrame:
    """Read landed files (URIs as list_files gives them), one row per non-blank data line,
    malformed lines kept whole in corrupt_column.

    JSON lines are read as text and parsed line by line: the JSON reader would turn a line
    holding an array into several records, or none.
    """
    if fmt == "json":
        options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": corrupt_column}
        lines = (spark.read.format("text").load(_reader_paths(files))
                 .filter(F.col("value").rlike(r"\S")))
        return lines.select(F.from_json("value", schema, options).alias("_parsed"),
                            "_metadata").select("_parsed.*", "_metadata")
    reader = (spark.read.format(fmt).schema(schema)
              .option("mode", "PERMISSIVE")
              .option("columnNameOfCorruptRecord", corrupt_column))
    if fmt == "csv":
        reader = reader.option("header", "true").option("enforceSchema", "true")
    return reader.load(_reader_paths(files)).select("*", "_metadata")


def _reader_paths(uris: list[str]) -> list[str]:
    """Percent-encoded URIs as paths a DataFrameReader takes literally: decoded, with the
    characters it would take for a glob pattern escaped."""
    return [re.sub(r"([{}\[\]*?\\])", r"\\\1", unquote(uri)) for uri in uris]


def landed_lines(spark: SparkSession, files: list[str],
                 header: bool) -> dict[str, tuple[int, str]]:
    """Per landed file: its non-blank lines less the header line (what bronze must hold) and
    its first non-blank line (the CSV header).

    Local files are counted on the driver from their bytes, independently of Spark's parsers
    and at disk speed; files on other file systems in one Spark text scan.
    """
    counted = {}
    for f in files:
        local = _local_path(spark, f)
        if local is not None:
            with open(local, "rb") as stream:
                counted[f] = count_lines(stream, header)
    return {**counted, **landed_lines_in_spark(spark, [f for f in files if f not in counted],
                                             header)}


def count_lines(stream: BinaryIO, header: bool, chunk: int = 1 << 22) -> tuple[int, str]:
    """Non-blank lines of a byte stream (less a header line) and its first non-blank line, read
    a chunk at a time; lines end at LF, CR or CRLF, as in Spark's line reader."""
    count, first, carry = 0, None, b""
    for block in iter(lambda: stream.read(chunk), b""):
        lines = (carry + block).splitlines(keepends=True)
        # The last line may go on in the next block (a CRLF split by a block edge leaves a
        # blank line, which is not counted).
        carry = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        for line in lines:
            if line.strip():
                count += 1
                first = line.rstrip(b"\r\n") if first is None else first
    if carry.strip():
        count += 1
        first = carry if first is None else first
    text = first.decode("utf-8", errors="replace") if first is not None else ""
    return max(count - int(header), 0), text


def landed_lines_in_spark(spark: SparkSession, files: list[str],
                        header: bool) -> dict[str, tuple[int, str]]:
    if not files:
        return {}
    # A landed file is read as one split, so ids grow with line order inside each file.
    lines = (spark.read.text(_reader_paths(files))
             .select(F.col("_metadata.file_path").alias("file"), "value",
                     F.monotonically_increasing_id().alias("_line"))
             .filter(F.col("value").rlike(r"\S")))
    counts = lines.groupBy("file").agg(F.count(F.lit(1)).alias("lines"),
                                       F.min_by("value", "_line").alias("first")).collect()
    return {r["file"]: (int(r["lines"]) - int(header), str(r["first"] or "")) for r in counts}


def _local_path(spark: SparkSession, uri: str) -> str | None:
    """The driver's path of a file: URI (percent-encoded) or of a path without a scheme when
    the default file system is local; None for other file systems (a path without a scheme is
    on DBFS on Databricks, on HDFS on YARN)."""
    parts = urlparse(uri)
    if parts.scheme:
        return url2pathname(parts.path) if parts.scheme == "file" else None
    default = spark.sparkContext._jsc.hadoopConfiguration().get("fs.defaultFS", "file:///")
    return uri if urlparse(str(default)).scheme == "file" else None


def _hadoop_fs(spark: SparkSession, uri: str):  # type: ignore[no-untyped-def]
    path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)  # type: ignore[union-attr]
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def _hidden(name: str) -> bool:
    """Names Spark's file sources skip: hidden, side files, copies in progress."""
    return name.startswith((".", "_")) or name.endswith("._COPYING_")


def list_files(spark: SparkSession, folder: str) -> list[tuple[str, int, int]]:
    """The files of a folder as (percent-encoded URI, modification time in ms, size), hidden
    files skipped.

    Local folders are listed by the driver's OS (a new day's run should cost what the new day
    costs); other file systems through Hadoop.
    """
    local = _local_path(spark, folder)
    if local is not None:
        return _local_list(local)
    return _hadoop_list(spark, folder)


def _local_list(folder: str) -> list[tuple[str, int, int]]:
    if not os.path.isdir(folder):
        return []
    files = []
    for entry in os.scandir(folder):
        if _hidden(entry.name):
            continue
        try:
            if entry.is_file():
                stat = entry.stat()
                files.append((Path(os.path.abspath(entry.path)).as_uri(),
                              stat.st_mtime_ns // 1_000_000, stat.st_size))
        except FileNotFoundError:  # renamed or removed while listed: not there
            continue
    return files


def _hadoop_list(spark: SparkSession, folder: str) -> list[tuple[str, int, int]]:
    fs, path = _hadoop_fs(spark, folder)
    if not fs.exists(path):
        return []
    return [(s.getPath().toUri().toString(), int(s.getModificationTime()), int(s.getLen()))
            for s in fs.listStatus(path) if s.isFile() and not _hidden(s.getPath().getName())]


def read_text(spark: SparkSession, uri: str) -> str | None:
    """The text of a small file on any file system (None when it does not exist)."""
    local = _local_path(spark, uri)
    if local is not None:
        try:
            return Path(local).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
    return _hadoop_read(spark, uri)


def _hadoop_read(spark: SparkSession, uri: str) -> str | None:
    fs, path = _hadoop_fs(spark, uri)
    return _hadoop_read_path(spark, fs, path) if fs.exists(path) else None


def _hadoop_read_path(spark: SparkSession, fs, path) -> str:  # type: ignore[no-untyped-def]
    stream = fs.open(path)
    try:
        jvm = spark.sparkContext._jvm
        return str(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))  # type: ignore[union-attr]
    finally:
        stream.close()


def create_text(spark: SparkSession, uri: str, text: str) -> None:
    """Create a small file whole (readers see it complete or not at all); FileExistsError
    when it is already there."""
    local = _local_path(spark, uri)
    if local is None:
        _hadoop_create(spark, uri, text)
        return
    os.makedirs(os.path.dirname(local), exist_ok=True)
    partial = f"{local}.{uuid.uuid4().hex}.tmp"
    with open(partial, "w", encoding="utf-8") as out:
        out.write(text)
    try:
        try:
            os.link(partial, local)  # fails when the file exists, where a rename replaces it
        except FileExistsError:
            raise
        except OSError:  # no hard links (some FUSE and network mounts): look, then rename
            if os.path.exists(local):
                raise FileExistsError(f"{local} exists") from None
            os.replace(partial, local)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _hadoop_create(spark: SparkSession, uri: str, text: str) -> None:
    fs, path = _hadoop_fs(spark, uri)
    _, partial = _hadoop_fs(spark, f"{uri}.{uuid.uuid4().hex}.tmp")
    out = fs.create(partial, False)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
    if fs.exists(path) or not fs.rename(partial, path):
        fs.delete(partial, False)
        raise FileExistsError(f"{uri} exists")


def delete_file(spark: SparkSession, uri: str) -> None:
    """Remove a file if it is there."""
    local = _local_path(spark, uri)
    if local is None:
        fs, path = _hadoop_fs(spark, uri)
        fs.delete(path, False)
    elif os.path.exists(local):
        os.remove(local)


def latest_file(folder: str, pattern: str) -> str | None:
    """The last file (by name, which carries its date) in a local landing folder."""
    files = sorted(Path(folder).glob(pattern))
    return str(files[-1]) if files else None


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
