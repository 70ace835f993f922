"""Bronze stage: landed files and Kafka events to append-only Delta tables, each record once.

One Structured Streaming query per source, each with its own checkpoint: Spark's file source
(Auto Loader on Databricks) names each micro-batch's landed files, Spark's Kafka source its
events. Each micro-batch is appended with Delta's idempotent writes (txnAppId = the query's
id, txnVersion = the batch id), so a batch replayed after a crash is not appended twice.
Scheduled runs take what is there and stop (availableNow); `--continuous` runs a
micro-batch every interval until stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial, reduce
from typing import Any

from pyspark import StorageLevel
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.query import StreamingQuery

from lakehouse import tables
from lakehouse.bronze import (
    CORRUPT_COLUMN,
    INVALID_BYTES_COLUMN,
    MISSING_COLUMN,
    RESCUED_COLUMN,
    SOURCE_COLUMNS,
    BronzeAccountingError,
    LandedProfile,
    base_name,
    by_header,
    check_accounting,
    file_name,
    from_json_lines,
    from_kafka,
    header_drift,
    header_names,
    profile_landed,
    records_per_file,
    same_file,
    with_event_lineage,
    with_lineage,
)
from lakehouse.config import Config, client_options, flag
from lakehouse.seed import SNAPSHOT_SOURCES
from lakehouse.session import inherit, require_classic
from lakehouse.stages.audit import audit_batch, audited

# Bronze is raw text read whole by the silver stream: min/max statistics on it would cost
# every append and never skip a file.
log = logging.getLogger("lakehouse")
BRONZE_PROPERTIES = {"delta.dataSkippingNumIndexedCols": "0"}


class MigrationRequiredError(RuntimeError):
    """A bronze table exists but its stream checkpoint is new (e.g. written by the ledger
    version): reading the source from the start would append everything again."""


class CheckpointBehindError(RuntimeError):
    """A micro-batch Delta skipped as committed held other records than this checkpoint planned
    for it: the checkpoint is older than the table (restored from another backup). The batches
    after it would append records the table holds."""


class MissingHeaderError(ValueError):
    """A landed CSV file without a header line: a data error, not retried."""


class EventSourceError(RuntimeError):
    """Kafka could not be read (broker down, topic missing); the micro-batches committed
    before the failure stay in bronze, the rest is read by the next run."""


class EventsLostError(ValueError):
    """Offsets the stream has to read were deleted by the broker (its retention): every run
    would fail on them again, so it is not retried. Events bronze never read: a run told to
    accept the loss (`--accept-lost-events`) goes on and records the offsets lost. Offsets
    bronze holds (a replayed committed micro-batch, a checkpoint behind the table): the
    message names the way on, a migration accepting the loss over a new checkpoint."""


@dataclass(frozen=True)
class Source:
    """A streamed bronze source: its table, kind ("files" or "events") and settings."""

    name: str
    kind: str
    settings: dict[str, Any]

    @property
    def table(self) -> str:
        return f"bronze_{self.name}"


def sources(config: Config) -> list[Source]:
    """The streamed sources of conf: landed file folders, and Kafka topics that are enabled."""
    section = config.section("bronze")
    found = [Source(n, "files", dict(s)) for n, s in (section.get("files") or {}).items()]
    found += [Source(n, "events", dict(s)) for n, s in (section.get("events") or {}).items()
              if flag(s, f"bronze.events.{n}", "enabled", True)]
    return found


def checkpoint(config: Config, table: str) -> str:
    return os.path.join(config.checkpoints, table, "stream")


@dataclass
class Counts:
    """What a run (or a micro-batch) of one source did, for its audit row."""

    files: int = 0
    landed: int = 0
    rows: int = 0
    corrupt: int = 0
    rescued: int = 0
    missing: int = 0
    invalid: int = 0
    batches: int = 0
    drift: list[str] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)
    eof_marks: list[str] = field(default_factory=list)
    adopted: int = 0
    unchanged: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)

    def notes(self) -> list[str]:
        """What the audit message says beside the counts."""
        notes = []
        if self.lost:  # first: the message is cut at about 1,900 characters
            notes.append("events the broker deleted before they were read, skipped "
                         "(--accept-lost-events): " + "; ".join(self.lost))
        if self.drift:
            notes.append("header drift: " + "; ".join(self.drift))
        if self.rescued:
            notes.append(f"{self.rescued} record(s) with extra columns kept in {RESCUED_COLUMN}")
        if self.missing:
            notes.append(f"{self.missing} record(s) lacking columns ({MISSING_COLUMN}; "
                         "quarantined in silver)")
        if self.invalid:
            notes.append(f"{self.invalid} record(s) with bytes the source's charset cannot "
                         f"decode, kept in {INVALID_BYTES_COLUMN} (quarantined in silver)")
        if self.eof_marks:
            notes.append("DOS end-of-file mark (Ctrl-Z) not taken for a record: "
                         + ", ".join(self.eof_marks))
        if self.replayed:
            notes.append(f"{len(self.replayed)} micro-batch(es) already committed by an "
                         "interrupted run: not written again")
        if self.unchanged:
            notes.append("snapshot byte for byte the one loaded, not loaded again (the "
                         "table's _source_file still names the earlier file): "
                         + ", ".join(self.unchanged))
        if self.adopted:
            notes.append(f"{self.adopted} file(s) already in the table before its stream "
                         "checkpoint (migration): recorded, not appended again")
        return notes


# --- reading landed files -------------------------------------------------------------------

def profiles(spark: SparkSession, files: list[str], fmt: str) -> dict[str, LandedProfile]:
    """Each landed file's records counted from its bytes (independently of Spark's readers).
    Every file of the batch must be read: one left out (Spark's binaryFile source skipping a
    file, spark.sql.files.ignoreMissingFiles) would be neither read nor counted, and the
    checkpoint would take it as ingested."""
    found = {uri: profile_landed(stream, csv_format=fmt == "csv")
             for uri, stream in tables.landed_bytes(spark, files)}
    unread = sorted(set(map(same_file, files)) - set(map(same_file, found)))
    if unread:
        raise BronzeAccountingError(
            f"{len(unread)} file(s) of the micro-batch could not be read to count their "
            f"records: {', '.join(unread[:5])}; nothing was written (every rerun reads the "
            f"micro-batch again: make them readable, or replace or remove them)")
    return found


def landed_rows(spark: SparkSession, source: str, settings: dict[str, Any],
                landed: dict[str, LandedProfile]) -> DataFrame | None:
    """The records of landed files, parsed by format: CSV columns matched by each file's
    header, JSON lines one by one. None when the files hold no record."""
    fmt, charset = settings.get("format", "csv"), settings.get("charset", "utf-8")
    groups: dict[tuple[Any, ...], list[str]] = {}
    for uri, profile in landed.items():
        if fmt == "csv" and profile.header.strip():
            names = tuple(header_names(profile.header, charset))
            if not set(names) & set(SOURCE_COLUMNS[source]):
                # read as a header, a first record would be in neither bronze nor quarantine
                raise MissingHeaderError(
                    f"bronze_{source}: {base_name(uri)}: its first line names none of the "
                    f"source's columns {list(SOURCE_COLUMNS[source])[:4]}...: a CSV file must "
                    f"start with a header line; nothing was written (replace the file with one "
                    f"that has its header, or remove it)")
        if profile.records:
            names = tuple(header_names(profile.header, charset)) if fmt == "csv" else ()
            groups.setdefault((names, profile.eof_mark), []).append(uri)
    frames = []
    for (names, eof_mark), files in sorted(groups.items()):
        if fmt == "json":
            frames.append(tables.read_text_files(spark, files)
                          .transform(from_json_lines(source, eof_mark)))
        elif fmt == "csv":
            frames.append(tables.read_csv_files(spark, files, len(names), CORRUPT_COLUMN)
                          .transform(by_header(source, names, charset, eof_mark)))
        else:
            raise ValueError(f"bronze.files.{source}.format must be csv or json, got {fmt!r}")
    return reduce(DataFrame.unionByName, frames) if frames else None


def notes_of(source: str, settings: dict[str, Any], landed: dict[str, LandedProfile],
             counts: Counts) -> None:
    """Header drift and end-of-file marks of the landed files, by file name."""
    charset = settings.get("charset", "utf-8")
    for uri, profile in sorted(landed.items(), key=lambda item: base_name(item[0])):
        if settings.get("format", "csv") == "csv" and profile.header:
            drift = header_drift(header_names(profile.header, charset), SOURCE_COLUMNS[source])
            if drift:
                counts.drift.append(f"{base_name(uri)}: {drift}")
        if profile.eof_mark:
            counts.eof_marks.append(base_name(uri))


def counted_write(rows: DataFrame, write: Callable[[DataFrame], None],
                  check: Callable[[Counts, DataFrame], None] | None = None) -> Callable[[], Counts]:
    """Write rows once, counting them from the same read; returns how to read the counts (only
    meaningful when the write ran: Delta may skip an append it already committed).

    The rows are persisted, counted, written from the cache and released: each landed file is
    parsed once. check, when given, sees the counts (and the cached rows) before the write and
    raises to leave the table as it was. Spark's `Observation` would count during the write, but
    once a session has run one, every MLlib model fitted in that session that keeps a training
    summary (logistic regression, random forest) fails with "Task not serializable" (the summary
    holds the session, whose ObservationManager is not serializable; Spark 4.0), and bronze
    shares the session with training in a daily run and in notebooks.
    """
    aggregates = [F.count(F.lit(1)).alias("rows")]
    for name, column in (("corrupt", CORRUPT_COLUMN), ("rescued", RESCUED_COLUMN),
                         ("missing", MISSING_COLUMN), ("invalid", INVALID_BYTES_COLUMN)):
        if column in rows.columns:
            aggregates.append(F.count(column).alias(name))
    metrics: dict[str, Any] = {}

    def counts() -> Counts:
        return Counts(rows=metrics.get("rows", 0), corrupt=metrics.get("corrupt", 0),
                      rescued=metrics.get("rescued", 0), missing=metrics.get("missing", 0),
                      invalid=metrics.get("invalid", 0), batches=1)

    cached = rows.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        found = cached.agg(*aggregates).first()
        metrics.update(found.asDict() if found is not None else {})
        if check is not None:
            check(counts(), cached)
        write(cached)
    finally:
        cached.unpersist()
    return counts


# --- micro-batches --------------------------------------------------------------------------

class Batches:
    """The foreachBatch function of one source's query: parse, append once, count.

    The query's id (kept in its checkpoint, so the same on every restart) is the Delta
    txnAppId: a batch an interrupted run committed is skipped by Delta, not appended again.
    """

    def __init__(self, spark: SparkSession, config: Config, source: Source, run_id: str,
                 on_batch: Callable[[Counts], None] | None = None, adopt: bool = False,
                 accept_lost: bool = False) -> None:
        self.spark, self.config, self.source, self.run_id = spark, config, source, run_id
        self.on_batch, self.adopt, self.accept_lost = on_batch, adopt, accept_lost
        self.totals = Counts()
        self.committed_before = 0  # micro-batches an earlier attempt of this run committed
        self.failure: list[BaseException] = []
        self.stream_id: str | None = None
        self.current_batch: int | None = None  # the micro-batch being written, and its tag
        self.current_tag: str | None = None
        self._started = threading.Event()
        # a migration over a checkpoint that logged batches before it may replay events the
        # table holds (see not_held); looked at before the query starts and logs its own
        self.replays_held = (adopt and source.kind == "events"
                             and logged_batches(spark, config, source.table))

    def started(self, query: StreamingQuery) -> None:
        self.stream_id = str(query.id)
        self._started.set()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        try:
            self._started.wait()
            counts = self.process(batch, batch_id)
            self.current_batch = self.current_tag = None  # told only of a failing batch
            self.totals.add(counts)
            if self.on_batch is not None and (counts.rows or counts.files):
                self.on_batch(counts)
        except BaseException as error:  # keep the original error; Spark wraps it otherwise
            self.failure.append(error)
            raise

    def process(self, batch: DataFrame, batch_id: int) -> Counts:
        table = self.source.table
        tag = f"bronze {self.stream_id} batch {batch_id}"
        self.current_batch, self.current_tag = batch_id, tag
        if batch_id == 0 and not self.adopt:
            self.check_new_table(tag)
        if self.source.kind == "events":
            rows = batch.transform(from_kafka)
            if self.replays_held:
                rows = rows.transform(not_held(self.spark, self.config, table))
            rows = rows.transform(with_event_lineage(self.run_id, batch_id))
            return self.append(rows, batch_id, tag) or Counts(replayed=[0])
        files = tables.batch_files(batch)
        counts = Counts(files=len(files))
        if self.adopt:
            known = already_ingested(self.spark, self.config, table)
            counts.adopted = sum(base_name(f) in known for f in files)
            files = [f for f in files if base_name(f) not in known]
        fmt = self.source.settings.get("format", "csv")
        landed = profiles(self.spark, files, fmt)
        notes_of(self.source.name, self.source.settings, landed, counts)
        counts.landed = sum(p.records for p in landed.values())
        read = landed_rows(self.spark, self.source.name, self.source.settings, landed)
        if read is None:
            return counts
        rows = read.transform(with_lineage(self.run_id, batch_id))
        per_file = {uri: p.records for uri, p in landed.items()}

        def check(found: Counts, cached: DataFrame) -> None:
            """Before the write: a batch whose files' records do not all become rows is not
            committed (bronze and the checkpoint stay as they were; every rerun checks it)."""
            if found.rows != counts.landed:
                try:
                    check_accounting(per_file, records_per_file(cached))
                except BronzeAccountingError as error:
                    raise BronzeAccountingError(f"{table}: {error}; nothing was written") \
                        from error
                raise BronzeAccountingError(f"{table}: {counts.landed} records landed, "
                                            f"{found.rows} read; nothing was written")

        written = self.append(rows, batch_id, tag, check)
        if written is None:  # committed by an interrupted run, after the same check
            counts.replayed.append(len(files))
            return counts
        written.files, written.landed, written.adopted = counts.files, counts.landed, counts.adopted
        written.drift, written.eof_marks = counts.drift, counts.eof_marks
        return written

    def append(self, rows: DataFrame, batch_id: int, tag: str,
               check: Callable[[Counts, DataFrame], None] | None = None) -> Counts | None:
        """Append a micro-batch once; its counts, or None when Delta skipped it as committed.
        check: see `counted_write`."""
        table = self.source.table
        before = tables.version(self.spark, self.config, table)
        counts = counted_write(rows, lambda df: tables.append(
            df, self.config, table, txn=(str(self.stream_id), batch_id), tag=tag,
            merge_schema=True, properties=BRONZE_PROPERTIES), check)
        if not tables.new_commit_tagged(self.spark, self.config, table, tag, before):
            self.check_replay(tag, batch_id, counts().rows)
            return None
        return counts()

    def check_replay(self, tag: str, batch_id: int, planned: int) -> None:
        """A batch Delta skipped as committed (its txnVersion) is a replay of that commit only
        when it holds the same records: a crash between Delta's commit and the checkpoint's
        reruns the batch as the offsets log planned it. A checkpoint older than the table
        (restored from another backup) plans its batches anew, so the skipped batch may hold
        fewer or more records than the commit, and the batches after it would append records
        the table holds, or never read some: compared by the commit's row count (a replanned
        batch of as many records passes; so does one whose commit is past the history read or
        has no metrics)."""
        table = self.source.table
        if self.replays_held:
            return  # its rows were filtered by what the table holds: its own commit's too
        committed = tables.tagged_commit_rows(self.spark, self.config, table, tag)
        if committed is None or committed == planned:
            return
        raise CheckpointBehindError(
            f"{table}: micro-batch {batch_id} of its stream was committed with {committed} "
            f"records, and its checkpoint {checkpoint(self.config, table)} planned {planned} "
            "for it: the checkpoint is older than the table (restored from an older backup?) "
            "or a `lakehouse migrate` over it was interrupted. Nothing more was written. After "
            f"an interrupted migration, run `lakehouse migrate --env {self.config.env}` again; "
            "otherwise restore the checkpoint that goes with the table, or delete it and run "
            f"the migration, which ingests only what {table} does not hold."
            + (" Accepting lost events, the broker may also have deleted some of this "
               "committed batch's events (they are in bronze): move the checkpoint aside and "
               f"run `lakehouse migrate --env {self.config.env} --accept-lost-events`, which "
               f"starts after what {table} holds." if self.accept_lost else ""))

    def check_new_table(self, tag: str) -> None:
        """Refuse a stream's first batch over a table that already holds records: a checkpoint
        whose first batch was logged before `refuse_new_checkpoint` ran at the start (by an
        earlier version of this job) replays it as logged."""
        table = self.source.table
        if not tables.exists(self.spark, self.config, table):
            return
        if tables.new_commit_tagged(self.spark, self.config, table, tag, None):
            return  # this stream's first batch, committed before a crash
        raise migration_required(self.config, table, self.accept_lost)


def migration_required(config: Config, table: str,
                       accept_lost: bool = False) -> MigrationRequiredError:
    flag = " --accept-lost-events" if accept_lost else ""
    return MigrationRequiredError(
        f"{table} already holds records but its stream checkpoint "
        f"{checkpoint(config, table)} is new (the table was written by the file-ledger "
        "version, or the checkpoint was deleted): reading the source from the start would "
        f"append every record again. Run `lakehouse migrate --env {config.env}{flag}` once: "
        f"it records what {table} already holds in the new checkpoint without "
        "appending it, and ingests the rest. Nothing was written.")


def logged_batches(spark: SparkSession, config: Config, table: str) -> bool:
    """Whether the table's stream checkpoint has logged a micro-batch: a file of the offsets
    log named by its batch id (Spark's in-progress temp files start with "." and are not
    listed)."""
    folder = tables.literal_path(os.path.join(checkpoint(config, table), "offsets"))
    return any(os.path.basename(uri).isdigit() for uri in tables.landed_files(spark, folder))


def refuse_new_checkpoint(spark: SparkSession, config: Config, table: str,
                          accept_lost: bool = False) -> None:
    """Before the query starts: a new checkpoint over a table that holds records is refused
    before Spark logs its first micro-batch. Once logged, a batch is replayed as it was
    planned (from the earliest Kafka offsets, or every landed file) whatever the migration
    then asks, and the migration would have to filter every replayed record against the
    table."""
    if tables.exists(spark, config, table) and not logged_batches(spark, config, table):
        raise migration_required(config, table, accept_lost)


def already_ingested(spark: SparkSession, config: Config, table: str) -> set[str]:
    """Names of the files a bronze table holds records of."""
    if not tables.exists(spark, config, table):
        return set()
    names = tables.read(spark, config, table).select(file_name(F.col("_source_file"))).distinct()
    return {base_name(r[0]) for r in names.collect()}


def not_held(spark: SparkSession, config: Config, table: str) -> Callable[[DataFrame],
                                                                         DataFrame]:
    """The events of a batch whose Kafka coordinates (topic, partition, offset) the table does
    not hold yet. A migrating run's stream may replay offsets bronze holds whatever its starting
    offsets: a run of an earlier version of this job on the new checkpoint logged its first
    batch's offsets (from the earliest) before it stopped on MigrationRequiredError, and Spark
    replays a logged batch as it was planned. (Only then: this version refuses a new checkpoint
    before its first batch is logged, and the migration starts after the offsets held.)"""
    if not tables.exists(spark, config, table):
        return lambda rows: rows
    held = tables.read(spark, config, table).select("topic", "partition", "offset")
    return lambda rows: rows.join(held, ["topic", "partition", "offset"], "left_anti")


def after_ingested_offsets(spark: SparkSession, config: Config, source: Source,
                           accept_lost: bool = False) -> Source:
    """An events source adopted by a new checkpoint (`lakehouse migrate`) starts after the
    offsets its bronze table holds, per partition of the topic (a partition it holds nothing
    of from the earliest): reading from the conf's starting_offsets again would append every
    retained event a second time. (Spark's startingOffsets applies to a new checkpoint only.)"""
    if not tables.exists(spark, config, source.table) or logged_batches(spark, config,
                                                                          source.table):
        return source  # nothing to adopt, or a checkpoint that goes on from its own offsets
    held = held_offsets(spark, config, source)
    if not held:
        return source
    topic = str(source.settings["topic"])
    broker = broker_offsets(source)
    # accepting lost events, a partition starts where the broker's offsets do when they are
    # past bronze's (Spark's data-loss check is off; starting there saves its detour)
    starting = {str(p): (max(held[p] + 1, earliest) if accept_lost else held[p] + 1)
                if p in held else -2 for p, (earliest, _) in sorted(broker.items())}
    log.info("%s: a new checkpoint adopts the events bronze holds; starting at %s",
             source.table, starting)
    return Source(source.name, source.kind,
                  {**source.settings, "starting_offsets": json.dumps({topic: starting})})


def held_offsets(spark: SparkSession, config: Config, source: Source) -> dict[int, int]:
    """The last offset of each partition of the source's topic that its bronze table holds."""
    if not tables.exists(spark, config, source.table):
        return {}
    topic = str(source.settings["topic"])
    return {int(r[0]): int(r[1]) for r in tables.read(spark, config, source.table)
            .filter(F.col("topic") == topic).groupBy("partition").agg(F.max("offset"))
            .collect()}


def broker_offsets(source: Source) -> dict[int, tuple[int, int]]:
    """The (earliest, next) offset the broker holds of each partition of the source's topic
    (the earliest: what its retention has not deleted yet), asked with the confluent-kafka
    admin client and the source's client_options."""
    from confluent_kafka import TopicPartition

    # OffsetSpec is public API (confluent-kafka's docs import it from here); its typing stub
    # does not re-export it
    from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

    topic = str(source.settings["topic"])
    timeout = float(source.settings.get("timeout_seconds", 10))
    admin = AdminClient({"bootstrap.servers": str(source.settings["bootstrap_servers"]),
                         **client_options(source.settings, "client_options")})

    def offsets(spec: Any, partitions: Iterable[int]) -> dict[int, int]:
        asked = {TopicPartition(topic, p): spec for p in partitions}
        answers = admin.list_offsets(asked, request_timeout=timeout) if asked else {}
        return {tp.partition: int(answer.result(timeout).offset)
                for tp, answer in answers.items()}

    servers = source.settings["bootstrap_servers"]
    try:
        listed = admin.list_topics(topic, timeout=timeout).topics[topic]
    except Exception as error:  # KafkaException: broker unreachable within the timeout
        raise EventSourceError(f"cannot list the partitions of Kafka topic {topic!r} at "
                               f"{servers} (the admin client's settings are bronze.events."
                               f"{source.name}.client_options): {error}; nothing was committed"
                               ) from error
    if listed.error is not None:  # UNKNOWN_TOPIC_OR_PART: deleted (and not made anew)
        raise ValueError(f"{source.table}: Kafka topic {topic!r} does not exist on {servers} "
                         f"({listed.error}); nothing was committed")
    try:
        partitions = list(listed.partitions)
        earliest = offsets(OffsetSpec.earliest(), partitions)  # type: ignore[no-untyped-call]
        latest = offsets(OffsetSpec.latest(), partitions)  # type: ignore[no-untyped-call]
    except Exception as error:  # KafkaException: broker unreachable within the timeout
        raise EventSourceError(
            f"cannot list the offsets of Kafka topic {topic!r} at {servers} (the admin "
            f"client's settings are bronze.events.{source.name}.client_options): {error}; "
            "nothing was committed") from error
    return {p: (earliest[p], latest[p]) for p in partitions}


class OffsetsResetError(ValueError):
    """The topic's offsets went back below what bronze holds (the topic deleted and made
    anew, or another cluster): which events a run would skip cannot be told."""


@dataclass(frozen=True)
class LostOffsets:
    """What a run that accepts lost events skips: per partition, the offsets after the last one
    bronze holds and before the earliest one the broker still holds; and the partitions
    bronze holds nothing of whose start the broker no longer holds."""

    gaps: dict[int, tuple[int, int]]
    unheld: dict[int, int]

    @property
    def offsets(self) -> int:
        return sum(end - start for start, end in self.gaps.values())

    def note(self) -> str:
        """One line, the total first (an audit message is cut at about 1,900 characters)."""
        parts = []
        if self.gaps:
            parts.append(f"{self.offsets} offset(s) in {len(self.gaps)} partition(s): "
                         + ", ".join(f"p{p} [{start}, {end})"
                                     for p, (start, end) in sorted(self.gaps.items())))
        if self.unheld:
            parts.append(f"{len(self.unheld)} partition(s) bronze holds nothing of, the broker "
                         "holding them from an offset above 0 (what the stream had read of "
                         "them is not known): "
                         + ", ".join(f"p{p} from {earliest}"
                                     for p, earliest in sorted(self.unheld.items())))
        return "; ".join(parts) or "no offset the broker deleted lay unread"


def offsets_lost(table: str, topic: str, held: dict[int, int],
                 broker: dict[int, tuple[int, int]]) -> LostOffsets:
    """The offsets a run that skips to the broker's earliest leaves unread, from the last offset
    of each partition bronze holds and the broker's (earliest, next) offsets. Offsets, not
    events: a transactional producer's commit markers take offsets too. Fails with
    OffsetsResetError when a partition bronze holds is gone or its offsets end below bronze's:
    the topic was made anew (its offsets start again at 0), and skipping by offset would leave
    out events the broker holds."""
    reset = [f"partition {p}: bronze holds it up to offset {last}, "
             + (f"the broker's offsets end at {broker[p][1]}" if p in broker else
                "the broker has no such partition")
             for p, last in sorted(held.items()) if p not in broker or broker[p][1] <= last]
    if reset:
        raise OffsetsResetError(
            f"{table}: the offsets of Kafka topic {topic!r} went back below what bronze holds "
            f"({'; '.join(reset)}): the topic was deleted and made anew (or bootstrap_servers "
            "names another cluster). Skipping by offset would leave out events the broker "
            "holds, so they are not accepted as lost events. This job "
            "follows a topic by name and offsets: produce to a topic of a new name, set it as "
            "the source's topic, move the stream checkpoint aside and run `lakehouse migrate` "
            "(a topic bronze holds nothing of is read from its earliest offsets).")
    gaps = {p: (held[p] + 1, earliest) for p, (earliest, _) in broker.items()
            if p in held and earliest > held[p] + 1}
    unheld = {p: earliest for p, (earliest, _) in broker.items()
              if p not in held and earliest > 0}
    return LostOffsets(gaps, unheld)


def lost_offsets(spark: SparkSession, config: Config, source: Source) -> LostOffsets:
    """Before a run that accepts lost events: what it will skip (`offsets_lost`), read from the
    table and the broker, not from Spark's checkpoint."""
    return offsets_lost(source.table, str(source.settings["topic"]),
                        held_offsets(spark, config, source), broker_offsets(source))


# --- queries --------------------------------------------------------------------------------

def stream_of(spark: SparkSession, config: Config, source: Source,
              accept_lost: bool = False) -> DataFrame:
    if source.kind == "events":
        return tables.kafka_stream(spark, source.settings, fail_on_data_loss=not accept_lost)
    section = config.section("bronze")
    return tables.landed_file_stream(spark, os.path.join(config.landing, source.name),
                                     str(section.get("file_source", "files")),
                                     int(section.get("max_files_per_trigger", 400)))


@contextmanager
def running(spark: SparkSession, config: Config, source: Source, batches: Batches,
            interval: str | None) -> Iterator[StreamingQuery]:
    """One run of a source's query, under the source's lock; errors from a batch or from
    Kafka come out as themselves, not wrapped by Spark."""
    table = source.table
    lock = os.path.join(config.checkpoints, table, "run.lock")
    with tables.exclusive_run(lock, f"the ingestion of {table}"):
        if not batches.adopt:
            refuse_new_checkpoint(spark, config, table, batches.accept_lost)
        query = tables.start_stream(stream_of(spark, config, source, batches.accept_lost),
                                    batches,
                                    checkpoint(config, table), f"{table}-{uuid.uuid4().hex[:8]}",
                                    interval)
        batches.started(query)
        try:
            yield query
        except StreamingQueryException as error:
            if query.exception() is None:  # another source's query failed
                raise
            committed = batches.committed_before + batches.totals.batches
            if batches.failure:  # a deleted offset range is found when a batch reads it
                lost = (source.kind == "events" and events_lost(
                    spark, config, source, batches.failure[0], batches, in_batch=True))
                raise (lost or batches.failure[0]) from None
            if source.kind == "events":  # or when the driver plans a batch
                raise (events_lost(spark, config, source, error, batches, in_batch=False)
                       or kafka_error(source, error, committed)) from None
            raise
        finally:
            if query.isActive:
                between_batches(query)
                query.stop()


# Spark 4.1.1's Kafka source fails its progress report after it replays a micro-batch an
# interrupted run left uncommitted (SPARK-55271, fixed upstream): the batch is written and
# committed before the report fails, so starting the query again goes on from there.
KAFKA_REPLAY_METRICS_BUG = 'because the return value of "scala.Option.get()" is null'


def after_kafka_replay_bug(error: BaseException) -> bool:
    return KAFKA_REPLAY_METRICS_BUG in str(error)


def between_batches(query: StreamingQuery, timeout: float = 60) -> None:
    """Wait (up to timeout) for a running micro-batch to end, so that stopping the query does
    not interrupt its write (harmless, it is replayed, but noisy)."""
    deadline = time.monotonic() + timeout
    while query.isActive and query.status["isTriggerActive"] and time.monotonic() < deadline:
        time.sleep(0.2)


# How Spark's Kafka source says that offsets it had to read are gone (KAFKA_DATA_LOSS: its
# subclasses name the partition and offsets; the text tells to set failOnDataLoss, which
# this job sets itself).
KAFKA_DATA_LOSS = "Some data may have been lost because they are not available in Kafka"


def events_lost(spark: SparkSession, config: Config, source: Source, error: BaseException,
                batches: Batches, in_batch: bool) -> ValueError | None:
    """The error to fail with when a Kafka query failed because offsets it had to read are gone
    (None for any other failure), with the way on: EventsLostError, naming what is lost when
    events were deleted unread; OffsetsResetError when the topic was made anew. in_batch: the
    failure came from the micro-batch being written (else from Spark's planning)."""
    text = str(error)
    if KAFKA_DATA_LOSS not in text:
        return None
    table, topic = source.table, source.settings["topic"]
    # Spark names the offset range of the micro-batch it could not read, not what is gone:
    # the gaps are told from the table and the broker (when it answers)
    reason = text.split("Reason:", 1)[1].strip().split("\n", 1)[0] if "Reason:" in text else ""
    spark_says = f" (Spark: {reason})" if reason else ""
    committed = batches.committed_before + batches.totals.batches
    kept = ("nothing was written" if not committed else
            f"the {committed} micro-batch(es) committed before it stay in bronze")
    lost: LostOffsets | None = None
    try:
        lost = lost_offsets(spark, config, source)
    except OffsetsResetError as reset:
        return OffsetsResetError(f"{reset}{spark_says}; {kept}.")
    except Exception as unknown:  # the broker stopped answering
        first = str(unknown).splitlines()[0].removesuffix("; nothing was committed")
        told = f"not told ({first[:300]})"
    try:
        replayed = (in_batch and batches.current_tag is not None and tables.tagged_commit_rows(
            spark, config, table, batches.current_tag) is not None)
    except Exception:
        replayed = False
    accept = f"--env {config.env} --accept-lost-events"
    if replayed or (lost is not None and not lost.gaps and not lost.unheld):
        what = (f"micro-batch {batches.current_batch} (replayed as an interrupted run logged "
                "it) was committed before the broker deleted some of its events: they are in "
                "bronze" if replayed else "the table and the broker show no gap: the stream's "
                "checkpoint is behind the table (restored from an older backup?)")
        if lost is not None and (lost.gaps or lost.unheld):
            what += f"; besides, deleted before bronze read them: {lost.note()}"
        return EventsLostError(
            f"{table}: offsets of Kafka topic {topic!r} the stream has to read again were "
            f"deleted by the broker{spark_says}, but {what}; {kept}. Move the stream checkpoint "
            f"{checkpoint(config, table)} aside and run `lakehouse migrate {accept}`: it starts "
            f"after what {table} holds (at the broker's earliest offsets where those are later).")
    if lost is not None:
        told = lost.note()
    command = "migrate" if batches.adopt else "run bronze"
    return EventsLostError(
        f"{table}: events of Kafka topic {topic!r} were deleted by the broker (its retention) "
        f"before bronze read them: {told}{spark_says}; {kept}. Every run fails on them: they "
        f"cannot be read any more. To go on without them, run `lakehouse {command} {accept}` "
        "once: it skips to the earliest offsets the broker holds and names the offsets lost in "
        "its audit row.")


def kafka_error(source: Source, error: Exception, committed: int) -> Exception:
    """The error a Kafka source's query failed with, saying what this run committed before it
    (committed micro-batches stay in bronze; a rerun goes on after them)."""
    settings = source.settings
    cause = str(error).split("\n", 1)[0]
    kept = ("nothing was committed" if not committed else
            f"the {committed} micro-batch(es) committed before it stay in bronze and a rerun "
            "goes on after them")
    if "UnknownTopicOrPartition" in cause:
        return ValueError(f"{source.table}: Kafka topic {settings['topic']!r} does not exist on "
                          f"{settings['bootstrap_servers']}; {kept} ({cause})")
    return EventSourceError(f"{source.table}: cannot read Kafka topic {settings['topic']!r} from "
                            f"{settings['bootstrap_servers']} ({cause}); {kept}")


# How often a continuous run lists its landing folders for two files of one name.
LAYOUT_CHECK_S = 60.0


class LandingLayoutError(ValueError):
    """Two landed files of one source share a name (in different subfolders)."""


def landed_uniquely(spark: SparkSession, config: Config, source: Source,
                    seen_before: dict[str, list[str]] | None = None) -> bool:
    """Whether anything has landed for a file source; fails when two files share a name.

    Subfolders are read, and files are known by name (so that a moved data root is not read
    again): a second file of the same name would never be read, so it is refused, loudly.
    seen_before: the clashes of the previous look (a continuous run's), updated in place; a
    clash is refused only when the previous look saw it too (an object store moves a file as
    a copy, then a delete: for a moment both are there).
    """
    folder = os.path.join(config.landing, source.name)
    files = tables.landed_files(spark, folder)
    by_name: dict[str, list[str]] = {}
    for uri in files:
        by_name.setdefault(base_name(uri), []).append(uri)
    twice = {name: uris for name, uris in by_name.items() if len(uris) > 1}
    if seen_before is not None:
        twice, previous = {n: u for n, u in twice.items() if seen_before.get(n) == u}, twice
        seen_before.clear()
        seen_before.update(previous)
    if twice:
        detail = "; ".join(f"{name}: {', '.join(uris)}" for name, uris in sorted(twice.items()))
        raise LandingLayoutError(
            f"{source.table}: file names must be unique under {folder} (subfolders included): "
            f"bronze knows a landed file by its name. Rename or remove one of each: {detail}")
    return bool(files)


def ingest(spark: SparkSession, config: Config, source: Source, run_id: str,
           adopt: bool = False, on_batch: Callable[[Counts], None] | None = None,
           accept_lost: bool = False) -> Counts:
    """Ingest everything the source has now, then stop (availableNow); return the counts.
    on_batch: called with each committed micro-batch's counts. accept_lost: an events source
    skips the events the broker deleted before they were read (Spark's failOnDataLoss off for
    this run), and the counts name the offsets skipped."""
    if source.kind == "files" and not landed_uniquely(spark, config, source):
        return Counts()
    accept_lost = accept_lost and source.kind == "events"
    totals = Counts()
    if accept_lost:
        lost = lost_offsets(spark, config, source)
        totals.lost = [lost.note()]
        if on_batch is not None:  # a run that fails after skipping them still names them
            on_batch(Counts(lost=totals.lost))
        log.warning("%s: accepting lost events for this run: %s", source.table, lost.note())
    if adopt and source.kind == "events":
        source = after_ingested_offsets(spark, config, source, accept_lost)
    for attempt in range(2):
        batches = Batches(spark, config, source, run_id, on_batch=on_batch, adopt=adopt,
                          accept_lost=accept_lost)
        batches.committed_before = totals.batches
        try:
            with running(spark, config, source, batches, None) as query:
                query.awaitTermination()
        except EventSourceError as error:
            if attempt or not after_kafka_replay_bug(error):
                raise
            totals.add(batches.totals)
            continue
        totals.add(batches.totals)
        return totals
    return totals


def ingest_snapshot(spark: SparkSession, config: Config, source: str, run_id: str) -> Counts:
    """Replace bronze_<source> with the newest landed snapshot, unless it is already loaded."""
    table = f"bronze_{source}"
    files = tables.landed_files(spark, os.path.join(config.landing, "reference", source))
    counts = Counts()
    if not files:
        return counts
    latest = max(files, key=base_name)  # snapshots are named by date
    if tables.exists(spark, config, table):
        loaded = tables.read(spark, config, table).select(file_name(F.col("_source_file"))).first()
        if loaded is not None and base_name(loaded[0]) == base_name(latest):
            return counts
        same = [f for f in files if loaded is not None and base_name(f) == base_name(loaded[0])]
        if same and same_bytes(spark, same[0], latest):
            # A daily dump that repeats the loaded one: the table already holds these exact
            # records, so no new version (silver and gold then have nothing to redo).
            counts.unchanged = [base_name(latest)]  # files 0: nothing read or written
            return counts
    settings = {"format": "csv", **dict((config.section("bronze").get("references") or {})
                                        .get(source) or {})}
    landed = profiles(spark, [latest], "csv")
    notes_of(source, settings, landed, counts)
    rows = landed_rows(spark, source, settings, landed)
    counts.files, counts.landed = 1, landed[latest].records
    if rows is None:
        return counts
    # Checked before the overwrite: a snapshot already loaded is skipped above, so one loaded
    # with records missing would never be checked again.
    written = counted_write(rows.transform(with_lineage(run_id, 0)),
                            lambda df: tables.overwrite(df, config, table),
                            partial(check_snapshot, table, latest, counts.landed))()
    written.files, written.landed, written.drift = 1, counts.landed, counts.drift
    written.eof_marks = counts.eof_marks
    return written


def check_snapshot(table: str, snapshot: str, landed: int, found: Counts,
                   rows: DataFrame) -> None:
    """Fail, naming the table and the file, unless every landed record of a snapshot is about
    to be written (called before the write: the table is left as it was)."""
    if found.rows == landed:
        return
    kept = f"{table} was left as it was; every rerun checks this snapshot again"
    try:
        check_accounting({snapshot: landed}, records_per_file(rows))
    except BronzeAccountingError as error:
        raise BronzeAccountingError(f"{table}: {error}; {kept}") from error
    raise BronzeAccountingError(f"{table}: {snapshot}: {landed} records landed, "
                                f"{found.rows} read; {kept}")


def same_bytes(spark: SparkSession, first: str, second: str) -> bool:
    """Whether two landed files hold the same bytes (compared by SHA-256)."""
    digests = {uri: hashlib.sha256(stream.read()).hexdigest()  # reference files: small
               for uri, stream in tables.landed_bytes(spark, [first, second])}
    return len(digests) == 2 and len(set(digests.values())) == 1


def audit_row(audit: dict[str, Any], spark: SparkSession, config: Config, table: str,
              counts: Counts) -> None:
    audit.update(files=counts.files, rows_landed=counts.landed, rows_in=counts.rows,
                 rows_out=counts.rows, rows_corrupt=counts.corrupt,
                 version_written=tables.version(spark, config, table))
    notes = counts.notes()
    if notes:
        audit["message"] = " | ".join(notes)[:1900]


def run(spark: SparkSession, config: Config, run_id: str, adopt: bool = False,
        accept_lost_events: bool = False) -> list[dict[str, Any]]:
    """Ingest every source once (snapshots, then the streamed sources side by side, one
    thread each); one audit row per bronze table. adopt: a migration (`lakehouse migrate`).
    accept_lost_events: Kafka sources go on past events the broker deleted before they were
    read, their audit rows naming the offsets lost (`--accept-lost-events`)."""
    require_classic(spark, "bronze")

    def audited_run(name: str, work: Callable[[], Counts]) -> dict[str, Any]:
        with audited(spark, config, run_id, "bronze", name, batch) as audit:
            audit_row(audit, spark, config, name, work())
            return dict(audit)

    def audited_ingest(source: Source) -> dict[str, Any]:
        committed = Counts()
        with audited(spark, config, run_id, "bronze", source.table, batch) as audit:
            try:
                counts = ingest(spark, config, source, run_id, adopt, on_batch=committed.add,
                                accept_lost=accept_lost_events)
            except BaseException:
                # the micro-batches committed before the failure stay in bronze (a rerun goes
                # on after them): the failed run's row counts them
                audit.update(files=committed.files, rows_landed=committed.landed,
                             rows_in=committed.rows, rows_out=committed.rows,
                             rows_corrupt=committed.corrupt)
                if committed.lost:  # the run may have skipped them before it failed
                    audit["message"] = (
                        "lost events accepted (--accept-lost-events) by this failed run, "
                        "skipped only if it committed a micro-batch past them (then a run "
                        f"without the flag goes on after them): {committed.lost[0]}")
                raise
            audit_row(audit, spark, config, source.table, counts)
            return dict(audit)

    with audit_batch(spark, config) as batch:
        results = [audited_run(f"bronze_{s}",
                               partial(ingest_snapshot, spark, config, s, run_id))
                   for s in SNAPSHOT_SOURCES]
        streamed = sources(config)
        if accept_lost_events and not any(s.kind == "events" for s in streamed):
            log.warning("--accept-lost-events: no Kafka source is enabled; nothing to accept")
        if not streamed:
            return results
        # each source's thread carries the caller's Spark properties (its job group: a
        # cancelled notebook command reaches the driver-side reads and checks it runs)
        with ThreadPoolExecutor(len(streamed), thread_name_prefix="bronze") as pool:
            futures = [pool.submit(inherit(spark, audited_ingest), s) for s in streamed]
        return results + [future.result() for future in futures]


def run_continuous(spark: SparkSession, config: Config, run_id: str,
                   until: Callable[[], bool] | None = None,
                   layout_check_s: float = LAYOUT_CHECK_S) -> None:
    """Run every streamed source as a micro-batch every bronze.continuous_interval until
    stopped (Ctrl-C, SIGTERM) or until() is true; one audit row per micro-batch. Every
    layout_check_s seconds (and at the start) the landing folders are listed for two files of
    one name: the second would never be read (files are known by name), so the run fails,
    naming both, as a scheduled run does (while running, once two looks in a row saw them)."""
    require_classic(spark, "bronze")
    interval = str(config.section("bronze").get("continuous_interval", "10 seconds"))
    tables.create_audit(spark, config)
    file_sources = [s for s in sources(config) if s.kind == "files"]
    for source in file_sources:  # a folder to watch, even before anything has landed
        tables.ensure_folder(os.path.join(config.landing, source.name))
        landed_uniquely(spark, config, source)
    checked = time.monotonic()
    clashes: dict[str, dict[str, list[str]]] = {s.name: {} for s in file_sources}
    # before any query starts: a query failing while the next ones start stays terminated,
    # so the loop's wait raises its error (reset after the starts, it would be forgotten and
    # its source left dead, its lock held, while the others go on)
    spark.streams.resetTerminated()
    with ExitStack() as stack:
        for source in sources(config):

            def audit_micro_batch(counts: Counts, table: str = source.table) -> None:
                with audited(spark, config, run_id, "bronze", table) as audit:
                    audit_row(audit, spark, config, table, counts)

            batches = Batches(spark, config, source, run_id, on_batch=audit_micro_batch)
            stack.enter_context(running(spark, config, source, batches, interval))
        while not (until and until()):
            if spark.streams.awaitAnyTermination(1):  # raises a failed query's error
                break
            if time.monotonic() - checked >= layout_check_s:
                for source in file_sources:
                    landed_uniquely(spark, config, source, clashes[source.name])
                checked = time.monotonic()
