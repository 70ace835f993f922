"""Bronze ingestion of real landed files: every record once, columns by name, bytes kept."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.bronze import (
    BronzeAccountingError,
    LandedProfile,
    check_accounting,
    file_name,
    header_names,
    profile_landed,
    single_byte_table,
)
from lakehouse.config import Config
from lakehouse.seed import seed
from lakehouse.stages import bronze


def landed_lines(folder: Path, header: bool) -> dict[str, int]:
    """Records per file of simple exports (no quoted line breaks): lines less the header."""
    return {p.name: len(p.read_bytes().splitlines()) - int(header) for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def bronze_lines(spark: SparkSession, config: Config, table: str) -> dict[str, int]:
    rows = (tables.read(spark, config, table).groupBy(file_name(F.col("_source_file")))
            .count().collect())
    return {r[0]: r[1] for r in rows}


def by_table(results: list[dict]) -> dict[str, dict]:
    return {r["table_name"]: r for r in results}


def ingest(spark: SparkSession, config: Config, source: str) -> dict:
    """One source's ingestion alone (no snapshots, no other source), as its audit row says it."""
    counts = bronze.ingest(spark, config, next(s for s in bronze.sources(config)
                                               if s.name == source), "run-1")
    return {"files": counts.files, "rows_landed": counts.landed, "rows_in": counts.rows,
            "rows_corrupt": counts.corrupt, "message": " | ".join(counts.notes())}


def header_and_row(landing: Path) -> tuple[str, str]:
    lines = (landing / "flights" / "flights_2013-01-01.csv").read_text().splitlines()
    return lines[0], lines[1]


def test_every_landed_line_lands_once_with_lineage_and_a_rerun_commits_nothing(
        spark: SparkSession, config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 2))
    results = by_table(bronze.run(spark, config, "run-1"))
    assert results["bronze_flights"]["files"] == 2
    flights = results["bronze_flights"]
    assert flights["rows_landed"] == flights["rows_in"] == 842 + 943
    assert bronze_lines(spark, config, "bronze_flights") == landed_lines(landing / "flights", True)
    assert bronze_lines(spark, config, "bronze_weather") == landed_lines(landing / "weather", False)
    rows = tables.read(spark, config, "bronze_flights")
    lineage = rows.agg(*(F.sum(F.col(c).isNull().cast("int")).alias(c) for c in
                         ("_source_file", "_source_modified_at", "_ingested_at", "_run_id")))
    assert all(v == 0 for v in lineage.first().asDict().values())
    assert rows.filter(F.col("dep_time") == "NA").limit(1).count() == 1  # raw text kept
    assert tables.read(spark, config, "bronze_planes").count() == 3322

    tables_ = ("bronze_flights", "bronze_weather", "bronze_planes")
    versions = {t: tables.version(spark, config, t) for t in tables_}
    assert all(r["rows_in"] == 0 for r in bronze.run(spark, config, "run-2"))
    assert {t: tables.version(spark, config, t) for t in tables_} == versions


def test_new_late_malformed_and_nested_files_are_picked_up(spark: SparkSession,
                                                           config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    ingest(spark, config, "flights")
    before = tables.read(spark, config, "bronze_flights").count()
    header, _ = header_and_row(landing)
    # A second file for an old day in a subfolder, with one malformed line, and an empty file.
    (landing / "flights" / "late").mkdir()
    (landing / "flights" / "late" / "flights_2013-01-01_late.csv").write_text(
        header + "\n2013,1,1,600,600,0,900,900,0,UA,9999,N14228,EWR,IAH,200,1400,6,0,"
        "2013-01-01T11:00:00Z\nthis line,is,broken\n")
    (landing / "flights" / "flights_2013-01-02_empty.csv").write_text("")
    result = ingest(spark, config, "flights")
    assert result["rows_in"] == 2 and result["rows_corrupt"] == 1
    flights = tables.read(spark, config, "bronze_flights")
    assert flights.count() == before + 2
    corrupt = flights.filter(F.col("_corrupt_record").isNotNull()).collect()
    assert [r["_corrupt_record"] for r in corrupt] == ["this line,is,broken"]
    assert corrupt[0]["_source_file"].endswith("late/flights_2013-01-01_late.csv")


def test_two_files_of_one_name_in_subfolders_are_refused(spark: SparkSession,
                                                         config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    day = landing / "flights" / "flights_2013-01-01.csv"
    (landing / "flights" / "again").mkdir()
    (landing / "flights" / "again" / day.name).write_bytes(day.read_bytes())
    with pytest.raises(bronze.LandingLayoutError, match=r"flights_2013-01-01.csv: .*again/"):
        bronze.ingest(spark, config, bronze.sources(config)[0], "run-1")
    assert not tables.exists(spark, config, "bronze_flights")
    # a continuous run's look refuses a clash the look before saw too (an object store's move
    # is a copy, then a delete)
    seen: dict[str, list[str]] = {}
    flights = bronze.sources(config)[0]
    assert bronze.landed_uniquely(spark, config, flights, seen) and list(seen) == [day.name]
    with pytest.raises(bronze.LandingLayoutError, match=r"flights_2013-01-01.csv: .*again/"):
        bronze.landed_uniquely(spark, config, flights, seen)
    (again := landing / "flights" / "again" / day.name).rename(again.with_name("moved.csv"))
    assert bronze.landed_uniquely(spark, config, flights, seen) and seen == {}


def test_columns_are_matched_by_header_name(spark: SparkSession, config: Config) -> None:
    """dep_delay and arr_delay swapped, an extra column, a missing one, a reordered snapshot."""
    landing = Path(config.landing)
    folder = landing / "flights"
    folder.mkdir(parents=True)
    names = ["year", "month", "day", "dep_time", "sched_dep_time", "arr_delay", "arr_time",
             "sched_arr_time", "dep_delay", "carrier", "flight", "tailnum", "origin", "dest",
             "air_time", "distance", "hour", "minute", "time_hour"]
    row = ["2013", "1", "2", "600", "600", "-7", "900", "900", "33", "UA", "1", "N14228", "EWR",
           "IAH", "200", "1400", "6", "0", "2013-01-02T11:00:00Z"]
    (folder / "swapped.csv").write_text(",".join(names) + "\n" + ",".join(row) + "\n")
    (folder / "extra.csv").write_text(",".join([*names, "gate"]) + "\n"
                                      + ",".join([*row[:10], "2", *row[11:], "B12"]) + "\n")
    (folder / "short.csv").write_text(",".join(n for n in names if n != "air_time") + "\n"
                                      + ",".join([*row[:10], "3", *row[11:14], *row[15:]]) + "\n")
    results = ingest(spark, config, "flights")
    rows = {r["flight"]: r for r in tables.read(spark, config, "bronze_flights").collect()}
    assert (rows["1"]["dep_delay"], rows["1"]["arr_delay"]) == ("33", "-7")
    assert rows["1"]["_rescued_data"] is None and rows["1"]["_missing_columns"] is None
    assert rows["2"]["_rescued_data"] == '{"gate":"B12"}' and rows["2"]["dep_delay"] == "33"
    assert rows["3"]["_missing_columns"] == ["air_time"] and rows["3"]["air_time"] is None
    assert rows["3"]["distance"] == "1400"
    assert all(r["_corrupt_record"] is None for r in rows.values())
    message = results["message"]
    assert "swapped.csv: columns reordered (matched by name)" in message
    assert "extra.csv: extra columns ['gate'] kept in _rescued_data" in message
    assert "short.csv: missing columns ['air_time'] (rows quarantined in silver)" in message
    assert "1 record(s) with extra columns" in message and "1 record(s) lacking columns" in message


def test_a_csv_without_a_header_fails_the_batch_and_writes_nothing(
        spark: SparkSession, config: Config) -> None:
    """Its first record would be read as the header and kept nowhere (the others quarantined
    for lacking every column): the batch fails naming the file, and nothing is written."""
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 1))
    day = Path(config.landing) / "flights" / "flights_2013-01-01.csv"
    day.write_text("\n".join(day.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(bronze.MissingHeaderError, match=r"flights_2013-01-01.csv: its first "
                                                        r"line names none of the source's"):
        ingest(spark, config, "flights")
    assert not tables.exists(spark, config, "bronze_flights")
    # a file of one record and no header (counted as a header alone) fails the same way
    lines = day.read_text().splitlines()
    day.write_text(lines[0] + "\n")
    with pytest.raises(bronze.MissingHeaderError, match=r"flights_2013-01-01.csv"):
        ingest(spark, config, "flights")
    # removed, and landed again under a new name with its header: the failed micro-batch,
    # replayed, skips the file that is gone; the corrected one is read once
    fixed = day.with_name("flights_2013-01-01_fixed.csv")
    elsewhere = Path(config.landing).parent / "elsewhere"
    seed(elsewhere, date(2013, 1, 1), date(2013, 1, 1))
    fixed.write_bytes((elsewhere / "flights" / day.name).read_bytes())
    day.unlink()
    ingest(spark, config, "flights")
    landed = tables.read(spark, config, "bronze_flights").groupBy("_source_file").count()
    assert [(Path(r[0]).name, r[1]) for r in landed.collect()] == [(fixed.name, 842)]


def test_invalid_utf8_bytes_are_kept_exactly(spark: SparkSession, config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    header, _ = header_and_row(landing)
    bad = b"2013,1,2,601,600,1,901,900,1,UA,2,N\xff\xfe8,EWR,IAH,200,1400,6,0,2013-01-02T11:00:00Z"
    good = "2013,1,2,602,600,1,901,900,1,UA,3,N\u00c5B8,EWR,IAH,200,1400,6,0,2013-01-02T11:00:00Z"
    (landing / "flights" / "flights_2013-01-02.csv").write_bytes(
        header.encode() + b"\n" + bad + b"\n" + good.encode() + b"\n")
    result = ingest(spark, config, "flights")
    assert "1 record(s) with bytes the source's charset cannot decode" in result["message"]
    rows = {r["flight"]: r for r in tables.read(spark, config, "bronze_flights")
            .filter(F.col("flight").isin("2", "3")).collect()}
    assert rows["2"]["tailnum"] == "N\ufffd\ufffd8"  # visible as replacement characters
    assert rows["2"]["_invalid_bytes"] == {"tailnum": bytearray(b"N\xff\xfe8")}  # recoverable
    assert rows["3"]["tailnum"] == "N\u00c5B8" and rows["3"]["_invalid_bytes"] is None


def test_windows_1252_export_is_read_in_its_charset(spark: SparkSession, config: Config) -> None:
    """A no-break space in a tail number and an en dash for a minus sign, as Excel exports them."""
    cp1252 = {**config.values, "bronze": {**config.section("bronze"), "files": {
        "flights": {"format": "csv", "charset": "windows-1252"}}}}
    config = Config(config.env, cp1252)
    folder = Path(config.landing) / "flights"
    folder.mkdir(parents=True)
    seed(Path(config.landing) / "elsewhere", date(2013, 1, 1), date(2013, 1, 1))
    header = (Path(config.landing) / "elsewhere" / "flights" / "flights_2013-01-01.csv"
              ).read_text().splitlines()[0]
    row = ("2013,1,2,600,600,\u20135,900,900,\u20137,UA,1,N\u00a0123,EWR,IAH,200,1400,6,0,"
           "2013-01-02T11:00:00Z")
    (folder / "export.csv").write_bytes(f"{header}\r\n{row}\r\n".encode("cp1252"))
    landed = (folder / "export.csv").read_bytes()
    assert b"\x96" in landed and b"\xa0" in landed
    ingest(spark, config, "flights")
    read = tables.read(spark, config, "bronze_flights").first()
    assert (read["tailnum"], read["dep_delay"], read["arr_delay"]) == (
        "N\u00a0123", "\u20135", "\u20137")
    assert read["_invalid_bytes"] is None


def flights_header_and_folder(config: Config) -> tuple[str, Path]:
    """The real flights header (a day seeded aside) and the empty flights landing folder, for
    a test to land files of its own making."""
    landing = Path(config.landing)
    seed(landing / "elsewhere", date(2013, 1, 1), date(2013, 1, 1))
    header = (landing / "elsewhere" / "flights" / "flights_2013-01-01.csv"
              ).read_text().splitlines()[0]
    folder = landing / "flights"
    folder.mkdir(parents=True)
    return header, folder


def test_quoted_line_breaks_escaped_quotes_and_ctrl_z(spark: SparkSession, config: Config) -> None:
    header, folder = flights_header_and_folder(config)
    quoted = ('2013,1,2,600,600,0,900,900,0,UA,1,"N1\r\n23",EWR,IAH,200,1400,6,0,'
              '2013-01-02T11:00:00Z\r\n2013,1,2,600,600,0,900,900,0,UA,2,"N""Q",EWR,IAH,200,'
              '1400,6,0,2013-01-02T11:00:00Z\r\n')
    (folder / "quoted.csv").write_bytes(f"{header}\r\n{quoted}\x1a".encode())
    last = "2013,1,2,600,600,0,900,900,0,UA,3,N3,EWR,IAH,200,1400,6,0,2013-01-02T11:00:00Z"
    (folder / "glued.csv").write_bytes(f"{header}\n{last}\x1a".encode())
    result = ingest(spark, config, "flights")
    assert result["rows_landed"] == result["rows_in"] == 3 and result["rows_corrupt"] == 0
    assert "Ctrl-Z) not taken for a record: glued.csv, quoted.csv" in result["message"]
    rows = {r["flight"]: r for r in tables.read(spark, config, "bronze_flights").collect()}
    assert rows["1"]["tailnum"] == "N1\n23" and rows["2"]["tailnum"] == 'N"Q'
    assert rows["3"]["time_hour"] == "2013-01-02T11:00:00Z"


def test_a_quote_inside_an_unquoted_field_is_text_for_the_count_as_for_spark(
        spark: SparkSession, config: Config) -> None:
    """A stray quote is not the start of a quoted field: counted by quote parity, N12"3 opened
    one, the rest of the file became one record, and the batch failed its accounting."""
    header, folder = flights_header_and_folder(config)
    rows = [f"2013,1,2,600,600,0,900,900,0,UA,{n},{tail},EWR,IAH,200,1400,6,0,"
            "2013-01-02T11:00:00Z" for n, tail in ((1, 'N12"3'), (2, "N2"), (3, 'N3"'))]
    data = f"{header}\n" + "\n".join(rows) + "\n"
    (folder / "stray.csv").write_text(data)
    assert profile_landed(io.BytesIO(data.encode()), csv_format=True).records == 3
    result = ingest(spark, config, "flights")
    assert result["rows_landed"] == result["rows_in"] == 3 and result["rows_corrupt"] == 0
    read = {r["flight"]: r["tailnum"] for r in tables.read(spark, config, "bronze_flights")
            .collect()}
    assert read == {"1": 'N12"3', "2": "N2", "3": 'N3"'}


def test_a_batch_whose_records_do_not_add_up_is_not_committed(
        spark: SparkSession, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count is checked before the write: bronze and the stream's checkpoint stay as they
    were, so the same batch fails the same way on every rerun until the file is dealt with."""
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 1, 1))
    counted = bronze.profiles

    def one_too_many(*args: object) -> dict[str, LandedProfile]:
        return {uri: replace(p, records=p.records + 1) for uri, p in counted(*args).items()}

    monkeypatch.setattr(bronze, "profiles", one_too_many)
    for _ in range(2):
        with pytest.raises(BronzeAccountingError, match=r"bronze_flights: .*flights_2013-01-01"
                                                        r".csv: 843 records landed, 842 read; "
                                                        r"nothing was written"):
            ingest(spark, config, "flights")
        assert not tables.exists(spark, config, "bronze_flights")
    monkeypatch.undo()
    assert ingest(spark, config, "flights")["rows_in"] == 842


def test_json_lines_that_are_not_one_object_are_kept_whole(spark: SparkSession,
                                                           config: Config) -> None:
    """The JSON reader would drop an empty array line and split an array of two objects; its
    parser reads a line's first value and ignores the rest (two objects on one line, trailing
    text), and of a key given twice keeps the last. NaN is not JSON (RFC 8259)."""
    weather = Path(config.landing) / "weather"
    weather.mkdir(parents=True)
    lines = ['{"origin": "EWR", "year": "2013", "hour": "1", "time_hour": "}{ ,{"}', "[]",
             '[{"origin": "JFK"}, {"origin": "LGA"}]', "42", "   ", '{"origin": "LGA", "te',
             '{"origin": "JFK", "hour": "2"}{"origin": "LGA", "hour": "3"}',
             '{"origin": "JFK", "hour": "4"} {"origin": "LGA", "hour": "5"}',
             '{"origin": "JFK", "hour": "6"},{"origin": "LGA", "hour": "7"}',
             '{"origin": "JFK", "hour": "8"} trailing', '{"origin": "JFK", "hour": "9"}]',
             '{"origin": "JFK", "hour": "10", "hour": "11"}', '{"origin": "JFK", "temp": NaN}']
    (weather / "weather_2013-01-01.jsonl").write_text("\n".join(lines) + "\n")
    result = ingest(spark, config, "weather")
    assert result["rows_landed"] == result["rows_in"] == 12
    read = tables.read(spark, config, "bronze_weather")
    corrupt = read.filter(F.col("_corrupt_record").isNotNull()).collect()
    assert sorted(r["_corrupt_record"] for r in corrupt) == sorted(lines[1:4] + lines[5:])
    assert {(r["origin"], r["hour"]) for r in corrupt} == {(None, None)}
    (whole,) = read.filter(F.col("_corrupt_record").isNull()).collect()
    assert whole["hour"] == "1" and whole["time_hour"] == "}{ ,{"
    assert "temp" in whole["_missing_columns"]


def test_a_json_lines_file_with_a_byte_order_mark_keeps_its_first_record(
        spark: SparkSession, config: Config) -> None:
    """Windows tools save UTF-8 with a byte-order mark: it is not part of the first record
    (Hadoop's line reader, under Spark's text source, skips it at a file's start)."""
    weather = Path(config.landing) / "weather"
    weather.mkdir(parents=True)
    lines = ['{"origin": "EWR", "hour": "1"}', '{"origin": "JFK", "hour": "2"}']
    (weather / "weather_2013-01-01.jsonl").write_bytes(
        b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    result = ingest(spark, config, "weather")
    assert result["rows_landed"] == result["rows_in"] == 2
    read = tables.read(spark, config, "bronze_weather")
    assert read.filter(F.col("_corrupt_record").isNotNull()).count() == 0
    assert sorted((r["origin"], r["hour"]) for r in read.collect()) == [("EWR", "1"),
                                                                         ("JFK", "2")]


def test_new_snapshot_replaces_reference_and_history_keeps_the_old(
        spark: SparkSession, config: Config) -> None:
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    bronze.ingest_snapshot(spark, config, "planes", "run-1")
    # the next day's dump repeats the loaded one byte for byte: noted, no new version
    seed(landing, date(2013, 1, 2), date(2013, 1, 2))
    repeated = bronze.ingest_snapshot(spark, config, "planes", "run-1b")
    assert repeated.rows == 0 and repeated.unchanged == ["planes_2013-01-02.csv"]
    assert "not loaded again" in repeated.notes()[0]
    assert tables.version(spark, config, "bronze_planes") == 0
    old = landing / "reference" / "planes" / "planes_2013-01-01.csv"
    lines = old.read_text().splitlines()
    (old.parent / "planes_2013-02-01.csv").write_text("\n".join(lines[:-1]) + "\n")
    assert bronze.ingest_snapshot(spark, config, "planes", "run-2").rows == 3321
    assert tables.read(spark, config, "bronze_planes").count() == 3321
    assert tables.read(spark, config, "bronze_planes", version=0).count() == 3322


def test_snapshot_whose_records_do_not_add_up_leaves_the_table_and_fails_every_rerun(
        spark: SparkSession, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count is checked before bronze_<ref> is replaced: a bad snapshot is never loaded,
    so a rerun (which skips a snapshot already loaded) meets it and fails again."""
    landing = Path(config.landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    bronze.ingest_snapshot(spark, config, "planes", "run-1")
    before = sorted(tables.read(spark, config, "bronze_planes").collect(), key=repr)
    old = landing / "reference" / "planes" / "planes_2013-01-01.csv"
    (old.parent / "planes_2013-02-01.csv").write_text(
        "\n".join(old.read_text().splitlines()[:-1]) + "\n")
    profiles = bronze.profiles

    def one_record_too_many(spark_: SparkSession, files: list[str], fmt: str) -> dict:
        return {uri: replace(p, records=p.records + 1)
                for uri, p in profiles(spark_, files, fmt).items()}

    monkeypatch.setattr(bronze, "profiles", one_record_too_many)
    for run_id in ("run-2", "run-3"):
        with pytest.raises(BronzeAccountingError, match=r"bronze_planes: .*planes_2013-02-01.csv: "
                                                        r"3322 records landed, 3321 read"):
            bronze.ingest_snapshot(spark, config, "planes", run_id)
        assert tables.version(spark, config, "bronze_planes") == 0
        assert sorted(tables.read(spark, config, "bronze_planes").collect(), key=repr) == before
    monkeypatch.undo()
    assert bronze.ingest_snapshot(spark, config, "planes", "run-4").rows == 3321


def csv_records(data: bytes) -> int:
    """Records by Python's csv module (an independent RFC 4180 parser), header and blank
    lines and a trailing Ctrl-Z left out."""
    text = data.decode("latin-1").rstrip("\r\n").removesuffix("\x1a")
    return sum(1 for r in csv.reader(io.StringIO(text, newline="")) if r) - 1


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 22])
def test_record_count_follows_rfc_4180_wherever_reads_split_the_file(chunk: int) -> None:
    data = (b'h1,h2\r\n1,2\r\n\r\n3,"a\r\n\r\nb"\r  \n5,"x""y"\n\n7,\xff8\n"q\nq",\r\n\x1a')
    profile = profile_landed(io.BytesIO(data), csv_format=True, chunk=chunk)
    assert profile.records == csv_records(data) == 6
    assert profile.header == b"h1,h2" and profile.eof_mark
    lines = b'{"a": 1}\n\n  \n[1]\n{"b":\n\x1a\n'
    assert profile_landed(io.BytesIO(lines), csv_format=False, chunk=chunk).records == 3


def test_header_names_and_charsets_are_checked() -> None:
    assert header_names(b"\xef\xbb\xbfa, b ,a,", "utf-8") == ["a", "b", "a#3", "_c4"]
    source, target, undefined = single_byte_table("windows-1252")
    assert dict(zip(source, target, strict=True))["\x96"] == "\u2013" and "\x81" in undefined
    from lakehouse.bronze import UnsupportedCharsetError

    with pytest.raises(UnsupportedCharsetError, match="'utf-16' is not ASCII-compatible"):
        single_byte_table("utf-16")


def test_accounting_names_each_file_whose_records_differ() -> None:
    check_accounting({"file:/l/a.csv": 3}, {"file:///l/a.csv": 3})
    with pytest.raises(BronzeAccountingError, match=r"/l/a.csv: 3 records landed, 2 read; "
                                                    r"/l/b.csv: 0 records landed, 1 read"):
        check_accounting({"file:/l/a.csv": 3}, {"file:/l/a.csv": 2, "file:/l/b.csv": 1})


def test_no_os_lock_is_taken_on_databricks_shared_mounts(tmp_path: Path) -> None:
    """/Volumes, /dbfs and /Workspace are FUSE views of shared storage: an flock there would
    guard one node at most, so none is taken (as a path or a file: URI); a local path is
    locked. Decided from the path, so the test never touches such a mount on this machine."""
    from lakehouse.tables import ConcurrentRunError, exclusive_run, shared_mount

    for path in ("/Volumes/main/ops/files/_locks/bronze.lock", "/dbfs/tmp/l.lock",
                 "/Workspace/Users/a/l.lock"):
        assert shared_mount(path) and shared_mount(urlparse(f"file:{path}").path)
    assert not shared_mount(str(tmp_path)) and not shared_mount("/VolumesX/l.lock")
    local = str(tmp_path / "locks" / "bronze_flights.lock")
    with exclusive_run(local, "bronze"):
        with pytest.raises(ConcurrentRunError, match="is being run by pid"):
            with exclusive_run(local, "bronze"):
                pass


def test_a_failed_run_audits_the_micro_batches_it_committed(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One file a micro-batch, the third failing its accounting: the first two stay committed
    (a rerun goes on after them), and the failed run's audit row counts their rows."""
    import os

    from lakehouse.seed import daily_path
    from tests.conftest import make_config

    config = make_config(tmp_path, bronze={"max_files_per_trigger": 1})
    landing = Path(config.landing)
    days = [date(2013, 1, d) for d in (1, 2, 3)]
    seed(landing, days[0], days[-1])
    for n, day in enumerate(days):  # the file source takes the oldest first
        os.utime(daily_path(landing, "flights", day), (1_700_000_000 + 60 * n,) * 2)
    counted = bronze.profiles

    def third_off(*args: object) -> dict[str, LandedProfile]:
        return {uri: replace(p, records=p.records + ("flights_2013-01-03" in uri))
                for uri, p in counted(*args).items()}

    monkeypatch.setattr(bronze, "profiles", third_off)
    with pytest.raises(BronzeAccountingError, match=r"flights_2013-01-03\.csv"):
        bronze.run(spark, config, "run-1")
    held = tables.read(spark, config, "bronze_flights").count()
    row = (tables.read(spark, config, "audit")
           .filter((F.col("run_id") == "run-1") & (F.col("table_name") == "bronze_flights"))
           .first())
    assert row is not None and row["status"] == "failed"
    assert (row["files"], row["rows_in"], row["rows_landed"]) == (2, held, held)
    assert 0 < held < 3 * 842


def test_a_checkpoint_older_than_the_table_fails_instead_of_appending_twice(
        spark: SparkSession, tmp_path: Path) -> None:
    """A checkpoint restored from an older backup plans its next batch anew (here one file a
    batch where the table's batch 1 held two): Delta skips that batch as committed, and the
    batch after it appended the second file again. The skipped batch's records are compared
    with its commit's: the run fails naming the checkpoint, nothing more written."""
    import shutil

    from lakehouse.workflow import is_permanent
    from tests.conftest import make_config

    def config(files: int) -> Config:
        return make_config(tmp_path, bronze={"max_files_per_trigger": files})

    landing = Path(config(2).landing)
    seed(landing, date(2013, 1, 1), date(2013, 1, 2))
    assert ingest(spark, config(2), "flights")["files"] == 2
    stream = Path(bronze.checkpoint(config(2), "bronze_flights"))
    shutil.copytree(stream, tmp_path / "backup")
    seed(landing, date(2013, 1, 3), date(2013, 1, 4))
    assert ingest(spark, config(2), "flights")["files"] == 2
    held = tables.read(spark, config(2), "bronze_flights").count()
    shutil.rmtree(stream)
    shutil.copytree(tmp_path / "backup", stream)  # the older checkpoint
    with pytest.raises(bronze.CheckpointBehindError,
                       match=r"bronze_flights: micro-batch 1 of its stream was committed with "
                             r"\d+ records, and its checkpoint .* planned \d+ for it: the "
                             r"checkpoint is older than the table") as error:
        ingest(spark, config(1), "flights")
    assert is_permanent(error.value)
    assert tables.read(spark, config(2), "bronze_flights").count() == held
    # the older checkpoint replanning the same batch as its commit held passes (a crash's
    # replay of a logged batch: test_exactly_once)
    shutil.rmtree(stream)
    shutil.copytree(tmp_path / "backup", stream)
    assert ingest(spark, config(2), "flights")["rows_in"] == 0
    assert tables.read(spark, config(2), "bronze_flights").count() == held


def test_a_checkpoint_has_logged_a_batch_once_its_offsets_log_names_one(
        spark: SparkSession, tmp_path: Path) -> None:
    """What `refuse_new_checkpoint` looks at: a batch file (named by its id) in the offsets
    log, read literally under a data root whose name holds a glob's characters (the config
    refuses such a landing folder, not a checkpoint: test_config)."""
    from tests.conftest import make_config

    config = make_config(tmp_path / "root [1]{a,b}*", landing=str(tmp_path / "landing"))
    offsets = Path(bronze.checkpoint(config, "bronze_flights")) / "offsets"
    assert not bronze.logged_batches(spark, config, "bronze_flights")  # no checkpoint yet
    offsets.mkdir(parents=True)
    (offsets / ".0.6f1c.tmp").write_text("v1")  # Spark's write in progress
    (offsets / "notes").write_text("x")
    assert not bronze.logged_batches(spark, config, "bronze_flights")
    (offsets / "0").write_text("v1")
    assert bronze.logged_batches(spark, config, "bronze_flights")


def test_a_file_of_the_batch_left_unread_fails_it_and_a_volumes_files_are_opened_directly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file Spark's binaryFile source leaves out (spark.sql.files.ignoreMissingFiles) would
    be neither read nor counted while the checkpoint takes it as ingested: the batch fails,
    naming it. A Unity Catalog volume's files (dbfs:/Volumes/...) are opened through the
    driver's /Volumes mount, in chunks, not loaded whole into the driver's memory."""
    from lakehouse.bronze import BronzeAccountingError

    landed = tmp_path / "a b.csv"
    landed.write_text("year,month\n2013,1\n")
    kept = landed.as_uri()
    left_out = "s3a://bucket/landing/flights/flights_2013-01-02.csv"

    def only_the_local_one(spark: object, files: list[str]) -> Iterator[tuple[str, object]]:
        with open(landed, "rb") as stream:
            yield kept, stream

    monkeypatch.setattr(bronze.tables, "landed_bytes", only_the_local_one)
    with pytest.raises(BronzeAccountingError, match=r"1 file\(s\) of the micro-batch could "
                       r"not be read .*s3a://bucket/landing/flights/flights_2013-01-02.csv; "
                       r"nothing was written"):
        bronze.profiles(None, [kept, left_out], "csv")  # type: ignore[arg-type]
    # the same file spelled file:/ by one and file:/// by the other is the same file
    assert bronze.profiles(None, [f"file:{landed}"], "csv")[kept].records == 1  # type: ignore[arg-type]
    volume = "dbfs:/Volumes/main/ops/files/landing/flights/day%201.csv"
    assert tables.driver_path(volume, volumes_mounted=True) == (
        "/Volumes/main/ops/files/landing/flights/day 1.csv")
    assert tables.driver_path(volume, volumes_mounted=False) is None  # binaryFile then
    assert tables.driver_path(left_out) is None
    assert tables.driver_path(kept) == str(landed)


def test_each_sources_thread_carries_the_callers_job_group(
        spark: SparkSession, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sources are ingested from a thread each: the caller's job group (a Databricks
    notebook command's) goes with them, so cancelling it reaches their work."""
    from lakehouse.stages import bronze as stage

    seen: dict[str, str | None] = {}

    def record(spark_: SparkSession, config_: Config, source: Any, *args: Any,
               **kwargs: Any) -> Any:
        seen[source.name] = spark_.sparkContext.getLocalProperty("spark.jobGroup.id")
        raise RuntimeError("stop here")

    monkeypatch.setattr(stage, "ingest", record)
    context = spark.sparkContext
    context.setJobGroup("the-cell", "a notebook command")
    try:
        with pytest.raises(RuntimeError, match="stop here"):
            stage.run(spark, config, "run-1")
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        context.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
    assert seen and set(seen.values()) == {"the-cell"}, seen
