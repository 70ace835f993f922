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
                 "lat_range": {"lat": "91"}, "lon_range": {"lon": "-181"}},
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
