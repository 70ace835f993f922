"""Silver transforms: bronze strings to typed, UTC, flagged and cleaned rows (pure functions)."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse.bronze import (
    CORRUPT_COLUMN,
    INVALID_BYTES_COLUMN,
    MISSING_COLUMN,
    SOURCE_COLUMNS,
    one_object,
    raw_schema,
)
from lakehouse.functions import (
    clean_text,
    local_hhmm_to_utc,
    make_date,
    parse_number,
    parse_utc,
)

RAW = "_raw"
EVENT_TIME = "_event_time"
EVENT_TYPE = "_event_type"
EVENT_TYPES = ("scheduled", "outcome")
# An event's own keys, beside the flight's columns; kept as text in the raw record.
EVENT_TEXT = ("event_type", "event_time")
# Kept on every silver row: where the record came from, when it was ingested, by which run,
# and, for an event, when it became known (null for landed files).
LINEAGE = ("_source_file", "_ingested_at", "_run_id", EVENT_TIME)
SOURCE_MODIFIED = "_source_modified_at"
# What bronze noted about a record, read by silver's rules and its ranking of duplicates;
# absent from tables written by earlier versions and from events: null there.
NOTED: dict[str, str] = {MISSING_COLUMN: "array<string>", INVALID_BYTES_COLUMN:
                         "map<string,binary>", EVENT_TIME: "timestamp", EVENT_TYPE: "string",
                         SOURCE_MODIFIED: "timestamp"}

# Columns of each silver table with the type bronze text is parsed to ("string" = text as is).
TYPES: dict[str, dict[str, str]] = {
    "flights": {"year": "int", "month": "int", "day": "int", "dep_time": "int",
                "sched_dep_time": "int", "dep_delay": "int", "arr_time": "int",
                "sched_arr_time": "int", "arr_delay": "int", "carrier": "string", "flight": "int",
                "tailnum": "string", "origin": "string", "dest": "string", "air_time": "int",
                "distance": "int"},
    "weather": {"origin": "string", "year": "int", "month": "int", "day": "int", "hour": "int",
                "temp": "double", "dewp": "double", "humid": "double", "wind_dir": "int",
                "wind_speed": "double", "wind_gust": "double", "precip": "double",
                "pressure": "double", "visib": "double"},
    "planes": {"tailnum": "string", "year": "int", "type": "string", "manufacturer": "string",
               "model": "string", "engines": "int", "seats": "int", "speed": "int",
               "engine": "string"},
    "airports": {"faa": "string", "name": "string", "lat": "double", "lon": "double",
                 "alt": "int", "tz": "double", "dst": "string", "tzone": "string"},
    "airlines": {"carrier": "string", "name": "string"},
}
KEYS: dict[str, tuple[str, ...]] = {
    "flights": ("flight_id",),
    "weather": ("origin", "time_hour"),
    "planes": ("tailnum",),
    "airports": ("faa",),
    "airlines": ("carrier",),
}


class MissingColumnsError(ValueError):
    """A batch lacks columns its source must have."""


def parse_columns(table: str) -> Callable[[DataFrame], DataFrame]:
    """Parse every source column to its silver type, keeping the raw record in `_raw`."""

    def transform(df: DataFrame) -> DataFrame:
        missing = [c for c in (*TYPES[table], CORRUPT_COLUMN, *LINEAGE)
                   if c not in df.columns and c not in NOTED]
        if missing:
            raise MissingColumnsError(f"bronze {table} batch lacks columns {missing}; "
                                      f"it has {df.columns}")
        parsed = [
            (clean_text(F.col(c)) if t == "string" else parse_number(F.col(c), t)).alias(c)
            for c, t in TYPES[table].items()
        ]
        # an event's type and time text too, so its quarantined record says what it was
        raw = F.struct(*[F.col(c) for c in (*SOURCE_COLUMNS[table], *EVENT_TEXT)
                         if c in df.columns])
        noted = [(F.col(c) if c in df.columns else F.lit(None).cast(t)).alias(c)
                 for c, t in NOTED.items()]
        return df.select(*parsed, raw.alias(RAW), F.col(CORRUPT_COLUMN),
                         *[c for c in LINEAGE if c not in NOTED], *noted)

    return transform


# The columns a silver flight takes from the airports and planes snapshots (beside the
# origin's time zone, `_origin_tz`, which the contract checks): a new snapshot recomputes them
# on the flights silver holds (stages/silver.py, `reconcile_references`).
REFERENCE_COLUMNS = ("sched_dep_utc", "sched_arr_utc", "dest_known", "plane_known")


def with_reference_columns(airports: DataFrame,
                           planes: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Add (or recompute) a flight's UTC schedule and reference flags from the airports and
    planes given, on parsed flights or on silver's own rows (same typed columns)."""
    origin_tz = airports.select(F.col("faa").alias("origin"), F.col("tzone").alias("_origin_tz"))
    dest_tz = airports.select(F.col("faa").alias("dest"), F.col("tzone").alias("_dest_tz"),
                              F.lit(True).alias("dest_known"))
    known_planes = planes.select("tailnum", F.lit(True).alias("plane_known"))

    def transform(df: DataFrame) -> DataFrame:
        joined = (df.drop(*REFERENCE_COLUMNS, "_origin_tz", "_dest_tz")
                  .join(F.broadcast(origin_tz), on="origin", how="left")
                  .join(F.broadcast(dest_tz), on="dest", how="left")
                  .join(F.broadcast(known_planes), on="tailnum", how="left"))
        flight_date = make_date(F.col("year"), F.col("month"), F.col("day"))
        dep_utc = local_hhmm_to_utc(flight_date, F.col("sched_dep_time"), F.col("_origin_tz"))
        arr_day = F.when(F.col("sched_arr_time") < F.col("sched_dep_time"),
                         F.date_add(flight_date, 1)).otherwise(flight_date)
        arr_utc = local_hhmm_to_utc(arr_day, F.col("sched_arr_time"), F.col("_dest_tz"))
        return joined.withColumns({
            "sched_dep_utc": dep_utc,
            "sched_arr_utc": arr_utc,
            "dest_known": F.coalesce("dest_known", F.lit(False)),
            "plane_known": F.coalesce("plane_known", F.lit(False)),
        })

    return transform


def with_flight_times(airports: DataFrame, planes: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Add the key, UTC schedule, outcome flags and reference flags to parsed flights."""
    with_references = with_reference_columns(airports, planes)

    def transform(df: DataFrame) -> DataFrame:
        flight_date = make_date(F.col("year"), F.col("month"), F.col("day"))
        outcome_known = F.coalesce(F.col(EVENT_TYPE) != "scheduled", F.lit(True))
        return df.transform(with_references).withColumns({
            "flight_date": flight_date,
            "flight_id": F.concat_ws("_", flight_date.cast("string"), "carrier",
                                     F.col("flight").cast("string"), "origin"),
            "time_hour": parse_utc(F.col(f"{RAW}.time_hour")),
            # A schedule event: the outcome is not known yet (null), not "cancelled".
            "cancelled": F.when(outcome_known, F.col("dep_time").isNull()),
            "diverted": F.when(outcome_known,
                               F.col("dep_time").isNotNull() & F.col("arr_delay").isNull()),
        })

    return transform


def with_weather_time(df: DataFrame) -> DataFrame:
    """Add the observation instant (UTC) and its local date."""
    return df.withColumns({
        "time_hour": parse_utc(F.col(f"{RAW}.time_hour")),
        "obs_date": make_date(F.col("year"), F.col("month"), F.col("day")),
    })


def clean_weather(max_wind_speed: float, max_wind_gust: float) -> Callable[[DataFrame], DataFrame]:
    """Null out physically impossible wind readings (sensor errors); the row is kept and the
    contract's warn rule counts it."""

    def transform(df: DataFrame) -> DataFrame:
        return df.withColumns({
            "wind_speed": F.when(F.col("wind_speed") <= max_wind_speed, F.col("wind_speed")),
            "wind_gust": F.when(F.col("wind_gust") <= max_wind_gust, F.col("wind_gust")),
        })

    return transform


# The column that is null while a record's outcome is not known yet (a flight's schedule
# event): a row without it never replaces one with it, whatever their times (a schedule event
# sent after the outcome, or an outcome landed in a file, which carries no event time).
OUTCOME_KNOWN: dict[str, str] = {"flights": "cancelled"}


def latest_landed_first(table: str | None = None) -> list[Column]:
    """Among rows of one natural key, the order in which the newest comes first: for flights,
    a row whose outcome is known before one whose outcome is not; then the latest event (by
    event time), else the most recently landed: by ingestion, then (files ingested in one
    batch share it) by the file's modification time, so a correction landed after the file it
    corrects wins whatever their names."""
    known = ([F.col(OUTCOME_KNOWN[table]).isNotNull().desc()] if table in OUTCOME_KNOWN
             else [])
    return [*known, F.col(EVENT_TIME).desc_nulls_last(), F.col("_ingested_at").desc(),
            F.col(SOURCE_MODIFIED).desc_nulls_last(), kafka_offset().desc_nulls_last(),
            F.col("_source_file").desc()]


def kafka_offset() -> Column:
    """A Kafka record's offset, from its source (topic/partition@offset), null for a file: of
    two events of one flight with the same time in one batch (the producer keys by flight, so
    one partition), the later offset is the later record. As text, @9 sorted after @10."""
    return F.when(F.col("_source_file").startswith("kafka:"), F.expr(
        r"try_cast(regexp_extract(_source_file, '@(\\d+)$', 1) AS BIGINT)"))


def drop_duplicate_keys(keys: tuple[str, ...]) -> Callable[[DataFrame], DataFrame]:
    """Keep one row per natural key: the most recently landed version of the record."""
    order = Window.partitionBy(*keys).orderBy(*latest_landed_first())

    def transform(df: DataFrame) -> DataFrame:
        ranked = df.withColumn("_rank", F.row_number().over(order))
        return ranked.filter(F.col("_rank") == 1).drop("_rank")

    return transform


OUTPUT: dict[str, tuple[str, ...]] = {
    "flights": ("flight_id", "flight_date", "year", "month", "day", "carrier", "flight", "tailnum",
                "origin", "dest", "sched_dep_time", "sched_arr_time", "dep_time", "arr_time",
                "dep_delay", "arr_delay", "air_time", "distance", "time_hour", "sched_dep_utc",
                "sched_arr_utc", "cancelled", "diverted", "dest_known", "plane_known"),
    "weather": ("origin", "time_hour", "obs_date", "hour", "temp", "dewp", "humid", "wind_dir",
                "wind_speed", "wind_gust", "precip", "pressure", "visib"),
    "planes": tuple(TYPES["planes"]),
    "airports": tuple(TYPES["airports"]),
    "airlines": tuple(TYPES["airlines"]),
}


def to_silver(table: str) -> Callable[[DataFrame], DataFrame]:
    """Select the silver table's columns plus lineage: its schema contract."""

    def transform(df: DataFrame) -> DataFrame:
        return df.select(*OUTPUT[table], *LINEAGE)

    return transform


def from_flight_events(df: DataFrame) -> DataFrame:
    """Bronze flight events (Kafka records) as bronze flights rows: the JSON value's flight
    columns as text, the event's type and time, the record's topic/partition@offset as its
    source. A value that is not one JSON object is kept whole as corrupt; absent keys are
    listed as missing (a schedule event carries the outcome keys as null)."""
    schema = T.StructType([*raw_schema("flights").fields,
                           T.StructField("event_type", T.StringType()),
                           T.StructField("event_time", T.StringType()),
                           T.StructField(CORRUPT_COLUMN, T.StringType())])
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_COLUMN}
    expected = F.array(*[F.lit(c) for c in (*SOURCE_COLUMNS["flights"], *EVENT_TEXT)])
    parsed = df.select(F.from_json("value", schema, options).alias("e"),
                       F.json_object_keys("value").alias("_keys"), "*")
    # two objects in one value, trailing text or a key given twice: corrupt (`one_object`)
    one = one_object(F.col("value"), F.col("_keys"))
    well_formed = F.col(f"e.{CORRUPT_COLUMN}").isNull() & one
    missing = F.array_except(expected, "_keys")
    return parsed.select(
        *[F.when(well_formed, F.col(f"e.{c}")).alias(c)
          for c in (*SOURCE_COLUMNS["flights"], *EVENT_TEXT)],
        F.when(F.col("value").isNotNull() & ~one, F.col("value"))
        .otherwise(F.col(f"e.{CORRUPT_COLUMN}")).alias(CORRUPT_COLUMN),
        F.when(well_formed & (F.size(missing) > 0), missing).alias(MISSING_COLUMN),
        F.col(INVALID_BYTES_COLUMN),
        F.format_string("kafka:%s/%d@%d", "topic", "partition", "offset").alias("_source_file"),
        "_ingested_at", "_run_id",
        parse_utc(F.when(well_formed, F.col("e.event_time"))).alias(EVENT_TIME),
        F.when(well_formed, F.col("e.event_type")).alias(EVENT_TYPE),
    )


QUARANTINE_SCHEMA = T.StructType([
    T.StructField("table_name", T.StringType(), False),
    T.StructField("rules", T.ArrayType(T.StringType()), True),
    T.StructField("raw_record", T.StringType(), True),
    T.StructField("corrupt_record", T.StringType(), True),
    T.StructField("source_file", T.StringType(), True),
    T.StructField("run_id", T.StringType(), True),
    T.StructField("quarantined_at", T.TimestampType(), False),
])


def to_quarantine(table: str, failed_rules: str) -> Callable[[DataFrame], DataFrame]:
    """Rows that broke rules, as quarantine records: table, rules, raw record, lineage."""

    def transform(df: DataFrame) -> DataFrame:
        return df.select(
            F.lit(table).alias("table_name"),
            F.col(failed_rules).alias("rules"),
            F.to_json(F.col(RAW)).alias("raw_record"),
            F.col(CORRUPT_COLUMN).alias("corrupt_record"),
            F.col("_source_file").alias("source_file"),
            F.col("_run_id").alias("run_id"),
            F.current_timestamp().alias("quarantined_at"),
        )

    return transform
