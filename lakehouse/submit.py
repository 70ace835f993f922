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


def spark_defaults(folder: str | None = None) -> dict[str, str]:
    """The settings of spark-defaults.conf in folder (else $SPARK_CONF_DIR), as Java
    properties (what spark-submit reads it as): `key value`, `key=value` or `key: value`, `#`
    and `!` comments. Empty when there is no such file."""
    folder = folder or os.environ.get("SPARK_CONF_DIR")
    path = Path(folder) / "spark-defaults.conf" if folder else None
    if path is None or not path.is_file():
        return {}
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*([^\s=:#!][^\s=:]*)\s*[=:\s]?\s*(.*?)\s*$", line)
        if match:
            found[match[1]] = match[2]
    return found


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
    jars = list(dict.fromkeys([*delta_jars(), *(j.strip() for j in defaults.get(
        "spark.jars", "").split(",") if j.strip())]))
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
