"""The Databricks bundle, checked offline as far as it can be without a workspace.

Every job of every target goes through databricks-bundles' typed job model (unknown fields,
wrong types and unknown enum values fail there); what that model does not check is checked
here: the tasks form a DAG in the workflow's stage order, every task names an entry point or a
notebook that exists, its parameters parse with the job's own argument parser, and the
schedule is a valid Quartz cron expression in a known time zone, paused in dev.
"""

from __future__ import annotations

import glob
import re
import subprocess
from graphlib import TopologicalSorter
from importlib.metadata import entry_points
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from databricks.bundles.jobs import Job

from lakehouse.cli import build_parser
from lakehouse.config import deep_merge, load_config
from lakehouse.harness import parse
from lakehouse.workflow import STAGES

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = yaml.safe_load((ROOT / "databricks.yml").read_text())
TARGETS = sorted(BUNDLE["targets"])
QUARTZ = sorted(glob.glob(str(ROOT / ".jars" / "tools" / "quartz-*.jar")))
# What each stage's task must run: (job argument of `lakehouse run`, --stages of daily).
TASK_JOBS = {stage: (stage, None) for stage in STAGES} | {"score": ("daily", "score"),
                                                          "train": ("daily", "train")}


def resource_files() -> list[Path]:
    return [Path(p) for pattern in BUNDLE["include"]
            for p in sorted(glob.glob(str(ROOT / pattern)))]


def jobs(target: str) -> dict[str, tuple[dict[str, Any], Path]]:
    """The target's jobs, with the file each was defined in (its paths are relative to it)."""
    found: dict[str, tuple[dict[str, Any], Path]] = {}
    for path in resource_files():
        for key, job in yaml.safe_load(path.read_text())["resources"]["jobs"].items():
            assert key not in found, f"job {key} defined twice"
            found[key] = (job, path)
    overrides = BUNDLE["targets"][target].get("resources", {}).get("jobs", {})
    for key, override in overrides.items():
        assert key in found, f"target {target} overrides unknown job {key}"
        found[key] = (deep_merge(found[key][0], override), found[key][1])
    return found


def test_the_bundle_defines_the_daily_job_and_dev_and_prod_targets() -> None:
    assert TARGETS == ["dev", "prod"]
    assert BUNDLE["targets"]["dev"]["mode"] == "development"
    assert BUNDLE["targets"]["prod"]["mode"] == "production"
    assert set(jobs("dev")) == {"lakehouse_daily"}


def test_production_deploys_to_its_own_folder_on_a_supported_runtime() -> None:
    """Every run installs the wheel of the root path: a folder all users can write
    (/Workspace/Shared) would let any of them run code as the job; a folder per deploying user
    would give each deployer a prod job of their own. The runtime is a key of a
    supported Spark 4.1 runtime (18.0.x was the beta, out of support since June 2026)."""
    for target, settings in BUNDLE["targets"].items():
        root = settings.get("workspace", {}).get("root_path")
        assert root is None or not root.startswith(("/Workspace/Shared", "/Shared")), target
    # one fixed owner: a root per deploying user would give each deployer a prod job
    assert BUNDLE["targets"]["prod"]["workspace"]["root_path"].startswith(
        "/Workspace/Users/${var.prod_owner}/")
    assert "current_user" not in BUNDLE["targets"]["prod"]["workspace"]["root_path"]
    # no default: a prod command without the owner fails naming it, instead of deploying to a
    # made-up folder (a second prod deployment); dev, which does not use it, sets a value
    assert "default" not in BUNDLE["variables"]["prod_owner"]
    assert "prod_owner" in BUNDLE["targets"]["dev"]["variables"]
    assert "prod_owner" not in BUNDLE["targets"]["prod"].get("variables", {})
    assert BUNDLE["variables"]["spark_version"]["default"] == "18.x-scala2.13"


@pytest.mark.parametrize("target", TARGETS)
def test_every_job_is_a_valid_databricks_job(target: str) -> None:
    for key, (job, _) in jobs(target).items():
        typed = Job.from_dict(job)  # raises on unknown fields, wrong types, unknown enums
        assert typed.name == job["name"], key
        assert [t.task_key for t in typed.tasks] == [t["task_key"] for t in job["tasks"]]


def test_the_typed_model_catches_what_it_is_relied_on_for() -> None:
    job, _ = jobs("dev")["lakehouse_daily"]
    bad_field = deep_merge(job, {"schedule": {"pause_statuss": "PAUSED"}})
    with pytest.raises(ValueError, match="pause_statuss"):
        Job.from_dict(bad_field)
    with pytest.raises(ValueError, match="PAUSD"):
        Job.from_dict(deep_merge(job, {"schedule": {"pause_status": "PAUSD"}}))


def test_tasks_form_a_dag_in_the_order_of_the_workflow_stages() -> None:
    job, _ = jobs("dev")["lakehouse_daily"]
    graph = {t["task_key"]: {d["task_key"] for d in t.get("depends_on", [])}
             for t in job["tasks"]}
    assert len(graph) == len(job["tasks"]), "task keys are not unique"
    unknown = {d for deps in graph.values() for d in deps} - set(graph)
    assert not unknown, f"depends_on names no task: {unknown}"
    order = list(TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert order == list(STAGES)
    # each stage waits for the one before it, as in `lakehouse run daily`
    assert all(graph[b] == {a} for a, b in pairwise(STAGES))


def test_every_task_names_an_entry_point_or_notebook_that_exists() -> None:
    job, where = jobs("dev")["lakehouse_daily"]
    clusters = {c["job_cluster_key"] for c in job["job_clusters"]}
    console = {ep.name: ep for ep in entry_points(group="console_scripts")}
    artifact = BUNDLE["artifacts"]["lakehouse"]["files"][0]["source"]
    for task in job["tasks"]:
        assert task["job_cluster_key"] in clusters, task["task_key"]
        # training is never retried whole (a second version would be registered); the others
        # retry transient failures
        assert task["max_retries"] == 0 if task["task_key"] == "train" else (
            task["max_retries"] >= 1 and task["min_retry_interval_millis"] >= 60_000), task
        if "python_wheel_task" in task:
            wheel_task = task["python_wheel_task"]
            assert wheel_task["package_name"] == "lakehouse"
            entry = console[wheel_task["entry_point"]]
            assert (entry.dist.name, entry.value) == ("lakehouse", "lakehouse.cli:entry")
            assert callable(entry.load())
            # the library is the wheel the artifact builds (paths are relative to the file)
            libraries = [(where.parent / lib["whl"]).resolve() for lib in task["libraries"]]
            assert libraries == [(ROOT / artifact).resolve()], task["task_key"]
        elif "notebook_task" in task:
            notebook = (where.parent / task["notebook_task"]["notebook_path"]).with_suffix(".py")
            assert parse(notebook), f"{notebook} is not a source-format notebook"
        else:
            pytest.fail(f"task {task['task_key']} is neither a wheel nor a notebook task")


def test_task_parameters_parse_with_the_jobs_own_argument_parser(
        monkeypatch: pytest.MonkeyPatch) -> None:
    job, _ = jobs("dev")["lakehouse_daily"]
    # as the job cluster sets it (the Databricks conf has no default catalog)
    assert job["job_clusters"][0]["new_cluster"]["spark_env_vars"]["LAKEHOUSE_CATALOG"] \
        == "${var.catalog}"
    monkeypatch.setenv("LAKEHOUSE_CATALOG", BUNDLE["targets"]["dev"]["variables"]["catalog"])
    parser = build_parser()
    for task in job["tasks"]:
        args = parser.parse_args(task["python_wheel_task"]["parameters"])
        assert args.command == "run"
        assert (args.job, args.stages) == TASK_JOBS[task["task_key"]], task["task_key"]
        if args.job == "daily":
            assert args.train == "auto"  # the daily workflow's rule: train without a champion
        config = load_config(args.env, args.conf_dir)
        assert config.section("mlflow")["registry_uri"] == "databricks-uc"


def test_the_databricks_conf_names_unity_catalog_tables_and_the_models_registry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    job, _ = jobs("prod")["lakehouse_daily"]
    env_vars = job["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    assert env_vars["LAKEHOUSE_CATALOG"] == "${var.catalog}"
    monkeypatch.setenv("LAKEHOUSE_CATALOG", BUNDLE["targets"]["prod"]["variables"]["catalog"])
    monkeypatch.delenv("LAKEHOUSE_DATA_ROOT", raising=False)
    config = load_config("databricks")
    names = config.values["tables"]
    three_parts = re.compile(r"^lakehouse\.(bronze|silver|gold|ops)\.\w+$")
    assert all(three_parts.match(n) for n in names.values()), names
    mlflow_conf = config.section("mlflow")
    assert mlflow_conf["model_name"] == "lakehouse.ml.flight_disruption"
    # workspace experiments are absolute paths, in a folder that exists: MLflow does not create
    # a missing parent (RESOURCE_DOES_NOT_EXIST on the first run), /Shared is in every workspace
    assert mlflow_conf["experiment"].rsplit("/", 1)[0] == "/Shared"
    assert config.landing == "/Volumes/lakehouse/ops/files/landing"


# Spark settings of conf/ that tune the local session only (a laptop's log size and console).
LOCAL_ONLY = {"spark.ui.showConsoleProgress", "spark.databricks.delta.snapshotPartitions"}


def test_the_job_cluster_sets_the_spark_settings_of_the_databricks_conf(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime owns the session, so conf's Spark settings reach the jobs only through the
    job cluster's spark_conf: a setting measured to matter (e.g. the codegen limits) would be
    silently absent there. Also: the access mode is one the API takes without `kind`."""
    monkeypatch.setenv("LAKEHOUSE_CATALOG", "lakehouse")
    wanted = {k: str(v) for k, v in load_config("databricks").section("spark")["conf"].items()
              if k not in LOCAL_ONLY}
    for target in TARGETS:
        cluster = jobs(target)["lakehouse_daily"][0]["job_clusters"][0]["new_cluster"]
        assert {k: str(v) for k, v in cluster["spark_conf"].items()} == wanted, target
        assert cluster["data_security_mode"] == "SINGLE_USER" and "kind" not in cluster


def quartz_fire_times(expression: str, zone: str, after: str, count: int) -> list[str]:
    assert QUARTZ, "the Quartz jar is missing from .jars/tools: run `make setup`"
    run = subprocess.run(["java", "-cp", QUARTZ[-1], str(ROOT / "tests/quartz/CronCheck.java"),
                          expression, zone, after, str(count)],
                         capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise ValueError(run.stderr.strip().splitlines()[0])
    return run.stdout.split()


def test_the_schedule_is_valid_quartz_daily_in_its_time_zone_and_paused_in_dev() -> None:
    schedule = jobs("prod")["lakehouse_daily"][0]["schedule"]
    ZoneInfo(schedule["timezone_id"])  # a known IANA zone
    # Quartz's own parser; over New York's change to daylight saving time the run stays at
    # the same local time (so moves by an hour in UTC).
    fires = quartz_fire_times(schedule["quartz_cron_expression"], schedule["timezone_id"],
                              "2013-03-08T00:00:00Z", 4)
    assert fires == ["2013-03-08T11:30:00Z", "2013-03-09T11:30:00Z", "2013-03-10T10:30:00Z",
                     "2013-03-11T10:30:00Z"]
    assert schedule["pause_status"] == "UNPAUSED"
    assert jobs("dev")["lakehouse_daily"][0]["schedule"]["pause_status"] == "PAUSED"


def test_the_quartz_check_rejects_unix_cron() -> None:
    with pytest.raises(ValueError, match="day-of-week AND a day-of-month"):
        quartz_fire_times("0 30 6 * * *", "UTC", "2013-03-08T00:00:00Z", 1)
    with pytest.raises(ValueError, match=r"Unexpected end of expression|Illegal"):
        quartz_fire_times("30 6 * *", "UTC", "2013-03-08T00:00:00Z", 1)
