"""spark-submit.sh and lakehouse.submit, without Spark: the script runs from a copy of the
checkout whose .venv/bin/spark-submit is a fake that records the arguments it was given."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.submit import main, spark_defaults, submit_args

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """tmp_path/checkout: the real script, jobs, package and conf, a no-op `make setup`, the
    real virtualenv's Python behind a wrapper and a fake spark-submit writing submitted.txt."""
    root = tmp_path / "checkout"
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "spark-submit.sh", root / "spark-submit.sh")
    for name in ("jobs", "lakehouse", "conf"):
        (root / name).symlink_to(ROOT / name)
    (root / "Makefile").write_text("setup:\n\t@:\n")
    python = Path(sys.prefix) / "bin" / "python"
    fakes = {"python": f'exec "{python}" "$@"',
             "spark-submit": f"printf '%s\\n' \"$@\" > '{root}/submitted.txt'; "
                             "env | grep -E '^(SPARK_HOME|PYSPARK_PYTHON|SPARK_CONF_DIR)=' "
                             f"> '{root}/env.txt'"}
    for name, body in fakes.items():
        script = root / ".venv" / "bin" / name
        script.write_text(f"#!/usr/bin/env bash\n{body}\n")
        script.chmod(0o755)
    return root


def run_script(checkout: Path, *args: str, cwd: Path | None = None,
               **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LAKEHOUSE_CONF_DIR", "SPARK_HOME", "PYSPARK_PYTHON", "SPARK_CONF_DIR")}
    env["LAKEHOUSE_JARS_DIR"] = str(ROOT / ".jars")
    env.update(extra)
    return subprocess.run([str(checkout / "spark-submit.sh"), *args], cwd=cwd or checkout,
                          env=env, capture_output=True, text=True, timeout=120)


def conf_dir_with_env(folder: Path, env: str, master: str) -> Path:
    """folder holding the real base.yml and an env of its own with its master and one conf."""
    folder.mkdir()
    shutil.copy(ROOT / "conf" / "base.yml", folder / "base.yml")
    (folder / f"{env}.yml").write_text(
        f"spark:\n  master: {master}\n  conf:\n    spark.driver.memory: 3g\n")
    return folder


def test_script_stops_with_the_reason_when_submit_args_fail(checkout: Path) -> None:
    """An unknown env makes submit.py fail: the script exits with its message and never runs
    spark-submit (it used to run it without --jars, --master and the env's confs)."""
    run = run_script(checkout, "daily", "--env", "nope")
    assert run.returncode == 2, run.stderr
    assert "unknown env 'nope'" in run.stderr
    assert not (checkout / "submitted.txt").exists()


def test_script_reads_master_and_confs_from_the_given_conf_dir(checkout: Path,
                                                                tmp_path: Path) -> None:
    """--conf-dir (relative to where the script is run) reaches submit.py as well as the job."""
    conf = conf_dir_with_env(tmp_path / "myconf", "mine", "spark://from-conf-dir:7077")
    run = run_script(checkout, "daily", "--env", "mine", "--conf-dir", "myconf", "--train",
                     "never", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    submitted = (checkout / "submitted.txt").read_text().splitlines()
    assert submitted[submitted.index("--master") + 1] == "spark://from-conf-dir:7077"
    assert "spark.driver.memory=3g" in submitted
    job = submitted[submitted.index(str(checkout / "jobs" / "daily.py")) + 1:]
    assert job == ["--env", "mine", "--conf-dir", str(conf), "--train", "never"]


def test_master_given_to_the_script_overrides_the_conf_dir(checkout: Path,
                                                           tmp_path: Path) -> None:
    conf = conf_dir_with_env(tmp_path / "myconf", "mine", "spark://from-conf-dir:7077")
    run = run_script(checkout, "score", f"--conf-dir={conf}", "--env=mine", "--master",
                     "local[2]")
    assert run.returncode == 0, run.stderr
    submitted = (checkout / "submitted.txt").read_text().splitlines()
    assert submitted[submitted.index("--master") + 1] == "local[2]"
    assert submitted[-4:] == ["--env", "mine", "--conf-dir", str(conf)]


def test_executors_python_can_be_set_and_another_spark_home_is_not_used(
        checkout: Path) -> None:
    """The executors run LAKEHOUSE_WORKER_PYTHON (on several hosts, a Python every worker
    has), else the checkout's venv, whatever PYSPARK_PYTHON an image set. A SPARK_HOME naming
    another Spark install is not used: the pinned PySpark's own Spark is what the Delta and
    Kafka jars are built for."""
    def submitted_env(**extra: str) -> dict[str, str]:
        run = run_script(checkout, "score", **extra)
        assert run.returncode == 0, run.stderr
        lines = (checkout / "env.txt").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

    venv = str(checkout / ".venv" / "bin" / "python")
    assert submitted_env(SPARK_HOME="/opt/spark-3.5") == {"PYSPARK_PYTHON": venv}
    assert submitted_env(PYSPARK_PYTHON="/usr/bin/python3") == {"PYSPARK_PYTHON": venv}
    assert submitted_env(LAKEHOUSE_WORKER_PYTHON="/opt/py311/bin/python") == {
        "PYSPARK_PYTHON": "/opt/py311/bin/python"}


def test_submit_args_read_the_conf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_JARS_DIR", str(ROOT / ".jars"))
    conf = conf_dir_with_env(tmp_path / "myconf", "mine", "spark://from-conf-dir:7077")
    args = submit_args("mine", None, conf)
    assert args[:2] == ["--master", "spark://from-conf-dir:7077"]
    assert args[args.index("spark.driver.memory=3g") - 1] == "--conf"


def test_submit_main_fails_in_one_line_naming_the_env(capsys: pytest.CaptureFixture) -> None:
    assert main(["nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("lakehouse.submit: unknown env 'nope'")
    assert captured.err.count("\n") == 1


def test_an_env_without_a_master_takes_the_clusters_spark_defaults_or_is_refused(
        checkout: Path, tmp_path: Path) -> None:
    """`--env cluster` names no master (conf/cluster.yml: --master decides). With a cluster's
    spark-defaults.conf (SPARK_CONF_DIR) setting spark.master, no --master is passed, so
    spark-submit takes it from there, and its spark.jars are kept beside the Delta jars (a
    --jars replaces them); with neither, the script stops naming what to set, instead of
    running the job on this host (spark-submit's default, local[*])."""
    refused = run_script(checkout, "daily", "--env", "cluster")
    assert refused.returncode == 2, refused.stderr
    assert "env 'cluster' names no Spark master" in refused.stderr
    assert "--master" in refused.stderr and "SPARK_CONF_DIR" in refused.stderr
    assert not (checkout / "submitted.txt").exists()

    cluster = tmp_path / "spark-conf"
    cluster.mkdir()
    # Java properties, as spark-submit reads them: a continued line, an escaped colon
    (cluster / "spark-defaults.conf").write_text(
        "# the cluster's own\nspark.master          spark\\://spark-master:7077\n"
        "spark.jars=/opt/jars/hadoop-aws-3.4.2.jar,\\\n"
        "    /opt/ivy/io.delta_delta-spark_2.13-3.2.0.jar,/opt/jars/extra.jar\n")
    assert spark_defaults(str(cluster))["spark.master"] == "spark://spark-master:7077"
    # named relative to where the script runs, as spark-submit there reads it
    run = run_script(checkout, "daily", "--env", "cluster", cwd=tmp_path,
                     SPARK_CONF_DIR="spark-conf")
    assert run.returncode == 0, run.stderr
    submitted = (checkout / "submitted.txt").read_text().splitlines()
    assert "--master" not in submitted
    jars = submitted[submitted.index("--jars") + 1].split(",")
    assert {"/opt/jars/hadoop-aws-3.4.2.jar", "/opt/jars/extra.jar"} <= set(jars)
    # the cluster's Delta is left out (two Deltas on the class path), saying so
    assert sum("delta-spark" in j for j in jars) == 1 and "3.2.0" not in ",".join(jars)
    assert "leaving out spark-defaults' Delta jars" in run.stderr
    # a Delta package spark-submit would resolve from spark-defaults itself is refused
    with (cluster / "spark-defaults.conf").open("a") as conf:
        conf.write("spark.jars.packages io.delta:delta-spark_2.13:3.2.0\n")
    run = run_script(checkout, "daily", "--env", "cluster", SPARK_CONF_DIR=str(cluster))
    assert run.returncode == 2 and "spark.jars.packages names Delta" in run.stderr
    assert f"SPARK_CONF_DIR={cluster}" in (checkout / "env.txt").read_text().splitlines()
    # a master given still wins, and the local env keeps its own
    given = run_script(checkout, "daily", "--env", "cluster", "--master", "yarn")
    assert given.returncode == 0, given.stderr
    submitted = (checkout / "submitted.txt").read_text().splitlines()
    assert submitted[submitted.index("--master") + 1] == "yarn"
    assert submit_args("local", None, defaults={})[:2] == ["--master", "local[*]"]


def test_the_package_zip_is_named_by_its_code_and_never_rewritten_in_place(
        checkout: Path) -> None:
    """A running application (a continuous bronze) serves its --py-files to executors it
    starts later: a submit of the same code reuses its zip, new code gets a zip of its own,
    and the first is left as it was (it used to be removed and rewritten at every submit)."""
    import zipfile

    def py_files() -> Path:
        run = run_script(checkout, "score")
        assert run.returncode == 0, run.stderr
        submitted = (checkout / "submitted.txt").read_text().splitlines()
        return Path(submitted[submitted.index("--py-files") + 1])

    first = py_files()
    assert first.parent == checkout / "build" and first.suffix == ".zip"
    assert first.stat().st_mode & 0o044 == 0o044  # readable by the checkout's other users
    assert "lakehouse/stages/bronze.py" in zipfile.ZipFile(first).namelist()
    made = first.stat().st_mtime_ns
    assert py_files() == first and first.stat().st_mtime_ns == made
    # new code: the checkout's package becomes a copy with one more module
    (checkout / "lakehouse").unlink()
    shutil.copytree(ROOT / "lakehouse", checkout / "lakehouse",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "lakehouse" / "added.py").write_text("VALUE = 1\n")
    second = py_files()
    assert second != first and "lakehouse/added.py" in zipfile.ZipFile(second).namelist()
    assert first.stat().st_mtime_ns == made
    assert not list((checkout / "build").glob("*.part"))
