"""Score stage: the champion, and a challenger in shadow, score a date range into
gold.delay_predictions, one row per flight and model version (MERGE; insert-only for dates the
table holds no row of yet)."""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import mlflow.spark
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import registry, tables
from lakehouse.config import Config
from lakehouse.inference import PREDICTION_KEYS, PREDICTION_VALUES, score, unscorable
from lakehouse.lineage import silver_flights_built_from
from lakehouse.models import decision_threshold
from lakehouse.session import inherit
from lakehouse.stages.audit import audited
from lakehouse.training import between

log = logging.getLogger("lakehouse")
# The role of a version's predictions once another version holds its alias for those flights.
PREVIOUS = "previous"


class NoChampionError(RuntimeError):
    """No model version holds the champion alias yet: run the train job first."""


class ChampionMovedError(RuntimeError):
    """@champion moved to another version while this run scored: its rows would take the
    champion role back from the new champion's (and retire those). Nothing was written; a rerun
    (the workflow retries it) scores with the new champion."""


def check_champion_unchanged(name: str, champion: Scorer, written: bool = False) -> None:
    """Before the write, and after it (written): the version this run resolved still holds
    @champion (MLflow's aliases have no compare-and-set)."""
    now = registry.holder(name, registry.CHAMPION)
    if now != champion.version:
        raise ChampionMovedError(
            f"@{registry.CHAMPION} of {name} moved from version {champion.version} to "
            f"{now or 'none'} while this run scored: "
            + ("its rows were written with the former champion's role; run the score job again "
               "for the same dates (its write puts the roles right)" if written else
               "nothing was written; run the score job again"))


@dataclass(frozen=True)
class Scorer:
    """A registered model version, resolved once, with what its predictions need."""

    name: str
    version: str
    run_id: str
    role: str
    threshold: float | None  # None: the one the loaded model's own `prediction` uses

    @classmethod
    def resolve(cls, name: str, alias: str) -> Scorer | None:
        found = registry.resolve(name, alias)
        return None if found is None else cls.of(name, alias, found)

    @classmethod
    def of(cls, name: str, alias: str, found: Any) -> Scorer:
        """The scorer of a registered version (its threshold read: ValueError when it is not a
        probability)."""
        return cls(name, str(found.version), found.run_id or "", alias,
                   threshold_of(name, found))

    @property
    def key(self) -> str:
        """name/version, as `version_key()` reads it from a prediction row (versions restart
        per model name, so a version alone does not name a model)."""
        return f"{self.name}/{self.version}"


def threshold_of(name: str, found: Any) -> float | None:
    """A version's decision threshold: its decision_threshold tag (the train job sets it after
    registering), else the metric of that name its run logged (a tag that failed to be set, a
    version registered by hand from the run), else None: the one the model itself takes its
    `prediction` at (`model_threshold`, read once it is loaded). A value that is not a
    probability fails: a NaN would predict no flight disrupted."""
    raw: Any = (found.tags or {}).get(registry.THRESHOLD_TAG)
    where = "tag"
    if raw is None and found.run_id:
        where = f"metric of run {found.run_id}"
        try:
            raw = MlflowClient().get_run(found.run_id).data.metrics.get(registry.THRESHOLD_TAG)
        except MlflowException as error:
            if not registry.run_gone(error):
                raise
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} version {found.version}: decision_threshold {where} {raw!r} "
                         f"is not a probability in [0, 1]")
    return value


# The roles a scoring run takes over in its range: another version's rows holding them retire.
ROLES = (registry.CHAMPION, registry.CHALLENGER)


@dataclass(frozen=True)
class Versions:
    """The versions a run scores, and what its retiring of other versions' rows (to role
    'previous') must spare."""

    models: list[Scorer]
    challenger_error: str | None = None  # why the version holding @challenger is not scored
    spared: tuple[str, ...] = ()  # name/version keys not scored whose rows keep their role
    roles: tuple[str, ...] = ROLES  # the roles whose rows of other versions are retired


def scorers(name: str, champion_alias: str) -> Versions:
    """The champion (required) and, when another version holds @challenger, that one. The
    shadow is best effort (see run): a challenger that cannot be scored is left out, and the
    rows it scored before keep their role (retiring them would end its monitoring on a
    registry hiccup)."""
    champion = Scorer.resolve(name, champion_alias)
    if champion is None:
        uri = mlflow.get_registry_uri()
        raise NoChampionError(f"no version of model {name!r} has alias {champion_alias!r} in "
                              f"{uri}; run the train job first")
    try:
        found = registry.resolve(name, registry.CHALLENGER)
    except MlflowException as error:
        # a registry error other than "alias not found": which version holds @challenger is
        # unknown, so no challenger row is retired
        reason = f"look-up failed: {type(error).__name__}: {str(error)[:400]}"
        log.error("%s @%s not scored, the champion alone is: %s", name, registry.CHALLENGER,
                  reason)
        return Versions([champion], reason, roles=(registry.CHAMPION,))
    if found is None or str(found.version) == champion.version:
        return Versions([champion])
    try:
        return Versions([champion, Scorer.of(name, registry.CHALLENGER, found)])
    except (ValueError, MlflowException) as error:  # its threshold: bad, or its run unreadable
        reason = f"v{found.version}: {type(error).__name__}: {str(error)[:400]}"
        log.error("%s @%s not scored, the champion alone is: %s", name, registry.CHALLENGER,
                  reason)
        return Versions([champion], reason, spared=(f"{name}/{found.version}",))


def model_threshold(model: PipelineModel, scorer: Scorer) -> float:
    """The scorer's threshold, else the one its loaded model takes its own `prediction` at
    (so the class written is the one the model predicts), else 0.5 with a warning (a model
    whose last stage is no binary classifier)."""
    if scorer.threshold is not None:
        return scorer.threshold
    found = decision_threshold(model)
    if found is None:
        log.warning("%s version %s has no decision_threshold (no tag, no run metric, none in "
                    "its model): its predicted class uses 0.5", scorer.name, scorer.version)
        return 0.5
    log.info("%s version %s has no decision_threshold tag or run metric: its predicted class "
             "uses the model's own threshold, %s", scorer.name, scorer.version, found)
    return found


def load(scorer: Scorer) -> PipelineModel:
    model: PipelineModel = mlflow.spark.load_model(f"models:/{scorer.name}/{scorer.version}")
    return model


def predictions_of(model: PipelineModel, scorer: Scorer, features: DataFrame,
                   missing: DataFrame | None, features_version: int) -> DataFrame:
    """The scorer's rows: a prediction for every featured flight, a reason for the others
    (missing: the range's flights without a feature row, None when there is none)."""
    args = (scorer.name, scorer.version, scorer.run_id, scorer.role,
            model_threshold(model, scorer), features_version)
    scored = score(model, features, *args)
    if missing is None:
        return scored
    return scored.unionByName(unscorable(missing, "no row in gold.flight_features", *args))


@dataclass(frozen=True)
class RangeState:
    """What the score job looks at before it writes, from one small Spark job."""

    flights: int            # the range's flights in silver
    same_flights: bool      # gold's feature rows of the range are those flights, no more, no less
    predictions_held: bool  # the predictions table holds a row of the range


def range_state(flights: DataFrame, features: DataFrame,
                held: DataFrame | None) -> RangeState:
    """Whether every flight of the range has a feature row, and what the table holds, in one
    job: the count and the XOR of the 64-bit hashes of flight_id on each side (flight_id is
    silver's key and the features' MERGE key, unique on both), so the anti-join that finds
    the flights without a feature row runs only when the two differ. Two different sets of
    flights agreeing on both would take a 64-bit hash collision. Measured on the full year
    (bench/scoring.py): this job ~0.9 s, where the anti-join inside every write cost ~2.4 s."""
    def fingerprint(df: DataFrame, side: str) -> DataFrame:
        return df.agg(F.count(F.lit(1)).alias(f"{side}_n"),
                      F.bit_xor(F.xxhash64("flight_id")).alias(f"{side}_x"))

    parts = fingerprint(flights, "s").crossJoin(fingerprint(features, "f"))
    if held is not None:
        parts = parts.crossJoin(held.limit(1).agg(F.count(F.lit(1)).alias("held")))
    row = parts.first()
    assert row is not None  # global aggregates give one row
    return RangeState(int(row["s_n"]), row["s_n"] == row["f_n"] and row["s_x"] == row["f_x"],
                      held is not None and row["held"] > 0)


def held_rows(spark: SparkSession, config: Config, start: str, end: str,
              flight_ids: list[str] | None = None) -> dict[tuple[str, str, str], int]:
    """Rows per (name/version, role, status) the table holds for the range (of those flights
    only, when given): one small aggregate on the range's files, read after the write (counts,
    and the versions to retire)."""
    key = version_key().alias("key")
    held = between(start, end)(tables.read(spark, config, "delay_predictions"))
    if flight_ids is not None:
        held = held.filter(F.col("flight_id").isin(flight_ids))
    rows = held.groupBy(key, "role", "status").count().collect()
    return {(r["key"], r["role"], r["status"]): r["count"] for r in rows}


def created_counts(spark: SparkSession, config: Config, start: str, end: str,
                   models: list[Scorer], metrics: dict[str, str]
                   ) -> dict[tuple[str, str], int] | None:
    """Rows per (role, status) of an append that created the table (its version 0, so every
    row is the append's): each model wrote one row per flight of the range, so a model's rows
    are the commit's numOutputRows shared evenly; its unscorable rows are counted by a query
    that Delta's file statistics of `status` skip whole when every row was scored. Measured
    on the full year, warm: 0.27-0.40 s where the aggregate of `held_rows` took 0.42-0.63 s.
    None when the commit's metrics cannot say (Delta's history metrics turned off, or rows
    not a multiple of the models): the caller counts the rows then."""
    written = int(metrics.get("numOutputRows", "-1"))
    if written < 0 or written % len(models):
        log.warning("delay_predictions version 0: numOutputRows %s is not %d model(s) x the "
                    "same flights; the rows written are counted", written, len(models))
        return None
    unscored = {(r["key"], r["role"]): r["count"] for r in between(start, end)(
        tables.read(spark, config, "delay_predictions", version=0))
        .filter(F.col("status") == "unscorable")
        .groupBy(version_key().alias("key"), "role").count().collect()}
    counts: dict[tuple[str, str], int] = {}
    for model in models:
        bad = unscored.get((model.key, model.role), 0)
        counts[model.role, "scored"] = written // len(models) - bad
        if bad:
            counts[model.role, "unscorable"] = bad
    return counts


def earlier_versions(start: str, end: str, models: list[Scorer],
                     roles: tuple[str, ...] = ROLES, spared: tuple[str, ...] = ()) -> Column:
    """The rows dated start..end holding one of roles (the champion or challenger role) of a
    version other than the scoring ones and the spared ones (name/version keys)."""
    current = [m.key for m in models] + list(spared)
    return (F.col("flight_date").between(F.lit(start).cast("date"), F.lit(end).cast("date"))
            & F.col("role").isin(*roles)
            & ~version_key().isin(current))


def version_key() -> Column:
    """A prediction row's `Scorer.key`: name/version."""
    return F.concat_ws("/", "model_name", "model_version")


def retiring(spark: SparkSession, config: Config, start: str, end: str, models: list[Scorer],
             like: DataFrame, versions: Versions | None = None) -> DataFrame:
    """The table's rows dated start..end of an earlier version still holding one of roles (the
    champion or challenger role), as rows like `like` (the score job's) with role 'previous'.
    versions: the run's `scorers`, whose roles and spared versions apply."""
    roles, spared = (versions.roles, versions.spared) if versions else (ROLES, ())
    held = tables.read(spark, config, "delay_predictions").filter(
        earlier_versions(start, end, models, roles, spared))
    return held.select(*(F.lit(PREVIOUS).alias(c) if c == "role"
                         else F.col(c) if c in held.columns
                         else F.lit(None).cast(like.schema[c].dataType).alias(c)
                         for c in like.columns))


def retire_others(spark: SparkSession, config: Config, start: str, end: str,
                  models: list[Scorer],
                  held: dict[tuple[str, str, str], int] | None = None,
                  versions: Versions | None = None) -> list[str]:
    """In the scored range, only the current champion's and challenger's rows keep those roles:
    an earlier version's rows (kept as history) become role 'previous', so a reader filtering
    role = 'champion' sees one prediction per flight. A score MERGE of a range holding rows
    does this in its own commit; this UPDATE is for what no such MERGE reached: rows another
    job wrote in the range meanwhile (e.g. while this run inserted a new day). held:
    `held_rows` of the range, when the caller has them. Returns the versions retired, each as
    name/version (versions restart per model name). versions: the run's `scorers`, whose
    roles and spared versions apply (the champion's role alone when the run could not tell
    which version holds @challenger)."""
    roles, spared = (versions.roles, versions.spared) if versions else (ROLES, ())
    current = [m.key for m in models] + list(spared)
    held = held_rows(spark, config, start, end) if held is None else held
    retired = sorted({k for k, role, _ in held if role in roles and k not in current})
    if retired:
        tables.update(spark, config, "delay_predictions",
                      earlier_versions(start, end, models, roles, spared),
                      {"role": F.lit(PREVIOUS)})
    return retired


def of_current(held: dict[tuple[str, str, str], int],
               models: list[Scorer]) -> dict[tuple[str, str], int]:
    """Rows per (role, status) of the scoring versions, from `held_rows`."""
    current = {m.key for m in models}
    counts: dict[tuple[str, str], int] = {}
    for (key, role, status), n in held.items():
        if key in current:
            counts[role, status] = counts.get((role, status), 0) + n
    return counts


def inserted(metrics: dict[str, str]) -> str:
    """Rows a MERGE inserted (or an append wrote, when it created the table)."""
    return metrics.get("numTargetRowsInserted", metrics.get("numOutputRows", "0"))


def run(spark: SparkSession, config: Config, run_id: str, start: str, end: str,
        new_from: str | None = None) -> dict[str, Any]:
    """Score flights dated start..end; idempotent by flight and model version. With new_from,
    flights dated before it are scored only when the table holds no row of theirs (flights that
    landed after their day was scored): the other rows of those days stay as they were, whatever
    model holds the aliases now."""
    mlflow_conf = registry.configure(config)
    name, alias = mlflow_conf["model_name"], registry.CHAMPION
    with audited(spark, config, run_id, "score", "delay_predictions") as audit, \
            ExitStack() as stack:
        # resolved once: a promotion meanwhile changes nothing
        versions = scorers(name, alias)
        models = versions.models
        # The models load (MLflow's download, then Spark's reading of the saved pipeline, ~1 s
        # each) while this thread looks at the range: both wait more on I/O than they compute
        # (bench/scoring.py).
        pool = stack.enter_context(ThreadPoolExecutor(len(models) + 1,
                                                      thread_name_prefix="score"))
        loading = [pool.submit(inherit(spark, load), m) for m in models]
        version_read = tables.version(spark, config, "flight_features")
        # Silver as gold built the features read (silver may have moved on since: a flight
        # that reached it after gold ran is scored once gold has its row, by the late-flight
        # pass, instead of being recorded unscorable for good); latest when gold did not say.
        silver_read = pool.submit(inherit(spark, silver_flights_built_from), spark, config,
                                  version_read)
        features = tables.read(spark, config, "flight_features", version=version_read).transform(
            between(start, end))
        flights = tables.read(spark, config, "silver_flights",
                              version=silver_read.result()).transform(between(start, end))
        window = f"flight_date BETWEEN DATE'{start}' AND DATE'{end}'"
        existed = tables.exists(spark, config, "delay_predictions")
        late = existed and new_from is not None and new_from > start
        # the days the run scores whole: new_from..end with late flights, else the range
        first = new_from if late and new_from else start
        late_ids: list[str] = []
        if late:
            # the silver flights of the days before new_from that hold no row yet (flights
            # landed after their day was scored; a day that had none when it was scored, whole),
            # listed before the write adds theirs
            earlier = F.col("flight_date") < F.lit(new_from).cast("date")
            held_ids = (tables.read(spark, config, "delay_predictions").filter(window)
                        .filter(earlier).select("flight_id"))
            late_ids = [r[0] for r in flights.filter(earlier)
                        .join(held_ids, "flight_id", "left_anti").select("flight_id").collect()]
            features, flights = (df.filter(~earlier | F.col("flight_id").isin(late_ids))
                                 for df in (features, flights))
        whole = f"flight_date BETWEEN DATE'{first}' AND DATE'{end}'"
        # whether the days scored whole hold rows: the late flights hold none by construction
        state = range_state(flights, features, tables.read(
            spark, config, "delay_predictions").filter(whole) if existed else None)
        missing = (None if state.same_flights
                   else flights.join(features.select("flight_id"), "flight_id", "left_anti"))
        frames = [predictions_of(loading[0].result(), models[0], features, missing,
                                 version_read or 0)]
        shadow_error: str | None = versions.challenger_error
        if len(models) > 1:
            # The challenger scores in shadow, best effort: a version that cannot be loaded
            # (artifacts gone) or whose inputs gold no longer has must not stop the champion's
            # predictions (nor, through them, the monitor and a retraining). Any error of its
            # loading or planning is logged, kept in the audit and the result; an error only
            # its execution raises still fails the write, which holds both models' rows.
            try:
                shadow = predictions_of(loading[1].result(), models[1], features, missing,
                                        version_read or 0)
                shadow.schema  # noqa: B018 -- analysed now (lazily on Spark Connect)
                frames.append(shadow)
            except Exception as error:  # the shadow is best effort (see above)
                shadow_error = f"{type(error).__name__}: {str(error)[:400]}"
                log.error("%s v%s (challenger) not scored, the champion alone is: %s", name,
                          models[1].version, shadow_error)
        scoring = models[:len(frames)]
        predictions = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
        metrics: dict[str, str] = {}
        counts: dict[tuple[str, str], int] = {}
        retired: list[str] = []
        version_written: int | None = None
        if state.flights or not existed:
            check_champion_unchanged(name, models[0])  # before: nothing written
        if not existed:
            # The first write creates the table: nothing to compare or retire. The audit counts
            # are read back (not observed during the write: once a session has used an
            # Observation, a later LogisticRegression fit in it fails with Task not
            # serializable, Spark 4.1; see stages/bronze.py).
            # created, not appended: another score run may have created it since this one
            # looked (its rows and these would both land)
            tables.create(predictions, config, "delay_predictions")
            version_written, metrics = tables.last_commit(spark, config, "delay_predictions")
            created = (created_counts(spark, config, start, end, scoring, metrics)
                       if version_written == 0 else None)  # the table's one commit: this write
            counts = (created if created is not None
                      else of_current(held_rows(spark, config, start, end), scoring))
        else:
            # No flight in the range: nothing to write, no commit. No row of the range yet (a
            # new day): an insert-only MERGE, nothing to compare. Otherwise the predictions are
            # compared with the rows held, so they are cached for the comparison and the MERGE
            # (Delta materializes a MERGE source holding UDFs, the model's, again otherwise).
            if state.flights:
                compared = state.predictions_held
                if compared:
                    predictions = predictions.persist()
                try:
                    # an earlier version's rows of the days scored whole become 'previous' in
                    # the MERGE's own commit (not a second one that a failure could miss): they
                    # join the source with that role, and match their own rows. (Delta's WHEN
                    # NOT MATCHED BY SOURCE would say it directly, but it rewrote every file of
                    # the table for a one-day rescore, Delta 4.2: 13 of 13 monthly files.)
                    source = predictions
                    if compared:
                        former = retiring(spark, config, first, end, models, predictions,
                                          versions)
                        retired = [r[0] for r in former.select(version_key()).distinct()
                                   .collect()]
                        source = predictions.unionByName(former)
                    metrics = tables.merge(spark, source, config, "delay_predictions",
                                           PREDICTION_KEYS, changed_columns=PREDICTION_VALUES,
                                           skip_unchanged=True, target_filter=f"t.{window}",
                                           insert_only=not compared)
                finally:
                    if compared:
                        predictions.unpersist()
            # The audit counts are read back: the rows the table holds for the range from the
            # scoring versions, by role and status. Also after an insert: another job may have
            # scored the range since it looked empty.
            # the days before new_from keep their rows and roles: only their late flights are
            # this run's, counted apart
            if state.flights:
                # and after: the predictions are computed by the write, a promotion during it
                # (a training's rescore of these days) fails the run before it retires the new
                # champion's rows; the retry's MERGE puts the roles right
                check_champion_unchanged(name, models[0], written=True)
            held = held_rows(spark, config, first, end)
            retired = sorted({*retired, *retire_others(spark, config, first, end, models,
                                                       held, versions)})
            if late_ids:
                for key, n in held_rows(spark, config, start, end, late_ids).items():
                    held[key] = held.get(key, 0) + n
            counts = of_current(held, scoring)
            version_written = tables.version(spark, config, "delay_predictions")
        rows = sum(counts.values())
        scored = sum(n for (_, status), n in counts.items() if status == "scored")
        audit.update(rows_in=rows, rows_out=scored, rows_quarantined=rows - scored,
                     version_read=version_read, version_written=version_written,
                     message=f"{name} " + ", ".join(f"v{m.version} ({m.role})" for m in scoring)
                             + f" scored {start}..{end}"
                             + (f" (v{models[1].version} (challenger) not scored: "
                                f"{shadow_error})" if shadow_error and len(models) > 1
                                else f" (@{registry.CHALLENGER} not scored: {shadow_error})"
                                if shadow_error else "")
                             + (f" (before {new_from}: {len(late_ids)} late flight(s) only)"
                                if late else "")
                             + f"; written {inserted(metrics)} new, "
                             f"{metrics.get('numTargetRowsUpdated', 0)} changed"
                             + (f"; rows of {', '.join(retired)} now role "
                                f"{PREVIOUS!r}" if retired else ""))
    champion = models[0]
    return {"model_name": name, "model_version": champion.version,
            "challenger_version": scoring[1].version if len(scoring) > 1 else None,
            "challenger_error": shadow_error,
            "rows": counts.get((champion.role, "scored"), 0),
            "unscorable": counts.get((champion.role, "unscorable"), 0),
            "table": config.table("delay_predictions"), "from": start, "to": end}
