"""Gold stage: rebuild the point-in-time feature table and the route KPIs from silver."""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession

from lakehouse import tables
from lakehouse.config import Config
from lakehouse.features import FeatureSettings, flight_features, route_daily_kpis
from lakehouse.stages.audit import audited


def run(spark: SparkSession, config: Config, run_id: str) -> list[dict[str, Any]]:
    """Overwrite gold.flight_features and gold.route_daily_kpis (deterministic, so idempotent)."""
    settings = FeatureSettings.from_conf(config.section("gold"))
    version_read = tables.version(spark, config, "silver_flights")
    flights = tables.read(spark, config, "silver_flights", version=version_read)
    weather = tables.read(spark, config, "silver_weather")
    planes = tables.read(spark, config, "silver_planes")
    outputs = {"flight_features": flight_features(flights, weather, planes, settings),
               "route_daily_kpis": route_daily_kpis(flights, settings)}
    results = []
    for name, frame in outputs.items():
        with audited(spark, config, run_id, "gold", name) as audit:
            tables.overwrite(frame, config, name)
            written = tables.version(spark, config, name)
            metrics = tables.last_operation_metrics(spark, config, name)
            audit.update(version_read=version_read, version_written=written,
                         rows_out=int(metrics.get("numOutputRows", 0)))
            results.append(dict(audit))
    return results
