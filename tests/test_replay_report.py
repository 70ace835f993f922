"""The replay's text report, its picture's thresholds and the command's exit code (no Spark:
the report and the picture are built from rows)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
from matplotlib.axes import Axes

from lakehouse import cli
from lakehouse.replay_report import (
    DayOutcome,
    DriftRule,
    champion_rows,
    picture,
    report,
    series,
    top_drifting,
)

DAYS = [date(2013, 11, 1), date(2013, 11, 2), date(2013, 11, 3)]


def row(day: date, metric: str, subject: str, value: float, window: str = "day") -> dict[str, Any]:
    return {"monitored_date": day, "role": "champion", "window": window, "metric": metric,
            "subject": subject, "value": value}


def outcomes() -> list[DayOutcome]:
    alert = {"rule": "feature_drift", "message": "mean_shift of pressure = -2.51"}
    retrained = {"version": "3", "family": "newton_gbt", "alias": "champion", "promoted": True,
                 "decision": "AUC-ROC 0.7600 >= 0.7500 + 0.002"}
    return [DayOutcome(DAYS[0], "2", {"score": "succeeded", "monitor": "succeeded"}),
            DayOutcome(DAYS[1], "2", {"score": "succeeded", "monitor": "failed"}, [alert]),
            DayOutcome(DAYS[2], "3", {"score": "succeeded", "train": "succeeded"}, [],
                       retrained)]


def test_the_report_counts_failures_alerts_retrainings_and_champions() -> None:
    text = report(outcomes(), Path("replay.png"), 125.0).splitlines()
    assert text == [
        "replayed 3 day(s) 2013-11-01..2013-11-03 in 2.1 min",
        "tasks failed: 1 [(datetime.date(2013, 11, 2), 'monitor')]",
        "alerts raised: 1",
        "  2013-11-02 feature_drift: mean_shift of pressure = -2.51",
        "retrainings: 1",
        "  2013-11-03 v3 (newton_gbt) -> @champion: AUC-ROC 0.7600 >= 0.7500 + 0.002",
        "champion over time:",
        "  v2 2013-11-01..2013-11-03",
        "  v3 2013-11-03..2013-11-03",
        "picture: replay.png"]


def test_the_picture_draws_a_mean_shift_threshold_on_both_sides_and_the_rules_features(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mean shift alerts at |x| >= 2 (colder or warmer): a feature at -2.5 must not look
    below the line; a rule watching named features plots those."""
    lines: list[tuple[float, Any]] = []
    real = Axes.axhline

    def recorded(ax: Axes, y: float = 0, *args: Any, **kwargs: Any) -> Any:
        lines.append((y, kwargs.get("label")))
        return real(ax, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "axhline", recorded)
    rows = [row(d, "mean_shift", "origin_day_departures", -2.5 + i) for i, d in enumerate(DAYS)]
    rows += [row(d, "mean_shift", "pressure", 0.5) for d in DAYS]
    rows += [row(d, "psi", "prediction", 0.05) for d in DAYS]
    rows += [row(d, "auc_roc", "", 0.74, w) for d in DAYS for w in ("day", "trailing")]
    path = picture(rows, outcomes(), tmp_path / "replay.png",
                   DriftRule("mean_shift", 2.0), DriftRule("psi", 0.2))
    assert path.stat().st_size > 10_000
    assert [y for y, _ in lines] == [2.0, -2.0, 0.2]
    assert [label for _, label in lines] == ["alert at |x| >= 2.0", None, "alert at >= 0.2"]
    assert top_drifting(rows, "mean_shift") == ["origin_day_departures", "pressure"]
    assert top_drifting(rows, "mean_shift", features=("pressure",)) == ["pressure"]


def test_the_picture_plots_one_champion_a_day_around_a_promotion() -> None:
    """On the promotion day both the replaced champion (monitored that day: its values raised
    the day's alerts) and the new one (scoring it again) hold champion rows: the one in place
    when the day began is plotted, one value a day; a day the replay did not record keeps the
    oldest version (9 before 10)."""
    def of(day: date, version: str, value: float) -> dict[str, Any]:
        return {**row(day, "auc_roc", "", value), "model_version": version}

    later = date(2013, 11, 4)
    rows = [of(DAYS[0], "2", 0.70), of(DAYS[1], "2", 0.71), of(DAYS[2], "2", 0.72),
            of(DAYS[2], "3", 0.75), of(later, "10", 0.77), of(later, "9", 0.60)]
    assert series(champion_rows(rows, outcomes()), "day", "auc_roc") == [
        (DAYS[0], 0.70), (DAYS[1], 0.71), (DAYS[2], 0.72), (later, 0.60)]
    # a day recorded after the promotion: the new champion's
    assert series(champion_rows([of(later, "2", 0.7), of(later, "3", 0.8)], [
        *outcomes(), DayOutcome(later, "3", {})]), "day", "auc_roc") == [(later, 0.8)]


def test_replay_exits_non_zero_when_a_task_failed(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import lakehouse.replay
    import lakehouse.session

    monkeypatch.setattr(lakehouse.session, "build_session", lambda config: None)
    for failures, code in ((1, 1), (0, 0)):
        monkeypatch.setattr(lakehouse.replay, "replay",
                            lambda *args, n=failures: ("the report", Path("p.png"), n))
        assert cli.main(["replay", "--from", "2013-11-01", "--to", "2013-11-02"]) == code
        assert "the report" in capsys.readouterr().out


def test_replay_refuses_a_champion_trained_on_the_days_it_would_replay(tmp_path: Path) -> None:
    """A data root whose registry holds a champion (a `make run`'s, an earlier replay's) is
    replayed with it, unless that model was fitted on the replayed days: refused before
    anything is landed."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from lakehouse import registry
    from lakehouse.replay import ReplayError, check_champion, replay
    from tests.conftest import make_config

    config = make_config(tmp_path)
    name = registry.configure(config)["model_name"]
    check_champion(config, DAYS[0])  # no champion: one is trained
    client = MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_param("window_train_to", "2013-11-01")
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model",
                                          run_id=run.info.run_id)
    client.set_registered_model_alias(name, registry.CHAMPION, version.version)
    with pytest.raises(ReplayError, match=rf"{name}@champion is version 1, trained on days up "
                                          r"to 2013-11-01, not before --from 2013-11-01"):
        replay(None, config, DAYS[0], DAYS[-1])  # type: ignore[arg-type]
    assert not any((tmp_path / "landing").rglob("*.csv"))  # nothing landed
    check_champion(config, DAYS[1])  # trained on the days before: replayed with it


def test_each_replayed_day_scores_and_monitors_from_latest(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each day runs the daily workflow from `latest` to the day, as a scheduled run: a day
    whose score or monitor task failed past its retries is caught up by the next day's run
    (`workflow.resolved`'s catch-up, tested in test_monitoring), not left out of the
    predictions, the monitoring and every trailing window after it."""
    from types import SimpleNamespace

    import lakehouse.replay as replay_module
    from lakehouse.monitoring import end_of_day
    from tests.conftest import make_config

    calls: list[tuple[tuple[str, str], Any]] = []
    catch_up: list[int] = []
    failing = {date(2013, 11, 1): "failed", date(2013, 11, 3): "failed",
               date(2013, 11, 4): "upstream_failed"}

    def run_daily(spark: Any, config: Any, score_range: tuple[str, str],
                  as_of: Any = None) -> dict[str, Any]:
        calls.append((score_range, as_of))
        catch_up.append(config.section("score")["catch_up_days"])
        day = date.fromisoformat(score_range[1])
        return {"tasks": {"score": SimpleNamespace(status=failing.get(day, "succeeded"))}}

    for name, value in {"check_champion": lambda config, start: None,
                        "bootstrap": lambda spark, config, start: None,
                        "seed": lambda *args: None,
                        "champion_version": lambda config: "1",
                        "recorded_alerts": lambda *args: {},
                        "picture": lambda *args: None}.items():
        monkeypatch.setattr(replay_module, name, value)
    monkeypatch.setattr(replay_module.workflow, "run_daily", run_daily)
    monkeypatch.setattr(replay_module.tables, "exists", lambda *args: False)
    _, _, failures = replay_module.replay(None, make_config(tmp_path),  # type: ignore[arg-type]
                                          date(2013, 11, 1), date(2013, 11, 5))
    assert failures == 2  # the failed tasks (the one stopped by one is not counted)
    # from the replay's first day until a day scored (`latest` would start at the day itself
    # while nothing was scored), then `latest`
    assert calls == [((first, f"2013-11-0{d}"), end_of_day(date(2013, 11, d), "America/New_York"))
                     for first, d in (("2013-11-01", 1), ("2013-11-01", 2), ("latest", 3),
                                      ("latest", 4), ("latest", 5))]
    # caught up no further back than the replay's first day (a data root an earlier run
    # scored holds days before it): conf's 7 days, cut to the days replayed so far
    assert catch_up == [1, 2, 3, 4, 5]
