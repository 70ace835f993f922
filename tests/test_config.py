from pathlib import Path

import pytest

from lakehouse.config import ConfigError, deep_merge, load_config


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


def test_unknown_env_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown env 'prod'.*'cluster'.*'local'"):
        load_config("prod")


def test_unknown_table_lists_configured_tables(tmp_path: Path) -> None:
    config = load_config("local", overrides={"data_root": str(tmp_path)})
    with pytest.raises(ConfigError, match="unknown table 'gold_flights'.*silver_flights"):
        config.table("gold_flights")


def test_deep_merge_keeps_untouched_nested_keys() -> None:
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": None}, {"a": {"c": 3}, "d": {"e": 4}})
    assert merged == {"a": {"b": 1, "c": 3}, "d": {"e": 4}}
