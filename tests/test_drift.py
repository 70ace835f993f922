"""Drift statistics: known values by hand, the textbook shift, the special bins, one Spark pass."""

from __future__ import annotations

import math
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType
from scipy.stats import norm

from lakehouse.drift import (
    NULL,
    OTHER,
    DriftInputError,
    FeatureReference,
    bin_counts,
    drift,
    js_distance,
    psi,
    reference,
    references_from_json,
    references_to_json,
)

SCHEMA = StructType([StructField("day", StringType()), StructField("x", DoubleType()),
                     StructField("y", DoubleType()), StructField("carrier", StringType())])


def small_frame(spark: SparkSession) -> DataFrame:
    rows = [("d1", float(i), float(i % 3) if i % 5 else None, "AA" if i % 2 else "UA")
            for i in range(100)]
    return spark.createDataFrame(rows, SCHEMA)


def test_identical_distributions_give_zero(spark: SparkSession) -> None:
    df = small_frame(spark)
    refs = reference(df, ["x", "y"], ["carrier"])
    results = drift(bin_counts(df, refs, ["day"]).collect(), refs, ["day"])
    assert [(r["day"], r["feature"], r["rows"]) for r in results] == [
        ("d1", "x", 100), ("d1", "y", 100), ("d1", "carrier", 100)]
    assert all(r["psi"] == 0.0 and r["js_distance"] == 0.0 for r in results)
    assert psi(np.array([0.2, 0.3, 0.5]), np.array([20, 30, 50])) == 0.0


def test_hand_computed_values() -> None:
    e, a = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    by_hand = 0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5)
    assert by_hand == pytest.approx(0.8789, abs=5e-5)
    assert psi(e, a) == pytest.approx(by_hand, rel=1e-12)
    # Jensen-Shannon divergence in bits against the mixture m = (0.7, 0.3), then its root.
    kl_e = 0.5 * math.log2(0.5 / 0.7) + 0.5 * math.log2(0.5 / 0.3)
    kl_a = 0.9 * math.log2(0.9 / 0.7) + 0.1 * math.log2(0.1 / 0.3)
    assert js_distance(e, a) == pytest.approx(math.sqrt((kl_e + kl_a) / 2), rel=1e-12)
    assert js_distance(e, a) == pytest.approx(0.38314, abs=5e-6)
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    # An empty bin on one side: finite thanks to the floor, (0.5 - 1e-4) * ln(0.5 / 1e-4) + ...
    floored = psi(np.array([1.0, 0.0]), np.array([0.5, 0.5]))
    assert floored == pytest.approx((0.5 - 1.0) * math.log(0.5 / 1.0)
                                    + (0.5 - 1e-4) * math.log(0.5 / 1e-4), rel=1e-9)


def test_bad_distributions_are_named() -> None:
    with pytest.raises(DriftInputError, match="expected has 2 bins, actual 3"):
        psi(np.array([0.5, 0.5]), np.array([0.2, 0.3, 0.5]))
    with pytest.raises(DriftInputError, match="positive sum"):
        js_distance(np.array([0.0, 0.0]), np.array([0.5, 0.5]))


def test_half_sd_shift_of_a_normal_gives_the_textbook_value(spark: SparkSession) -> None:
    # For N(0,1) against N(mu,1) the PSI is the symmetric KL (J-) divergence, mu^2 = 0.25.
    # Deciles lose a little of it: with the exact decile edges the binned value is 0.2377,
    # computed here from the normal CDF (an independent route). With 100,000 rows per side
    # the sampling sd of the estimate is about 0.0045 (simulated), so 0.02 is ~4.5 sd around
    # the binned value, and 0.03 around mu^2 also covers the binning loss of 0.012.
    n = 100_000
    ref_df = spark.range(n, numPartitions=2).select(F.randn(seed=11).alias("x"))
    cur_df = spark.range(n, numPartitions=2).select((F.randn(seed=23) + 0.5).alias("x"))
    refs = reference(ref_df, ["x"], [], quantiles=10)
    assert len(refs["x"].edges) == 9
    assert np.allclose(refs["x"].edges, norm.ppf(np.arange(1, 10) / 10), atol=0.03)
    cuts = np.concatenate([[0.0], norm.cdf(norm.ppf(np.arange(1, 10) / 10) - 0.5), [1.0]])
    binned = float(np.sum((np.diff(cuts) - 0.1) * np.log(np.diff(cuts) / 0.1)))
    assert binned == pytest.approx(0.2377, abs=1e-4)
    [result] = drift(bin_counts(cur_df, refs, []).collect(), refs, [])
    assert result["rows"] == n
    assert result["psi"] == pytest.approx(binned, abs=0.02)
    assert result["psi"] == pytest.approx(0.25, abs=0.03)
    assert 0.1 < result["js_distance"] < 0.3


def test_a_lump_at_the_minimum_keeps_a_bin_of_its_own(spark: SparkSession) -> None:
    # Precipitation is 0 in ~93% of the year's hours: every decile is 0. Rows on a cut point go
    # to the bin above it, so with 0 as the only cut the rainless and the rainy hours shared
    # one bin and no change of the rainy share could move PSI (it read 0 for 95% -> 80% dry).
    # Each side here is 95% (80%) zeros and the rest ones, so the textbook PSI of the two bins
    # is 0.15 ln(0.95/0.80) + 0.15 ln(0.20/0.05).
    def frame(dry_percent: int) -> DataFrame:
        return spark.range(10_000, numPartitions=2).select(
            F.when(F.col("id") % 100 < dry_percent, 0.0).otherwise(1.0).alias("x"))

    refs = reference(frame(95), ["x"], [], quantiles=10)
    assert refs["x"].edges == (0.0, math.nextafter(0.0, 1.0))
    assert {k: v for k, v in refs["x"].shares.items() if v} == {
        "b01": pytest.approx(0.95), "b02": pytest.approx(0.05)}
    [same] = drift(bin_counts(frame(95), refs, []).collect(), refs, [])
    assert same["psi"] == 0.0
    [result] = drift(bin_counts(frame(80), refs, []).collect(), refs, [])
    textbook = 0.15 * math.log(0.95 / 0.80) + 0.15 * math.log(0.20 / 0.05)
    assert textbook == pytest.approx(0.2337, abs=5e-5)
    assert result["psi"] == pytest.approx(textbook, rel=1e-9)
    # and the lump's own share still moves with a positive lowest value (not only 0)
    refs = reference(frame(95).select((F.col("x") + 7.5).alias("x")), ["x"], [], quantiles=10)
    [shifted] = drift(bin_counts(frame(80).select((F.col("x") + 7.5).alias("x")), refs,
                                 []).collect(), refs, [])
    assert shifted["psi"] == pytest.approx(textbook, rel=1e-9)


def test_unseen_category_goes_to_other_and_nulls_to_null(spark: SparkSession) -> None:
    train = spark.createDataFrame(
        [("d0", 1.0, None, c) for c in ["AA"] * 5 + ["UA"] * 3 + ["DL"] * 2], SCHEMA)
    refs = reference(train, ["x", "y"], ["carrier"], top_categories=2)
    assert refs["carrier"].categories == ("AA", "UA")
    assert refs["carrier"].shares == {"AA": 0.5, "UA": 0.3, OTHER: 0.2, NULL: 0.0}
    # one value only: its own bin between 1.0 and the next double (below: under the range)
    assert refs["x"].edges == (1.0, math.nextafter(1.0, 2.0)) and refs["y"].edges == ()
    assert refs["y"].shares == {"b00": 0.0, NULL: 1.0}
    today = spark.createDataFrame([("d1", 2.0, float("nan"), "B6"), ("d1", None, 3.0, None),
                                   ("d1", 0.5, None, "AA"), ("d2", 1.0, 1.0, "UA")], SCHEMA)
    counts = {(r["day"], r["feature"], r["bin"]): r["rows"]
              for r in bin_counts(today, refs, ["day"]).collect()}
    assert counts == {
        ("d1", "x", "b02"): 1, ("d1", "x", NULL): 1, ("d1", "x", "b00"): 1,
        ("d1", "y", NULL): 2, ("d1", "y", "b00"): 1,
        ("d1", "carrier", OTHER): 1, ("d1", "carrier", NULL): 1, ("d1", "carrier", "AA"): 1,
        ("d2", "x", "b01"): 1, ("d2", "y", "b00"): 1, ("d2", "carrier", "UA"): 1}
    results = {(r["day"], r["feature"]): r for r in drift(
        bin_counts(today, refs, ["day"]).toPandas(), refs, ["day"])}
    expected = refs["carrier"].expected()  # AA, UA, OTHER, NULL
    assert results[("d1", "carrier")]["psi"] == pytest.approx(psi(expected, np.array([1, 0, 1, 1])))
    assert results[("d2", "carrier")]["rows"] == 1


def test_bins_of_names_and_values_that_need_quoting_in_sql(spark: SparkSession) -> None:
    """The bins are built as SQL text: a category holding a quote, a backslash or other text,
    a column name holding a backtick, an edge of many digits, a number column binned as
    categories, bin as their plain values do, whatever the parser's string-literal setting."""
    df = spark.createDataFrame(
        [("O'Hare", 0.1 + 0.2, 1), ("a\\b", 0.3, 2), ("O'Hare", -1e-9, 1), (None, None, None),
         ("x`y", float("inf"), 3), ("\\u0041 é", float("nan"), 2), ("é", 1e300, 1)],
        "`ap``po` string, `we``ird` double, n int")
    refs = {"ap`po": FeatureReference("ap`po", "categorical",
                                      categories=("O'Hare", "a\\b", "\\u0041 é")),
            "we`ird": FeatureReference("we`ird", "numeric", edges=(0.0, 0.1 + 0.2, 1e300)),
            "n": FeatureReference("n", "categorical", categories=("1", "2"))}
    # 0.1 + 0.2 = 0.30000000000000004 is its own edge: on it goes to the upper bin, 0.3 below
    expected = {("ap`po", "O'Hare"): 2, ("ap`po", "a\\b"): 1, ("ap`po", "\\u0041 é"): 1,
                ("ap`po", NULL): 1, ("ap`po", OTHER): 2, ("we`ird", "b00"): 1,
                ("we`ird", "b01"): 1, ("we`ird", "b02"): 1, ("we`ird", "b03"): 2,
                ("we`ird", NULL): 2, ("n", "1"): 3, ("n", "2"): 2, ("n", OTHER): 1,
                ("n", NULL): 1}
    key = "spark.sql.parser.escapedStringLiterals"
    for escaped in ("false", "true"):
        spark.conf.set(key, escaped)
        try:
            counts = {(r["feature"], r["bin"]): r["rows"]
                      for r in bin_counts(df, refs, []).collect()}
        finally:
            spark.conf.unset(key)
        assert counts == expected, escaped


def test_bad_input_is_named(spark: SparkSession) -> None:
    df = small_frame(spark)
    with pytest.raises(DriftInputError, match=r"columns \['wind'\] not in the data frame"):
        reference(df, ["x", "wind"], [])
    with pytest.raises(DriftInputError, match=r"non-numeric type \{'carrier': 'string'\}"):
        reference(df, ["carrier"], [])
    refs = reference(df, ["x"], [])
    with pytest.raises(DriftInputError, match=r"feature 'x' bin 'b42'"):
        drift([{"feature": "x", "bin": "b42", "rows": 1}], refs, [])
    with pytest.raises(DriftInputError, match="no rows"):
        reference(df.where("false"), ["x"], [])
    reserved = df.withColumn("carrier", F.when(F.col("x") < 60, F.lit(OTHER)).otherwise("AA"))
    with pytest.raises(DriftInputError, match=r"no category named .* categories \('__other__', "):
        reference(reserved, [], ["carrier"])


def test_bin_counts_is_one_spark_pass_for_all_features(
        spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "rows")
    wide = small_frame(spark).select("day", "carrier", *(
        (F.col("x") * k + F.col("y")).alias(f"f{k}") for k in range(12)))
    wide.write.parquet(path)
    df = spark.read.parquet(path)
    refs = reference(df, [f"f{k}" for k in range(12)], ["carrier"])
    tracker = spark.sparkContext.statusTracker()

    def jobs_for(features: dict[str, FeatureReference], sums: bool = False) -> list[int]:
        group = f"drift-{uuid.uuid4().hex}"
        spark.sparkContext.setJobGroup(group, "bin_counts")
        try:
            rows = bin_counts(df, features, ["day"], sums=sums).collect()
        finally:
            spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        assert {r["feature"] for r in rows} == set(features)
        return tracker.getJobIdsForGroup(group)

    one, all_13 = jobs_for({"f0": refs["f0"]}), jobs_for(refs)
    with_sums = jobs_for(refs, sums=True)
    # The count of jobs does not grow with the features (adaptive execution, on in the jobs and
    # off in the test session, runs the map side of the one aggregation as its own job, hence
    # at most 2), and the files are scanned once.
    assert len(all_13) == len(with_sums) == len(one) <= 2
    bin_counts(df, refs, ["day"], sums=True).explain(mode="formatted")
    nodes = re.findall(r"^\(\d+\) (\w+(?: parquet)?)", capsys.readouterr().out, re.MULTILINE)
    assert nodes.count("Scan parquet") == 1 and nodes.count("Generate") == 1, nodes


def test_json_round_trip(spark: SparkSession) -> None:
    refs = reference(small_frame(spark), ["x", "y"], ["carrier"])
    text = references_to_json(refs)
    assert references_from_json(text) == refs
    assert list(references_from_json(text)) == ["x", "y", "carrier"]
    with pytest.raises(DriftInputError, match="feature 0 is malformed"):
        references_from_json('{"format": 1, "features": [{"name": "x"}]}')
    with pytest.raises(DriftInputError, match="kind must be one of"):
        references_from_json('{"format": 1, "features": [{"name": "x", "kind": "text", '
                             '"edges": [], "categories": [], "shares": {}}]}')


def test_drift_rows_mean_shift_matches_a_direct_mean(spark: SparkSession) -> None:
    """The monitor's means come from the binning pass (sums per bin): they match numpy's mean
    of the same values, nulls and NaN left out, in the reference's standard deviations."""
    from datetime import date

    from lakehouse.drift import with_moments
    from lakehouse.monitoring import drift_rows

    base = small_frame(spark)
    refs = with_moments(base, reference(base, ["x", "y"], ["carrier"]))
    values = [float(i) * 1.5 + 7 for i in range(60)] + [None, float("nan")]
    rows = [(date(2013, 3, 10) if i % 2 else date(2013, 3, 11), v, float(i % 4), "AA")
            for i, v in enumerate(values)]
    day = spark.createDataFrame(rows, "flight_date date, x double, y double, carrier string")
    shifts = {(r["monitored_date"], r["subject"]): r for r in drift_rows(day, refs)
              if r["metric"] == "mean_shift"}
    assert set(shifts) == {(d, f) for d in (date(2013, 3, 10), date(2013, 3, 11))
                           for f in ("x", "y")}
    for d, parity in ((date(2013, 3, 10), 1), (date(2013, 3, 11), 0)):
        for feature, column in (("x", [v for i, v in enumerate(values) if i % 2 == parity]),
                                ("y", [float(i % 4) for i in range(62) if i % 2 == parity])):
            kept = np.array([v for v in column if v is not None and not math.isnan(v)])
            expected = (kept.mean() - refs[feature].mean) / refs[feature].std
            assert shifts[(d, feature)]["value"] == pytest.approx(expected, rel=1e-9)
            # the flights the mean rests on: those with a value (x has a null or a NaN a day)
            assert shifts[(d, feature)]["rows"] == len(kept) == (30 if feature == "x" else 31)
