from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse.cli import main


def test_contracts_lists_rules_with_table_level_and_action(capsys: pytest.CaptureFixture) -> None:
    assert main(["contracts"]) == 0
    out = capsys.readouterr().out
    assert "max quarantined share per rule before a batch halts: 5.0%" in out
    assert any(line.split()[:4] == ["flights", "distance_range", "row", "quarantine"]
               for line in out.splitlines())
    assert any(line.split()[:4] == ["weather", "wind_speed_plausible", "row", "warn"]
               for line in out.splitlines())
    assert any(line.split()[:4] == ["flights", "key_unique", "batch", "warn"]
               for line in out.splitlines())
    assert "passes when true or null: `distance` BETWEEN 1 AND 6000" in out
    # the time-zone rule's list of ~600 zones is named, not printed
    assert "tzone IN (the " in out and "'Europe/Paris'" not in out


def test_contracts_reads_the_conf_it_is_given(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    conf = Path(__file__).resolve().parent.parent / "conf"
    for name in ("base.yml", "local.yml"):
        (tmp_path / name).write_text((conf / name).read_text())
    base = tmp_path / "base.yml"
    assert "max_quarantine_share: 0.05" in base.read_text()
    base.write_text(base.read_text().replace("max_quarantine_share: 0.05",
                                             "max_quarantine_share: 0.01"))
    assert main(["contracts", "--conf-dir", str(tmp_path)]) == 0
    assert "before a batch halts: 1.0%" in capsys.readouterr().out


def test_the_console_entry_point_exits_with_the_failure_code(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A Databricks wheel task calls the entry point itself: a failure must end the process
    with a non-zero code, not return one; success returns."""
    from lakehouse.cli import entry

    monkeypatch.setattr("sys.argv", ["lakehouse", "contracts", "--env", "nope"])
    with pytest.raises(SystemExit) as exited:
        entry()
    assert exited.value.code == 2
    assert "unknown env 'nope'" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["lakehouse", "contracts"])
    assert entry() is None


def test_the_catalog_flag_names_the_unity_catalog_catalog(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """On an interactive cluster nothing sets $LAKEHOUSE_CATALOG: --catalog gives it (the
    Databricks conf has no default catalog, so a command naming none fails, naming it)."""
    monkeypatch.delenv("LAKEHOUSE_CATALOG", raising=False)
    assert main(["contracts", "--env", "databricks"]) == 2
    assert "${catalog}, which is not set" in capsys.readouterr().err
    assert main(["contracts", "--env", "databricks", "--catalog", "lakehouse_dev"]) == 0
    assert "before a batch halts" in capsys.readouterr().out


def test_bad_date_is_rejected_naming_the_value(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["seed", "--from", "2013-02-30", "--to", "2013-03-01"])
    assert "expected a date as YYYY-MM-DD, got '2013-02-30'" in capsys.readouterr().err


def test_status_before_any_run_says_so(spark: SparkSession, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(tmp_path))
    assert main(["status"]) == 0
    assert "no audit table yet" in capsys.readouterr().out


def test_seed_then_status_shows_bronze_audit_rows(spark: SparkSession, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    from lakehouse.config import load_config
    from lakehouse.stages import bronze

    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(tmp_path))
    assert main(["seed", "--from", "2013-01-01", "--to", "2013-01-01"]) == 0
    bronze.run(spark, load_config("local"), "run-cli")
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "bronze_flights" in out and "run-cli" in out and "842" in out


def test_a_bronze_run_needs_no_model_registry_and_a_report_survives_one_it_cannot_read(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A data stage's report does not touch MLflow (on Databricks the experiment's folder may
    not exist yet); after a model stage an unreadable registry is named in the report, not
    turned into a failure of the committed run."""
    from lakehouse import registry, workflow
    from lakehouse.config import load_config

    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    # nothing listens on port 1: any MLflow call fails
    monkeypatch.setattr(registry, "_USER_TRACKING_URI", "http://127.0.0.1:1")
    assert main(["seed", "--from", "2013-01-01", "--to", "2013-01-01"]) == 0
    capsys.readouterr()
    assert main(["run", "bronze"]) == 0
    out = capsys.readouterr().out
    assert "bronze_flights" in out and "champion" not in out and "MLflow UI" not in out
    text = workflow.report(spark, load_config("local"), {"run_id": "r", "train": None})
    assert "champion: not read from http://127.0.0.1:1" in text


def test_a_data_root_on_object_storage_gets_clear_errors_not_local_folders_named_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """With LAKEHOUSE_DATA_ROOT=s3a://...: seed refuses to write a local folder named
    's3a:', the SQLite MLflow store the conf derives from the root is refused naming what to
    set, and an s3a:// artifact location reaches MLflow as s3://."""
    from lakehouse import registry
    from lakehouse.config import load_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", "s3a://bucket/lakehouse")
    assert main(["seed", "--from", "2013-01-01", "--to", "2013-01-01"]) == 2
    assert "landing 's3a://bucket/lakehouse/landing' is a URL" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(registry, "_USER_TRACKING_URI", None)
    with pytest.raises(registry.RegistryConfigError, match="set MLFLOW_TRACKING_URI"):
        registry.configure(load_config("local"))
    assert list(tmp_path.iterdir()) == []
    assert registry._as_uri("s3a://bucket/lakehouse/mlruns") == "s3://bucket/lakehouse/mlruns"
    # dbfs:/ is a URL too; file: URIs (one slash or three) and plain paths are local
    from lakehouse.seed import SeedError, local_dir

    with pytest.raises(SeedError, match="'dbfs:/lake/landing' is a URL"):
        local_dir("dbfs:/lake/landing", "landing")
    assert local_dir("file:/data/landing", "landing") == Path("/data/landing")
    assert local_dir("file:///data/landing", "landing") == Path("/data/landing")
    assert local_dir("data/landing", "landing") == Path("data/landing")
    assert registry._as_uri("abfss://c@a.dfs.core.windows.net/x") == (
        "abfss://c@a.dfs.core.windows.net/x")


def test_accepting_lost_events_is_refused_beside_any_job_but_one_bronze_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from lakehouse import workflow
    from lakehouse.config import load_config

    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(tmp_path))
    for argv in (["run", "daily"], ["run", "gold"], ["run", "bronze", "--continuous"]):
        assert main([*argv, "--accept-lost-events"]) == 2  # before any session starts
        assert "--accept-lost-events goes with `lakehouse run bronze`" in capsys.readouterr().err
    with pytest.raises(ValueError, match="for the bronze job, run once on its own, not the "
                                         "'daily' job"):  # notebooks and jobs call it so
        workflow.run_job(None, load_config("local"), "daily",  # type: ignore[arg-type]
                         accept_lost_events=True)
    assert list(tmp_path.iterdir()) == []


def test_flags_that_would_be_ignored_or_fail_late_are_refused_before_a_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`run train --train never` registered a model all the same, `--stages` beside a single
    job was ignored, and a --from after --to or an unknown stage failed only after the JVM
    (and, for the dates, bronze, silver and gold) had run."""
    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(tmp_path))
    refused = {("run", "train", "--train", "never"): "--train and --stages go with `lakehouse "
                                                     "run daily`, not the 'train' job",
               ("run", "score", "--stages", "score"): "not the 'score' job",
               ("run", "silver", "--full"): "--full rebuilds gold",
               ("run", "gold", "--continuous"): "--continuous runs the bronze job only",
               ("run", "train", "--from", "2013-11-01"): "not the 'train' job's",
               ("run", "gold", "--to", "2013-11-01"): "not the 'gold' job's",
               ("run", "monitor", "--from", "2013-11-01", "--to", "2013-11-02"):
                   "`run monitor` monitors the day --to names",
               ("run", "daily", "--from", "2013-12-31", "--to", "2013-11-01"):
                   "--from 2013-12-31 is after --to 2013-11-01",
               ("run", "daily", "--stages", "bronze,scoring"): "unknown stage 'scoring'"}
    for argv, reason in refused.items():
        assert main(list(argv)) == 2, argv
        assert reason in capsys.readouterr().err, argv
    assert list(tmp_path.iterdir()) == []  # no session, nothing written
