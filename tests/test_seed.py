import json
from datetime import date
from pathlib import Path

import pytest

from lakehouse.seed import SeedError, seed


def test_seed_lands_daily_files_and_snapshots_once(tmp_path: Path) -> None:
    written = seed(tmp_path, date(2013, 1, 1), date(2013, 1, 2))
    assert written == {"flights": 2, "weather": 2, "planes": 1, "airports": 1, "airlines": 1}
    lines = (tmp_path / "flights" / "flights_2013-01-01.csv").read_text().splitlines()
    assert lines[0].startswith("year,month,day,dep_time")
    assert len(lines) - 1 == 842  # flights on 2013-01-01
    assert any(",NA," in line for line in lines)  # nulls as exported
    weather = [json.loads(x) for x in (tmp_path / "weather" / "weather_2013-01-02.jsonl").open()]
    assert weather[0]["origin"] == "EWR" and "wind_gust" in weather[0]
    assert any(w["wind_gust"] is None for w in weather)
    assert (tmp_path / "reference" / "planes" / "planes_2013-01-02.csv").exists()
    assert seed(tmp_path, date(2013, 1, 1), date(2013, 1, 2)) == {}  # idempotent


def test_seed_rejects_reversed_range(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match="--to 2013-01-01 is before --from 2013-01-05"):
        seed(tmp_path, date(2013, 1, 5), date(2013, 1, 1))
