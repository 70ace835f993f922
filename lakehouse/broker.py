"""A single-node Apache Kafka broker on 127.0.0.1 for tests and local runs (`make kafka`).

KRaft mode: one JVM is both broker and controller, on loopback ports, with its own data
folder. The jars come from Maven Central through `make setup` (kafka/pom.xml), so nothing is
downloaded when a broker starts. Start takes ~9 s; SIGTERM stops it in ~3 s.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lakehouse.session import jars_dir

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={logs}
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""


class BrokerError(RuntimeError):
    """The broker's jars are missing or it did not start."""


@dataclass
class Broker:
    """A running broker: its bootstrap servers, data folder and process."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it has not stopped within timeout."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def broker_classpath() -> str:
    folder = jars_dir() / "kafka-broker"
    if not any(folder.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"no Kafka broker jars in {folder}; run `make setup`")
    return f"{folder}/*"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def format_storage(java: list[str], config: Path, cluster: str, timeout: float) -> None:
    """Format the broker's data folder for a one-node KRaft cluster. The id is passed as
    --cluster-id=ID: a random id may start with '-', which the tool would read as an option."""
    done = subprocess.run([*java, "kafka.tools.StorageTool", "format", "--standalone",
                           f"--cluster-id={cluster}", "-c", str(config)], capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"formatting the Kafka broker's storage ({config}) failed with exit "
                           f"code {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")


def start(folder: Path, port: int | None = None, timeout: float = 90) -> Broker:
    """Format a data folder (once) and start a broker on 127.0.0.1; return when it answers.

    Args:
        folder: the broker's own folder (config, data, log); reused if already formatted.
        port: the client port (default: a free one).
        timeout: seconds to wait for the broker to answer a metadata request.

    Returns:
        The running broker; call stop() when done.
    """
    classpath = broker_classpath()
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "server.properties"
    config.write_text(SERVER_PROPERTIES.format(port=port, controller=free_port(),
                                               logs=folder / "data"))
    java = ["java", "-Xms128m", "-Xmx512m", "-cp", classpath]
    if not (folder / "data" / "meta.properties").exists():
        format_storage(java, config, cluster_id(), timeout)
    log = (folder / "broker.log").open("ab")
    process = subprocess.Popen([*java, "kafka.Kafka", str(config)], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    broker = Broker(port, folder, process)
    try:
        wait_until_ready(broker, timeout)
    except BaseException:
        broker.stop()
        raise
    return broker


def wait_until_ready(broker: Broker, timeout: float) -> None:
    """Wait until the broker listens, then until it answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            tail = (broker.folder / "broker.log").read_text(errors="replace")[-2000:]
            raise BrokerError(f"the Kafka broker exited with {broker.process.returncode}: {tail}")
        try:
            socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()
        except OSError:  # not listening yet
            time.sleep(0.3)
            continue
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        admin.list_topics(timeout=max(deadline - time.monotonic(), 1))
        return
    raise BrokerError(f"the Kafka broker on {broker.bootstrap_servers} did not answer within "
                      f"{timeout:.0f} s (log: {broker.folder / 'broker.log'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Kafka broker until Ctrl-C.")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--folder", type=Path, default=Path("data/kafka"))
    args = parser.parse_args(argv)
    broker = start(args.folder.resolve(), args.port)
    print(f"Kafka broker on {broker.bootstrap_servers} (data and log in {broker.folder}); "
          f"Ctrl-C stops it. Set bronze.events.flight_events.enabled: true in your env's conf, "
          f"then `lakehouse produce` and `lakehouse run bronze`.", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while broker.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0 if broker.process.returncode in (0, -signal.SIGTERM, 143) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
