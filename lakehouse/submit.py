"""spark-submit arguments for an environment (used by spark-submit.sh; prints one per line)."""

from __future__ import annotations

import sys

from lakehouse.config import load_config
from lakehouse.session import DELTA_CONF, delta_jars


def submit_args(env: str, master: str | None) -> list[str]:
    """--master, --jars and one --conf per Spark setting of the environment."""
    spark_conf = load_config(env).section("spark")
    args = ["--master", master or spark_conf.get("master") or "local[*]",
            "--jars", ",".join(delta_jars())]
    for key, value in {**DELTA_CONF, **(spark_conf.get("conf") or {})}.items():
        args += ["--conf", f"{key}={value}"]
    return args


if __name__ == "__main__":
    env_name = sys.argv[1] if len(sys.argv) > 1 else "local"
    print("\n".join(submit_args(env_name, sys.argv[2] if len(sys.argv) > 2 else None)))
