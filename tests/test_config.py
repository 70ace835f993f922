import os
from pathlib import Path

import pytest

from lakehouse.config import ConfigError, deep_merge, default_conf_dir, load_config


def test_env_overlays_base_and_resolves_data_root(tmp_path: Path) -> None:
    config = load_config("local", overrides={"data_root": str(tmp_path)})
    assert config.table("silver_flights") == f"{tmp_path}/delta/silver/flights"
    assert config.section("mlflow")["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert config.section("spark")["conf"]["spark.ui.enabled"] == "false"  # from local.yml
    assert config.section("spark")["conf"]["spark.sql.session.timeZone"] == "UTC"  # from base


def test_data_root_env_variable_wins_over_conf(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert load_config("local").landing == f"{tmp_path}/elsewhere/landing"


def test_a_landing_folder_spark_would_read_as_a_glob_pattern_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spark's file sources (the landing listings, the file stream) read their folder as a
    pattern: a landing folder holding a glob character fails at load, naming it, the character
    and the data root it lies in (and where that came from), instead of reading nothing or
    another folder's files. Delta paths and checkpoints are not patterns: such a data root
    with the landing folder elsewhere loads."""
    monkeypatch.delenv("LAKEHOUSE_DATA_ROOT", raising=False)
    for name, char in (("root [1]", "["), ("root{a,b}", "{"), ("r*", "*"), ("r?", "?")):
        root = str(tmp_path / name)
        with pytest.raises(ConfigError) as refused:
            load_config("local", overrides={"data_root": root})
        assert str(refused.value).endswith(
            f"landing = '{root}/landing' (in data_root '{root}') holds '{char}', a glob "
            "character Spark's file sources would read as a pattern; choose a folder without "
            "any of { } [ ] * ? \\")
    with pytest.raises(ConfigError, match=r": landing = '/x/land\\\\ing' holds '\\\\'"):
        load_config("local", overrides={"data_root": str(tmp_path), "landing": "/x/land\\ing"})
    # the data root named as coming from the variable only when it does
    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(tmp_path / "a*"))
    with pytest.raises(ConfigError, match=r"\(in data_root '.*/a\*', from \$LAKEHOUSE_DATA_ROOT\)"):
        load_config("local")
    monkeypatch.setenv("LAKEHOUSE_DATA_ROOT", str(tmp_path / "clean"))
    with pytest.raises(ConfigError, match=r"\(in data_root '.*/b\?'\) holds"):
        load_config("local", overrides={"data_root": str(tmp_path / "b?")})
    monkeypatch.delenv("LAKEHOUSE_DATA_ROOT")
    elsewhere = load_config("local", overrides={"data_root": str(tmp_path / "r[1]"),
                                                "landing": str(tmp_path / "landing")})
    assert elsewhere.table("silver_flights") == f"{tmp_path}/r[1]/delta/silver/flights"
    config = load_config("local", overrides={"data_root": str(tmp_path / "root (1) #a,b")})
    assert config.landing.endswith("root (1) #a,b/landing")  # not glob characters


def test_unknown_env_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown env 'prod'.*'cluster'.*'local'"):
        load_config("prod")


def test_unknown_table_lists_configured_tables(tmp_path: Path) -> None:
    config = load_config("local", overrides={"data_root": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"unknown table 'gold_flights'.*silver_flights"):
        config.table("gold_flights")


def test_deep_merge_keeps_untouched_nested_keys() -> None:
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": None}, {"a": {"c": 3}, "d": {"e": 4}})
    assert merged == {"a": {"b": 1, "c": 3}, "d": {"e": 4}}


def test_catalog_placeholder_names_unity_catalog_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKEHOUSE_DATA_ROOT", raising=False)
    monkeypatch.delenv("LAKEHOUSE_CATALOG", raising=False)
    # no default catalog: a notebook on an interactive cluster (where the bundle's job-cluster
    # variable is not set) must not write to the prod target's catalog by default
    with pytest.raises(ConfigError, match=r"uses \$\{catalog\}, which is not set.*"
                                          r"\$LAKEHOUSE_CATALOG"):
        load_config("databricks")
    assert load_config("databricks", catalog="lakehouse").table("audit") == "lakehouse.ops.audit"
    monkeypatch.setenv("LAKEHOUSE_CATALOG", "dev_jane")
    config = load_config("databricks")
    assert config.table("silver_flights") == "dev_jane.silver.flights"
    assert config.landing == "/Volumes/dev_jane/ops/files/landing"
    assert config.section("mlflow")["model_name"] == "dev_jane.ml.flight_disruption"
    # a notebook's catalog widget wins over the variable; empty, it does not
    assert load_config("databricks", catalog="dev_joe").table("audit") == "dev_joe.ops.audit"
    assert load_config("databricks", catalog="").table("audit") == "dev_jane.ops.audit"


def test_spark_models_go_through_the_volume_not_the_dbfs_root_on_databricks(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """MLflow's Spark flavor saves and loads models through MLFLOW_DFS_TMP, /tmp/mlflow by
    default: the DBFS root on Databricks, refused by shared and serverless compute and absent
    where a workspace disabled it. With the data root in a volume, a folder of it is used."""
    from lakehouse.registry import spark_models_through_volume

    monkeypatch.delenv("LAKEHOUSE_DATA_ROOT", raising=False)
    # set, then removed: monkeypatch records it, so what the function sets is undone after
    # (delenv of an unset variable records nothing, and the value would leak to later tests)
    monkeypatch.setenv("MLFLOW_DFS_TMP", "unset")
    monkeypatch.delenv("MLFLOW_DFS_TMP")
    assert spark_models_through_volume(load_config("local", overrides={
        "data_root": str(tmp_path)})) is None
    assert "MLFLOW_DFS_TMP" not in os.environ
    databricks = load_config("databricks", catalog="dev_jane")
    assert spark_models_through_volume(databricks) == "/Volumes/dev_jane/ops/files/tmp/mlflow"
    assert os.environ["MLFLOW_DFS_TMP"] == "/Volumes/dev_jane/ops/files/tmp/mlflow"
    monkeypatch.setenv("MLFLOW_DFS_TMP", "/Volumes/x/y/z/mine")  # the user's own wins
    assert spark_models_through_volume(databricks) is None
    assert os.environ["MLFLOW_DFS_TMP"] == "/Volumes/x/y/z/mine"


def test_model_copies_mlflow_leaves_in_the_volume_are_swept_after_two_days(
        tmp_path: Path) -> None:
    """mlflow.spark.load_model on Databricks copies the model into a UUID-named folder of
    MLFLOW_DFS_TMP and never removes it: copies whose files last changed longer ago than the
    time kept (two days in the jobs; a second here) go; a copy just made (copy2 keeps its
    source's modification time, not its status change time), one still being written, and
    anything not named by a UUID stay."""
    import shutil
    import time
    import uuid
    from datetime import timedelta

    from lakehouse.registry import MODEL_COPIES_KEPT, sweep_model_copies

    assert MODEL_COPIES_KEPT == timedelta(days=2)
    assert sweep_model_copies(str(tmp_path / "missing")) == 0
    old, written, empty, copied, recent = (tmp_path / str(uuid.uuid4()) for _ in range(5))
    mine = tmp_path / "notes"
    for folder in (old, written, mine):
        (folder / "stages").mkdir(parents=True)
        (folder / "stages" / "part-0").write_text("x")
    empty.mkdir()
    time.sleep(1.5)
    (written / "stages" / "part-1").write_text("x")  # a copy still being written
    copied.mkdir()
    shutil.copy2(old / "stages" / "part-0", copied / "part-0")
    (recent / "stages").mkdir(parents=True)
    (recent / "stages" / "part-0").write_text("x")
    assert sweep_model_copies(str(tmp_path), kept=timedelta(seconds=1)) == 2
    assert not old.exists() and not empty.exists()
    assert all(p.exists() for p in (written, copied, recent, mine))


def test_a_placeholder_nothing_sets_is_named(tmp_path: Path) -> None:
    (tmp_path / "base.yml").write_text("tables:\n  audit: ${catalog}.ops.audit\n")
    (tmp_path / "uc.yml").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"tables.audit = '\$\{catalog\}.ops.audit' uses "
                                          r"\$\{catalog\}, which is not set"):
        load_config("uc", conf_dir=tmp_path)


def test_conf_dir_comes_from_the_wheel_when_there_is_no_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lakehouse.config as module

    package = tmp_path / "site-packages" / "lakehouse"
    (package / "conf").mkdir(parents=True)
    monkeypatch.delenv("LAKEHOUSE_CONF_DIR", raising=False)
    monkeypatch.setattr(module, "__file__", str(package / "config.py"))
    assert default_conf_dir() == package / "conf"
    (package / "conf").rmdir()  # a source checkout: conf/ beside the package
    assert default_conf_dir() == tmp_path / "site-packages" / "conf"
    monkeypatch.setenv("LAKEHOUSE_CONF_DIR", str(tmp_path / "mine"))
    assert default_conf_dir() == tmp_path / "mine"


def test_bad_train_silver_and_bronze_values_are_named() -> None:
    """Values that would switch a limit off or mislead later are refused where conf is read,
    each naming its key: a share written as a percentage, a quoted "false", a budget of 0, a
    family list written as one string, a boolean where a range is expected."""
    from lakehouse.contracts import contracts
    from lakehouse.stages.bronze import sources
    from lakehouse.training import TrainSettings
    from lakehouse.tuning import SearchSpaceError, search_space

    config = load_config("local")
    train, silver = config.section("train"), config.section("silver")
    TrainSettings.from_conf(train)  # the shipped conf passes
    contracts(silver)
    for key, bad, expected in (("max_evals", 0, "a whole number >= 1"),
                               ("early_stop_trials", 0, "a whole number >= 1"),
                               ("parallelism", -3, "a whole number >= 1"),
                               ("timeout_seconds", 0, "a number > 0"),
                               ("seed", "42", "a whole number >= 0"),
                               ("families", "gbt", "a list of names"),
                               ("class_weighting", "none", "a list of names")):
        with pytest.raises(ConfigError, match=rf"train\.{key}: expected {expected}, got"):
            TrainSettings.from_conf({**train, key: bad})
    with pytest.raises(ConfigError, match=r"train\.max_evals: missing"):
        TrainSettings.from_conf({k: v for k, v in train.items() if k != "max_evals"})
    # a misspelt key would silently be its default (a margin of 0, no early stop)
    with pytest.raises(ConfigError, match=r"train: unknown settings \['promotion_margn'\]"):
        TrainSettings.from_conf({**train, "promotion_margn": 0.01})
    for bad in (-0.01, "0.01", True, 1.5):
        with pytest.raises(ConfigError, match=r"train\.promotion_margin: expected"):
            TrainSettings.from_conf({**train, "promotion_margin": bad})
    assert TrainSettings.from_conf({**train, "promotion_margin": 0.01}).promotion_margin == 0.01
    for spec in (True, [True, False]):
        with pytest.raises(SearchSpaceError, match=r"gbt\.maxDepth"):
            search_space(["gbt"], {"gbt": {"maxDepth": spec}}, ["none"])
    for key, bad in (("max_quarantine_share", 5), ("max_tailnum_null_share", "5%"),
                     ("min_rows_share_of_recent", -0.1), ("max_quarantine_share", None),
                     ("min_quarantined_to_halt", 0), ("min_quarantined_to_halt", "10")):
        with pytest.raises(ConfigError, match=rf"silver\.{key}: "):
            contracts({**silver, key: bad})
    contracts({**silver, "max_quarantine_share": 0})  # 0: halt on any quarantined row
    with pytest.raises(ConfigError, match=r"silver\.max_wind_speed_mph: expected a number > 0"):
        contracts({**silver, "max_wind_speed_mph": -1})
    events = config.values["bronze"]["events"]["flight_events"]
    quoted = load_config("local", overrides={"bronze": {"events": {"flight_events": {
        **events, "enabled": "false"}}}})
    with pytest.raises(ConfigError, match=r"bronze\.events\.flight_events\.enabled: expected "
                                          r"true or false, got 'false'"):
        sources(quoted)
    assert {s.kind for s in sources(config)} == {"files"}  # events are off in the shipped conf


def test_the_logged_conf_leaves_secrets_out_and_keeps_what_lineage_needs() -> None:
    """conf/resolved.json is readable by whoever reads the experiment: settings that hold a
    secret (by Spark's, Hadoop's and Kafka's names for them), a URL's user:password and its
    query's secrets are redacted; an `env:NAME` value, counts, and an abfss:// location whose
    `container@` is no credential are kept as they are."""
    from lakehouse.lineage import REDACTED, redacted

    conf = {
        "data_root": "abfss://lakehouse@myacct.dfs.core.windows.net/lh",
        "monitor": {"webhook_url": "https://hooks.example.com/services/T/B/s3cr3t",
                    "webhook_retries": 3},
        "mlflow": {"tracking_uri": "https://me:pw@mlflow.example.com/?token=abc&x=1"},
        "spark": {"conf": {"spark.hadoop.fs.azure.account.key.a.dfs.core.windows.net": "K==",
                           "spark.hadoop.fs.s3a.secret.key": "S", "spark.hadoop.fs.s3a.access.key":
                           "AKIA", "spark.sql.shuffle.partitions": "4"}},
        "sources": [{"options": {"kafka.sasl.jaas.config": 'x password="p";',
                                 "kafka.ssl.key.password": 1234,
                                 "kafka.bootstrap.servers": "broker:9092"},
                     "client_options": {"sasl.password": "env:KAFKA_PASSWORD"}}],
        "train": {"seed": 42, "partitions": 2},
    }
    logged = redacted(conf)
    assert logged["data_root"] == conf["data_root"]
    assert logged["monitor"] == {"webhook_url": REDACTED, "webhook_retries": 3}
    assert logged["mlflow"]["tracking_uri"] == (f"https://{REDACTED}@mlflow.example.com/"
                                                f"?token={REDACTED}&x=1")
    spark_conf = logged["spark"]["conf"]
    assert spark_conf["spark.sql.shuffle.partitions"] == "4"
    assert {v for k, v in spark_conf.items() if k != "spark.sql.shuffle.partitions"} == {REDACTED}
    options = logged["sources"][0]["options"]
    assert options == {"kafka.sasl.jaas.config": REDACTED, "kafka.ssl.key.password": REDACTED,
                       "kafka.bootstrap.servers": "broker:9092"}
    assert logged["sources"][0]["client_options"] == {"sasl.password": "env:KAFKA_PASSWORD"}
    assert logged["train"] == conf["train"]
    assert "s3cr3t" not in str(logged) and "K==" not in str(logged) and "pw@" not in str(logged)


def test_the_logged_conf_redacts_a_urls_user_part_and_query_secrets_and_whole_values() -> None:
    from lakehouse.lineage import REDACTED, redacted

    urls = {"https://ghp_T0KEN@github.com/org/repo": f"https://{REDACTED}@github.com/org/repo",
            "redis://:s3cret@cache:6379": f"redis://{REDACTED}@cache:6379",
            "https://user:p@ss@host/x": f"https://{REDACTED}@host/x",
            "wasbs://container:KEY@acct.blob.core.windows.net/x":
                f"wasbs://{REDACTED}@acct.blob.core.windows.net/x",
            "abfss://lake@acct.dfs.core.windows.net/lh": "abfss://lake@acct.dfs.core.windows.net/lh",
            "s3://b/k?X-Amz-Signature=ab&X-Amz-Credential=cd&part=1":
                f"s3://b/k?X-Amz-Signature={REDACTED}&X-Amz-Credential={REDACTED}&part=1",
            "https://h/?access_token=t&client_secret=s&api-key=k&page=2":
                f"https://h/?access_token={REDACTED}&client_secret={REDACTED}"
                f"&api-key={REDACTED}&page=2"}
    assert {u: redacted(u) for u in urls} == urls
    # a secret-named setting's whole value, whatever its type
    assert redacted({"credentials": {"user": "u", "pass": "p"}, "api_keys": ["a", "b"],
                     "ssl.key.pem": "-----BEGIN", "x-api-key": "k", "retries": 3}) == {
        "credentials": REDACTED, "api_keys": REDACTED, "ssl.key.pem": REDACTED,
        "x-api-key": REDACTED, "retries": 3}
