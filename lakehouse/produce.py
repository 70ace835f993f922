"""`lakehouse produce`: replay the real 2013 flights to Kafka as JSON events, in the order they
became known: each flight's schedule (published a day before its departure), then its outcome
(at arrival; a cancellation at the scheduled departure; a diversion, conservatively, 24 h
after it). Event time can run faster than real time, with a burst, and some events can be
sent twice, a little later, as a flaky source would.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from lakehouse.config import Config, client_options
from lakehouse.seed import _day_of, _json_value, _read_rows, source_dir

OUTCOME_COLUMNS = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")
SCHEDULE_LEAD = timedelta(days=1)
DIVERSION_KNOWN_AFTER = timedelta(hours=24)


class ProduceError(RuntimeError):
    """Kafka did not take the events (broker unreachable, delivery failed)."""


@dataclass(frozen=True)
class Event:
    known_at: datetime  # UTC
    key: str
    value: dict[str, Any]


@dataclass(frozen=True)
class Pace:
    """How fast events are sent: event time runs speedup x faster than real time (0: no
    waiting at all); from burst_at seconds on, for burst_seconds, burst_factor x faster."""

    speedup: float = 0.0
    burst_at: float | None = None
    burst_factor: float = 10.0
    burst_seconds: float = 60.0

    def wall_seconds(self, event_seconds: float) -> float:
        """When (seconds after the start) to send an event this far into event time."""
        scaled = event_seconds / self.speedup if self.speedup else 0.0
        if self.burst_at is None or scaled <= self.burst_at:
            return scaled
        span = self.burst_seconds * self.burst_factor  # event time the burst goes through
        if scaled <= self.burst_at + span:
            return self.burst_at + (scaled - self.burst_at) / self.burst_factor
        return scaled - span + self.burst_seconds


def time_zones() -> dict[str, ZoneInfo]:
    import csv

    with (source_dir() / "airports.csv").open(encoding="utf-8") as handle:
        return {r["faa"]: ZoneInfo(r["tzone"]) for r in csv.DictReader(handle)
                if r["tzone"] not in ("", "NA")}


def _local(day: date, hhmm: int, zone: ZoneInfo) -> datetime:
    wall = datetime(day.year, day.month, day.day, tzinfo=zone) + timedelta(
        hours=hhmm // 100, minutes=hhmm % 100)
    return wall.astimezone(UTC)


def _int(text: str) -> int | None:
    return None if text in ("", "NA") else int(text)


def outcome_known_at(flight: dict[str, str], departure: datetime,
                     zones: dict[str, ZoneInfo]) -> datetime:
    """When a flight's outcome became known: arrival, cancellation or diversion."""
    if _int(flight["dep_time"]) is None:
        return departure  # cancelled
    arr_delay = _int(flight["arr_delay"])
    if arr_delay is None:
        return departure + DIVERSION_KNOWN_AFTER  # diverted
    sched_dep, sched_arr = int(flight["sched_dep_time"]), int(flight["sched_arr_time"])
    day = date(int(flight["year"]), int(flight["month"]), int(flight["day"]))
    zone = zones.get(flight["dest"])
    if zone is None:  # destination without a time zone: departure plus time in the air
        dep_delay, air_time = _int(flight["dep_delay"]) or 0, _int(flight["air_time"]) or 0
        return departure + timedelta(minutes=dep_delay + air_time + 15)
    arrival_day = day + timedelta(days=int(sched_arr < sched_dep))
    return _local(arrival_day, sched_arr, zone) + timedelta(minutes=arr_delay)


def flight_events(header: list[str], rows: list[list[str]],
                  zones: dict[str, ZoneInfo]) -> list[Event]:
    """Two events per flight, sorted by when they became known: its schedule, its outcome."""
    events = []
    for row in rows:
        flight = dict(zip(header, row, strict=True))
        departure = (datetime.fromisoformat(flight["time_hour"].replace("Z", "+00:00"))
                     + timedelta(minutes=int(flight["minute"])))
        key = (f"{flight['year']}-{int(flight['month']):02d}-{int(flight['day']):02d}_"
               f"{flight['carrier']}_{flight['flight']}_{flight['origin']}")
        values = {k: _json_value(v) for k, v in flight.items()}
        schedule = {**values, **{c: None for c in OUTCOME_COLUMNS}}
        for kind, known_at, payload in (
                ("scheduled", departure - SCHEDULE_LEAD, schedule),
                ("outcome", outcome_known_at(flight, departure, zones), values)):
            events.append(Event(known_at, key, {**payload, "event_type": kind,
                                                "event_time": f"{known_at:%Y-%m-%dT%H:%M:%SZ}"}))
    return sorted(events, key=lambda e: (e.known_at, e.value["event_type"] != "scheduled"))


def with_duplicates(events: list[Event], share: float, rng: random.Random,
                    max_lag: int = 200) -> list[tuple[Event, bool]]:
    """The events with a share of them sent again 1..max_lag events later; (event, repeat)."""
    placed = [(float(i), e, False) for i, e in enumerate(events)]
    placed += [(i + rng.randint(1, max_lag) + 0.5, e, True) for i, e in enumerate(events)
               if rng.random() < share]
    return [(e, repeat) for _, e, repeat in sorted(placed, key=lambda p: p[0])]


def selected_flights(start: date, end: date,
                     limit: int | None) -> tuple[list[str], list[list[str]]]:
    header, rows = _read_rows("flights")
    day_of = _day_of(header)
    chosen = [r for r in rows if start <= day_of(r) <= end]
    return header, chosen[:limit] if limit is not None else chosen


def paced(events: list[tuple[Event, bool]], pace: Pace) -> Iterator[tuple[Event, bool]]:
    """The events, each when its pace says (sleeping in between)."""
    if not events:
        return
    first, started = events[0][0].known_at, time.monotonic()
    for event, repeat in events:
        due = started + pace.wall_seconds(max((event.known_at - first).total_seconds(), 0))
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield event, repeat


def kafka_settings(config: Config) -> dict[str, Any]:
    return dict(config.section("bronze")["events"]["flight_events"])


def ensure_topic(servers: str, topic: str, partitions: int, timeout: float,
                 options: dict[str, str] | None = None) -> None:
    """Create the topic unless it exists (one created meanwhile by another producer is fine),
    with the cluster's default replication factor; ProduceError naming the servers when
    unreachable or when the cluster refuses the topic. options: more librdkafka settings
    (security)."""
    from confluent_kafka import KafkaError, KafkaException

    # confluent_kafka.admin defines NewTopic without listing it in __all__
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": servers, **(options or {})})
    try:
        known = admin.list_topics(timeout=timeout).topics
    except Exception as error:
        raise ProduceError(f"Kafka at {servers} did not answer within {timeout:.0f} s "
                           f"({error}); is the broker running (`make kafka`)?") from None
    if topic not in known:
        # the cluster's default replication factor (Kafka >= 2.4): a managed cluster (Confluent
        # Cloud, MSK with min.insync.replicas=2) refuses or cannot write a topic of one replica
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)])
        try:
            futures[topic].result(timeout=timeout)
        except KafkaException as error:
            if error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:  # created meanwhile
                return
            raise ProduceError(f"cannot create Kafka topic {topic!r} on {servers}: "
                               f"{error.args[0].str()}") from None


def produce(config: Config, start: date, end: date, pace: Pace, duplicates: float = 0.0,
            limit: int | None = None, seed: int = 13) -> dict[str, Any]:
    """Send the flights of start..end (at most limit) as events to the flight events topic.

    Returns:
        What was sent: events, duplicates, flights, topic, servers, seconds.
    """
    from confluent_kafka import Producer

    settings = kafka_settings(config)
    servers, topic = str(settings["bootstrap_servers"]), str(settings["topic"])
    timeout = float(settings.get("timeout_seconds", 10))
    options = client_options(settings, "client_options")
    ensure_topic(servers, topic, int(settings.get("partitions", 3)), timeout, options)
    header, rows = selected_flights(start, end, limit)
    events = with_duplicates(flight_events(header, rows, time_zones()), duplicates,
                             random.Random(seed))
    failed: list[str] = []
    producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True,
                         "linger.ms": 5, "message.timeout.ms": int(timeout * 3000), **options})

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    began = time.monotonic()
    for event, _ in paced(events, pace):
        value = json.dumps(event.value).encode()
        while True:
            try:
                producer.produce(topic, key=event.key.encode(), value=value, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(timeout * 3)
    if left or failed:
        raise ProduceError(f"{left + len(failed)} of {len(events)} events were not delivered to "
                           f"{topic!r} at {servers}: {sorted(set(failed))[:3]}")
    return {"events": len(events), "duplicates": sum(r for _, r in events),
            "flights": len(rows), "topic": topic, "servers": servers,
            "seconds": time.monotonic() - began}
