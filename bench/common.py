"""What the full-year benchmarks share: where the year is built, and building it once."""

from __future__ import annotations

import sys
import tempfile
from datetime import date
from pathlib import Path

from pyspark.sql import SparkSession

from lakehouse.config import Config
from lakehouse.lineage import code_version
from lakehouse.seed import seed
from lakehouse.stages import bronze, gold, silver

# Written once the year is built: a folder holding it is a bench's, complete, and reusable.
MARKER = ".bench-year"


def data_root(given: Path | None, prefix: str) -> tuple[Path, bool]:
    """The bench's data root and whether to keep it: a temporary folder (removed after), or
    --data-root, which must be new, empty or a year a bench built there before (never a
    user's pipeline data: a bench writes its own tables, models and audit rows into it)."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), False
    if given.exists() and any(given.iterdir()) and not (given / MARKER).exists():
        raise SystemExit(f"--data-root {given}: not empty and not built by a bench (no "
                         f"{MARKER}); give a new or empty folder")
    return given, True


def build_year(spark: SparkSession, config: Config, root: Path) -> None:
    """Land and build 2013 through bronze, silver and gold, unless a bench did so in root (a
    year built by another code version is reused too, with a warning: give a new folder to
    measure this version's gold)."""
    marker = root / MARKER
    if marker.exists():
        built_by = marker.read_text().strip()
        if built_by != code_version():
            print(f"warning: the year in {root} was built by {built_by}, not by this code "
                  f"({code_version()})", file=sys.stderr)
        return
    seed(Path(config.landing), date(2013, 1, 1), date(2013, 12, 31))
    for stage in (bronze, silver, gold):
        stage.run(spark, config, "bench")
    marker.write_text(code_version() + "\n")
