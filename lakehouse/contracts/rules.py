"""The silver contracts: every rule once, with its action. `lakehouse contracts` prints them."""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakehouse.bronze import CORRUPT_COLUMN, INVALID_BYTES_COLUMN, MISSING_COLUMN
from lakehouse.config import number, share, whole_number
from lakehouse.contracts.core import Action, BatchRule, Contract, Rule, duplicate, kept
from lakehouse.contracts.models import (
    AirlinesModel,
    AirportsModel,
    FlightsModel,
    PlanesModel,
    WeatherModel,
)
from lakehouse.functions import is_parsable, is_valid_hhmm
from lakehouse.silver import EVENT_TIME, EVENT_TYPE, EVENT_TYPES, KEYS, RAW, TYPES

# a row from the flight events topic (its source is the record's topic/partition@offset)
IS_EVENT = "_source_file LIKE 'kafka:%'"

IATA = r"^[A-Z]{3}$"
FAA = r"^[A-Z0-9]{3,4}$"
CARRIER = r"^[A-Z0-9]{2}$"
TAILNUM = r"^N[A-Z0-9]{1,5}$"


def time_zones() -> list[str]:
    """The IANA time-zone ids (Python's tz database: the system's, else the tzdata package
    pandas installs), sorted. Spark's to_utc_timestamp raises on an id it does not know, which
    would fail every flights batch that joins the airport, naming no rule."""
    import zoneinfo

    zones = sorted(zoneinfo.available_timezones())
    if not zones:
        raise RuntimeError("no time-zone database found (neither /usr/share/zoneinfo nor the "
                           "tzdata package): the airports contract cannot check tzone")
    return zones


def well_formed() -> Rule:
    return Rule("well_formed", "the landed line parsed into the source's columns",
                f"{CORRUPT_COLUMN} IS NULL")


def landed_whole() -> list[Rule]:
    """Rules on what bronze noted: every column of the source was there, every byte decoded."""
    return [Rule("columns_present", "the landed file or event had every column of the source "
                 f"(else bronze lists the missing ones in {MISSING_COLUMN})",
                 f"{MISSING_COLUMN} IS NULL"),
            Rule("text_decodable", "every byte decoded in the source's charset (else bronze "
                 f"keeps the bytes in {INVALID_BYTES_COLUMN})",
                 f"{INVALID_BYTES_COLUMN} IS NULL")]


def not_null(column: str, action: Action = "quarantine") -> Rule:
    return Rule(f"{column}_not_null", f"{column} is present", f"`{column}` IS NOT NULL", action)


def parsable(table: str) -> list[Rule]:
    """One rule per typed column: the raw text is a null token or parses as its type."""
    return [Rule(f"{c}_parsable", f"{c} text parses as {t}",
                 is_parsable(f"`{RAW}`.`{c}`", f"`{c}`"))
            for c, t in TYPES[table].items() if t != "string"]


def matches(column: str, pattern: str, action: Action = "quarantine") -> Rule:
    return Rule(f"{column}_format", f"{column} matches {pattern}",
                f"`{column}` RLIKE '{pattern}'", action)


def in_range(column: str, low: float, high: float, action: Action = "quarantine") -> Rule:
    return Rule(f"{column}_range", f"{column} between {low} and {high}",
                f"`{column}` BETWEEN {low} AND {high}", action)


def unique_key(keys: tuple[str, ...]) -> BatchRule:
    return BatchRule(
        "key_unique", f"natural key {keys} is unique in the batch (else the latest landed row "
        "is kept, the others counted as duplicates)", action="warn",
        measure=lambda: (F.sum(duplicate().cast("long")),),
        passes=lambda duplicates: not duplicates)


def max_null_share(column: str, share: float, among: str | None = None,
                   rows_named: str = "rows") -> BatchRule:
    """At most share of the kept rows (those matching the SQL condition among, if given) have
    column null."""
    def counted() -> Column:  # built when measured: F.expr needs an active session
        return kept() & F.expr(among) if among else kept()

    return BatchRule(
        f"{column}_null_share", f"at most {share:.0%} of {rows_named} have {column} null",
        measure=lambda: (F.sum((counted() & F.col(column).isNull()).cast("long")),
                         F.sum(counted().cast("long"))),
        passes=lambda nulls, rows: not rows or nulls / rows <= share,
        shown=lambda nulls, rows: f"{nulls} of {rows} {rows_named} have {column} null "
                                  f"({nulls / max(rows, 1):.1%})")


def rows_per_file_vs_recent(table: str, settings: dict[str, Any]) -> list[BatchRule]:
    """Each landed file brings at least a share of the rows recent files brought (warn: a late
    correction file is small by nature, a truncated export is small by accident)."""
    recent = (settings.get("recent_rows_per_file") or {}).get(table)
    if not recent:
        return []
    share = float(settings.get("min_rows_share_of_recent", 0.1))

    def holds(df: DataFrame) -> bool:
        counts = df.groupBy("_source_file").count()
        return counts.filter(F.col("count") < share * recent).limit(1).count() == 0

    return [BatchRule("rows_per_file_vs_recent", f"every landed file has at least {share:.0%} of "
                      "the rows recent files averaged", action="warn", holds=holds)]


def flights_contract(settings: dict[str, Any]) -> Contract:
    types = ", ".join(f"'{t}'" for t in EVENT_TYPES)
    rules = [
        well_formed(), *landed_whole(), *parsable("flights"),
        # A Kafka event must say what it is and when: a null type would pass as an outcome
        # (and mark a schedule-shaped event cancelled), a null time would never lose to an
        # older event in the MERGE. A landed file's row has neither.
        Rule("event_type_known", f"an event is one of {types}",
             f"IF({IS_EVENT}, coalesce({EVENT_TYPE} IN ({types}), false), "
             f"{EVENT_TYPE} IS NULL OR {EVENT_TYPE} IN ({types}))"),
        Rule("event_time_valid", "an event carries an event_time in ISO 8601 with an offset",
             f"({EVENT_TYPE} IS NULL AND NOT coalesce({IS_EVENT}, false)) "
             f"OR {EVENT_TIME} IS NOT NULL"),
        # The MERGE keeps a flight's newest event: one stamped in the future (a producer's
        # clock years ahead) would win over every later correction of its flight.
        Rule("event_time_plausible", "an event's event_time is at most a day after bronze "
             "ingested it",
             f"{EVENT_TIME} IS NULL OR {EVENT_TIME} <= _ingested_at + INTERVAL 1 DAY"),
        *(not_null(c) for c in ("carrier", "flight", "origin", "dest", "sched_dep_time",
                                "sched_arr_time")),
        Rule("flight_date_valid", "year/month/day are present and form a real date",
             "flight_date IS NOT NULL"),
        # time_hour is the source's stamp of the scheduled hour; nothing downstream reads it
        # (the UTC schedule comes from the local times and the airport's zone)
        Rule("time_hour_parsable", "time_hour text is ISO 8601 with an offset, else null "
             "(kept, flagged)", is_parsable(f"`{RAW}`.`time_hour`", "`time_hour`"), "warn"),
        matches("carrier", CARRIER), matches("origin", IATA), matches("dest", IATA),
        matches("tailnum", TAILNUM, action="warn"),
        Rule("sched_dep_time_valid", "scheduled departure is a valid hhmm",
             is_valid_hhmm("sched_dep_time")),
        Rule("sched_arr_time_valid", "scheduled arrival is a valid hhmm",
             is_valid_hhmm("sched_arr_time")),
        Rule("dep_time_valid", "actual departure is a valid hhmm (2400 allowed)",
             is_valid_hhmm("dep_time", allow_2400=True)),
        Rule("arr_time_valid", "actual arrival is a valid hhmm (2400 allowed)",
             is_valid_hhmm("arr_time", allow_2400=True)),
        in_range("dep_delay", -180, 2880), in_range("arr_delay", -180, 2880),
        in_range("air_time", 1, 1000), in_range("distance", 1, 6000),
        Rule("origin_in_airports", "origin is a known airport with a time zone",
             "_origin_tz IS NOT NULL OR origin IS NULL"),
        Rule("sched_arr_after_dep", "scheduled arrival is after scheduled departure (UTC), "
             "within 24 h",
             "sched_arr_utc > sched_dep_utc AND sched_arr_utc < sched_dep_utc + INTERVAL 24 HOURS"),
        Rule("dest_in_airports", "destination is in the airports snapshot (kept, flagged)",
             "dest_known", action="warn"),
        Rule("tailnum_in_planes", "tail number is in the planes snapshot (kept, flagged)",
             "plane_known OR tailnum IS NULL", action="warn"),
        Rule("tailnum_present", "tail number is present (kept, flagged)",
             "tailnum IS NOT NULL", action="warn"),
    ]
    batch = [unique_key(KEYS["flights"]),
             # Only flights known to have operated are counted: a cancelled flight often has
             # no tail assigned (every one of 2013's 2,512 flights without a tail was
             # cancelled, and a storm day such as 2013-12-10 cancels more than 5% of the day's
             # flights), and a schedule event (outcome not known yet, cancelled null) may be
             # one of them: a stream's batch of the schedules of 2013-02-08 held 206 without a
             # tail of 1,345. A feed dropping tails still halts on its operated flights.
             max_null_share("tailnum", float(settings.get("max_tailnum_null_share", 0.05)),
                            among="coalesce(NOT cancelled, false)",
                            rows_named="flights known to have operated"),
             *rows_per_file_vs_recent("flights", settings)]
    return Contract("flights", FlightsModel, KEYS["flights"], tuple(rules), tuple(batch))


def weather_contract(settings: dict[str, Any]) -> Contract:
    max_wind = float(settings["max_wind_speed_mph"])
    max_gust = float(settings["max_wind_gust_mph"])
    rules = [
        well_formed(), *landed_whole(), *parsable("weather"), not_null("origin"),
        not_null("time_hour"),
        matches("origin", IATA), in_range("hour", 0, 23), in_range("temp", -60, 130),
        in_range("dewp", -80, 100), in_range("humid", 0, 100), in_range("wind_dir", 0, 360),
        in_range("precip", 0, 10), in_range("pressure", 850, 1100), in_range("visib", 0, 100),
        Rule("wind_speed_plausible", f"wind speed at most {max_wind} mph, else a sensor error "
             "set to null (kept, flagged)", f"wind_speed <= {max_wind}", "warn"),
        Rule("wind_gust_plausible", f"wind gust at most {max_gust} mph, else a sensor error "
             "set to null (kept, flagged)", f"wind_gust <= {max_gust}", "warn"),
    ]
    return Contract("weather", WeatherModel, KEYS["weather"], tuple(rules),
                    (unique_key(KEYS["weather"]), *rows_per_file_vs_recent("weather", settings)))


def planes_contract(settings: dict[str, Any]) -> Contract:
    rules = [well_formed(), *landed_whole(), *parsable("planes"), not_null("tailnum"),
             matches("tailnum", TAILNUM),
             # a build year up to next year's (an aircraft delivered early in its model year)
             Rule("year_range", "build year between 1900 and next year",
                  "`year` BETWEEN 1900 AND year(current_date()) + 1"),
             in_range("engines", 1, 8), in_range("seats", 1, 1000),
             Rule("year_present", "build year is known (kept, flagged)",
                  "year IS NOT NULL", "warn")]
    return Contract("planes", PlanesModel, KEYS["planes"], tuple(rules),
                    (unique_key(KEYS["planes"]),))


def airports_contract(settings: dict[str, Any]) -> Contract:
    rules = [well_formed(), *landed_whole(), *parsable("airports"), not_null("faa"),
             matches("faa", FAA),
             in_range("lat", -90, 90), in_range("lon", -180, 180),
             # an airport with a zone Spark cannot resolve is quarantined here, and its flights
             # then meet the flights rules for an unknown airport
             Rule("tzone_valid", "time zone is an IANA time-zone id",
                  "tzone IN ({})".format(", ".join(f"'{z}'" for z in time_zones())),
                  shown=f"tzone IN (the {len(time_zones())} zones of Python's tz database)"),
             Rule("tzone_present", "time zone is known (kept, flagged)",
                  "tzone IS NOT NULL", "warn")]
    return Contract("airports", AirportsModel, KEYS["airports"], tuple(rules),
                    (unique_key(KEYS["airports"]),))


def airlines_contract(settings: dict[str, Any]) -> Contract:
    rules = [well_formed(), *landed_whole(), not_null("carrier"), matches("carrier", CARRIER),
             not_null("name")]
    return Contract("airlines", AirlinesModel, KEYS["airlines"], tuple(rules),
                    (unique_key(KEYS["airlines"]),))


def check_settings(settings: dict[str, Any]) -> None:
    """The silver section's limits, each named when wrong: a share is in [0, 1] (5 meant as
    5% would switch its halt off), a physical limit is a positive number."""
    share(settings, "silver", "max_quarantine_share")
    whole_number(settings, "silver", "min_quarantined_to_halt", 1)
    share(settings, "silver", "max_tailnum_null_share", 0.05)
    share(settings, "silver", "min_rows_share_of_recent", 0.1)
    for key in ("max_wind_speed_mph", "max_wind_gust_mph"):
        number(settings, "silver", key)
    whole_number(settings, "silver", "max_files_per_trigger", 1000)


def contracts(settings: dict[str, Any]) -> dict[str, Contract]:
    """Every silver table's contract, built with the silver settings from conf."""
    check_settings(settings)
    # References first: flights are typed against silver airports and planes.
    builders = {"planes": planes_contract, "airports": airports_contract,
                "airlines": airlines_contract, "weather": weather_contract,
                "flights": flights_contract}
    return {name: build(settings) for name, build in builders.items()}
