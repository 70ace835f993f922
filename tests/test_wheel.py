"""The wheel `make wheel` builds, installed as a cluster user would: `make wheel-test`.

Installing it with its spark extra into a fresh virtualenv takes minutes (pyspark alone is
~430 MB), so these tests are left out of `make test` (marker `install`); CI runs them.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from lakehouse.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.install]
ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.11", "3.12")


@pytest.fixture(scope="module")
def wheel() -> Path:
    subprocess.run(["make", "-s", "wheel"], cwd=ROOT, check=True, timeout=600)
    built = glob.glob(str(ROOT / "dist" / "lakehouse-*.whl"))
    assert len(built) == 1, built
    return Path(built[0])


def find_python(version: str) -> str | None:
    """An interpreter of that minor version: on PATH, else one installed by pyenv."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        candidates += sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "--version"], capture_output=True).returncode == 0:
            return candidate
    return None


def test_the_wheel_carries_conf_and_leaves_spark_to_an_extra(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for conf in (ROOT / "conf").glob("*.yml"):
            assert archive.read(f"lakehouse/conf/{conf.name}") == conf.read_bytes()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["Requires-Python"] == ">=3.11,<3.13"
    requires = metadata.get_all("Requires-Dist")
    spark = [r for r in requires if r.split("==")[0].split("[")[0] in ("pyspark", "delta-spark")]
    assert sorted(spark) == ['delta-spark==4.2.0; extra == "spark"',
                             'pyspark==4.1.1; extra == "spark"']
    # nothing else pulls Spark in: pandera's pyspark flavour is in the extra too
    assert 'pandera[pyspark]==0.35.0; extra == "spark"' in requires
    assert "pandera==0.35.0" in requires


@pytest.mark.parametrize("version", PYTHONS)
def test_installed_with_the_spark_extra_it_runs_contracts_from_its_own_conf(
        wheel: Path, tmp_path: Path, version: str, capsys: pytest.CaptureFixture) -> None:
    python = find_python(version)
    assert python, f"no Python {version} on this machine (PATH or pyenv)"
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet",
                              "--no-compile", f"{wheel}[spark]"],
                             capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LAKEHOUSE_", "PYTHON", "PYSPARK", "SPARK_", "VIRTUAL_ENV"))}
    # Run away from the checkout: only the installed package can be found.
    listed = subprocess.run([str(venv / "bin/lakehouse"), "contracts"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    probe = ("import sys, pyspark, lakehouse.config as c; "
             "print(c.default_conf_dir(), pyspark.__version__, sys.version_info[:2])")
    where = subprocess.run([str(venv / "bin/python"), "-c", probe], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    conf_dir, spark_version, python_version = where.stdout.split(maxsplit=2)
    assert Path(conf_dir).is_relative_to(venv) and conf_dir.endswith("lakehouse/conf")
    assert spark_version == "4.1.1"
    assert python_version.strip() == f"({', '.join(version.split('.'))})"
    # The same rules as the checkout's own `lakehouse contracts`, read from the same conf.
    assert main(["contracts"]) == 0
    assert listed.stdout == capsys.readouterr().out
