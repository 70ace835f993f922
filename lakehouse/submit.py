"""spark-submit arguments for an environment (used by spark-submit.sh; prints one per line).

    python -m lakehouse.submit [ENV] [MASTER] [--conf-dir DIR]

Exits 2 with a one-line reason on stderr (and nothing on stdout) when the environment or the
Delta jars cannot be found, so that spark-submit.sh stops instead of submitting without them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from lakehouse.config import ConfigError, load_config
from lakehouse.session import DELTA_CONF, MissingJarsError, delta_jars

DELTA_JAR = re.compile(r"(^|[._])delta-(spark|storage|core)[_.-]")


def spark_defaults(folder: str | None = None) -> dict[str, str]:
    """The settings of spark-defaults.conf in folder (else $SPARK_CONF_DIR), read as Java
    properties, as spark-submit reads it: `key value`, `key=value` or `key: value`, `#` and
    `!` comments, a line ending in a backslash continued on the next, backslash escapes
    (`file\\:/a.jar`). Empty when there is no such file. Written here: Python's standard
    library has no Java properties reader, and spark-submit's own (in the JVM) cannot be asked
    before it runs; `\\uXXXX` escapes are not decoded."""
    folder = folder or os.environ.get("SPARK_CONF_DIR")
    path = Path(folder) / "spark-defaults.conf" if folder else None
    if path is None or not path.is_file():
        return {}
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        line = pending + (line.lstrip() if pending else line)
        if not pending and line.lstrip().startswith(("#", "!")):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:  # an odd number of backslashes: the line goes on
            pending = line[:-1]
            continue
        pending = ""
        logical.append(line)
    if pending:
        logical.append(pending)
    found: dict[str, str] = {}
    for line in logical:
        match = re.match(r"\s*((?:\\.|[^\s=:\\])+)\s*[=:\s]?\s*(.*?)\s*$", line)
        if match and match[1]:
            found[_unescape(match[1])] = _unescape(match[2])
    return found


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r"}.get(m[1], m[1]), text)


def submit_args(env: str, master: str | None, conf_dir: Path | str | None = None,
                defaults: dict[str, str] | None = None) -> list[str]:
    """--master, --jars and one --conf per Spark setting of the environment (read from conf_dir,
    else the default conf folder).

    The master: the one given, else the env's `spark.master`, else the cluster's
    spark-defaults.conf (defaults, else read from $SPARK_CONF_DIR; no --master then, so
    spark-submit takes it from there). An env naming none with none in spark-defaults is
    refused: spark-submit would run the job on this host (`local[*]`) without a word. --jars
    is the Delta jars and spark-defaults' `spark.jars` (a --jars replaces that setting)."""
    spark_conf = load_config(env, conf_dir).section("spark")
    defaults = spark_defaults() if defaults is None else defaults
    master = master or spark_conf.get("master")
    if not master and not defaults.get("spark.master"):
        raise ConfigError(
            f"env '{env}' names no Spark master and no spark-defaults.conf sets spark.master "
            f"(SPARK_CONF_DIR={os.environ.get('SPARK_CONF_DIR') or 'unset'}): pass --master URL "
            "(e.g. spark://host:7077, yarn), or set SPARK_CONF_DIR to the cluster's conf folder")
    theirs = [j.strip() for j in defaults.get("spark.jars", "").split(",") if j.strip()]
    # a Delta of the cluster's own beside the pinned one: two versions on the class path
    # (delta-spark_2.13-x.jar, Ivy's io.delta_delta-spark_2.13-x.jar, the older delta-core)
    other_delta = [j for j in theirs if DELTA_JAR.search(Path(j).name)]
    if other_delta:
        print(f"lakehouse.submit: leaving out spark-defaults' Delta jars {other_delta}: the "
              f"job brings the Delta its PySpark is pinned to", file=sys.stderr)
    packages = [p for p in defaults.get("spark.jars.packages", "").split(",")
                if p.strip().startswith("io.delta:")]
    if packages:  # not ours to drop: spark-submit resolves them from spark-defaults itself
        raise ConfigError(
            f"spark-defaults.conf's spark.jars.packages names Delta ({packages}): with the "
            f"Delta jars this job brings, two Delta versions would be on the class path; "
            f"remove them from spark.jars.packages, or submit with another SPARK_CONF_DIR")
    jars = list(dict.fromkeys([*delta_jars(), *(j for j in theirs if j not in other_delta)]))
    args = (["--master", master] if master else []) + ["--jars", ",".join(jars)]
    for key, value in {**DELTA_CONF, **(spark_conf.get("conf") or {})}.items():
        args += ["--conf", f"{key}={value}"]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.submit", description=__doc__)
    parser.add_argument("env", nargs="?", default="local")
    parser.add_argument("master", nargs="?", default=None)
    parser.add_argument("--conf-dir", default=None)
    args = parser.parse_args(argv)
    try:
        lines = submit_args(args.env, args.master or None, args.conf_dir)
    except (ConfigError, MissingJarsError) as error:
        print(f"lakehouse.submit: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
