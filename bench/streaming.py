"""Benchmark streaming ingestion on this machine, in one run (prints what it measured, no goal):

  events/s the bronze events stream sustains on a backlog (availableNow, micro-batches of
      bronze.events.flight_events.max_offsets_per_trigger events);
  latency from produce to a committed bronze row, p50 and p99, at a steady rate and during a
      x10 burst (a continuous run, a micro-batch every --interval), with the rates used;
  for landed files: one new day after --file-days days against that first run.

A real Kafka broker is started on 127.0.0.1 for the run (as `make kafka` does) and stopped.
Latency is the Delta commit time of an event's micro-batch less the event's Kafka timestamp.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import functions as F

from lakehouse import broker, tables
from lakehouse.config import load_config
from lakehouse.produce import Pace, produce
from lakehouse.seed import seed
from lakehouse.session import build_session
from lakehouse.stages import bronze

START = date(2013, 1, 1)


def events_config(root: Path, servers: str, topic: str, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return load_config("local", overrides={"data_root": str(root), "bronze": {
        "files": None, "continuous_interval": args.interval, "events": {"flight_events": {
            "enabled": True, "bootstrap_servers": servers, "topic": topic, "partitions": 2,
            "max_offsets_per_trigger": args.max_offsets}}}})


def throughput(spark, work: Path, servers: str, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    config = events_config(work / "backlog", servers, "backlog", args)
    sent = produce(config, START, START + timedelta(days=args.days - 1), Pace())
    source = bronze.sources(config)[0]
    began = time.perf_counter()
    counts = bronze.ingest(spark, config, source, "throughput")
    seconds = time.perf_counter() - began
    print(f"backlog: {counts.rows} events ({sent['flights']} flights) in {counts.batches} "
          f"micro-batches of <= {args.max_offsets}: {seconds:.1f} s, "
          f"{counts.rows / seconds:,.0f} events/s sustained")


def commit_times(spark, config) -> dict[int, float]:  # type: ignore[no-untyped-def]
    """Micro-batch id -> Delta commit time (epoch seconds) of the events table."""
    history = tables.delta_table(spark, config, "bronze_flight_events").history()
    times = {}
    for row in history.select("timestamp", "userMetadata").collect():
        if row["userMetadata"] and row["userMetadata"].startswith("bronze "):
            times[int(row["userMetadata"].rsplit(" ", 1)[1])] = row["timestamp"].timestamp()
    return times


def latency(spark, work: Path, servers: str, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    config = events_config(work / "latency", servers, "latency", args)
    stop = threading.Event()
    runner = threading.Thread(target=bronze.run_continuous,
                              args=(spark, config, "latency"), kwargs={"until": stop.is_set})
    # The query must be running before the first event is sent: send a warm-up day first.
    produce(config, START, START, Pace(), limit=50)
    runner.start()
    while not tables.exists(spark, config, "bronze_flight_events"):
        time.sleep(0.5)
    pace = Pace(speedup=args.speedup, burst_at=args.seconds / 2, burst_factor=10,
                burst_seconds=args.burst_seconds)
    began = time.time()
    day = START + timedelta(days=1)
    sent = produce(config, day, day, pace)
    burst_from = began + args.seconds / 2
    burst_to = burst_from + args.burst_seconds
    time.sleep(5)
    stop.set()
    runner.join()
    commits = commit_times(spark, config)
    rows = (tables.read(spark, config, "bronze_flight_events")
            .filter(F.col("timestamp") >= F.timestamp_seconds(F.lit(began)))
            .select("_batch_id", F.unix_micros("timestamp").alias("sent")).collect())
    steady, burst = [], []
    for row in rows:
        sent_at = row["sent"] / 1e6
        delay = commits[row["_batch_id"]] - sent_at
        (burst if burst_from <= sent_at < burst_to else steady).append(delay)
    wall = sent["seconds"]
    print(f"latency run: {sent['events']} events in {wall:.1f} s "
          f"(mean {sent['events'] / wall:,.0f} "
          f"events/s; speed-up {args.speedup:g}x event time, a x10 burst for "
          f"{args.burst_seconds:g} s), a micro-batch every {args.interval}")
    for name, delays in (("steady", steady), ("burst", burst)):
        if delays:
            span = args.burst_seconds if name == "burst" else wall - args.burst_seconds
            rate = len(delays) / span
            print(f"  {name:<6} {len(delays):>6} events (~{rate:,.0f}/s): produce -> bronze "
                  f"p50 {np.percentile(delays, 50):.2f} s, p99 {np.percentile(delays, 99):.2f} s")


def files(spark, work: Path, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    config = load_config("local", overrides={"data_root": str(work / "files")})
    last = START + timedelta(days=args.file_days - 1)
    seed(Path(config.landing), START, last)
    streamed = [s for s in bronze.sources(config) if s.kind == "files"]

    def run(name: str) -> float:
        began = time.perf_counter()
        with ThreadPoolExecutor(len(streamed)) as pool:
            list(pool.map(lambda s: bronze.ingest(spark, config, s, name), streamed))
        return time.perf_counter() - began

    first = run("first")
    seed(Path(config.landing), last + timedelta(days=1), last + timedelta(days=1))
    new_day = run("new-day")
    print(f"files: {args.file_days} days {first:.1f} s, then one new day {new_day:.2f} s: "
          f"ratio {new_day / first:.3f} (no goal)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7, help="days of flights sent as events")
    parser.add_argument("--max-offsets", type=int, default=20000)
    parser.add_argument("--speedup", type=float, default=2880.0,
                        help="latency run (one day of flights, ~48 h of event time): event time "
                             "this many times faster than real time (2880: ~60 s)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="latency run: its expected length; the burst starts half-way")
    parser.add_argument("--burst-seconds", type=float, default=10.0)
    parser.add_argument("--interval", default="1 second")
    parser.add_argument("--file-days", type=int, default=364)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    running = broker.start(work / "kafka")
    try:
        spark = build_session(load_config("local", overrides={"data_root": str(work)}))
        spark.sparkContext.setLogLevel("ERROR")
        throughput(spark, work, running.bootstrap_servers, args)
        latency(spark, work, running.bootstrap_servers, args)
        files(spark, work, args)
    finally:
        running.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
