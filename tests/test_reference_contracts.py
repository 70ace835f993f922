"""Weather and reference contracts: each rule passes the good row and flags its breaking row."""

from __future__ import annotations

from typing import Any

import pytest
from pyspark.sql import SparkSession

from lakehouse.bronze import SOURCE_COLUMNS
from lakehouse.contracts import contracts, with_rule_results
from lakehouse.contracts.core import FAILED_RULES, WARNED_RULES
from lakehouse.silver import TYPES, parse_columns, with_weather_time
from tests.rows import AIRPORTS, GOOD_WEATHER, PLANES, bronze_rows

CONTRACTS = contracts({"max_quarantine_share": 0.05, "max_wind_speed_mph": 150,
                       "max_wind_gust_mph": 200})
GOOD = {
    "weather": GOOD_WEATHER,
    "planes": dict(zip(SOURCE_COLUMNS["planes"], PLANES[0], strict=True)),
    "airports": dict(zip(SOURCE_COLUMNS["airports"], AIRPORTS[0], strict=True)),
    "airlines": {"carrier": "UA", "name": "United Air Lines Inc."},
}
BREAKING: dict[str, dict[str, dict[str, Any]]] = {
    "weather": {"origin_not_null": {"origin": "NA"}, "time_hour_not_null": {"time_hour": "soon"},
                "origin_format": {"origin": "ewr"}, "hour_range": {"hour": "24"},
                "temp_range": {"temp": "200"}, "dewp_range": {"dewp": "-100"},
                "humid_range": {"humid": "101"}, "wind_dir_range": {"wind_dir": "361"},
                "precip_range": {"precip": "-1"}, "pressure_range": {"pressure": "500"},
                "visib_range": {"visib": "-2"}},
    "planes": {"tailnum_not_null": {"tailnum": ""}, "tailnum_format": {"tailnum": "X123"},
               "year_range": {"year": "1850"}, "engines_range": {"engines": "0"},
               "seats_range": {"seats": "5000"}},
    "airports": {"faa_not_null": {"faa": "NA"}, "faa_format": {"faa": "ab"},
                 "lat_range": {"lat": "91"}, "lon_range": {"lon": "-181"},
                 "tzone_valid": {"tzone": "America/Newyork"}},
    "airlines": {"carrier_not_null": {"carrier": "NA"}, "carrier_format": {"carrier": "UAL"},
                 "name_not_null": {"name": ""}},
}
for cases in BREAKING.values():  # what bronze noted about a landed record, in every table
    cases["columns_present"] = {"_missing_columns": ["extra_column"]}
    cases["text_decodable"] = {"_invalid_bytes": {"name": b"\xff"}}
WARNING = {
    "weather": {"wind_speed_plausible": {"wind_speed": "1048.36058"},
                "wind_gust_plausible": {"wind_gust": "250"}},
    "planes": {"year_present": {"year": "NA"}},
    "airports": {"tzone_present": {"tzone": "NA"}},
    "airlines": {},
}


def cases(table: str) -> list[tuple[str, dict[str, Any]]]:
    parsable = [(f"{c}_parsable", {c: "n/a?"}) for c, t in TYPES[table].items() if t != "string"]
    return [("good", {}), ("well_formed", {"_corrupt_record": "EWR,2013,1"}), *parsable,
            *BREAKING[table].items(), *WARNING[table].items()]


@pytest.mark.parametrize("table", list(GOOD))
def test_each_rule_has_a_passing_and_a_failing_row(spark: SparkSession, table: str) -> None:
    contract = CONTRACTS[table]
    table_cases = cases(table)
    assert {name for name, _ in table_cases} - {"good"} == {r.name for r in contract.rules}
    rows = [{**GOOD[table], **change, "_source_file": f"case-{i}"}
            for i, (_, change) in enumerate(table_cases)]
    typed = bronze_rows(spark, table, rows).transform(parse_columns(table))
    if table == "weather":
        typed = typed.transform(with_weather_time)
    flagged = {r["_source_file"]: r for r in typed.transform(with_rule_results(contract)).select(
        "_source_file", FAILED_RULES, WARNED_RULES).collect()}
    for i, (rule, _) in enumerate(table_cases):
        row = flagged[f"case-{i}"]
        if rule == "good":
            assert row[FAILED_RULES] == [] and row[WARNED_RULES] == [], (table, row)
        elif rule in WARNING[table]:
            assert row[FAILED_RULES] == [] and rule in row[WARNED_RULES], (table, rule, row)
        else:
            assert rule in row[FAILED_RULES], (table, rule, row)


def test_a_plane_built_after_2014_is_kept_and_one_built_in_the_future_is_not(
        spark: SparkSession) -> None:
    """The build year's bound moves with the calendar (it was 2014, the data's last year)."""
    import datetime as dt

    later = dt.date.today().year + 1
    rows = [{**GOOD["planes"], "tailnum": f"N{i}", "year": str(year)}
            for i, year in enumerate((2020, later, later + 1))]
    typed = bronze_rows(spark, "planes", rows).transform(parse_columns("planes"))
    failed = {r["tailnum"]: r[FAILED_RULES] for r in typed.transform(
        with_rule_results(CONTRACTS["planes"])).select("tailnum", FAILED_RULES).collect()}
    assert failed == {"N0": [], "N1": [], "N2": ["year_range"]}


def test_an_airport_whose_zone_spark_cannot_resolve_is_quarantined_not_fatal_to_flights(
        spark: SparkSession) -> None:
    """Joined as it landed, the airport's zone fails the flights batch with Spark's error;
    quarantined by its contract, the flights to it are kept and flagged like flights to any
    airport silver does not know."""
    from pyspark.sql import functions as F

    from tests.rows import flight, reference_rows

    rows = [dict(zip(SOURCE_COLUMNS["airports"], a, strict=True)) for a in AIRPORTS]
    rows = [{**r, "tzone": "America/Houston"} if r["faa"] == "IAH" else r for r in rows]
    airports = bronze_rows(spark, "airports", rows).transform(parse_columns("airports")).transform(
        with_rule_results(CONTRACTS["airports"]))
    failed = {r["faa"]: r[FAILED_RULES] for r in airports.select("faa", FAILED_RULES).collect()}
    assert failed == {"EWR": [], "JFK": [], "IAH": ["tzone_valid"], "LAX": []}
    planes = reference_rows(spark, "planes").transform(parse_columns("planes"))
    from lakehouse.silver import with_flight_times

    def flights(with_airports):  # a flight EWR -> IAH, checked by the flights contract
        return bronze_rows(spark, "flights", [flight()]).transform(parse_columns("flights")) \
            .transform(with_flight_times(with_airports, planes)) \
            .transform(with_rule_results(CONTRACTS["flights"])) \
            .select(FAILED_RULES, WARNED_RULES).collect()

    with pytest.raises(Exception, match="America/Houston"):
        flights(airports)  # every airport, the bad zone too
    (checked,) = flights(airports.filter(F.size(FAILED_RULES) == 0))
    assert checked[FAILED_RULES] == [] and checked[WARNED_RULES] == ["dest_in_airports"]
