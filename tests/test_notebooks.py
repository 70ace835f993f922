"""The notebooks under notebooks/, run top to bottom by the local harness on real days, against
the jobs under jobs/ run with the same parameters on a copy of the same landing zone."""

from __future__ import annotations

import ast
import json
import runpy
import shutil
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from lakehouse import registry, tables
from lakehouse.config import deep_merge, load_config
from lakehouse.harness import parse, run_notebook
from lakehouse.seed import seed
from tests import snapshot

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
JOB_NOTEBOOKS = ("bronze", "silver", "gold", "train", "score", "monitor", "daily")
ENV = "nbtest"
# Three days: fit on Jan 1, validate on Jan 2, hold out Jan 3; one Hyperopt trial of a small
# GBT without subsampling: GBT subsampling follows the physical row order of flight_features,
# which two runs do not share (the order of the files a Delta write commits); without it, two
# fits on the same rows give the same model.
TEST_CONF = {
    "train": {"train_from": "2013-01-01", "train_to": "2013-01-02",
              "validation_from": "2013-01-02", "holdout_from": "2013-01-03",
              "holdout_to": "2013-01-03", "max_evals": 1, "timeout_seconds": 120,
              "families": ["gbt"], "class_weighting": ["none"],
              "search_space": {"gbt": {"maxDepth": [2, 3], "maxIter": [5, 10],
                                       "subsamplingRate": [1.0, 1.0],
                                       "minInstancesPerNode": [5, 20]}}},
    "score": {"from": "2013-01-03", "to": "2013-01-03"},
}
# What each stage notebook writes (besides its audit rows).
WRITES = {
    "bronze": ("bronze_flights", "bronze_weather", "bronze_planes", "bronze_airports",
               "bronze_airlines"),
    "silver": ("silver_flights", "silver_weather", "silver_planes", "silver_airports",
               "silver_airlines", "quarantine"),
    "gold": ("flight_features", "route_daily_kpis"),
    "train": (),
    "score": ("delay_predictions",),
}


def test_every_job_has_a_notebook_that_only_reads_widgets_and_calls_the_job() -> None:
    jobs = {p.stem for p in (ROOT / "jobs").glob("*.py")} - {"seed"}  # seeding is a demo step
    assert jobs == set(JOB_NOTEBOOKS)
    for job in JOB_NOTEBOOKS:
        path = NOTEBOOKS / f"{job}.py"
        code = "\n".join(c.source for c in parse(path) if c.magic is None)
        tree = ast.parse(code)
        logic = [type(n).__name__ for n in ast.walk(tree)
                 if isinstance(n, ast.If | ast.For | ast.While | ast.Try | ast.FunctionDef
                               | ast.Lambda | ast.ListComp | ast.DictComp | ast.GeneratorExp
                               | ast.IfExp | ast.BoolOp)]
        assert logic == [], f"{path} holds logic of its own: {logic}"
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and ast.unparse(n.func) == "workflow.run_job"]
        assert len(calls) == 1 and ast.literal_eval(calls[0].args[2]) == job, path


def _write_conf(folder: Path) -> Path:
    shutil.copytree(ROOT / "conf", folder)
    local = yaml.safe_load((folder / "local.yml").read_text())
    (folder / f"{ENV}.yml").write_text(yaml.safe_dump(deep_merge(local, TEST_CONF)))
    return folder


def _job(script: str, *args: str) -> None:
    argv = sys.argv
    sys.argv = [str(ROOT / "jobs" / f"{script}.py"), *args]
    try:
        with pytest.raises(SystemExit) as ended:
            runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = argv
    assert ended.value.code == 0, f"jobs/{script}.py {args} exited {ended.value.code}"


@pytest.mark.slow
def test_notebooks_write_the_tables_their_jobs_write(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daily job over three days and the five stage notebooks one after the other leave
    the same tables; then a new day through the daily job and the daily notebook, and the
    exploration notebook over what is left."""
    conf_dir = _write_conf(tmp_path / "conf")
    by_job, by_notebook, landing = tmp_path / "job", tmp_path / "notebook", tmp_path / "landing"

    def land(start: date, end: date) -> None:  # the same files (and times) in both zones
        seed(landing, start, end)
        for root in (by_job, by_notebook):
            shutil.copytree(landing, root / "landing", dirs_exist_ok=True)

    def config_of(root: Path):  # type: ignore[no-untyped-def]
        monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(root))
        return load_config(ENV, conf_dir)

    job_args = ["--env", ENV, "--conf-dir", str(conf_dir), "--from", "2013-01-03"]
    widgets = {"env": ENV, "conf_dir": str(conf_dir)}
    land(date(2013, 1, 1), date(2013, 1, 3))
    config_of(by_job)
    _job("daily", *job_args, "--to", "2013-01-03")
    config = config_of(by_notebook)
    for stage, names in WRITES.items():
        extra = {"from": "2013-01-03", "to": "2013-01-03"} if stage == "score" else {}
        run = run_notebook(NOTEBOOKS / f"{stage}.py", spark, {**widgets, **extra})
        assert run.exit_value and run.exit_value.count("-") == 1  # the run id
        empty = [n for n in names if n != "quarantine"  # no bad rows in these days
                 and not tables.read(spark, config, n).limit(1).count()]
        assert not empty, f"{stage} notebook left {empty} empty"
    landed = sum(len(p.read_text().splitlines()) - 1 for p in (landing / "flights").glob("*.csv"))
    assert tables.read(spark, config, "bronze_flights").count() == landed
    assert tables.read(spark, config, "flight_features").count() == landed
    assert tables.read(spark, config, "delay_predictions").count() == tables.read(
        spark, config, "flight_features").filter(F.col("flight_date") == "2013-01-03").count()
    mlflow_conf = registry.configure(config)
    assert registry.champion(mlflow_conf["model_name"]) is not None
    assert snapshot.content(spark, config_of(by_job)) == snapshot.content(
        spark, config_of(by_notebook))
    assert snapshot.audit(spark, config_of(by_job)) == snapshot.audit(spark, config)

    # A new day through the daily job and the daily notebook (a champion exists: no training).
    land(date(2013, 1, 4), date(2013, 1, 4))
    config_of(by_job)
    _job("daily", *job_args, "--to", "2013-01-04")
    config_of(by_notebook)
    run_notebook(NOTEBOOKS / "daily.py", spark,
                 {**widgets, "from": "2013-01-03", "to": "2013-01-04", "train": "auto"})
    after = snapshot.content(spark, config_of(by_notebook))
    assert snapshot.content(spark, config_of(by_job)) == after
    assert snapshot.audit(spark, config_of(by_job)) == snapshot.audit(spark, config)
    assert {str(r["flight_date"]) for r in after["delay_predictions"]} == {"2013-01-03",
                                                                           "2013-01-04"}

    # The monitor notebook over the new day: the values the daily notebook wrote, unchanged
    # (every column, its run id too: a merge leaves a row whose value, rows and role are the
    # same). The notebooks from here on read $LAKEHOUSE_DATA_ROOT, which config_of points back
    # at the notebooks' root (the comparisons above left it at the job's).
    config = config_of(by_notebook)

    def monitored() -> list[Row]:
        return [r for r in snapshot.rows(spark, config, "model_monitoring")
                if str(r["monitored_date"]) == "2013-01-04"]

    before = monitored()
    run = run_notebook(NOTEBOOKS / "monitor.py", spark, {**widgets, "to": "2013-01-04"})
    assert run.exit_value and before
    assert monitored() == before

    # The exploration notebook reads what the pipeline left and plots it; it writes nothing.
    versions = {n: tables.version(spark, config, n) for n in snapshot.CONTENT_TABLES}
    explored = run_notebook(NOTEBOOKS / "exploration.py", spark, widgets, tmp_path / "figures")
    summary = json.loads(explored.exit_value or "{}")
    assert summary["predictions"] == len(after["delay_predictions"])
    # The ROC curve drawn from a fresh scoring of the holdout has the AUC the run logged.
    assert summary["holdout_auc_roc_from_curve"] == pytest.approx(
        summary["holdout_auc_roc_logged"], abs=0.02)
    figures = [d for d in explored.displayed if isinstance(d, Path)]
    assert len(figures) == 5 and all(f.stat().st_size > 10_000 for f in figures)
    assert {n: tables.version(spark, config, n) for n in snapshot.CONTENT_TABLES} == versions

    # The gold notebook's `full` widget: a rebuild in full (--full), the same content.
    gold_before = {n: snapshot.rows(spark, config, n) for n in WRITES["gold"]}
    rebuilt = run_notebook(NOTEBOOKS / "gold.py", spark, {**widgets, "full": "true"})
    messages = {r["table_name"]: r["message"] for r in tables.read(spark, config, "audit")
                .filter(F.col("run_id") == rebuilt.exit_value).collect()}
    assert set(messages) == set(WRITES["gold"])
    assert all(m.startswith("full build: --full") for m in messages.values()), messages
    assert {n: snapshot.rows(spark, config, n) for n in WRITES["gold"]} == gold_before
