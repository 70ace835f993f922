"""What a training run records so that its training set can be rebuilt: table versions read,
the resolved configuration (its secrets left out) and the code version."""

from __future__ import annotations

import logging
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

import lakehouse
from lakehouse import tables
from lakehouse.config import Config

GOLD_TAG = "lakehouse-gold"
log = logging.getLogger("lakehouse")


def table_versions(spark: SparkSession, config: Config, features_version: int) -> dict[str, Any]:
    """flight_features' location and the Delta version read, and the silver versions that
    version was built from (recorded by the gold job in its commit: of that version, not of a
    gold run that committed since it was read)."""
    params: dict[str, Any] = {"features_table": config.table("flight_features"),
                              "features_delta_version": features_version}
    state = tables.tagged_state(spark, config, "flight_features", GOLD_TAG,
                                at_version=features_version) or {}
    for name, version in (state.get("versions") or {}).items():
        params[f"{name}_delta_version"] = version
    return params


# A pin older than this is not read: VACUUM keeps the files a later commit replaced for 7 days
# by default (less when a table sets it), and a pinned version whose files are gone fails.
PIN_MAX_AGE = timedelta(days=1)


def silver_flights_built_from(spark: SparkSession, config: Config,
                              features_version: int | None) -> int | None:
    """The silver_flights version to read beside flight_features at features_version: the one
    gold recorded it built them from, when reading it differs from reading the latest (gold
    recorded it, silver_flights is still the table it read, the same Delta table id, a commit
    after it changed rows: not only OPTIMIZE, VACUUM or properties; and its commit is younger
    than PIN_MAX_AGE); else the latest version, as read now. Either way a version: a reader
    that read "the latest" at each of its actions could see flights a silver run added in
    between, without a feature row. None when silver_flights or the features do not exist."""
    if features_version is None:
        return None
    # the cheapest answers first: in the daily DAG gold has just run and silver's latest
    # version is the one it recorded (two history reads, no DESCRIBE DETAIL)
    latest = tables.version(spark, config, "silver_flights")
    state = tables.tagged_state(spark, config, "flight_features", GOLD_TAG,
                                at_version=features_version) or {}
    version = (state.get("versions") or {}).get("silver_flights")
    read_id = (state.get("table_ids") or {}).get("silver_flights")
    if latest is None or not isinstance(version, int) or latest <= version or read_id is None \
            or read_id != tables.table_id(spark, config, "silver_flights"):
        return latest
    history = tables.commits(spark, config, "silver_flights", version, latest)
    pinned = history.get(version)
    if pinned is None or datetime.now() - pinned["timestamp"] > PIN_MAX_AGE:
        log.warning("score: silver_flights v%d, which gold's features v%d were built from, is "
                    "older than %s or gone from the log: reading the latest (v%d)", version,
                    features_version, PIN_MAX_AGE, latest)
        return latest
    if tables.keeps_rows(history, version, latest):
        return latest  # the latest holds the same rows
    return version


def code_version() -> str:
    """The package version, and the git commit when the package runs from a checkout."""
    root = Path(lakehouse.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return lakehouse.__version__
    if commit.returncode != 0:
        return lakehouse.__version__
    suffix = "+dirty" if dirty.stdout.strip() else ""
    return f"{lakehouse.__version__}+{commit.stdout.strip()}{suffix}"


# Settings whose value is a secret, or holds one (a webhook's URL carries its token), by a part
# of their name (Spark's own spark.redaction.regex, and the names of Hadoop's and Kafka's
# secrets); a value naming an environment variable ("env:NAME") is no secret.
SECRET_NAMES = re.compile(
    r"password|passwd|secret|token|jaas|credential|webhook_url|api[_-]?key|access_?key|"
    r"account\.key|private|pem|\bsas\b|\.sas\.|connection_?string|(^|[._])key$|sasl\.",
    re.IGNORECASE)
# A URL's query parameters holding secrets, by a part of their name (S3's presigned
# X-Amz-Signature and -Credential among them).
SECRET_QUERY = re.compile(
    r"([?&](?:[\w.-]*(?:token|secret|password|passwd|pwd|sig|signature|credential|"
    r"api[_-]?key)[\w.-]*|key)=)[^&#\s]*", re.IGNORECASE)
# Schemes whose `name@` before the host is a container's, no credential (Azure storage).
CONTAINER_SCHEMES = ("abfs", "abfss", "wasb", "wasbs")
REDACTED = "<redacted>"


def redacted(values: Any) -> Any:
    """conf values as they may be logged (the training run's `conf/resolved.json`, readable by
    whoever reads the experiment): the value of a setting whose name says it holds a secret
    (SECRET_NAMES), whatever its type, replaced by REDACTED unless it names an environment
    variable; in any text, a URL's user part (`user:password@`, `token@`; not an Azure
    container's `name@`) and its query's secrets (SECRET_QUERY). Written here: Spark's
    `spark.redaction.regex` redacts Spark's own conf in its UI and logs, not a dict this job
    logs, and MLflow does not redact what it is given."""
    if isinstance(values, dict):
        return {k: (REDACTED if SECRET_NAMES.search(str(k)) and v is not None
                    and not isinstance(v, bool) and not str(v).startswith("env:")
                    else redacted(v)) for k, v in values.items()}
    if isinstance(values, list):
        return [redacted(v) for v in values]
    if isinstance(values, str):
        return SECRET_QUERY.sub(rf"\1{REDACTED}", re.sub(
            r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^/\s]*)@", _without_user, values))
    return values


def _without_user(match: re.Match[str]) -> str:
    scheme, user = match[1], match[2]
    if scheme.lower() in CONTAINER_SCHEMES and ":" not in user:
        return match[0]
    return f"{scheme}://{REDACTED}@"
