"""Leakage: rewriting every input known after a flight's as-of instant leaves its features
unchanged.

When each raw input becomes known is derived here again, in plain Python from the raw text
columns and the airports' time zones (zoneinfo), by the rules the README states; nothing of the
code's own known-at columns or silver's UTC conversions is reused. The rewrite covers the
flight's own outcome, flights still in the air overnight, cancellations (added and removed), the
weather row of the departure hour and the plane's previous flight, on real days including both
daylight-saving changes and a departure in the first hour after local midnight.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import reduce
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, flight_features
from tests.rows import silver_frames, source_rows
from tests.test_features import SETTINGS

AS_OF_OFFSET = timedelta(minutes=SETTINGS.as_of_offset_minutes)
DAYS = {date(2013, 3, 9), date(2013, 3, 10), date(2013, 3, 11),  # DST starts on the 10th
        date(2013, 11, 2), date(2013, 11, 3)}  # DST ends on the 3rd
FEATURES = (*CATEGORICAL_FEATURES, *NUMERIC_FEATURES)
ZONES = {a["faa"]: a["tzone"] for a in source_rows("airports") if a["tzone"] != "NA"}
MIDNIGHT_FLIGHT = "EARLY"  # tail of the flight moved to 00:25 local


def day_of(row: dict[str, str]) -> date:
    return date(int(row["year"]), int(row["month"]), int(row["day"]))


def local_instant(day: date, hhmm: int, zone: str) -> datetime:
    """A local wall-clock time on day as a naive UTC datetime (fold=0 in a repeated hour)."""
    wall = datetime(day.year, day.month, day.day) + timedelta(hours=hhmm // 100,
                                                              minutes=hhmm % 100)
    return wall.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC).replace(tzinfo=None)


def scheduled_departure(row: dict[str, str]) -> datetime:
    return local_instant(day_of(row), int(row["sched_dep_time"]), ZONES[row["origin"]])


def flight_known_at(row: dict[str, str]) -> datetime:
    """When a flight's outcome is known, from its raw columns: cancelled (no dep_time) at
    scheduled departure; arrived at scheduled arrival (local, next day if before departure)
    plus arr_delay, not before scheduled departure; diverted (no arr_delay) or unknown
    destination zone a day after departure."""
    departure = scheduled_departure(row)
    if row["dep_time"] == "NA":
        return departure
    if row["arr_delay"] == "NA" or row["dest"] not in ZONES:
        return departure + timedelta(hours=24)
    arrival_day = day_of(row) + timedelta(days=int(row["sched_arr_time"]) < int(
        row["sched_dep_time"]))
    arrival = local_instant(arrival_day, int(row["sched_arr_time"]), ZONES[row["dest"]])
    return max(arrival + timedelta(minutes=int(row["arr_delay"])), departure)


def weather_known_at(row: dict[str, str]) -> datetime:
    """A row stamped hh:00 holds readings up to hh:51: known at the end of its hour."""
    stamp = datetime.strptime(row["time_hour"], "%Y-%m-%dT%H:%M:%SZ")
    return stamp + timedelta(hours=1)


def rewrite_after(flights: list[dict[str, str]], weather: list[dict[str, str]],
                  as_of: datetime) -> tuple[list[dict[str, str]], list[dict[str, str]], int]:
    """Change every input known after as_of, keeping it known after as_of: delays of arrived
    flights, cancellations added and removed, weather readings. Returns the rows and how many
    flight rows changed."""
    changed, out = 0, []
    for i, row in enumerate(flights):
        row = dict(row)
        if flight_known_at(row) > as_of:
            changed += 1
            departs_later = scheduled_departure(row) > as_of
            if row["dep_time"] == "NA":  # cancelled: now flown, arriving late
                row.update(dep_time=row["sched_dep_time"], dep_delay="0", arr_delay="200",
                           arr_time=row["sched_arr_time"], air_time="100")
            elif departs_later and i % 3 == 0:  # flown: now cancelled (known at departure)
                row.update(dep_time="NA", dep_delay="NA", arr_time="NA", arr_delay="NA",
                           air_time="NA")
            elif row["arr_delay"] != "NA":  # arriving: later still
                row.update(arr_delay=str(int(row["arr_delay"]) + 137), air_time="333",
                           dep_delay=str(int(row["dep_delay"]) + 137))
        out.append(row)
    new_weather = []
    for row in weather:
        row = dict(row)
        if weather_known_at(row) > as_of:
            row.update(temp="99.5", visib="0", precip="1.5", wind_speed="40")
        new_weather.append(row)
    return out, new_weather, changed


@pytest.fixture(scope="module")
def raw() -> dict[str, list[dict[str, str]]]:
    flights = [r for r in source_rows("flights", lambda r: day_of(r) in DAYS)
               if r["origin"] in ZONES]
    # One departure in the first hour after local midnight (none in 2013 leaves before 01:06):
    # a real flight of 2013-03-11 moved to 00:25, so its as-of lies the evening before.
    moved = next(r for r in flights if day_of(r) == date(2013, 3, 11) and r["carrier"] == "UA"
                 and r["dep_time"] != "NA" and r["arr_delay"] != "NA")
    moved.update(sched_dep_time="25", dep_time="30", dep_delay="5", sched_arr_time="330",
                 arr_time="335", arr_delay="5", tailnum=MIDNIGHT_FLIGHT)
    weather = source_rows("weather", lambda r: day_of(r) in DAYS or day_of(r) in {
        d - timedelta(days=1) for d in DAYS})
    return {"flights": flights, "weather": weather}


def sampled(raw: dict[str, list[dict[str, str]]]) -> list[dict[str, str]]:
    """Flights whose as-of is reached by something known after it."""
    flights = raw["flights"]
    by_tail: dict[str, list[dict[str, str]]] = {}
    for row in sorted(flights, key=scheduled_departure):
        by_tail.setdefault(row["tailnum"], []).append(row)

    def pending_previous(row: dict[str, str]) -> bool:
        chain = by_tail.get(row["tailnum"], [])
        i = chain.index(row)
        return i > 0 and flight_known_at(chain[i - 1]) > scheduled_departure(row) - AS_OF_OFFSET

    picks = [next(r for r in flights if r["tailnum"] == MIDNIGHT_FLIGHT)]
    for day in (date(2013, 3, 10), date(2013, 11, 3)):  # morning of each daylight-saving change
        picks.append(next(r for r in flights if day_of(r) == day and r["tailnum"] != "NA"
                          and 600 <= int(r["sched_dep_time"]) < 700))
    picks.append(next(r for r in flights if day_of(r) == date(2013, 3, 9)
                      and r["tailnum"] != "NA" and pending_previous(r)))
    picks.append(next(r for r in flights if day_of(r) == date(2013, 11, 2)
                      and int(r["sched_dep_time"]) >= 2100 and r["tailnum"] != "NA"))
    return picks


def flight_id(row: dict[str, str]) -> str:
    return f"{day_of(row)}_{row['carrier']}_{row['flight']}_{row['origin']}"


TAGGED = ("flight_id", "carrier", "origin", "dest", "tailnum")


def scenario(frames: dict[str, DataFrame], k: int) -> dict[str, DataFrame]:
    """A copy of silver whose keys carry "#k": scenarios built side by side in one Spark job
    cannot see each other (every feature groups or joins on these keys)."""
    def tag(df: DataFrame, columns: tuple[str, ...]) -> DataFrame:
        return df.withColumns({c: F.concat(F.col(c), F.lit(f"#{k}")) for c in columns
                               if c in df.columns})

    return {"flights": tag(frames["flights"], TAGGED), "weather": tag(frames["weather"], TAGGED),
            "planes": tag(frames["planes"], TAGGED)}


def features_by_scenario(spark: SparkSession,
                         scenarios: list[tuple[list[dict[str, str]], list[dict[str, str]]]],
                         picks: list[dict[str, str]]) -> dict[tuple[int, str], dict[str, Any]]:
    """The features of the picked flights in each scenario (raw flights, raw weather), built
    by the silver transforms and flight_features in one job."""
    built = [scenario(silver_frames(spark, f, w), k) for k, (f, w) in enumerate(scenarios)]
    # Materialized once: the features read silver in many places, and a plan holding every
    # scenario's silver transforms in each of them takes minutes to optimize.
    union = {t: reduce(DataFrame.unionByName, [b[t] for b in built]).localCheckpoint()
             for t in built[0]}
    table = flight_features(union["flights"], union["weather"], union["planes"], SETTINGS,
                            dates=sorted({day_of(p) for p in picks}))
    wanted = [f"{flight_id(p)}#{k}" for p in picks for k in range(len(scenarios))]
    rows = table.filter(F.col("flight_id").isin(wanted)).select("flight_id", *FEATURES).collect()
    out = {}
    for row in rows:
        key, k = row["flight_id"].rsplit("#", 1)
        values = row.asDict()
        values.pop("flight_id")
        for c in CATEGORICAL_FEATURES:
            values[c] = values[c].rsplit("#", 1)[0]
        out[(int(k), key)] = values
    assert len(out) == len(wanted), sorted(set(wanted) - {f"{i}#{k}" for k, i in out})
    return out


def departure_hour_row(weather: list[dict[str, str]], row: dict[str, str]) -> dict[str, str] | None:
    hour = scheduled_departure(row).replace(minute=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    return next((w for w in weather if w["time_hour"] == hour and w["origin"] == row["origin"]),
                None)


def test_features_ignore_everything_known_after_as_of(
        spark: SparkSession, raw: dict[str, list[dict[str, str]]]) -> None:
    picks = sampled(raw)
    scenarios = [(raw["flights"], raw["weather"])]
    for row in picks:
        as_of = scheduled_departure(row) - AS_OF_OFFSET
        flights, weather, changed = rewrite_after(raw["flights"], raw["weather"], as_of)
        # the rewrite has teeth: it reaches the flight itself and its departure hour's weather
        mine = next(f for f in flights if flight_id(f) == flight_id(row))
        assert mine != row and changed > 100, flight_id(row)
        hour_row = departure_hour_row(weather, row)
        assert hour_row is None or hour_row["temp"] == "99.5", flight_id(row)
        scenarios.append((flights, weather))
    # The converse, so the comparison can fail: the weather known exactly at as-of changed.
    first = picks[1]
    as_of = scheduled_departure(first) - AS_OF_OFFSET
    scenarios.append((raw["flights"], [dict(w, temp="99.5") if w["origin"] == first["origin"]
                                       and weather_known_at(w) <= as_of else w
                                       for w in raw["weather"]]))
    features = features_by_scenario(spark, scenarios, picks)
    for k, row in enumerate(picks, start=1):
        assert features[(k, flight_id(row))] == features[(0, flight_id(row))], flight_id(row)
    past = features[(len(scenarios) - 1, flight_id(first))]
    assert features[(0, flight_id(first))]["temp"] != 99.5 and past["temp"] == 99.5
    assert sum(departure_hour_row(raw["weather"], p) is not None for p in picks) >= 4


def test_midnight_flight_and_dst_days_are_sampled(raw: dict[str, list[dict[str, str]]]) -> None:
    picks = sampled(raw)
    as_ofs = {flight_id(p): scheduled_departure(p) - AS_OF_OFFSET for p in picks}
    early = flight_id(picks[0])
    # as-of of the 00:25 departure (EDT, UTC-4) is 23:25 local the day before
    assert as_ofs[early] == datetime(2013, 3, 11, 3, 25)
    assert {day_of(p) for p in picks} >= {date(2013, 3, 10), date(2013, 11, 3)}
