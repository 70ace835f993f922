"""The one SparkSession factory: Delta-enabled, configured from conf/, reused when one exists."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.utils import is_remote

from lakehouse.config import Config

JARS_DIR_ENV = "LAKEHOUSE_JARS_DIR"
# Set on every Databricks cluster: there the runtime owns the session (Delta built in).
DATABRICKS_ENV = "DATABRICKS_RUNTIME_VERSION"
# Settings the code depends on for correct results, applied to a session it did not build
# too: silver converts local schedules to UTC timestamps, which Spark stores as instants and
# renders and parses in the session time zone.
REQUIRED_CONF = {"spark.sql.session.timeZone": "UTC"}
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


class MissingJarsError(RuntimeError):
    """The Delta jars were not fetched; `make setup` fetches them."""


def jars_dir() -> Path:
    """Folder of the cached Delta jars: $LAKEHOUSE_JARS_DIR, else .jars beside the package."""
    if os.environ.get(JARS_DIR_ENV):
        return Path(os.environ[JARS_DIR_ENV])
    return Path(__file__).resolve().parent.parent / ".jars"


def delta_jars() -> list[str]:
    """Absolute paths of the cached Delta jars, failing clearly when they are missing."""
    folder = jars_dir()
    jars = sorted(str(p.resolve()) for p in folder.glob("*.jar"))
    if not any("delta-spark" in j for j in jars) or not any("delta-storage" in j for j in jars):
        raise MissingJarsError(f"Delta jars not found in {folder} (found {jars}); run `make setup`")
    return jars


def _launched_by_spark_submit() -> bool:
    # spark-submit (and Databricks) start the JVM first and hand the gateway port to Python.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _existing_session() -> SparkSession | None:
    active = SparkSession.getActiveSession()
    if active is None and DATABRICKS_ENV in os.environ:
        # A Databricks wheel or script task may run before any session is active here.
        active = SparkSession.builder.getOrCreate()
    return active


def build_session(config: Config) -> SparkSession:
    """Return the active SparkSession, or build a Delta-enabled one from config.

    Under spark-submit the master and jars come from the command line; from plain Python
    (tests, `lakehouse run`) the master comes from conf and the jars from the local cache.
    A session that exists already (a notebook, Databricks) keeps its settings, except
    REQUIRED_CONF, which is set on it.

    Args:
        config: the environment's configuration (its `spark` section is used).

    Returns:
        A SparkSession with the Delta extension and catalog.
    """
    active = _existing_session()
    if active is not None:
        for key, value in REQUIRED_CONF.items():
            active.conf.set(key, value)
        return active
    spark_conf = config.section("spark")
    builder = SparkSession.builder
    if not _launched_by_spark_submit():  # else spark-submit's --name, master and jars hold
        builder = builder.appName(spark_conf.get("app_name", "lakehouse"))
        if spark_conf.get("master"):
            builder = builder.master(spark_conf["master"])
        builder = builder.config("spark.jars", ",".join(delta_jars()))
    for key, value in {**DELTA_CONF, **(spark_conf.get("conf") or {}), **REQUIRED_CONF}.items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()


class ClassicSparkRequiredError(RuntimeError):
    """A job that needs classic Spark was given a Spark Connect session."""


def require_classic(spark: SparkSession, job: str) -> None:
    """Fail, saying what to use instead, when spark is a Spark Connect session (Databricks
    standard access mode or serverless): bronze's and silver's foreachBatch functions share
    state with the job (counts, the stream's id, an event set when the query starts), which
    Connect would pickle into a process of the server's, failing there on the session or the
    event, not with a word about why."""
    if is_remote() or type(spark).__module__.startswith("pyspark.sql.connect"):
        raise ClassicSparkRequiredError(
            f"the {job} job needs classic Spark (a dedicated cluster, as the bundle's job "
            f"cluster is, or spark-submit), not a Spark Connect session (Databricks standard "
            f"access mode or serverless compute): its micro-batches are handled in this "
            f"process's Python")


def pinned_threads() -> bool:
    """Whether PySpark runs in pinned thread mode (each Python thread on a JVM thread of its
    own), tested as PySpark's `inheritable_thread_target` tests it: by the gateway's kind."""
    from py4j.clientserver import ClientServer  # type: ignore[import-untyped]  # classic only
    from pyspark import SparkContext

    return isinstance(SparkContext._gateway, ClientServer)


def inherit(spark: SparkSession, target: Callable[..., Any]) -> Callable[..., Any]:
    """The target another thread runs, carrying the calling thread's Spark properties (its job
    group, description, tags: a cancellation of the caller's job group, as Databricks cancels
    a notebook command, reaches that thread's jobs) or, on Spark Connect, its session and
    tags. PySpark's own wrapper; the target itself where there is nothing to carry (pinned
    thread mode off)."""
    from pyspark.util import inheritable_thread_target

    if is_remote() or pinned_threads():
        return inheritable_thread_target(spark)(target)  # type: ignore[no-any-return]
    return target
