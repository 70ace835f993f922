"""Feature drift against a training reference: bins counted in Spark, statistics on the driver.

A reference holds, per feature, how rows are binned (quantile cut points for a numeric feature,
the most frequent categories for a categorical one) and the share of reference rows in each bin.
`bin_counts` counts the bins of every feature of every group in one Spark pass (each row is
exploded into (feature, bin) pairs, then one groupBy), and `drift` turns those counts into the
population stability index and the Jensen-Shannon distance per group and feature.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType
from scipy.spatial.distance import jensenshannon

__all__ = ["NULL", "OTHER", "DriftInputError", "FeatureReference", "bin_counts", "drift",
           "js_distance", "mean_shift", "psi", "reference", "references_from_json",
           "references_to_json", "with_moments"]

NULL = "__null__"
OTHER = "__other__"
KINDS = ("numeric", "categorical")
JSON_FORMAT = 1


class DriftInputError(ValueError):
    """Input that drift statistics cannot be computed from (names what is wrong and where)."""


@dataclass(frozen=True)
class FeatureReference:
    """How one feature is binned, and the share of reference rows in each bin."""

    name: str
    kind: str
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    shares: dict[str, float] = field(default_factory=dict)
    # Numeric features: mean and standard deviation of the reference rows, for mean_shift.
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DriftInputError(f"feature {self.name!r}: kind must be one of {list(KINDS)}, "
                                  f"got {self.kind!r}")
        if self.kind == "numeric" and (self.categories or list(self.edges) != sorted(
                set(self.edges))):
            raise DriftInputError(f"numeric feature {self.name!r} needs sorted unique edges and "
                                  f"no categories, got edges {self.edges}, "
                                  f"categories {self.categories}")
        if self.kind == "categorical" and (self.edges or {NULL, OTHER} & set(self.categories)):
            raise DriftInputError(f"categorical feature {self.name!r} needs no edges and no "
                                  f"category named {NULL!r} or {OTHER!r}, got edges "
                                  f"{self.edges}, categories {self.categories}")
        unknown = sorted(set(self.shares) - set(self.labels))
        if unknown:
            raise DriftInputError(f"feature {self.name!r}: shares of unknown bins {unknown}; "
                                  f"its bins are {list(self.labels)}")

    @property
    def labels(self) -> tuple[str, ...]:
        """Every bin of the feature, in a stable order (the null bin last)."""
        if self.kind == "numeric":
            width = max(2, len(str(len(self.edges))))
            return (*(f"b{i:0{width}d}" for i in range(len(self.edges) + 1)), NULL)
        return (*self.categories, OTHER, NULL)

    def expected(self) -> np.ndarray:
        """The reference shares in the order of `labels` (0 for a bin with no reference row)."""
        return np.array([self.shares.get(label, 0.0) for label in self.labels])

    def bin(self) -> Column:
        """The bin label of each row as a Spark column expression (no UDF)."""
        return F.expr(self.bin_sql())

    def bin_sql(self) -> str:
        """The bin label of each row as Spark SQL text: built in Python and parsed once by
        Spark, where a Column tree built call by call costs a Py4J round trip per node (~0.6 s
        for the monitor's features, measured)."""
        if self.kind == "categorical":
            value = f"CAST({_quoted(self.name)} AS STRING)"
            known = (f" WHEN {value} IN ({', '.join(_literal(c) for c in self.categories)}) "
                     f"THEN {value}") if self.categories else ""
            return (f"CASE WHEN {value} IS NULL THEN {_literal(NULL)}{known} "
                    f"ELSE {_literal(OTHER)} END")
        value, labels = _numeric_sql(self.name), self.labels
        # Bin i holds edges[i-1] <= x < edges[i]: a value on a cut point goes to the upper bin.
        whens = "".join(f" WHEN {value} < CAST({_literal(repr(float(edge)))} AS DOUBLE) THEN "
                        f"{_literal(label)}" for label, edge in zip(labels, self.edges,
                                                                     strict=False))
        return (f"CASE WHEN {value} IS NULL THEN {_literal(NULL)}{whens} "
                f"ELSE {_literal(labels[len(self.edges)])} END")


def _quoted(name: str) -> str:
    """A column name as a Spark SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def _literal(text: str) -> str:
    """A Spark SQL string literal that reads back as text whatever the parser's settings: text
    holding a quote or a backslash as its UTF-8 bytes (with spark.sql.parser.escapedStringLiterals
    on, a backslash escape would stay in the value)."""
    if "'" in text or "\\" in text:
        return f"CAST(X'{text.encode().hex().upper()}' AS STRING)"
    return f"'{text}'"


def _numeric_sql(name: str) -> str:
    """The column as a double, NaN turned into null (so it lands in the null bin), as SQL
    text (bin_counts builds all features' bins as one SQL expression)."""
    return f"nanvl(CAST({_quoted(name)} AS DOUBLE), CAST(NULL AS DOUBLE))"


def _numeric(name: str) -> Column:
    """_numeric_sql as a Column."""
    return F.expr(_numeric_sql(name))


def _pairs(columns: dict[str, Column], alias: str) -> Column:
    """Each row as one (feature, alias) struct per column, exploded: all features in one pass."""
    return F.explode(F.array(*(F.struct(F.lit(name).alias("feature"), column.alias(alias))
                               for name, column in columns.items()))).alias("pair")


def _check_columns(df: DataFrame, wanted: Iterable[str], what: str) -> None:
    missing = [name for name in wanted if name not in df.columns]
    if missing:
        raise DriftInputError(f"{what}: columns {missing} not in the data frame; it has "
                              f"{df.columns}")


def reference(df: DataFrame, numeric: list[str], categorical: list[str], quantiles: int = 10,
              top_categories: int = 20,
              relative_error: float = 0.001) -> dict[str, FeatureReference]:
    """The binning and bin shares of each feature in df, the reference that drift is measured
    against.

    Args:
        df: the reference rows (e.g. the training set).
        numeric: numeric feature columns, binned at quantiles of df (all in one approxQuantile).
        categorical: categorical columns; the top_categories most frequent values keep a bin
            each, the rest share the OTHER bin.
        quantiles: the number of quantile bins (fewer when cut points coincide).
        top_categories: the number of categories kept per categorical feature.
        relative_error: approxQuantile's relative error for the cut points.

    Returns:
        FeatureReference by feature name, in the order numeric then categorical.
    """
    _check_columns(df, [*numeric, *categorical], "reference features")
    overlap = sorted(set(numeric) & set(categorical))
    if overlap or quantiles < 1 or top_categories < 0:
        raise DriftInputError(f"reference: features {overlap} both numeric and categorical, or "
                              f"quantiles={quantiles} < 1, or top_categories={top_categories} < 0")
    types = {f.name: f.dataType for f in df.schema.fields}
    not_numeric = {name: types[name].simpleString() for name in numeric
                   if not isinstance(types[name], NumericType)}
    if not_numeric:
        raise DriftInputError(f"reference: numeric features of non-numeric type {not_numeric}")
    refs = {name: FeatureReference(name, "numeric", edges) for name, edges in
            _edges(df, numeric, quantiles, relative_error).items()}
    refs |= {name: FeatureReference(name, "categorical", categories=categories)
             for name, categories in _top_categories(df, categorical, top_categories).items()}
    counts = {(row["feature"], row["bin"]): row["rows"]
              for row in bin_counts(df, refs, []).collect()}
    total = sum(counts.values()) / len(refs)  # every row is counted once per feature
    if not total:
        raise DriftInputError("reference: the data frame has no rows")
    return {name: FeatureReference(name, ref.kind, ref.edges, ref.categories,
                                   {label: counts.get((name, label), 0) / total
                                    for label in ref.labels})
            for name, ref in refs.items()}


def _edges(df: DataFrame, numeric: list[str], quantiles: int,
           relative_error: float) -> dict[str, tuple[float, ...]]:
    """Sorted unique interior cut points per numeric column, from one approxQuantile call.

    A value on a cut point goes to the bin above it, so a lowest cut point equal to the
    column's minimum would leave the bin below it empty and put the rows at the minimum (a
    lump of at least one quantile's share: rainless hours' precipitation 0, no flight
    pending) in one bin with the values above them, where no change of the lump's share could
    show. Such a cut point gets a second one beside it, the next double above it: the bin
    between the two holds the rows at the minimum alone, the one below it values under the
    reference's range (empty in the reference, as before), the next the values above it.
    """
    if not numeric:
        return {}
    probabilities = [i / quantiles for i in range(quantiles)]  # 0: the minimum
    cleaned = df.select(*(_numeric(name).alias(name) for name in numeric))
    found = cleaned.approxQuantile(numeric, probabilities, relative_error) if quantiles > 1 \
        else [[] for _ in numeric]
    edges = {}
    for name, values in zip(numeric, found, strict=True):
        cuts = sorted(set(values[1:]))
        if cuts and cuts[0] <= values[0]:  # the lowest cut point is the minimum
            above = math.nextafter(cuts[0], math.inf)
            cuts = [cuts[0], above, *(c for c in cuts[1:] if c > above)]
        edges[name] = tuple(cuts)
    return edges


def _top_categories(df: DataFrame, categorical: list[str],
                    top: int) -> dict[str, tuple[str, ...]]:
    """The top most frequent non-null values of each categorical column, in one Spark job."""
    if not categorical:
        return {}
    pairs = _pairs({name: F.col(name).cast("string") for name in categorical}, "value")
    ranked = Window.partitionBy("feature").orderBy(F.desc("rows"), F.asc("value"))
    rows = (df.select(pairs).select("pair.feature", "pair.value")
            .where(F.col("value").isNotNull())
            .groupBy("feature", "value").agg(F.count(F.lit(1)).alias("rows"))
            .withColumn("rank", F.row_number().over(ranked)).where(F.col("rank") <= top)
            .collect())
    found: dict[str, list[tuple[int, str]]] = {name: [] for name in categorical}
    for row in rows:
        found[row["feature"]].append((row["rank"], row["value"]))
    return {name: tuple(value for _, value in sorted(values)) for name, values in found.items()}


def bin_counts(df: DataFrame, refs: dict[str, FeatureReference],
               group_cols: list[str], sums: bool = False) -> DataFrame:
    """Rows per group, feature and bin, for every feature in one Spark pass.

    Args:
        df: the rows to bin (e.g. one day's scored flights).
        refs: the features and their binning, from `reference`.
        group_cols: columns to count by (e.g. day and model version); [] for one group.
        sums: also sum each numeric feature's values per bin (`value_sum`, over `values`
            non-null values; null for a categorical feature), so the group's means come from
            the same pass.

    Returns:
        A DataFrame of group_cols + feature, bin, rows (bins with no row are absent), and
        value_sum, values with sums.
    """
    if not refs:
        raise DriftInputError("bin_counts: no feature references given")
    _check_columns(df, [*group_cols, *refs], "bin_counts")
    # all features' (feature, bin[, value]) structs as one SQL expression: one parse, not a
    # Py4J call per node of a Column tree
    structs = []
    for name, ref in refs.items():
        fields = [f"'feature', {_literal(name)}", f"'bin', {ref.bin_sql()}"]
        if sums:
            value = _numeric_sql(name) if ref.kind == "numeric" else "CAST(NULL AS DOUBLE)"
            fields.append(f"'value', {value}")
        structs.append(f"named_struct({', '.join(fields)})")
    pairs = F.expr(f"explode(array({', '.join(structs)}))").alias("pair")
    exploded = df.select(*group_cols, pairs).select(*group_cols, "pair.*")
    if not sums:
        return exploded.groupBy(*group_cols, "feature", "bin").agg(
            F.count(F.lit(1)).alias("rows"))
    return (exploded.groupBy(*group_cols, "feature", "bin")
            .agg(F.count(F.lit(1)).alias("rows"), F.sum("value").alias("value_sum"),
                 F.count("value").alias("values")))


def _field(row: Any, name: str) -> Any:
    """A field of a Spark Row, a dict, a pandas Series or a namedtuple, by name."""
    try:
        return row[name]
    except (TypeError, KeyError, IndexError, ValueError):
        return getattr(row, name)


def drift(counts: Iterable[Any], refs: dict[str, FeatureReference],
          group_cols: Sequence[str]) -> list[dict[str, Any]]:
    """PSI and Jensen-Shannon distance per group and feature, from `bin_counts` rows.

    Args:
        counts: rows of bin_counts (Spark Rows, dicts, pandas rows or a pandas DataFrame).
        refs: the references the counts were binned with.
        group_cols: the group columns given to bin_counts.

    Returns:
        One dict per group and feature (groups sorted, features in refs order): the group
        columns, feature, psi, js_distance and rows (the group's rows counted for the feature).
    """
    if hasattr(counts, "to_dict") and hasattr(counts, "columns"):
        counts = counts.to_dict("records")  # a pandas DataFrame
    tallies: dict[tuple[Any, ...], dict[str, dict[str, int]]] = {}
    for row in counts:
        feature, label = _field(row, "feature"), _field(row, "bin")
        if feature not in refs or label not in refs[feature].labels:
            known = list(refs[feature].labels) if feature in refs else list(refs)
            raise DriftInputError(f"drift: count of feature {feature!r} bin {label!r} that the "
                                  f"references do not have (known: {known})")
        group = tuple(_field(row, name) for name in group_cols)
        bins = tallies.setdefault(group, {}).setdefault(feature, {})
        bins[label] = bins.get(label, 0) + int(_field(row, "rows"))
    results = []
    for group in sorted(tallies, key=lambda g: tuple((v is None, v) for v in g)):
        for name, ref in refs.items():
            found = tallies[group].get(name)
            if not found:
                continue
            actual = np.array([found.get(label, 0) for label in ref.labels], dtype=float)
            results.append({**dict(zip(group_cols, group, strict=True)), "feature": name,
                            "psi": psi(ref.expected(), actual),
                            "js_distance": js_distance(ref.expected(), actual),
                            "rows": int(actual.sum())})
    return results


def _shares(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or (values < 0).any() or not values.sum() > 0:
        raise DriftInputError(f"{what} must be non-negative counts or shares with a positive "
                              f"sum, got {values}")
    shares: np.ndarray = values / values.sum()
    return shares


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e).

    Both sides are normalised to shares, then floored: a bin empty on one side (a category
    never seen in training, no null at all in one window) would make ln(a / e) infinite, so a
    single new value would give an infinite index. The floor (1 row in 10,000 by default) keeps
    such a bin's contribution finite, about s * ln(s / floor) for its share s, and changes the
    populated bins negligibly; the shares are not renormalised after flooring.

    Args:
        expected: reference shares (or counts) per bin.
        actual: current shares (or counts) per bin, in the same order.
        floor: the least share a bin is given.

    Returns:
        The index (0 for identical distributions; 0.1 / 0.25 are the usual warn / act levels).
    """
    e, a = _shares(expected, "expected"), _shares(actual, "actual")
    if e.shape != a.shape:
        raise DriftInputError(f"psi: expected has {e.size} bins, actual {a.size}")
    e, a = np.maximum(e, floor), np.maximum(a, floor)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance in base 2: 0 for identical distributions, 1 for disjoint ones.

    Args:
        p: shares (or counts) per bin.
        q: shares (or counts) per bin, in the same order.

    Returns:
        The square root of the Jensen-Shannon divergence (bounded, and finite on empty bins).
    """
    p, q = _shares(p, "p"), _shares(q, "q")
    if p.shape != q.shape:
        raise DriftInputError(f"js_distance: p has {p.size} bins, q {q.size}")
    return float(jensenshannon(p, q, base=2))


def references_to_json(refs: dict[str, FeatureReference]) -> str:
    """The references as JSON text (e.g. an MLflow artifact saved with the model).

    Args:
        refs: FeatureReference by feature name.

    Returns:
        JSON text that references_from_json reads back unchanged.
    """
    features = [{"name": r.name, "kind": r.kind, "edges": list(r.edges),
                 "categories": list(r.categories), "shares": r.shares, "mean": r.mean,
                 "std": r.std} for r in refs.values()]
    return json.dumps({"format": JSON_FORMAT, "features": features}, indent=1)


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def with_moments(df: DataFrame, refs: dict[str, FeatureReference]) -> dict[str, FeatureReference]:
    """The references with each numeric feature's mean and standard deviation over df (one
    aggregation for all of them)."""
    numeric = [name for name, r in refs.items() if r.kind == "numeric"]
    if not numeric:
        return dict(refs)
    row = df.agg(*[F.avg(_numeric(c)).alias(f"m{i}") for i, c in enumerate(numeric)],
                 *[F.stddev_pop(_numeric(c)).alias(f"s{i}") for i, c in enumerate(numeric)]
                 ).first()
    out = dict(refs)
    for i, name in enumerate(numeric):
        out[name] = replace(refs[name], mean=_optional(row[f"m{i}"] if row else None),
                            std=_optional(row[f"s{i}"] if row else None))
    return out


def mean_shift(day_mean: float | None, ref: FeatureReference) -> float | None:
    """How far a day's mean lies from the reference mean, in reference standard deviations
    (a location statistic: PSI of one day's rows of a feature that is strongly correlated
    within a day, such as the weather, is large on every day whatever its level)."""
    if day_mean is None or ref.mean is None or not ref.std:
        return None
    return (day_mean - ref.mean) / ref.std


def references_from_json(text: str) -> dict[str, FeatureReference]:
    """References read from references_to_json's text.

    Args:
        text: the JSON text.

    Returns:
        FeatureReference by feature name, in the saved order.
    """
    document = json.loads(text)
    if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
        raise DriftInputError(f"feature references: expected an object with format "
                              f"{JSON_FORMAT}, got {str(document)[:200]}")
    refs = {}
    for i, item in enumerate(document.get("features", [])):
        try:
            refs[item["name"]] = FeatureReference(
                item["name"], item["kind"], tuple(float(x) for x in item["edges"]),
                tuple(str(c) for c in item["categories"]),
                {str(k): float(v) for k, v in item["shares"].items()},
                _optional(item.get("mean")), _optional(item.get("std")))
        except (KeyError, TypeError, AttributeError) as error:
            raise DriftInputError(f"feature references: feature {i} is malformed "
                                  f"({error!r}): {str(item)[:200]}") from error
    return refs
