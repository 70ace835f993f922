"""spark-submit.sh and lakehouse.submit, without Spark: the script runs from a copy of the
checkout whose .venv/bin/spark-submit is a fake that records the arguments it was given."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.submit import main, submit_args

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
                             f"env | grep -E '^(SPARK_HOME|PYSPARK_PYTHON)=' > '{root}/env.txt'"}
    for name, body in fakes.items():
        script = root / ".venv" / "bin" / name
        script.write_text(f"#!/usr/bin/env bash\n{body}\n")
        script.chmod(0o755)
    return root


def run_script(checkout: Path, *args: str, cwd: Path | None = None,
               **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LAKEHOUSE_CONF_DIR", "SPARK_HOME", "PYSPARK_PYTHON")}
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
