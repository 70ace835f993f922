"""Column functions: null-safe parsing and time conversion, no UDFs."""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

NULL_TOKENS = ("NA", "", "NULL", "null")


def clean_text(raw: Column) -> Column:
    """Trimmed text, with the source's null tokens ("NA", empty) as null."""
    text = F.trim(raw)
    return F.when(text.isin(*NULL_TOKENS), F.lit(None)).otherwise(text)


def parse_number(raw: Column, dtype: str) -> Column:
    """The text as a number of dtype; null for null tokens and for unparsable text.

    Spark 4 runs in ANSI mode, where a plain cast of "NA" raises; try_cast yields null instead,
    and `is_parsable` tells the two kinds of null apart.
    """
    return clean_text(raw).try_cast(dtype)


def is_parsable(raw: str, parsed: str) -> str:
    """SQL: true when the text parsed (parsed = parse_number(raw, dtype)) or is a null token.

    Reads the parsed value instead of parsing again: the text is looked at only when the parse
    gave null. Takes column names (SQL identifiers) and returns a SQL predicate, as the contract
    rules are written: one parsed expression is far cheaper to build than a tree of Column calls.
    """
    tokens = ", ".join(f"'{t}'" for t in NULL_TOKENS)
    return f"({parsed} IS NOT NULL OR {raw} IS NULL OR trim({raw}) IN ({tokens}))"


def parse_utc(raw: Column) -> Column:
    """An ISO-8601 instant with an offset ("2013-01-01T10:00:00Z", "...10:00:00.123+01:00",
    "...10:00:00+0100") as a timestamp; null without an offset or when it does not parse."""
    text = clean_text(raw)
    return F.coalesce(F.try_to_timestamp(text, F.lit("yyyy-MM-dd'T'HH:mm:ss[.SSSSSSSSS]XXX")),
                      F.try_to_timestamp(text, F.lit("yyyy-MM-dd'T'HH:mm:ss[.SSSSSSSSS]XX")))


def make_date(year: Column, month: Column, day: Column) -> Column:
    """A date from its parts; null when a part is null or the date does not exist."""
    text = F.format_string("%04d-%02d-%02d", year, month, day)
    return F.when(year.isNull() | month.isNull() | day.isNull(), F.lit(None)).otherwise(
        F.try_to_date(text, "yyyy-MM-dd"))


def local_hhmm_to_utc(day: Column, hhmm: Column, timezone: Column) -> Column:
    """A local wall-clock time (date + hhmm integer, 2400 = next midnight) in a zone, as UTC.

    to_utc_timestamp resolves each instant with the zone's rules, so daylight-saving days are
    right.
    """
    wall_clock = F.to_timestamp(day) + F.make_dt_interval(
        F.lit(0), F.floor(hhmm / 100).cast("int"), (hhmm % 100).cast("int"), F.lit(0))
    return F.to_utc_timestamp(wall_clock, timezone)


def is_valid_hhmm(hhmm: str, allow_2400: bool = False) -> str:
    """SQL: an hhmm integer column with hours 0-23 (or exactly 2400) and minutes 0-59."""
    ok = f"({hhmm} BETWEEN 0 AND 2359 AND {hhmm} % 100 < 60)"
    return f"({ok} OR {hhmm} = 2400)" if allow_2400 else ok


def minutes_between(later: Column, earlier: Column) -> Column:
    """Whole minutes from earlier to later timestamps."""
    return ((F.unix_micros(later) - F.unix_micros(earlier)) / 60_000_000).cast("double")
