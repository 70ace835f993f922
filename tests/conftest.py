"""One Delta-enabled Spark session for the whole run; a fresh data root per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from lakehouse.config import Config, load_config
from lakehouse.session import build_session

# Adaptive query execution off in the tests: on their slices of a few rows its stage-by-stage
# re-planning costs more than it saves (a feature build of one flight: 66 Spark jobs and ~11 s
# with it, 6 jobs and ~7.5 s without). The jobs themselves keep Spark's default (on).
TEST_SPARK = {"spark": {"master": "local[2]", "conf": {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.driver.memory": "4g",
}}}
# make test sets this (the Makefile): its JVMs run short jobs on a few rows, three at once on
# 2 cores, and the C2 compiler's and G1's background threads took CPU the tests were waiting
# for. Measured (tests/test_features.py alone, the machine's busy CPU seconds): 196 by default,
# 144 with C1 alone, 177 with the serial collector; make test with both 11:33 against 12:58 in
# one session. make slow-test leaves it unset: its fits and whole jobs ran a third longer with
# C1 alone (CI: 39:14 against 29:31 the run before, with one more test; the
# training tests 35-75% longer). The jobs themselves keep the JVM's defaults.
TEST_JAVA_OPTIONS = os.environ.get("LAKEHOUSE_TEST_JAVA_OPTIONS")
if TEST_JAVA_OPTIONS:
    TEST_SPARK["spark"]["conf"]["spark.driver.extraJavaOptions"] = TEST_JAVA_OPTIONS


def make_config(root: Path, **overrides: Any) -> Config:
    """The local env pointed at root, with the test Spark settings and any overrides."""
    from lakehouse.config import deep_merge

    return load_config("local", overrides=deep_merge({"data_root": str(root), **TEST_SPARK},
                                                     overrides))


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    session = build_session(make_config(tmp_path_factory.mktemp("session")))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


# The longest test files, started first so that three xdist workers (one file per worker) do not
# end with one of them running alone: in `make slow-test` the first four, in `make test` (the
# slow tests left out) training, silver and features.
LONGEST_FIRST = ("test_monitoring.py", "test_training.py", "test_gold.py", "test_notebooks.py",
                 "test_silver.py", "test_features.py", "test_events.py", "test_exactly_once.py",
                 "test_e2e.py", "test_session.py", "test_leakage.py", "test_bronze.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
