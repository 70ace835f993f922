"""Bronze: landed files to append-only Delta tables, every record kept with its lineage."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from urllib.parse import unquote, urlparse

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

CORRUPT_COLUMN = "_corrupt_record"

SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "flights": ("year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
                "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
                "air_time", "distance", "hour", "minute", "time_hour"),
    "weather": ("origin", "year", "month", "day", "hour", "temp", "dewp", "humid", "wind_dir",
                "wind_speed", "wind_gust", "precip", "pressure", "visib", "time_hour"),
    "planes": ("tailnum", "year", "type", "manufacturer", "model", "engines", "seats", "speed",
               "engine"),
    "airports": ("faa", "name", "lat", "lon", "alt", "tz", "dst", "tzone"),
    "airlines": ("carrier", "name"),
}
# How each daily source is dropped in the landing zone.
DAILY_FORMATS = {"flights": "csv", "weather": "json"}
METADATA_COLUMNS = ("_corrupt_record", "_source_file", "_source_modified_at", "_ingested_at",
                    "_run_id", "_batch_id")


def raw_schema(source: str) -> T.StructType:
    """All-string schema of a source plus the corrupt-record column: bronze never casts."""
    fields = [T.StructField(c, T.StringType(), True) for c in SOURCE_COLUMNS[source]]
    return T.StructType([*fields, T.StructField(CORRUPT_COLUMN, T.StringType(), True)])


def with_lineage(run_id: str, batch_id: int) -> Callable[[DataFrame], DataFrame]:
    """Keep the source's columns and add where and when each record came from."""

    def transform(df: DataFrame) -> DataFrame:
        source_columns = [c for c in df.columns if c not in ("_metadata", CORRUPT_COLUMN)]
        return df.select(
            *source_columns,
            F.col(CORRUPT_COLUMN),
            F.col("_metadata.file_path").alias("_source_file"),
            F.col("_metadata.file_modification_time").alias("_source_modified_at"),
            F.current_timestamp().alias("_ingested_at"),
            F.lit(run_id).alias("_run_id"),
            F.lit(batch_id).cast("long").alias("_batch_id"),
        )

    return transform


def file_name(path: Column) -> Column:
    """The last segment of a file path or URI."""
    return F.regexp_extract(path, r"([^/]+)$", 1)


def base_name(uri: str) -> str:
    """The file name of a percent-encoded URI, as the file system spells it."""
    return unquote(uri.rsplit("/", 1)[-1])


class BronzeAccountingError(RuntimeError):
    """Bronze would hold a different number of records than the files have lines."""


def header_drift(header: str, expected: tuple[str, ...]) -> str | None:
    """Describe how a CSV header differs from the source's columns, or None if it matches."""
    found = [c.strip().strip('"') for c in header.split(",")] if header else []
    if tuple(found) == expected:
        return None
    extra = [c for c in found if c not in expected]
    missing = [c for c in expected if c not in found]
    if not extra and not missing:
        return f"columns reordered: {found}"
    return f"extra columns {extra}, missing columns {missing}"


def records_per_file(rows: DataFrame) -> dict[str, int]:
    """Bronze records per source file (to name the files whose accounting is off)."""
    return {r[0]: int(r[1]) for r in rows.groupBy("_source_file").count().collect()}


def same_file(uri: str) -> str:
    """One spelling per file: Spark writes file:/x, file:///x and percent-escapes in turn."""
    parts = urlparse(uri)
    path = posixpath.normpath(unquote(parts.path))
    return path if parts.scheme in ("", "file") else f"{parts.scheme}://{parts.netloc}{path}"


def check_accounting(landed: dict[str, int], records: dict[str, int]) -> None:
    """Fail unless every file's landed lines all became bronze records."""
    landed = {same_file(f): n for f, n in landed.items()}
    records = {same_file(f): n for f, n in records.items()}
    wrong = {f: (n, records.get(f, 0)) for f, n in landed.items() if records.get(f, 0) != n}
    wrong.update({f: (0, n) for f, n in records.items() if f not in landed})
    if wrong:
        detail = "; ".join(f"{f}: {a} lines landed, {b} records read"
                           for f, (a, b) in wrong.items())
        raise BronzeAccountingError(f"landed lines != bronze records: {detail}")
