import datetime as dt

from chispa import assert_column_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.functions import (
    is_parsable,
    is_valid_hhmm,
    local_hhmm_to_utc,
    make_date,
    parse_number,
    parse_utc,
)


def test_parse_number_nulls_na_and_unparsable_text(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [("12", 12, True), (" -3 ", -3, True), ("NA", None, True), ("", None, True),
         (None, None, True), ("12x", None, False), ("1.5", None, False)],
        "raw string, expected int, parsable boolean")
    out = df.withColumn("parsed", parse_number(F.col("raw"), "int"))
    out = out.withColumn("ok", F.expr(is_parsable("raw", "parsed")))
    assert_column_equality(out, "parsed", "expected")
    assert_column_equality(out, "ok", "parsable")


def test_local_hhmm_to_utc_follows_daylight_saving(spark: SparkSession) -> None:
    # 2013-03-10: New York moves from UTC-5 to UTC-4 at 02:00 local; 2013-11-03 back at 02:00.
    rows = [(dt.date(2013, 3, 9), 1500, "America/New_York", dt.datetime(2013, 3, 9, 20, 0)),
            (dt.date(2013, 3, 10), 1500, "America/New_York", dt.datetime(2013, 3, 10, 19, 0)),
            (dt.date(2013, 11, 3), 1500, "America/New_York", dt.datetime(2013, 11, 3, 20, 0)),
            (dt.date(2013, 1, 1), 2400, "America/New_York", dt.datetime(2013, 1, 2, 5, 0)),
            (dt.date(2013, 6, 1), 905, "Pacific/Honolulu", dt.datetime(2013, 6, 1, 19, 5)),
            (dt.date(2013, 6, 1), 905, None, None),
            (dt.date(2013, 6, 1), None, "America/New_York", None)]
    df = spark.createDataFrame(rows, "day date, hhmm int, tz string, expected timestamp")
    out = df.withColumn("utc", local_hhmm_to_utc(F.col("day"), F.col("hhmm"), F.col("tz")))
    assert_column_equality(out, "utc", "expected")


def test_make_date_rejects_impossible_dates(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [(2013, 2, 28, dt.date(2013, 2, 28)), (2013, 2, 30, None), (2013, 13, 1, None),
         (None, 1, 1, None)], "y int, m int, d int, expected date")
    out = df.withColumn("day", make_date(F.col("y"), F.col("m"), F.col("d")))
    assert_column_equality(out, "day", "expected")


def test_parse_utc_reads_iso_instants(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [("2013-01-01T10:00:00Z", dt.datetime(2013, 1, 1, 10, 0)), ("NA", None),
         ("yesterday", None), (None, None),
         # fractions and offsets as producers write them (JavaScript, Java, Python)
         ("2013-01-01T10:00:00.123Z", dt.datetime(2013, 1, 1, 10, 0, 0, 123000)),
         ("2013-01-01T11:00:00.000001+01:00", dt.datetime(2013, 1, 1, 10, 0, 0, 1)),
         ("2013-01-01T05:00:00-0500", dt.datetime(2013, 1, 1, 10, 0)),
         ("2013-01-01 10:00", None), ("2013-01-01T10:00:00", None)],  # no offset: not an instant
        "raw string, expected timestamp")
    assert_column_equality(df.withColumn("ts", parse_utc(F.col("raw"))), "ts", "expected")


def test_is_valid_hhmm(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [(0, True, True), (2359, True, True), (2400, False, True), (1260, False, False),
         (2500, False, False), (-5, False, False), (None, None, None)],
        "hhmm int, scheduled boolean, actual boolean")
    out = df.withColumns({"s": F.expr(is_valid_hhmm("hhmm")),
                          "a": F.expr(is_valid_hhmm("hhmm", allow_2400=True))})
    assert_column_equality(out, "s", "scheduled")
    assert_column_equality(out, "a", "actual")
