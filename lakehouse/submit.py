"""spark-submit arguments for an environment (used by spark-submit.sh; prints one per line).

    python -m lakehouse.submit [ENV] [MASTER] [--conf-dir DIR]

Exits 2 with a one-line reason on stderr (and nothing on stdout) when the environment or the
Delta jars cannot be found, so that spark-submit.sh stops instead of submitting without them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lakehouse.config import ConfigError, load_config
from lakehouse.session import DELTA_CONF, MissingJarsError, delta_jars


def submit_args(env: str, master: str | None, conf_dir: Path | str | None = None) -> list[str]:
    """--master, --jars and one --conf per Spark setting of the environment (read from conf_dir,
    else the default conf folder)."""
    spark_conf = load_config(env, conf_dir).section("spark")
    args = ["--master", master or spark_conf.get("master") or "local[*]",
            "--jars", ",".join(delta_jars())]
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
