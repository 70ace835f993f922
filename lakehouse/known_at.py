"""When each input of a flight's features becomes known: stated once, used by gold.

A feature of a flight may use an input only if the input is known at or before the flight's
as-of instant (scheduled departure minus `gold.as_of_offset_minutes`). `KNOWN_AT` is the one
statement of these rules: the features read their instants from it, `lakehouse describe` and
the README print it, and the leakage test derives the same rules again from the raw columns,
independently of this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

# A weather row stamped hh:00 holds the hour's first report (usually the routine hh:51
# observation; precipitation is the hour's total until :51): it is complete at the end of the
# hour, not at its stamp.
WEATHER_KNOWN_AFTER_STAMP = "INTERVAL 1 HOUR"
# A diversion, or an arrival whose time zone is unknown, has no usable arrival instant: it is
# taken as known, conservatively, a day after scheduled departure.
UNRESOLVED_OUTCOME_AFTER_DEPARTURE = "INTERVAL 24 HOURS"
# Outcomes known later than this after scheduled departure are left out of the history
# features. Silver's contract already bounds them (arrival within 24 h of departure as
# scheduled, arr_delay at most 48 h); the bound makes the look-back of an incremental gold
# build exact by construction.
MAX_OUTCOME_LAG_HOURS = 72


@dataclass(frozen=True)
class KnownAt:
    """One input and the instant it becomes known.

    `instant` is a Spark SQL expression over silver columns (None: known before the flight
    date); `applies` selects the rows the rule covers when an input has several rules (the
    first rule that applies wins).
    """

    input: str
    what: str
    rule: str
    instant: str | None = None
    applies: str | None = None


KNOWN_AT: tuple[KnownAt, ...] = (
    KnownAt("schedule", "carrier, flight number, origin, destination, scheduled departure and "
            "arrival, distance", "before the flight date (the published timetable)"),
    KnownAt("plane", "build year, seats and engines of the flight's recorded tail number",
            "before the flight date (static attributes)"),
    KnownAt("weather", "an hourly row at the origin stamped time_hour hh:00 (readings up to "
            "hh:51)", "at the end of its hour, time_hour + 1 h",
            f"time_hour + {WEATHER_KNOWN_AFTER_STAMP}"),
    KnownAt("outcome: not reported yet", "a flight only announced so far (a schedule event, no "
            "outcome event yet)", "not known: no label, and it feeds no history",
            "CAST(NULL AS TIMESTAMP)", "cancelled IS NULL"),
    KnownAt("outcome: cancelled", "a flight without dep_time", "at its scheduled departure",
            "sched_dep_utc", "cancelled"),
    KnownAt("outcome: arrived", "dep/arr times and delays, air time, the disruption label",
            "at its actual arrival, scheduled arrival + arr_delay, never before its "
            "scheduled departure",
            # the floor: an arr_delay that would land it before its scheduled departure is bad
            # data, and would let the flight's own outcome count in its own history features
            "greatest(sched_arr_utc + make_dt_interval(0, 0, arr_delay), sched_dep_utc)",
            "arr_delay IS NOT NULL AND sched_arr_utc IS NOT NULL"),
    KnownAt("outcome: diverted or unknown time zone", "a flight that departed without an "
            "arrival delay, or lands in a time zone not in airports",
            "24 h after its scheduled departure",
            f"sched_dep_utc + {UNRESOLVED_OUTCOME_AFTER_DEPARTURE}", "true"),
)


def _rules(prefix: str) -> list[KnownAt]:
    return [k for k in KNOWN_AT if k.input.startswith(prefix)]


def outcome_known_at() -> Column:
    """The instant a flight's outcome becomes known (the outcome rules of KNOWN_AT, in order)."""
    cases = " ".join(f"WHEN {k.applies} THEN {k.instant}" for k in _rules("outcome"))
    return F.expr(f"CASE {cases} END")


def weather_known_at() -> Column:
    """The instant a weather row becomes known."""
    (rule,) = _rules("weather")
    return F.expr(str(rule.instant))


def known_at_table() -> str:
    """KNOWN_AT as aligned text (for `lakehouse describe`)."""
    width = max(len(k.input) for k in KNOWN_AT)
    lines = [f"{'input':<{width}}  known at", f"{'-' * width}  --------"]
    for k in KNOWN_AT:
        lines.append(f"{k.input:<{width}}  {k.rule}")
        lines.append(f"{'':<{width}}    ({k.what})")
    return "\n".join(lines)
