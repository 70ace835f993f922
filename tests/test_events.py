"""Flight events through a real Kafka broker (KRaft, started here on 127.0.0.1): the producer,
bronze's Kafka stream, its errors, and the way from produced events to silver, with a kill."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.broker import Broker, free_port, start
from lakehouse.config import Config, ConfigError
from lakehouse.produce import (
    Pace,
    ProduceError,
    ensure_topic,
    flight_events,
    produce,
    selected_flights,
    time_zones,
    with_duplicates,
)
from lakehouse.seed import seed
from lakehouse.stages import bronze, silver
from tests.conftest import TEST_SPARK, make_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    running = start(tmp_path_factory.mktemp("kafka"))
    yield running
    running.stop()


def events_settings(servers: str, topic: str, **settings: object) -> dict:
    # 30 s for a broker that answers (a busy 2-core machine, three Spark JVMs beside it, can
    # take seconds over one request); the tests of failures pass their own, shorter
    return {"files": None, "continuous_interval": "1 second", "events": {"flight_events": {
        "enabled": True, "bootstrap_servers": servers, "topic": topic, "partitions": 2,
        "timeout_seconds": 30, **settings}}}


def events_source(config: Config) -> bronze.Source:
    return next(s for s in bronze.sources(config) if s.kind == "events")


def test_events_are_sent_in_the_order_they_became_known() -> None:
    header, rows = selected_flights(date(2013, 1, 1), date(2013, 1, 1), None)
    events = flight_events(header, rows, time_zones())
    assert len(events) == 2 * 842
    assert [e.known_at for e in events] == sorted(e.known_at for e in events)
    seen: dict[str, str] = {}
    for event in events:  # a flight's schedule comes before its outcome
        before = "scheduled" if event.value["event_type"] == "outcome" else None
        assert seen.get(event.key) == before
        seen[event.key] = event.value["event_type"]
    first = {e.value["event_type"]: e for e in events if e.key == "2013-01-01_UA_1545_EWR"}
    # Scheduled 05:15 EST (10:15Z); due in Houston 08:19 CST (14:19Z), 11 minutes late.
    assert first["outcome"].known_at == datetime(2013, 1, 1, 14, 30, tzinfo=UTC)
    assert first["scheduled"].known_at == datetime(2012, 12, 31, 10, 15, tzinfo=UTC)
    assert first["scheduled"].value["arr_delay"] is None
    assert first["outcome"].value["arr_delay"] == 11
    cancelled = next(e for e in events if e.value["event_type"] == "outcome"
                     and e.value["dep_time"] is None)
    departure = datetime.fromisoformat(cancelled.value["time_hour"].replace("Z", "+00:00"))
    assert (cancelled.known_at - departure).total_seconds() == 60 * cancelled.value["minute"]
    repeated = with_duplicates(events, 0.1, random.Random(1))
    copies = [i for i, (_, again) in enumerate(repeated) if again]
    assert len(repeated) == len(events) + len(copies) and 120 < len(copies) < 220
    for i in copies:  # each copy follows its first sending
        assert repeated.index((repeated[i][0], False)) < i


def test_a_burst_sends_ten_times_faster_for_its_length() -> None:
    pace = Pace(speedup=60, burst_at=10, burst_factor=10, burst_seconds=5)
    assert pace.wall_seconds(600) == 10  # an hour of event time per minute before it
    assert pace.wall_seconds(3600) == pytest.approx(15)  # 50 min in 5 s during the burst
    assert pace.wall_seconds(4200) == pytest.approx(25)  # back to the steady rate after it
    assert Pace().wall_seconds(10 ** 6) == 0  # no pace: as fast as the broker takes them


def test_bronze_keeps_every_event_whole_with_its_kafka_coordinates(
        spark: SparkSession, tmp_path: Path, broker: Broker,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka import Producer

    # a user's request timeout above timeout_seconds (the default API timeout must follow it:
    # Kafka's AdminClient refuses one below it)
    config = make_config(tmp_path, bronze=events_settings(
        broker.bootstrap_servers, "keep", max_offsets_per_trigger=150,
        options={"kafka.request.timeout.ms": "45000"}))
    sent = produce(config, date(2013, 1, 1), date(2013, 1, 1), Pace(), duplicates=0.05,
                   limit=100)
    raw = Producer({"bootstrap.servers": broker.bootstrap_servers})
    raw.produce("keep", key=b"x", value=b"not json, {")
    raw.produce("keep", key=b"y", value=b'{"flight": 1, "tailnum": "N\xff1"}')
    raw.produce("keep", key=b"\xff\x00\x00\x07", value=b'{"flight": 2}')  # an int's bytes
    assert raw.flush(30) == 0
    # a transactional producer: an aborted transaction's records are no events (read
    # committed); a committed one's land
    transactional = Producer({"bootstrap.servers": broker.bootstrap_servers,
                              "transactional.id": "lakehouse-test"})
    transactional.init_transactions(30)
    for outcome in ("aborted", "committed"):
        transactional.begin_transaction()
        transactional.produce("keep", key=b"t", value=f'{{"{outcome}": 1}}'.encode())
        transactional.flush(30)
        (transactional.abort_transaction if outcome == "aborted"
         else transactional.commit_transaction)(30)
    counts = bronze.ingest(spark, config, events_source(config), "run-1")
    events = tables.read(spark, config, "bronze_flight_events")
    assert events.filter(F.col("value").contains("aborted")).count() == 0
    assert events.filter(F.col("value") == '{"committed": 1}').count() == 1
    total = sent["events"] + 4
    assert counts.rows == events.count() == total and sent["duplicates"] > 0
    assert events.select("partition", "offset").distinct().count() == total
    assert events.select("_batch_id").distinct().count() >= 2  # a micro-batch is bounded
    assert events.filter(F.col("timestamp").isNull() | (F.col("topic") != "keep")).count() == 0
    assert events.filter(F.col("value") == "not json, {").count() == 1  # kept whole
    invalid = [r["_invalid_bytes"] for r in events.filter(F.col("_invalid_bytes").isNotNull())
               .collect()]
    assert sorted(invalid, key=sorted) == [
        {"key": bytearray(b"\xff\x00\x00\x07")},
        {"value": bytearray(b'{"flight": 1, "tailnum": "N\xff1"}')}]
    assert bronze.ingest(spark, config, events_source(config), "run-2").rows == 0
    # The checkpoint lost, `lakehouse migrate` adopts what bronze holds: only the events sent
    # since land (reading the topic from its start would append every one again).
    shutil.rmtree(bronze.checkpoint(config, "bronze_flight_events"))
    for n in range(3):
        raw.produce("keep", key=b"z", value=f'{{"late": {n}}}'.encode())
    assert raw.flush(30) == 0
    # as a user finds it: the scheduled run on the new checkpoint stops, naming the migration,
    # before its query logs a first batch (which Spark would replay from the earliest offsets
    # whatever the migration asks)
    with pytest.raises(bronze.MigrationRequiredError, match="Run `lakehouse migrate"):
        bronze.ingest(spark, config, events_source(config), "run-3a")
    assert tables.read(spark, config, "bronze_flight_events").count() == total
    assert not bronze.logged_batches(spark, config, "bronze_flight_events")
    assert bronze.ingest(spark, config, events_source(config), "run-3", adopt=True).rows == 3
    events = tables.read(spark, config, "bronze_flight_events")
    assert events.count() == events.select("partition", "offset").distinct().count() == total + 3
    # a checkpoint lost again, and a run of an earlier version of this job on the new one that
    # logged its first batch (from the earliest offsets) before refusing it in that batch: the
    # migration replays that batch as logged and lands only the events bronze does not hold
    shutil.rmtree(bronze.checkpoint(config, "bronze_flight_events"))
    for n in range(2):
        raw.produce("keep", key=b"w", value=f'{{"later": {n}}}'.encode())
    assert raw.flush(30) == 0
    with monkeypatch.context() as earlier:
        earlier.setattr(bronze, "refuse_new_checkpoint", lambda *args: None)
        with pytest.raises(bronze.MigrationRequiredError, match="Run `lakehouse migrate"):
            bronze.ingest(spark, config, events_source(config), "run-5a")
    assert bronze.logged_batches(spark, config, "bronze_flight_events")
    assert bronze.ingest(spark, config, events_source(config), "run-5", adopt=True).rows == 2
    events = tables.read(spark, config, "bronze_flight_events")
    assert events.count() == events.select("partition", "offset").distinct().count() == total + 5
    # migrate again: the checkpoint goes on from its own offsets, no partition listing needed
    # (clients that could not list them here: a TLS handshake against this plaintext broker)
    source = events_source(config)
    unlisted = bronze.Source(source.name, source.kind, {
        **source.settings, "client_options": {"security.protocol": "SSL"}})
    assert bronze.ingest(spark, config, unlisted, "run-4", adopt=True).rows == 0


def test_a_topic_created_meanwhile_is_no_error_and_a_refused_one_is_named(
        broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka import admin

    ensure_topic(broker.bootstrap_servers, "made_here", partitions=2, timeout=30)
    topics = admin.AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(
        timeout=30).topics
    assert len(topics["made_here"].partitions) == 2
    with pytest.raises(ProduceError, match=rf"cannot create Kafka topic 'bad topic!' on "
                                           rf"{broker.bootstrap_servers}: "):
        ensure_topic(broker.bootstrap_servers, "bad topic!", partitions=2, timeout=30)

    listed = admin.AdminClient.list_topics

    def raced(self: Any, *args: Any, **kwargs: Any) -> Any:
        """Another producer creates the topic after this one's listing."""
        found = listed(self, *args, **kwargs)
        found.topics = {}
        return found

    monkeypatch.setattr(admin.AdminClient, "list_topics", raced)
    ensure_topic(broker.bootstrap_servers, "made_here", partitions=2, timeout=30)


def test_a_kafka_failure_says_what_the_run_committed_before_it() -> None:
    """A broker lost after some micro-batches: those stay in bronze, and the error says so
    (an operator told "nothing was committed" might delete the checkpoint)."""
    source = bronze.Source("flight_events", "events", {"topic": "flights",
                                                       "bootstrap_servers": "127.0.0.1:1"})
    lost = RuntimeError("org.apache.kafka.common.errors.TimeoutException: timed out\n...")
    assert str(bronze.kafka_error(source, lost, 0)).endswith("; nothing was committed")
    after_two = str(bronze.kafka_error(source, lost, 2))
    assert "nothing was committed" not in after_two
    assert after_two.endswith("(org.apache.kafka.common.errors.TimeoutException: timed out); "
                              "the 2 micro-batch(es) committed before it stay in bronze and a "
                              "rerun goes on after them")


def watermarks(servers: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    """The broker's (earliest, next) offset of each partition, asked of it directly."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": "test-watermarks"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                for p in range(partitions)}
    finally:
        consumer.close()


def age_out(servers: str, topic: str, before: dict[int, int]) -> None:
    """What the broker's retention does to old segments, done now: each partition's log start
    moves to before[p] (Kafka's DeleteRecords), and the events under it cannot be read."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": servers})  # kept until its answers are in
    deleted = admin.delete_records([TopicPartition(topic, p, offset)
                                    for p, offset in before.items()])
    for done in deleted.values():
        done.result(30)


def held(spark: SparkSession, config: Config) -> set[tuple[int, int]]:
    return {(r[0], r[1]) for r in tables.read(spark, config, "bronze_flight_events")
            .select("partition", "offset").collect()}


def fail_write(*args: Any, **kwargs: Any) -> None:
    raise OSError("no space left on device")


@pytest.mark.slow
def test_events_deleted_unread_fail_every_run_until_accepted_once_and_are_named(
        spark: SparkSession, tmp_path: Path, broker: Broker,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from lakehouse.workflow import is_permanent

    servers = broker.bootstrap_servers
    config = make_config(tmp_path, bronze=events_settings(servers, "lossy"))
    source = events_source(config)
    produce(config, date(2013, 1, 1), date(2013, 1, 1), Pace(), limit=40)
    bronze.ingest(spark, config, source, "run-1")
    read = watermarks(servers, "lossy", 2)
    assert held(spark, config) == {(p, o) for p, (_, end) in read.items() for o in range(end)}

    # events sent while bronze was down, half of each partition's aged out before it runs
    produce(config, date(2013, 1, 2), date(2013, 1, 2), Pace(), limit=40)
    sent = watermarks(servers, "lossy", 2)
    cut = {p: (read[p][1] + sent[p][1]) // 2 for p in sent}
    assert all(read[p][1] < cut[p] < sent[p][1] for p in sent)
    age_out(servers, "lossy", cut)
    before = held(spark, config)
    with pytest.raises(bronze.EventsLostError) as lost:
        bronze.ingest(spark, config, source, "run-2")
    message = str(lost.value)
    assert "lossy-" in message and "deleted by the broker" in message
    assert "`lakehouse run bronze --env local --accept-lost-events`" in message
    assert is_permanent(lost.value)  # the workflow does not retry it: every run fails alike
    with pytest.raises(bronze.EventsLostError):  # and the next run fails the same way
        bronze.ingest(spark, config, source, "run-3")
    assert held(spark, config) == before

    gone = sum(cut[p] - read[p][1] for p in sent)
    gaps = (f"{gone} offset(s) in 2 partition(s): p0 [{read[0][1]}, {cut[0]}), "
            f"p1 [{read[1][1]}, {cut[1]})")
    assert gaps in message  # the error told them already

    # an accepting run that fails (here before its first write) still names them in its row
    with monkeypatch.context() as failing:
        failing.setattr(bronze, "counted_write", fail_write)
        with pytest.raises(OSError, match="no space left"):
            bronze.run(spark, config, "run-4a", accept_lost_events=True)
    row = tables.read(spark, config, "audit").filter(
        (F.col("run_id") == "run-4a") & (F.col("table_name") == "bronze_flight_events")).first()
    assert row["status"] == "failed" and row["message"].startswith("OSError: no space left")
    assert ("lost events accepted (--accept-lost-events) by this failed run, skipped only if "
            "it committed a micro-batch past them") in row["message"]
    assert gaps in row["message"]
    assert held(spark, config) == before
    with pytest.raises(bronze.EventsLostError):  # it committed none: not skipped
        bronze.ingest(spark, config, source, "run-4b")

    rows = {r["table_name"]: r for r in bronze.run(spark, config, "run-4",
                                                   accept_lost_events=True)}
    accepted = rows["bronze_flight_events"]
    assert accepted["rows_in"] == sum(sent[p][1] - cut[p] for p in sent)
    # exactly the offsets aged out unread, first in the message
    assert accepted["message"].startswith("events the broker deleted before they were read, "
                                          f"skipped (--accept-lost-events): {gaps}")
    assert held(spark, config) == before | {(p, o) for p in sent
                                            for o in range(cut[p], sent[p][1])}

    # accepting was for that run only: the checkpoint lost too, events aged out again; the
    # migration that adopts what bronze holds fails on them, naming itself, until accepted
    produce(config, date(2013, 1, 3), date(2013, 1, 3), Pace(), limit=40)
    again = watermarks(servers, "lossy", 2)
    age_out(servers, "lossy", {p: sent[p][1] + 1 for p in again})
    shutil.rmtree(bronze.checkpoint(config, "bronze_flight_events"))
    before = held(spark, config)
    with pytest.raises(bronze.EventsLostError,
                       match=r"`lakehouse migrate --env local --accept-lost-events`"):
        bronze.ingest(spark, config, source, "run-5", adopt=True)
    assert held(spark, config) == before
    counts = bronze.ingest(spark, config, source, "run-6", adopt=True, accept_lost=True)
    assert counts.lost == [f"2 offset(s) in 2 partition(s): p0 [{sent[0][1]}, "
                           f"{sent[0][1] + 1}), p1 [{sent[1][1]}, {sent[1][1] + 1})"]
    assert held(spark, config) == before | {(p, o) for p in again
                                            for o in range(sent[p][1] + 1, again[p][1])}


@pytest.mark.slow
def test_a_batch_committed_before_its_events_aged_out_is_replayed_without_loss_or_twice(
        spark: SparkSession, tmp_path: Path, broker: Broker,
        monkeypatch: pytest.MonkeyPatch) -> None:
    servers = broker.bootstrap_servers
    config = make_config(tmp_path, bronze=events_settings(servers, "aged"))
    source = events_source(config)
    produce(config, date(2013, 1, 1), date(2013, 1, 1), Pace(), limit=30)
    process = bronze.Batches.process

    def killed(self: bronze.Batches, *args: Any) -> bronze.Counts:
        process(self, *args)  # committed to bronze; the checkpoint does not log it
        raise RuntimeError("killed after the commit")

    with monkeypatch.context() as crash:
        crash.setattr(bronze.Batches, "process", killed)
        with pytest.raises(RuntimeError, match="killed after the commit"):
            bronze.ingest(spark, config, source, "run-1")
    sent = watermarks(servers, "aged", 2)
    assert held(spark, config) == {(p, o) for p, (_, end) in sent.items() for o in range(end)}
    age_out(servers, "aged", {p: end // 2 for p, (_, end) in sent.items()})
    all_sent = {(p, o) for p, (_, end) in sent.items() for o in range(end)}
    with pytest.raises(bronze.EventsLostError) as lost:
        bronze.ingest(spark, config, source, "run-2")
    assert ("micro-batch 0 (replayed as an interrupted run logged it) was committed before the "
            "broker deleted some of its events: they are in bronze") in str(lost.value)
    assert "Move the stream checkpoint" in str(lost.value)
    assert "`lakehouse migrate --env local --accept-lost-events`" in str(lost.value)
    # accepting on that checkpoint, the replay holds fewer events than its commit: as for a
    # checkpoint older than the table, nothing is taken on trust
    with pytest.raises(bronze.CheckpointBehindError, match="lakehouse migrate --env local "
                                                           "--accept-lost-events"):
        bronze.ingest(spark, config, source, "run-3", accept_lost=True)
    shutil.rmtree(bronze.checkpoint(config, "bronze_flight_events"))
    migrated = bronze.ingest(spark, config, source, "run-4", adopt=True, accept_lost=True)
    assert migrated.rows == 0 and migrated.lost == ["no offset the broker deleted lay unread"]
    assert held(spark, config) == all_sent
    produce(config, date(2013, 1, 2), date(2013, 1, 2), Pace(), limit=5)
    later = watermarks(servers, "aged", 2)
    bronze.ingest(spark, config, source, "run-5")  # on from there, each event once
    assert held(spark, config) == all_sent | {(p, o) for p in later
                                              for o in range(sent[p][1], later[p][1])}


@pytest.mark.slow
def test_a_topic_made_anew_is_not_taken_for_lost_events(
        spark: SparkSession, tmp_path: Path, broker: Broker) -> None:
    from confluent_kafka.admin import AdminClient

    servers = broker.bootstrap_servers
    config = make_config(tmp_path, bronze=events_settings(servers, "anew"))
    source = events_source(config)
    produce(config, date(2013, 1, 1), date(2013, 1, 1), Pace(), limit=30)
    bronze.ingest(spark, config, source, "run-1")
    before = held(spark, config)
    admin = AdminClient({"bootstrap.servers": servers})
    admin.delete_topics(["anew"])["anew"].result(30)
    deadline = time.monotonic() + 60
    while "anew" in admin.list_topics(timeout=30).topics:  # deleted on the broker's time
        assert time.monotonic() < deadline
        time.sleep(0.5)
    produce(config, date(2013, 1, 2), date(2013, 1, 2), Pace(), limit=3)  # fewer offsets
    # Spark's driver finds the offsets went back (its data-loss check): not told as events
    # lost to retention, and not accepted as such (skipping by offset would leave out events
    # the broker holds)
    for accept in (False, True):
        with pytest.raises(bronze.OffsetsResetError, match=r"went back below what bronze holds "
                                                           r"\(partition 0: bronze holds it"):
            bronze.ingest(spark, config, source, f"run-{accept}", accept_lost=accept)
    assert held(spark, config) == before


def test_lost_offsets_are_the_gaps_between_bronze_and_the_brokers_earliest() -> None:
    lost = bronze.offsets_lost("bronze_e", "t", {0: 9, 1: 4, 2: 7},
                               {0: (10, 30), 1: (8, 9), 2: (3, 12), 3: (5, 6), 4: (0, 2)})
    assert lost.gaps == {1: (5, 8)} and lost.unheld == {3: 5} and lost.offsets == 3
    assert lost.note() == ("3 offset(s) in 1 partition(s): p1 [5, 8); 1 partition(s) bronze "
                           "holds nothing of, the broker holding them from an offset above 0 "
                           "(what the stream had read of them is not known): p3 from 5")
    assert bronze.offsets_lost("bronze_e", "t", {0: 9}, {0: (10, 10)}).note() == (
        "no offset the broker deleted lay unread")
    with pytest.raises(bronze.OffsetsResetError,
                       match=r"partition 0: bronze holds it up to offset 9, the broker's "
                             r"offsets end at 9; partition 2: .* the broker has no such "
                             r"partition"):
        bronze.offsets_lost("bronze_e", "t", {0: 9, 1: 4, 2: 1}, {0: (0, 9), 1: (0, 30)})


def test_a_data_loss_is_told_by_what_the_table_and_the_broker_show(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each answer of events_lost, from stand-ins for the table and broker's offsets (the
    broker tests above reach the same answers for real)."""
    from types import SimpleNamespace

    config = make_config(tmp_path)
    source = bronze.Source("flight_events", "events", {"topic": "flights",
                                                       "bootstrap_servers": "127.0.0.1:1"})
    failed = RuntimeError(f"{bronze.KAFKA_DATA_LOSS} any more;\nReason: Could not read records "
                          "in offset [100, 20100) for topic partition flights-0\nwith ...")

    def told(lost: Any, committed_rows: int | None = None, current: int | None = 3,
             adopt: bool = False) -> ValueError | None:
        def offsets(*args: Any) -> bronze.LostOffsets:
            if isinstance(lost, Exception):
                raise lost
            return lost

        monkeypatch.setattr(bronze, "lost_offsets", offsets)
        monkeypatch.setattr(tables, "tagged_commit_rows", lambda *args: committed_rows)
        batches = SimpleNamespace(committed_before=0, totals=bronze.Counts(batches=2),
                                  current_batch=current, adopt=adopt,
                                  current_tag=None if current is None else f"tag {current}")
        return bronze.events_lost(None, config, source, failed, batches,  # type: ignore[arg-type]
                                  in_batch=True)

    assert bronze.events_lost(None, config, source, RuntimeError("broker down"),  # type: ignore
                              None, in_batch=True) is None  # not a data loss
    gap = bronze.LostOffsets({0: (100, 160)}, {})
    unread = str(told(gap))
    assert "were deleted by the broker (its retention) before bronze read them: 60 offset(s) " \
           "in 1 partition(s): p0 [100, 160) (Spark: Could not read records in offset " \
           "[100, 20100) for topic partition flights-0); the 2 micro-batch(es) committed " \
           "before it stay in bronze" in unread
    assert "`lakehouse run bronze --env local --accept-lost-events`" in unread
    assert "`lakehouse migrate --env local --accept-lost-events`" in str(told(gap, adopt=True))
    behind = str(told(bronze.LostOffsets({}, {})))
    assert "the table and the broker show no gap: the stream's checkpoint is behind the " \
           "table" in behind and "Move the stream checkpoint" in behind
    assert "--accept-lost-events` once" not in behind
    both = str(told(gap, committed_rows=40))
    assert "micro-batch 3 (replayed as an interrupted run logged it) was committed before" in both
    assert "besides, deleted before bronze read them: 60 offset(s)" in both
    down = str(told(bronze.EventSourceError("cannot list the offsets of Kafka topic 'flights' "
                                            "at 127.0.0.1:1: timed out; nothing was committed")))
    assert "before bronze read them: not told (cannot list the offsets of Kafka topic " \
           "'flights' at 127.0.0.1:1: timed out) (Spark:" in down
    assert "nothing was committed" not in down
    reset = told(bronze.OffsetsResetError("bronze_flight_events: the offsets went back"))
    assert isinstance(reset, bronze.OffsetsResetError)
    assert str(reset).startswith("bronze_flight_events: the offsets went back (Spark: Could not")


def test_a_missing_topic_or_an_unreachable_broker_fails_clearly_and_quickly(
        spark: SparkSession, tmp_path: Path, broker: Broker,
        monkeypatch: pytest.MonkeyPatch) -> None:
    missing = make_config(tmp_path / "missing", bronze=events_settings(
        broker.bootstrap_servers, "no_such_topic", timeout_seconds=5))
    began = time.monotonic()
    with pytest.raises(ValueError, match=rf"topic 'no_such_topic' does not exist on "
                                         rf"{broker.bootstrap_servers}; nothing was committed"):
        bronze.ingest(spark, missing, events_source(missing), "run-1")
    assert time.monotonic() - began < 60
    down = f"127.0.0.1:{free_port()}"
    unreachable = make_config(tmp_path / "down", bronze=events_settings(down, "flights",
                                                                        timeout_seconds=5))
    began = time.monotonic()
    with pytest.raises(bronze.EventSourceError, match=rf"cannot read Kafka topic 'flights' from "
                                                      rf"{down} .*nothing was committed"):
        bronze.ingest(spark, unreachable, events_source(unreachable), "run-1")
    assert time.monotonic() - began < 60
    # the conf's client options reach Spark's Kafka consumer: a TLS handshake against this
    # plaintext broker never completes
    secured = make_config(tmp_path / "tls", bronze=events_settings(
        broker.bootstrap_servers, "flights", timeout_seconds=5,
        options={"kafka.security.protocol": "env:KAFKA_TEST_PROTOCOL"}))
    with pytest.raises(ConfigError, match="KAFKA_TEST_PROTOCOL, which is not set"):
        bronze.ingest(spark, secured, events_source(secured), "run-1")
    monkeypatch.setenv("KAFKA_TEST_PROTOCOL", "SSL")
    with pytest.raises(bronze.EventSourceError, match=r"cannot read Kafka topic 'flights'"):
        bronze.ingest(spark, secured, events_source(secured), "run-1")
    for config in (missing, unreachable, secured):
        assert not tables.exists(spark, config, "bronze_flight_events")


def write_env(folder: Path, settings: dict) -> Path:
    """A conf folder: the project's base.yml and an env file for a child process."""
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "conf" / "base.yml", folder / "base.yml")
    (folder / "e2e.yml").write_text(yaml.safe_dump({**TEST_SPARK, "bronze": settings}))
    return folder


@pytest.mark.slow
def test_produced_events_land_once_through_a_kill_and_a_restart(
        spark: SparkSession, tmp_path: Path, broker: Broker) -> None:
    settings = events_settings(broker.bootstrap_servers, "e2e", max_offsets_per_trigger=200)
    config = make_config(tmp_path, bronze=settings)
    checkpoint = Path(bronze.checkpoint(config, "bronze_flight_events"))
    env = {**os.environ, "LAKEHOUSE_DATA_ROOT": str(tmp_path),
           "LAKEHOUSE_CONF_DIR": str(write_env(tmp_path / "conf", settings))}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    ensure_topic(broker.bootstrap_servers, "e2e", partitions=2, timeout=30)
    log = (tmp_path / "bronze.log").open("w")
    child = subprocess.Popen([sys.executable, "-m", "lakehouse.cli", "run", "bronze",
                              "--continuous", "--env", "e2e"], cwd=ROOT, env=env,
                             start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    sent: dict = {}
    producer = threading.Thread(target=lambda: sent.update(produce(
        config, date(2013, 1, 1), date(2013, 1, 1), duplicates=0.03,
        pace=Pace(speedup=12000, burst_at=4, burst_factor=10, burst_seconds=2))))
    try:
        deadline = time.monotonic() + 240
        while not (checkpoint / "metadata").exists():  # the child's query has started
            assert child.poll() is None and time.monotonic() < deadline, (
                "bronze never started: " + (tmp_path / "bronze.log").read_text()[-3000:])
            time.sleep(0.5)
        producer.start()
        while not (tables.exists(spark, config, "bronze_flight_events") and
                   tables.read(spark, config, "bronze_flight_events").count() >= 200):
            assert child.poll() is None and time.monotonic() < deadline, (
                "no event ingested: " + (tmp_path / "bronze.log").read_text()[-3000:])
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # mid-way: kill -9, the JVM with it
        child.wait(60)
        if producer.is_alive() or producer.ident:
            producer.join(300)
    at_kill = tables.read(spark, config, "bronze_flight_events").count()
    total = sent["events"]
    assert 200 <= at_kill < total and sent["duplicates"] > 0

    bronze.ingest(spark, config, events_source(config), "restart")
    events = tables.read(spark, config, "bronze_flight_events")
    assert events.count() == events.select("partition", "offset").distinct().count() == total

    landing = Path(config.landing)  # the reference snapshots silver types flights against
    seed(landing, date(2013, 1, 1), date(2013, 1, 1))
    shutil.rmtree(landing / "flights")
    shutil.rmtree(landing / "weather")
    bronze.run(spark, config, "references")
    results = {r["table_name"]: r for r in silver.run(spark, config, "e2e")}
    flights = tables.read(spark, config, "silver_flights")
    assert flights.count() == flights.select("flight_id").distinct().count() == 842
    assert flights.filter(F.col("cancelled").isNull()).count() == 0  # every outcome arrived
    row = results["silver_flights"]
    assert row["rows_in"] == total
    assert row["rows_in"] == row["rows_out"] + row["rows_quarantined"] + row["rows_duplicate"]


def test_a_cluster_id_starting_with_a_dash_formats_the_brokers_storage(tmp_path: Path) -> None:
    """A random cluster id starts with '-' one time in 64: the format step must take it as the
    id (read as an option, it failed the broker's start now and then), and a failing format
    says why."""
    from lakehouse.broker import SERVER_PROPERTIES, broker_classpath, format_storage

    config = tmp_path / "server.properties"
    config.write_text(SERVER_PROPERTIES.format(port=free_port(), controller=free_port(),
                                               logs=tmp_path / "data"))
    java = ["java", "-Xmx256m", "-cp", broker_classpath()]
    format_storage(java, config, "-K7D7OjzRLWUKl0moOlDWA", 60)
    meta = (tmp_path / "data" / "meta.properties").read_text()
    assert "cluster.id=-K7D7OjzRLWUKl0moOlDWA" in meta
    with pytest.raises(RuntimeError, match=r"(?s)storage .*server\.properties.* failed with "
                                           r"exit code 1: .*already formatted"):
        format_storage(java, config, "-K7D7OjzRLWUKl0moOlDWA", 60)


def test_the_kafka_sources_timeouts_yield_to_the_users_options() -> None:
    """timeout_seconds sets the Kafka client's timeouts unless `options` sets them (a cloud
    cluster may need longer); the servers, topic and data-loss check always come from the
    source's own settings."""
    from lakehouse.tables import kafka_options

    settings = {"bootstrap_servers": "b:9092", "topic": "flights", "timeout_seconds": 5}
    defaults = kafka_options(settings)
    assert defaults["kafka.request.timeout.ms"] == defaults["kafka.default.api.timeout.ms"] \
        == "5000"
    assert defaults["kafka.isolation.level"] == "read_committed"
    assert kafka_options({**settings, "options": {"kafka.isolation.level": "read_uncommitted"}})[
        "kafka.isolation.level"] == "read_uncommitted"
    mine = kafka_options({**settings, "options": {
        "kafka.request.timeout.ms": "60000", "kafka.security.protocol": "SASL_SSL",
        "kafka.bootstrap.servers": "elsewhere:9092", "failOnDataLoss": "false"}})
    # the default API timeout follows it up: Kafka's AdminClient refuses one below it
    assert (mine["kafka.request.timeout.ms"], mine["kafka.default.api.timeout.ms"]) == (
        "60000", "60000")
    assert mine["kafka.security.protocol"] == "SASL_SSL"
    assert (mine["kafka.bootstrap.servers"], mine["failOnDataLoss"]) == ("b:9092", "true")
