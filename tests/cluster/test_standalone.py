"""The daily job on a real Spark standalone cluster (`make cluster-test`).

A Master and two Workers of one core each, started with `spark-class` from the pinned pyspark
on 127.0.0.1, run `./spark-submit.sh daily --master spark://127.0.0.1:7077` over two real
weeks; the tables must equal, row for row, those of a `local[*]` run of the same job. Then
the job runs again while one Worker (with its executor) is killed in the middle of silver: it
must still complete with the same tables. The cluster is stopped at the end, failed or not.

The `local[*]` run trains the model; the cluster runs start from a copy of its MLflow store, so
the daily workflow finds the champion and skips training, as it does every day after the first.
A GBT fit is not bit-reproducible across masters (MLlib adds the executors' partial sums in the
order they arrive, and a near-tie between two splits can go either way), so a model trained on
each would score a few flights differently.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyspark
import pytest
import yaml
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.config import deep_merge, load_config
from lakehouse.seed import seed
from tests import snapshot

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[2]
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"
MASTER = "spark://127.0.0.1:7077"
ENV = "clustertest"
SCORE = ("2013-01-08", "2013-01-14")
# Two weeks: fit on Jan 1-5, validate on Jan 6-7, hold out and score Jan 8-14; one small GBT.
TEST_CONF = {
    "spark": {"conf": {"spark.driver.memory": "1g", "spark.executor.memory": "1g",
                       "spark.sql.shuffle.partitions": "4"}},
    "train": {"train_from": "2013-01-01", "train_to": "2013-01-07",
              "validation_from": "2013-01-06", "holdout_from": SCORE[0], "holdout_to": SCORE[1],
              "max_evals": 1, "timeout_seconds": 300, "families": ["gbt"],
              "class_weighting": ["none"],
              "search_space": {"gbt": {"maxDepth": [3, 4], "maxIter": [10, 20],
                                       "minInstancesPerNode": [5, 20]}}},
    "score": {"from": SCORE[0], "to": SCORE[1]},
}
WORKER_MEMORY = "1536m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StandaloneCluster:
    """A Spark standalone Master and Workers as child processes (one process group each)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ui_port = free_port()
        self.env = {**os.environ, "SPARK_HOME": str(SPARK_CLASS.parent.parent),
                    "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "512m"}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.master: subprocess.Popen[bytes] | None = None

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        return subprocess.Popen([str(SPARK_CLASS), *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, workers: int) -> None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", 7077)) == 0:
                raise RuntimeError("127.0.0.1:7077 is taken: another Spark master is running")
        self.master = self._spawn("master", "org.apache.spark.deploy.master.Master",
                                  "--host", "127.0.0.1", "--port", "7077",
                                  "--webui-port", str(self.ui_port))
        for i in range(workers):
            work = self.workdir / f"worker-{i}"
            work.mkdir()
            self.workers.append(self._spawn(
                f"worker-{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                "--cores", "1", "--memory", WORKER_MEMORY, "--work-dir", str(work),
                "--webui-port", str(free_port()), MASTER))
        self.wait_for(lambda state: len(self.alive(state)) == workers, "workers registered")

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json", timeout=5) as r:
            return dict(json.load(r))

    @staticmethod
    def alive(state: dict[str, Any]) -> list[dict[str, Any]]:
        return [w for w in state.get("workers", []) if w["state"] == "ALIVE"]

    def wait_for(self, condition: Any, what: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = self.state()
                if condition(state):
                    return state
            except OSError:
                pass  # the master's UI is not up yet
            time.sleep(0.5)
        raise TimeoutError(f"standalone cluster: no {what} after {timeout} s; logs in "
                           f"{self.workdir}")

    def kill_worker(self, index: int) -> None:
        """SIGKILL a Worker and everything it started (its executor): a lost node."""
        os.killpg(self.workers[index].pid, signal.SIGKILL)
        self.workers[index].wait(timeout=30)

    def stop(self) -> None:
        for process in [*self.workers, self.master]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.workers, self.master]:
            if process is None:
                continue
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conf and two weeks of landed files every run copies."""
    root = tmp_path_factory.mktemp("cluster")
    shutil.copytree(ROOT / "conf", root / "conf")
    local = yaml.safe_load((root / "conf" / "local.yml").read_text())
    (root / "conf" / f"{ENV}.yml").write_text(yaml.safe_dump(deep_merge(local, TEST_CONF)))
    seed(root / "landing", date(2013, 1, 1), date(2013, 1, 14))
    return root


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[StandaloneCluster]:
    started = StandaloneCluster(workdir)
    try:
        started.start(workers=2)
        yield started
    finally:
        started.stop()
    assert all(p.poll() is not None for p in [*started.workers, started.master] if p)


def submit(workdir: Path, name: str, master: str,
           models_of: str | None = None) -> subprocess.Popen[bytes]:
    """./spark-submit.sh daily on a copy of the landing zone under workdir/name (and of the
    MLflow store of the run models_of)."""
    data_root = workdir / name
    shutil.copytree(workdir / "landing", data_root / "landing")
    if models_of is not None:
        shutil.copy2(workdir / models_of / "mlflow.db", data_root / "mlflow.db")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_GATEWAY_PORT", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                        "SPARK_HOME")}
    env.update(LAKEHOUSE_DATA_ROOT=str(data_root), LAKEHOUSE_CONF_DIR=str(workdir / "conf"),
               SPARK_LOCAL_IP="127.0.0.1")
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen([str(ROOT / "spark-submit.sh"), "daily", "--env", ENV, "--master",
                             master, "--from", SCORE[0], "--to", SCORE[1]],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(job: subprocess.Popen[bytes], workdir: Path, name: str) -> str:
    code = job.wait(timeout=1800)
    output = (workdir / f"{name}.log").read_text(errors="replace")
    assert code == 0, f"{name}: exit {code}\n{output[-4000:]}"
    return output


def config_of(workdir: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(workdir / name))
    return load_config(ENV, workdir / "conf")


def test_daily_job_on_a_standalone_cluster_equals_a_local_run_even_when_a_worker_dies(
        spark: SparkSession, workdir: Path, cluster: StandaloneCluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    finish(submit(workdir, "local", "local[*]"), workdir, "local")
    local = snapshot.content(spark, config_of(workdir, "local", monkeypatch))
    assert len(local["delay_predictions"]) == tables.read(
        spark, config_of(workdir, "local", monkeypatch), "flight_features").filter(
        F.col("flight_date").between(*SCORE)).count() > 5000

    output = finish(submit(workdir, "cluster", MASTER, models_of="local"), workdir, "cluster")
    # the champion of the local run scores; no task trains
    assert "task score: succeeded" in output and "task train: starting" not in output
    apps = cluster.state()["completedapps"]
    assert [a["name"] for a in apps] == ["lakehouse-daily"]  # spark-submit.sh names it
    # each worker ran an executor of it (a folder per application and executor)
    assert all(list((workdir / f"worker-{i}" / apps[0]["id"]).iterdir()) for i in (0, 1))
    assert snapshot.content(spark, config_of(workdir, "cluster", monkeypatch)) == local

    job = submit(workdir, "killed", MASTER, models_of="local")
    log = workdir / "killed.log"
    deadline = time.monotonic() + 900
    while "task silver: starting" not in log.read_text(errors="replace"):
        assert job.poll() is None, log.read_text(errors="replace")[-4000:]
        assert time.monotonic() < deadline, "silver never started"
        time.sleep(0.1)
    time.sleep(2)  # into silver's first batches
    before_kill = len(log.read_text(errors="replace"))
    cluster.kill_worker(0)
    output = finish(job, workdir, "killed")
    assert "task silver: succeeded" in output[before_kill:], "silver was over before the kill"
    print("after the kill:", [line for line in output[before_kill:].splitlines()
                              if "Lost executor" in line or "retrying" in line][:5])
    assert len(cluster.alive(cluster.state())) == 1
    config = config_of(workdir, "killed", monkeypatch)
    assert snapshot.content(spark, config) == local
    silver = tables.read(spark, config, "audit").filter(F.col("job") == "silver")
    statuses = sorted(r["status"] for r in silver.collect())
    print(f"silver audit rows after the kill: {statuses}")
