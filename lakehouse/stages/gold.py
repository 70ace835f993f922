"""Gold stage: point-in-time features and route KPIs from silver, built incrementally.

Each gold table remembers, in the userMetadata of the commit that built it, the silver versions
it read and the fingerprint of the feature settings. A run reads what changed in silver since
then from Delta's change data feed (each changed row's image before and after), recomputes the
rows of the flight dates those changes can move, reading back only the history they need, and
MERGEs them: unchanged rows are not rewritten. A first run, `--full`, changed settings or a
change feed that cannot be read (e.g. vacuumed) build the table in full instead.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from functools import reduce
from typing import Any

from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.config import Config
from lakehouse.features import FeatureSettings, flight_features, on_dates, route_daily_kpis
from lakehouse.gold_changes import (
    changed_tails,
    dates_moved_by_flights,
    dates_moved_by_weather,
    flights_read,
    row_changes,
    weather_read,
)
from lakehouse.gold_docs import TABLE_COMMENTS, with_comments
from lakehouse.lineage import GOLD_TAG
from lakehouse.session import inherit
from lakehouse.stages.audit import audit_batch, audit_failure, audited, started

log = logging.getLogger("lakehouse")
INPUTS = ("silver_flights", "silver_weather", "silver_planes")
OUTPUTS = {"flight_features": ("flight_id",), "route_daily_kpis": ("flight_date", "origin", "dest")}
TAG = GOLD_TAG


class GoldInputError(RuntimeError):
    """Silver has no flights yet: there is nothing to build gold from."""


@dataclass
class Plan:
    """What a run of one gold table does: a full build (and why) or the dates to recompute."""

    full: bool
    reason: str
    dates: list[date] = field(default_factory=list)
    # the dates of the silver flights changed since the last build (each change's before and
    # after image): with the last build's `through`, a bound on the dates silver now holds
    flight_dates: list[date] = field(default_factory=list)


@dataclass
class Silver:
    """The silver inputs at the versions this run reads."""

    versions: dict[str, int | None]
    frames: dict[str, DataFrame]
    # Delta's table id of each: a table dropped and made anew has another (its versions start
    # again from 0 and may pass the ones a build read: the versions alone cannot tell)
    ids: dict[str, str | None] = field(default_factory=dict)
    # The slices an incremental build reads, cached: the features read their flights five
    # times over (history windows, previous flight, the day's own rows) and the KPIs once more,
    # each a scan of silver's files otherwise (bench: a new day ~1 s faster of ~7).
    slices: dict[tuple[str, tuple[date, ...]], DataFrame] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # both tables' threads slice

    def slice(self, table: str, dates: list[date], settings: FeatureSettings) -> DataFrame:
        """The rows of silver_flights or silver_weather the features of flights on dates read
        (or a cached slice for more dates, which holds them), cached until `release`."""
        with self.lock:
            for (cached_table, cached_dates), cached in self.slices.items():
                if cached_table == table and set(dates) <= set(cached_dates):
                    return cached
            key = (table, tuple(dates))
            if key not in self.slices:
                read = flights_read if table == "silver_flights" else weather_read
                self.slices[key] = read(self.frames[table], dates, settings).persist()
            return self.slices[key]

    def release(self) -> None:
        with self.lock:
            for cached in self.slices.values():
                cached.unpersist()
            self.slices.clear()

    @classmethod
    def read(cls, spark: SparkSession, config: Config) -> Silver:
        def version_and_id(name: str) -> tuple[int | None, str | None]:
            found = tables.detail(spark, config, name, with_version=True)
            return (None, None) if found is None else (found.version, found.id)

        # small reads of Delta's log (a DESCRIBE DETAIL and a history read per table), more
        # round trips than work: one driver thread per table (bench/gold.py's new day)
        with ThreadPoolExecutor(len(INPUTS), thread_name_prefix="gold-read") as pool:
            found = dict(zip(INPUTS, pool.map(inherit(spark, version_and_id), INPUTS),
                             strict=True))
        versions = {n: v for n, (v, _) in found.items()}
        if versions["silver_flights"] is None:
            raise GoldInputError(f"silver_flights does not exist at "
                                 f"{config.table('silver_flights')}: run the silver job first")
        missing = [n for n, v in versions.items() if v is None]
        if missing:
            raise GoldInputError(f"gold needs {missing}, which do not exist yet: land their "
                                 "files and run bronze and silver")
        return cls(versions, {n: tables.read(spark, config, n, version=v)
                              for n, v in versions.items()},
                   {n: i for n, (_, i) in found.items()})


@dataclass
class Changes:
    """The flight dates a change to silver since one earlier build can move, per gold table."""

    since: dict[str, int]
    dates: dict[str, list[date]]
    flight_dates: list[date] = field(default_factory=list)


def changed_dates(spark: SparkSession, config: Config, silver: Silver, since: dict[str, int],
                  settings: FeatureSettings) -> Changes:
    """Read silver's change data feed since the versions an earlier build read: the dates whose
    features can differ (the changed flights' windows, weather, planes) and the dates whose
    KPIs can (the changed flights' own dates)."""
    def changes(table: str) -> DataFrame | None:
        start, end = since[table] + 1, silver.versions[table]
        if end is None or start > end:
            return None
        return tables.read_changes(spark, config, table, start, end)

    moved: list[DataFrame] = []
    flights = changes("silver_flights")
    if flights is not None:
        moved.append(dates_moved_by_flights(flights, settings).withColumn("_kpi", F.lit(False)))
        moved.append(flights.select("flight_date", F.lit(True).alias("_kpi")).distinct())
    weather = changes("silver_weather")
    if weather is not None:
        moved.append(dates_moved_by_weather(weather, settings).withColumn("_kpi", F.lit(False)))
    # (planes move no KPI: without flight_features, which its own plan then builds in full,
    # there is nothing to compare with)
    if since["silver_planes"] != silver.versions["silver_planes"] and tables.exists(
            spark, config, "flight_features"):
        held = tables.read(spark, config, "flight_features")
        tails = changed_tails(held, silver.frames["silver_planes"])
        moved.append(silver.frames["silver_flights"].join(tails, "tailnum", "left_semi")
                     .select("flight_date", F.lit(False).alias("_kpi")).distinct())
    rows = reduce(DataFrame.unionByName, moved).distinct().collect() if moved else []
    features = sorted({r[0] for r in rows if r[0] is not None})
    kpis = sorted({r[0] for r in rows if r[0] is not None and r[1]})
    # the KPIs' dates are the changed flights' own dates
    return Changes(since, {"flight_features": features, "route_daily_kpis": kpis}, kpis)


# What Delta reports when a table's change data feed cannot be read for the versions asked:
# versions vacuumed or expired from the log, or written while the feed was off (analysis
# errors, by their condition).
FEED_ERROR_MARKERS = ("CHANGE_DATA", "CDC", "FILE_NOT_FOUND", "VERSION", "HISTORY")
# A VACUUM that removed the files behind those versions (the data files a MERGE replaced, the
# _change_data files) fails the read only when it runs, with FAILED_READ_FILE.FILE_NOT_EXIST
# (Databricks: FAILED_READ_FILE.DBR_FILE_NOT_EXIST, DELTA_CHANGE_DATA_FILE_NOT_FOUND or
# DELTA_FILE_NOT_FOUND_DETAILED): a SparkException, which classic PySpark passes on as a
# Py4JJavaError (its text holds the condition) and Spark Connect as a PySparkException with the
# condition. Only these conditions count, not any missing file named in a trace.
# Versions older than the table's retention are refused before any file is read: past
# delta.deletedFileRetentionDuration (7 days by default) for time travel and the change feed
# (an AnalysisException: a gold that has not run for a week), or past
# delta.logRetentionDuration, their log cleaned up (DeltaFileNotFoundException, not an
# analysis error: its condition is in its text).
VACUUMED_MARKERS = ("FAILED_READ_FILE.FILE_NOT_EXIST", "FAILED_READ_FILE.DBR_FILE_NOT_EXIST",
                    "DELTA_CHANGE_DATA_FILE_NOT_FOUND", "DELTA_FILE_NOT_FOUND",
                    "DELTA_UNSUPPORTED_TIME_TRAVEL_BEYOND_DELETED_FILE_RETENTION_DURATION",
                    "DELTA_TRUNCATED_TRANSACTION_LOG", "DELTA_LOG_FILE_NOT_FOUND",
                    "DELTA_VERSIONS_NOT_CONTIGUOUS")


def feed_unreadable(error: Exception) -> bool:
    """Whether error says the change data feed is unreadable (gold then builds in full)."""
    if isinstance(error, AnalysisException):
        condition = error.getCondition() or ""
        return any(marker in condition for marker in FEED_ERROR_MARKERS + VACUUMED_MARKERS)
    condition = (error.getCondition() or "") if isinstance(error, PySparkException) else ""
    return any(marker in condition or marker in str(error) for marker in VACUUMED_MARKERS)


def summary(error: Exception) -> str:
    """The line of error's text that names the cause (a Py4JJavaError's first line names only
    the py4j call)."""
    lines = str(error).splitlines() or [""]
    return next((line.strip() for line in lines
                 if any(marker in line for marker in VACUUMED_MARKERS)), lines[0])


def plan(spark: SparkSession, config: Config, name: str, state: dict[str, Any] | None,
         silver: Silver, settings: FeatureSettings, full: bool, seen: list[Changes]) -> Plan:
    """Full build or incremental dates for one gold table, from the state of its last build.

    seen holds the changes already read this run (both gold tables usually share a state)."""
    if full:
        return Plan(True, "--full")
    if state is None:
        return Plan(True, "no earlier build found in the table's recent commits, or the table "
                          "was written since by another operation (e.g. a RESTORE)")
    if state.get("settings") != settings.fingerprint():
        return Plan(True, "gold settings or feature definitions changed since the last build")
    since = state.get("versions")
    if not isinstance(since, dict) or any(not isinstance(since.get(n), int) for n in INPUTS):
        return Plan(True, f"last build's state lacks input versions: {since}")
    behind = sorted(n for n in INPUTS if since[n] > (silver.versions[n] or 0))
    if behind:  # the change feed since then would read nothing: the table was made anew
        return Plan(True, f"{behind} at an earlier version than the last build read ({since}): "
                          "recreated since")
    ids = state.get("table_ids")
    remade = sorted(n for n in INPUTS if isinstance(ids, dict) and ids.get(n) is not None
                    and ids[n] != silver.ids.get(n))  # a state of an earlier version has none
    if remade:
        return Plan(True, f"{remade} made anew since the last build (another Delta table id)")
    known = next((c for c in seen if c.since == since), None)
    if known is None:
        try:
            known = changed_dates(spark, config, silver, since, settings)
        except Exception as error:  # classic PySpark: a Py4JJavaError (py4j is not in Connect)
            if not feed_unreadable(error):
                raise  # a permission, schema or code error: not a reason to rebuild in full
            reset = [n for n in INPUTS if tables.ensure_properties(spark, config, n)]
            return Plan(True, f"change data feed unreadable since {since}"
                              f"{f' (enabled now on {reset})' if reset else ''}: "
                              f"{summary(error)[:300]}")
        seen.append(known)
    return Plan(False, "incremental", known.dates[name], known.flight_dates)


def build(silver: Silver, name: str, settings: FeatureSettings,
          dates: list[date] | None) -> DataFrame:
    """The rows of a gold table, all or those of flights on dates."""
    flights, weather = silver.frames["silver_flights"], silver.frames["silver_weather"]
    if dates is not None:
        flights = silver.slice("silver_flights", dates, settings)
    if name == "flight_features":
        if dates is not None:
            weather = silver.slice("silver_weather", dates, settings)
        rows = flight_features(flights, weather, silver.frames["silver_planes"], settings, dates)
    else:
        rows = route_daily_kpis(flights.transform(on_dates(dates)), settings)
    return rows.transform(with_comments(name))


def write(spark: SparkSession, config: Config, name: str, rows: DataFrame, plan_: Plan,
          tag: str, held_through: date | None = None) -> tuple[int | None, dict[str, str]]:
    """Overwrite (full build, clustered by date so later MERGEs skip files), write dates gold
    holds no row of yet in one pass, or MERGE what changed in the recomputed dates: new and
    changed rows, and rows that are gone. held_through: a date gold holds no row after (the
    `through` of the build the table's state is from), when known. Returns the version written
    when the read of the write's metrics gives it (None otherwise) and the metrics."""
    if plan_.full:
        # as many ranges as the session's shuffle partitions (no number given: Databricks'
        # `spark.sql.shuffle.partitions=auto` is no integer, and int() of it failed the build)
        tables.overwrite(rows.repartitionByRange("flight_date"), config, name, tag=tag)
        # the write's metrics, before the commits of properties and comment (of a new table)
        metrics = tables.last_operation_metrics(spark, config, name)
        with tables.untagged_commits():  # the other gold table's thread may be tagging a commit
            tables.ensure_properties(spark, config, name)
            tables.set_comment(spark, config, name, TABLE_COMMENTS[name])
        return None, metrics
    wanted = ", ".join(f"DATE'{d.isoformat()}'" for d in plan_.dates)
    current = tables.read(spark, config, name).filter(f"flight_date IN ({wanted})")
    # Dates gold does not hold yet (a new day): nothing to compare. Known without a scan when
    # every date lies after the last build's `through` (a scan of the dates, with Delta's file
    # skipping, cost ~0.75 s per table on a new day: bench/gold.py).
    if (held_through is not None and plan_.dates[0] > held_through) or current.isEmpty():
        tables.insert_into_empty(rows, config, name, f"flight_date IN ({wanted})", tag=tag)
        return tables.last_commit(spark, config, name)
    keys = OUTPUTS[name]
    # Computed once: Delta's MERGE reads its source twice (to find the files it touches, then
    # to write), and most runs change nothing or only add a day.
    changes = row_changes(rows, current, keys).persist()
    try:
        if not changes.count():
            return None, {}
        touched = changes.filter(F.col("_delete")).unionByName(
            changes.join(current.select(*keys), on=list(keys), how="left_semi"))
        if touched.isEmpty():  # only new keys: an insert-only MERGE, no row compared
            # (not a blind append: it would let a racing run's same rows in twice)
            # the dates' slice only: no scan of, and no conflict with, the rest of the table
            return None, tables.merge(spark, changes.drop("_delete"), config, name, keys,
                                      insert_only=True, tag=tag,
                                      target_filter=f"t.flight_date IN ({wanted})")
        return None, tables.merge(spark, changes, config, name, keys, changed_columns=(),
                                  target_filter=f"t.flight_date IN ({wanted})", tag=tag,
                                  delete_flag="_delete")
    finally:
        changes.unpersist()


@contextmanager
def closing_slices(silver: Silver) -> Iterator[Silver]:
    try:
        yield silver
    finally:
        silver.release()


def held_through(state: dict[str, Any] | None) -> date | None:
    """The last flight date a gold table can hold rows of, from its state: the `through` its
    build recorded, an upper bound of the last flight date of silver at the versions it read
    (gold's rows are silver's flights'): a full build takes silver's last date, an incremental
    one the later of the last build's and the changed flights' dates (Delta's change feed holds
    every row inserted, updated or deleted since, with its date; a delete can leave the bound
    later than silver's last date, never earlier). None when the state has no such date (a
    build by an earlier version of this job). A wrong bound would cost the change feed, not
    the content: replaceWhere replaces the whole slice of the dates with their recomputed
    rows."""
    value = (state or {}).get("through")
    try:
        return date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def rows_written(metrics: dict[str, str]) -> int:
    keys = ("numOutputRows",) if "numTargetRowsInserted" not in metrics else (
        "numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted")
    return sum(int(metrics.get(k, 0)) for k in keys)


def run(spark: SparkSession, config: Config, run_id: str,
        full: bool = False) -> list[dict[str, Any]]:
    """Bring gold.flight_features and gold.route_daily_kpis up to date with silver: each table
    planned in turn (they share the change feed's reading), then both built and written at once,
    each from a driver thread of its own (a new day's two writes overlapped: bench/gold.py)."""
    since = started()
    with audit_batch(spark, config) as batch:
        try:  # what both tables need first: a failure is recorded for both
            settings = FeatureSettings.from_conf(config.section("gold"))
            states = {name: tables.tagged_state(spark, config, name, TAG) for name in OUTPUTS}
            if full or None in states.values():  # a full build: silver's change feed starts here
                for name in INPUTS:
                    tables.ensure_properties(spark, config, name)
            silver = Silver.read(spark, config)
        except Exception as error:
            audit_failure(spark, config, run_id, "gold", OUTPUTS, error, batch, since)
            raise
        return _run(spark, config, run_id, full, settings, states, silver, batch)


def _run(spark: SparkSession, config: Config, run_id: str, full: bool,
         settings: FeatureSettings, states: dict[str, dict[str, Any] | None], silver: Silver,
         batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: list[Changes] = []
    plans: dict[str, Plan | Exception] = {}
    for name in OUTPUTS:
        try:
            plans[name] = plan(spark, config, name, states[name], silver, settings, full, seen)
        except Exception as error:  # raised in the table's audited run below
            plans[name] = error
    last_date: list[date | None] = []  # silver's last flight date, read once when needed
    reading = threading.Lock()

    def through(name: str, plan_: Plan) -> date | None:
        """The `through` this build records: see held_through."""
        held = None if plan_.full else held_through(states[name])
        if held is not None:
            return max([held, *plan_.flight_dates])
        with reading:
            if not last_date:  # a full build, or a state without one: one small query
                last_date.append(silver.frames["silver_flights"].agg(
                    F.max("flight_date")).first()[0])  # type: ignore[index]
        return last_date[0]

    with closing_slices(silver):
        for name, p in plans.items():  # the slice both tables read, registered once
            if isinstance(p, Plan) and not p.full and p.dates and name == "flight_features":
                silver.slice("silver_flights", p.dates, settings)

        def one(name: str) -> dict[str, Any]:
            with audited(spark, config, run_id, "gold", name, batch) as audit:
                plan_ = plans[name]
                if isinstance(plan_, Exception):
                    raise plan_
                audit["version_read"] = silver.versions["silver_flights"]
                version: int | None = None
                if plan_.full or plan_.dates:
                    end = through(name, plan_)
                    tag = f"{TAG} " + json.dumps({
                        "settings": settings.fingerprint(), "versions": silver.versions,
                        "table_ids": silver.ids, "run_id": run_id,
                        "through": end and end.isoformat()})
                    rows = build(silver, name, settings, None if plan_.full else plan_.dates)
                    version, metrics = write(spark, config, name, rows, plan_, tag,
                                             None if plan_.full else held_through(states[name]))
                    audit["rows_out"] = rows_written(metrics)
                else:
                    audit["rows_out"] = 0
                audit["version_written"] = (version if version is not None
                                            else tables.version(spark, config, name))
                span = f"{plan_.dates[0]}..{plan_.dates[-1]}" if plan_.dates else "none"
                audit["message"] = (f"full build: {plan_.reason}" if plan_.full else
                                    f"incremental: {len(plan_.dates)} flight date(s) "
                                    f"recomputed ({span})")
                log.info("gold.%s: %s", name, audit["message"])
                return dict(audit)

        with ThreadPoolExecutor(len(OUTPUTS), thread_name_prefix="gold") as pool:
            runs = [pool.submit(inherit(spark, one), name) for name in OUTPUTS]
            wait(runs)
        failed = [r.exception() for r in runs if r.exception() is not None]
        if failed:
            raise failed[0]  # type: ignore[misc]
        return [r.result() for r in runs]
