"""Bronze: landed files and events to append-only Delta tables, every record kept with its lineage.

Pure transforms and checks; reading the files and the streams is in tables.py.
"""

from __future__ import annotations

import codecs
import csv
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

CORRUPT_COLUMN = "_corrupt_record"
RESCUED_COLUMN = "_rescued_data"
MISSING_COLUMN = "_missing_columns"
INVALID_BYTES_COLUMN = "_invalid_bytes"
# A DOS end-of-file mark (Ctrl-Z), which some exporters still write after the last record.
EOF_MARK = "\x1a"

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
# Columns every record carries besides the source's own: what could not be parsed or placed,
# and where and when it came from.
RECORD_COLUMNS = T.StructType([
    T.StructField(CORRUPT_COLUMN, T.StringType()),
    T.StructField(RESCUED_COLUMN, T.StringType()),
    T.StructField(MISSING_COLUMN, T.ArrayType(T.StringType())),
    T.StructField(INVALID_BYTES_COLUMN, T.MapType(T.StringType(), T.BinaryType())),
])


class BronzeAccountingError(RuntimeError):
    """Bronze would hold a different number of records than the landed files have."""


class UnsupportedCharsetError(ValueError):
    """A source's charset from conf that bronze cannot read byte for byte."""


def raw_schema(source: str) -> T.StructType:
    """All-string schema of a source: bronze never casts."""
    return T.StructType([T.StructField(c, T.StringType(), True) for c in SOURCE_COLUMNS[source]])


# --- character sets -------------------------------------------------------------------------

def single_byte_table(charset: str) -> tuple[str, str, str]:
    """For a single-byte charset: the bytes 0x80-0xFF (as ISO-8859-1 characters), the
    characters they stand for, and the bytes the charset leaves undefined.

    Files are read as ISO-8859-1, which maps every byte to one character and so keeps the
    bytes exactly; a translation then gives the charset's characters (Spark's own readers
    accept seven charsets only). UTF-8 needs no table.
    """
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        raise UnsupportedCharsetError(f"unknown charset {charset!r}") from None
    if codec.name == "utf-8":
        return "", "", ""
    if len("\n,\"".encode(codec.name)) != 3 or len("a".encode(codec.name)) != 1:
        raise UnsupportedCharsetError(
            f"charset {charset!r} is not ASCII-compatible with one byte per character; bronze "
            "reads UTF-8 and single-byte charsets (windows-1252, iso-8859-15, cp1250, ...)")
    source, target, undefined = [], [], []
    for byte in range(0x80, 0x100):
        try:
            char = bytes([byte]).decode(codec.name)
        except UnicodeDecodeError:
            undefined.append(chr(byte))
            continue
        if char != chr(byte):
            source.append(chr(byte))
            target.append(char)
    return "".join(source), "".join(target), "".join(undefined)


def decoded(columns: Sequence[str], names: Sequence[str],
            charset: str) -> Callable[[DataFrame], DataFrame]:
    """Text read as ISO-8859-1 (byte for byte) decoded in the source's charset, as the
    columns `_text<column>`.

    Each column holding bytes the charset cannot decode keeps them, exactly as landed, in
    _invalid_bytes (its name in `names` -> bytes) and its text shows U+FFFD in their place,
    so the record is visible, recoverable and judged by silver's text rule.
    """
    source, target, undefined = single_byte_table(charset)
    utf8 = charset_is_utf8(charset)

    def transform(df: DataFrame) -> DataFrame:
        raw = {c: F.encode(F.col(c), "ISO-8859-1") for c in columns}
        if utf8:
            as_read = {c: b.cast("string") for c, b in raw.items()}
            valid = {c: F.is_valid_utf8(t) | t.isNull() for c, t in as_read.items()}
            text = {c: F.make_valid_utf8(t) for c, t in as_read.items()}
        else:
            bad = f"[{undefined}]"
            valid = {c: F.col(c).isNull() | ~F.col(c).rlike(bad) if undefined else F.lit(True)
                     for c in columns}
            text = {c: F.translate(F.col(c), source + undefined,
                                   target + "\ufffd" * len(undefined))
                    if source or undefined else F.col(c) for c in columns}
        all_valid = F.lit(True)
        for ok in valid.values():
            all_valid = all_valid & ok
        invalid = F.map_from_entries(F.filter(F.array(*[
            F.when(~valid[c], F.struct(F.lit(n).alias("key"), raw[c].alias("value")))
            for c, n in zip(columns, names, strict=True)]), lambda e: e.isNotNull()))
        return df.select("*", *[t.alias(f"_text{c}") for c, t in text.items()],
                         F.when(~all_valid, invalid).alias(INVALID_BYTES_COLUMN))

    return transform


def charset_is_utf8(charset: str) -> bool:
    return codecs.lookup(charset).name == "utf-8"


# --- CSV headers ----------------------------------------------------------------------------

def header_names(header: bytes, charset: str) -> list[str]:
    """The column names of a CSV header line (a UTF-8 byte-order mark dropped), made unique:
    a repeated name gets its position ("gate#21"), an empty one "_c<position>"."""
    text = header.decode(codecs.lookup(charset).name, errors="replace").lstrip("\ufeff")
    fields = next(csv.reader([text]), []) if text else []
    names: list[str] = []
    for i, name in enumerate(f.strip() for f in fields):
        name = name or f"_c{i + 1}"
        names.append(f"{name}#{i + 1}" if name in names else name)
    return names


def header_drift(names: Sequence[str], expected: Sequence[str]) -> str | None:
    """Describe how a CSV header differs from the source's columns, or None if it matches."""
    if tuple(names) == tuple(expected):
        return None
    extra = [c for c in names if c not in expected]
    missing = [c for c in expected if c not in names]
    if not extra and not missing:
        return "columns reordered (matched by name)"
    parts = [f"extra columns {extra} kept in {RESCUED_COLUMN}" if extra else "",
             f"missing columns {missing} (rows quarantined in silver)" if missing else ""]
    return ", ".join(p for p in parts if p)


def by_header(source: str, names: Sequence[str], charset: str,
              eof_mark: bool) -> Callable[[DataFrame], DataFrame]:
    """Rows read positionally as _col1.._colN under a file's header, as the source's columns
    matched by name: missing ones null and listed in _missing_columns, extra ones kept as a
    JSON object in _rescued_data, bytes the charset cannot decode kept in _invalid_bytes.

    eof_mark: the file ends with Ctrl-Z; a record made of nothing else is dropped and a
    Ctrl-Z ending the last field is cut off.
    """
    expected = SOURCE_COLUMNS[source]
    positions = set(names)
    extra = [n for n in names if n not in expected]
    missing = [c for c in expected if c not in positions]
    read = [f"_col{i + 1}" for i in range(len(names))]

    def transform(df: DataFrame) -> DataFrame:
        if eof_mark:
            df = without_eof_mark(df, read)
        df = df.transform(decoded([*read, CORRUPT_COLUMN], [*names, CORRUPT_COLUMN], charset))
        text = {n: F.col(f"_text{r}") for n, r in zip(names, read, strict=True)}
        rescued = F.to_json(F.struct(*[text[n].alias(n) for n in extra]))
        any_extra = F.lit(False)
        for n in extra:
            any_extra = any_extra | text[n].isNotNull()
        return df.select(
            *[(text[c] if c in positions else F.lit(None).cast("string")).alias(c)
              for c in expected],
            F.col(f"_text{CORRUPT_COLUMN}").alias(CORRUPT_COLUMN),
            (F.when(any_extra, rescued) if extra else F.lit(None).cast("string"))
            .alias(RESCUED_COLUMN),
            (F.array(*[F.lit(c) for c in missing]) if missing
             else F.lit(None).cast("array<string>")).alias(MISSING_COLUMN),
            F.col(INVALID_BYTES_COLUMN),
            F.col("_metadata"),
        )

    return transform


def without_eof_mark(df: DataFrame, read: Sequence[str]) -> DataFrame:
    """Drop a record that is only Ctrl-Z (the DOS end-of-file mark on a line of its own) and
    cut a Ctrl-Z that ends the last field (the mark written right after the last record)."""
    whole = F.coalesce(F.col(CORRUPT_COLUMN), F.col(read[0]))
    last = read[-1]
    return (df.filter(whole.isNull() | ~whole.rlike(f"^{EOF_MARK}+$"))
            .withColumn(last, F.regexp_replace(last, f"{EOF_MARK}+$", "")))


# --- JSON lines -----------------------------------------------------------------------------

def from_json_lines(source: str, eof_mark: bool) -> Callable[[DataFrame], DataFrame]:
    """Lines of a JSON-lines file (read as text, bytes as landed) as the source's columns.

    A line that is not one JSON object (an array, a number, a cut-off object, two objects, an
    object and more text, a key given twice, NaN or Infinity, which RFC 8259 does not allow)
    is kept whole in _corrupt_record (Spark's JSON reader would split an array into records
    or drop it, and keep the first of two objects); keys the source does not know are kept in
    _rescued_data, absent ones listed in _missing_columns; bytes that are not UTF-8 are kept in
    _invalid_bytes.
    """
    expected = SOURCE_COLUMNS[source]
    schema = T.StructType([*raw_schema(source).fields,
                           T.StructField(CORRUPT_COLUMN, T.StringType())])
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_COLUMN}

    def transform(df: DataFrame) -> DataFrame:
        lines = df.filter(F.col("value").rlike(r"\S"))
        if eof_mark:
            lines = (lines.filter(~F.col("value").rlike(f"^{EOF_MARK}+$"))
                     .withColumn("value", F.regexp_replace("value", f"{EOF_MARK}+$", "")))
        bytes_ = F.col("value").cast("binary")
        text = F.make_valid_utf8(F.col("value"))
        parsed = lines.select(F.from_json(text, schema, options).alias("_parsed"),
                              F.when(~F.is_valid_utf8("value"), F.create_map(
                                  F.lit("_line"), bytes_)).alias(INVALID_BYTES_COLUMN),
                              json_keys(text).alias("_keys"), text.alias("_text"), "_metadata")
        known = F.array(*[F.lit(c) for c in expected])
        extra = F.array_except("_keys", known)
        missing = F.array_except(known, "_keys")
        fields = F.from_json("_text", "map<string,string>")
        well_formed = (F.col(f"_parsed.{CORRUPT_COLUMN}").isNull()
                       & one_object(F.col("_text"), F.col("_keys")))
        return parsed.select(
            *[F.when(well_formed, F.col(f"_parsed.{c}")).alias(c) for c in expected],
            F.when(well_formed, F.lit(None).cast("string")).otherwise(F.col("_text"))
            .alias(CORRUPT_COLUMN),
            F.when(well_formed & (F.size(extra) > 0), F.to_json(F.map_filter(
                fields, lambda k, _: ~F.array_contains(known, k)))).alias(RESCUED_COLUMN),
            F.when(well_formed & (F.size(missing) > 0), missing).alias(MISSING_COLUMN),
            F.col(INVALID_BYTES_COLUMN), F.col("_metadata"),
        )

    return transform


# A JSON string that ends the array one_object wraps a line in: the escaped U+0001, which no
# landed line holds in that place.
_END = '"\\u0001"'


def one_object(text: Column, keys: Column) -> Column:
    """Whether a line Spark parsed as an object is that object alone, its keys unique. Spark's
    JSON parser reads the first value of a line and ignores what follows it: two objects
    written on one line (a missing newline), or an object and trailing text, would keep the
    first object and lose the rest without a trace; of a key given twice the last value wins.
    So the line is parsed again as the first element of an array ending with a known string:
    anything after the object makes that array malformed or longer."""
    wrapped = F.concat(F.lit("["), text, F.lit(f",{_END}]"))
    return F.coalesce((F.json_array_length(wrapped) == 2)
                      & (F.get_json_object(wrapped, "$[1]") == F.lit("\u0001"))
                      & (F.size(keys) == F.size(F.array_distinct(keys))), F.lit(False))


def json_keys(text: Column) -> Column:
    """The top-level keys of a JSON object (null when the text is not one)."""
    return F.json_object_keys(text)


# --- lineage and accounting -----------------------------------------------------------------

def with_lineage(run_id: str, batch_id: int) -> Callable[[DataFrame], DataFrame]:
    """Keep the record's columns and add where and when it came from."""

    def transform(df: DataFrame) -> DataFrame:
        columns = [c for c in df.columns if c != "_metadata"]
        return df.select(
            *columns,
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


def same_file(uri: str) -> str:
    """One spelling per file: Spark writes file:/x, file:///x and percent-escapes in turn."""
    parts = urlparse(uri)
    path = posixpath.normpath(unquote(parts.path))
    return path if parts.scheme in ("", "file") else f"{parts.scheme}://{parts.netloc}{path}"


@dataclass
class _Scan:
    """What counting a landed file's lines has seen so far."""

    records: int = 0
    quoted: bool = False
    header: bytes | None = None
    last: bytes = b""
    last_eof: bool = False


@dataclass(frozen=True)
class LandedProfile:
    """What a landed file holds, counted from its bytes independently of Spark's readers."""

    records: int  # records bronze must hold (a CSV header is not one)
    header: bytes  # a CSV file's first line (b"" when empty)
    eof_mark: bool  # the file ends with Ctrl-Z


QUOTE, COMMA = ord('"'), ord(",")


def quoted_after(body: bytes, quoted: bool) -> bool:
    """Whether a quoted field is open at the end of a CSV line that starts with one open or
    not. A quote opens a field only at the field's start; inside one, "" is a quote and a lone
    quote closes it; elsewhere a quote is text (Spark's CSV reader reads N1"23 as it stands)."""
    at_start = not quoted
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if quoted:
            if c == QUOTE:
                if i + 1 < n and body[i + 1] == QUOTE:
                    i += 1  # an escaped quote
                else:
                    quoted = False
        elif c == QUOTE and at_start:
            quoted = True
        at_start = not quoted and c == COMMA
        i += 1
    return quoted


def profile_landed(stream: BinaryIO, csv_format: bool, chunk: int = 1 << 22) -> LandedProfile:
    """Count a landed file's records a chunk at a time.

    Lines end at LF, CR or CRLF. CSV (RFC 4180): a record starts on a non-empty line outside
    quotes and goes on while a quoted field is open (a line break inside quotes is part of
    the record; see `quoted_after`). JSON lines: every line that is not only whitespace. A
    last record that is nothing but Ctrl-Z is the DOS end-of-file mark, not a record.
    """
    state = _Scan()

    def take(line: bytes) -> None:
        body = line.rstrip(b"\r\n")
        starts = (body != b"" if csv_format else body.strip() != b"") and not state.quoted
        if starts:
            state.records += 1
            state.header = body if state.header is None else state.header
            state.last_eof = body.strip(EOF_MARK.encode()) == b""
        elif state.quoted:
            state.last_eof = False
        if csv_format and b'"' in body:
            state.quoted = quoted_after(body, state.quoted)
        if body.strip():
            state.last = body

    carry = b""
    for block in iter(lambda: stream.read(chunk), b""):
        lines = (carry + block).splitlines(keepends=True)
        # The last line may go on in the next block (a CRLF split by a block edge leaves an
        # empty line, which is not a record).
        carry = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        for line in lines:
            take(line)
    if carry:
        take(carry)
    eof_mark = state.last.rstrip().endswith(EOF_MARK.encode())
    records = state.records - int(eof_mark and state.last_eof)
    header = state.header or b""
    return LandedProfile(max(records - int(csv_format), 0), header, eof_mark)


def records_per_file(rows: DataFrame) -> dict[str, int]:
    """Bronze records per source file (to name the files whose accounting is off)."""
    return {r[0]: int(r[1]) for r in rows.groupBy("_source_file").count().collect()}


def check_accounting(landed: dict[str, int], records: dict[str, int]) -> None:
    """Fail unless every file's landed records all became bronze records."""
    landed = {same_file(f): n for f, n in landed.items()}
    records = {same_file(f): n for f, n in records.items()}
    wrong = {f: (n, records.get(f, 0)) for f, n in landed.items() if records.get(f, 0) != n}
    wrong.update({f: (0, n) for f, n in records.items() if f not in landed})
    if wrong:
        detail = "; ".join(f"{f}: {a} records landed, {b} read" for f, (a, b) in wrong.items())
        raise BronzeAccountingError(f"landed records != bronze records: {detail}")


# --- events ---------------------------------------------------------------------------------

EVENT_COLUMNS = ("key", "value", "topic", "partition", "offset", "timestamp")


def from_kafka(df: DataFrame) -> DataFrame:
    """Kafka records as bronze keeps them: key and value as text (a key or value that is not
    UTF-8 shows U+FFFD and keeps its bytes in _invalid_bytes under "key" or "value"), topic,
    partition, offset, timestamp."""
    key, value = F.col("key").cast("string"), F.col("value").cast("string")
    invalid = F.map_filter(F.create_map(
        F.lit("key"), F.when(~F.is_valid_utf8(key), F.col("key")),
        F.lit("value"), F.when(~F.is_valid_utf8(value), F.col("value"))),
        lambda _, raw: raw.isNotNull())
    return df.select(
        F.make_valid_utf8(key).alias("key"),
        F.make_valid_utf8(value).alias("value"),
        "topic", "partition", "offset", "timestamp",
        F.when(F.size(invalid) > 0, invalid).alias(INVALID_BYTES_COLUMN),
    )


def with_event_lineage(run_id: str, batch_id: int) -> Callable[[DataFrame], DataFrame]:
    """Add when the events were ingested, by which run and micro-batch."""

    def transform(df: DataFrame) -> DataFrame:
        return df.select("*", F.current_timestamp().alias("_ingested_at"),
                         F.lit(run_id).alias("_run_id"),
                         F.lit(batch_id).cast("long").alias("_batch_id"))

    return transform
