"""The table-name path of lakehouse.tables (catalog tables, as on Databricks' Unity Catalog)
against the session catalog: every other test names tables by path. Unity Catalog itself is
not reachable here; the session catalog runs the same saveAsTable/forName/table() calls."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import tables
from lakehouse.config import Config
from tests.conftest import make_config


@pytest.fixture()
def catalog_config(spark: SparkSession, tmp_path: Path) -> Iterator[Config]:
    """The test's config with silver_flights and audit named as catalog tables (dropped after)."""
    suffix = uuid.uuid4().hex[:8]
    names = {"silver_flights": f"default.lakehouse_flights_{suffix}",
             "audit": f"default.lakehouse_audit_{suffix}"}
    config = make_config(tmp_path, tables=names)
    try:
        yield config
    finally:
        for name in names.values():
            spark.sql(f"DROP TABLE IF EXISTS {name}")


def test_catalog_tables_take_idempotent_appends_tags_merges_and_properties(
        spark: SparkSession, catalog_config: Config) -> None:
    config = catalog_config
    assert not tables.exists(spark, config, "audit")
    # a missing table reads as None, not an error (forName raises on the catalog path)
    assert tables.version(spark, config, "audit") is None
    assert tables.detail(spark, config, "audit", with_version=True) is None
    assert tables.table_property(spark, config, "audit", "k") is None
    rows = spark.createDataFrame([(1, "a"), (2, "b")], "k int, v string")
    tables.append(rows, config, "audit", txn=("lakehouse-test", 0), tag="first")
    assert tables.exists(spark, config, "audit") and tables.version(spark, config, "audit") == 0
    # the same transaction again (a replayed micro-batch): Delta skips it
    tables.append(rows, config, "audit", txn=("lakehouse-test", 0), tag="again")
    assert tables.version(spark, config, "audit") == 0
    assert tables.read(spark, config, "audit").count() == 2
    tables.append(rows.limit(1), config, "audit", txn=("lakehouse-test", 1), tag="second")
    assert tables.read(spark, config, "audit").count() == 3
    tagged = tables.delta_table(spark, config, "audit").history().select(
        "version", "userMetadata").orderBy("version").collect()
    assert [(r[0], r[1]) for r in tagged] == [(0, "first"), (1, "second")]
    assert tables.read(spark, config, "audit", version=0).count() == 2

    # a MERGE, its change feed, and a table property (silver's reference state)
    tables.create(rows, config, "silver_flights")
    with pytest.raises(tables.CreatedMeanwhileError):
        tables.create(rows, config, "silver_flights")
    spark.sql(f"ALTER TABLE {config.table('silver_flights')} "
              "SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
    since = tables.version(spark, config, "silver_flights")
    assert since is not None
    changed = spark.createDataFrame([(2, "B"), (3, "c")], "k int, v string")
    metrics = tables.merge(spark, changed, config, "silver_flights", ["k"], tag="merged")
    assert (metrics["numTargetRowsUpdated"], metrics["numTargetRowsInserted"]) == ("1", "1")
    assert sorted(tuple(r) for r in tables.read(spark, config, "silver_flights").collect()) == [
        (1, "a"), (2, "B"), (3, "c")]
    feed = tables.read_changes(spark, config, "silver_flights", since + 1,
                               tables.version(spark, config, "silver_flights"))
    assert sorted((r["k"], r["_change_type"]) for r in feed.collect()) == [
        (2, "update_postimage"), (2, "update_preimage"), (3, "insert")]
    tables.update_columns(spark, config, "silver_flights",
                          spark.createDataFrame([(1, "A")], "k int, v string"), ["k"], ["v"])
    assert tables.read(spark, config, "silver_flights").filter(F.col("k") == 1).first()[1] == "A"
    tables.set_table_property(spark, config, "silver_flights", "lakehouse.test", "x'y")
    assert tables.table_property(spark, config, "silver_flights", "lakehouse.test") == "x'y"
    found = tables.detail(spark, config, "silver_flights", with_version=True)
    assert found is not None and found.version == tables.version(spark, config, "silver_flights")
    assert found.id == tables.table_id(spark, config, "silver_flights")
    assert tables.rows_unchanged(spark, config, "silver_flights",
                                 tables.version(spark, config, "silver_flights") - 1,
                                 tables.version(spark, config, "silver_flights"))


def test_only_a_table_not_there_reads_as_missing(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """Delta's 'not a Delta table' (a path or name holding none) reads as missing; another
    analysis error, e.g. Unity Catalog refusing the read, is raised, not taken for 'no table
    yet' (which would send a job down its first-run path)."""
    from pyspark.errors import AnalysisException

    from tests.conftest import make_config

    class Refused(AnalysisException):
        def __init__(self, condition: str) -> None:
            super().__init__(message=f"[{condition}] ...")
            self.condition = condition

        def getCondition(self) -> str:
            return self.condition

    config = make_config(tmp_path)
    for condition, missing in (("DELTA_MISSING_DELTA_TABLE", True),
                               ("TABLE_OR_VIEW_NOT_FOUND", True),
                               # another process creating it: its log not written yet
                               ("DELTA_TABLE_NOT_FOUND", True),
                               ("INSUFFICIENT_PERMISSIONS", False)):
        def refused(*args: object, condition: str = condition) -> None:
            raise Refused(condition)

        monkeypatch.setattr(tables, "delta_table", refused)
        for read in (tables.version, tables.detail, tables.table_id):
            if missing:
                assert read(None, config, "audit") is None  # type: ignore[arg-type]
            else:
                with pytest.raises(Refused):
                    read(None, config, "audit")  # type: ignore[arg-type]


def test_a_writes_counts_are_its_own_when_the_table_compacts_after_it(
        spark: SparkSession, config: Config) -> None:
    """Databricks compacts a table right after a MERGE (auto compaction, always on there;
    Delta's `autoCompact` here): the newest commit is then an OPTIMIZE, whose metrics were
    taken for the MERGE's (0 rows written in the audit, its version for the write's)."""
    name = "flight_features"
    spark.range(0, 100).selectExpr("id AS flight_id", "id * 2 AS v").repartition(4) \
        .write.format("delta").save(config.table(name))
    spark.sql(f"ALTER TABLE delta.`{config.table(name)}` SET TBLPROPERTIES "
              "('delta.autoOptimize.autoCompact' = 'true')")
    before = spark.conf.get("spark.databricks.delta.autoCompact.minNumFiles", None)
    spark.conf.set("spark.databricks.delta.autoCompact.minNumFiles", "2")
    try:
        source = spark.range(90, 130).selectExpr("id AS flight_id", "id * 3 AS v").repartition(3)
        metrics = tables.merge(spark, source, config, name, ["flight_id"])
        version, written = tables.last_commit(spark, config, name)
    finally:
        if before is None:
            spark.conf.unset("spark.databricks.delta.autoCompact.minNumFiles")
        else:
            spark.conf.set("spark.databricks.delta.autoCompact.minNumFiles", before)
    history = {r[0]: r[1] for r in tables.delta_table(spark, config, name).history()
               .select("version", "operation").collect()}
    assert history[max(history)] == "OPTIMIZE"  # the compaction happened, after the MERGE
    assert metrics == {"numTargetRowsInserted": "30", "numTargetRowsUpdated": "10",
                       "numTargetRowsDeleted": "0"}
    assert history[version] == "MERGE" and written["numTargetRowsInserted"] == "30"
    assert tables.read(spark, config, name).count() == 130
