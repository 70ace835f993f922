"""Contract machinery: one definition per rule drives pandera validation and the row split."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pandera.api.checks import Check
from pandera.api.pyspark.container import DataFrameSchema
from pandera.pyspark import DataFrameModel
from pyspark.sql import Column, DataFrame
from pyspark.errors import AnalysisException
from pyspark.sql import functions as F

Action = Literal["warn", "quarantine", "fail"]
FAILED_RULES = "_failed_rules"
WARNED_RULES = "_warned_rules"


class ContractViolation(RuntimeError):
    """A batch broke its table's contract; the job halts and writes nothing."""


@dataclass(frozen=True)
class Rule:
    """A row-level rule: `condition` is true for a passing row.

    A condition that evaluates to null passes: a rule speaks about a value only when it is
    present (null keys are caught by explicit not-null rules).
    """

    name: str
    description: str
    condition: Callable[[], Column]
    action: Action = "quarantine"

    def passed(self) -> Column:
        return F.coalesce(self.condition(), F.lit(True))


@dataclass(frozen=True)
class BatchRule:
    """A batch-level rule: `holds(df)` answers a yes/no question about the whole batch."""

    name: str
    description: str
    holds: Callable[[DataFrame], bool]
    action: Action = "fail"


@dataclass(frozen=True)
class Contract:
    """What a silver table promises: its pandera model, natural key and rules."""

    table: str
    model: type[DataFrameModel]
    keys: tuple[str, ...]
    rules: tuple[Rule, ...]
    batch_rules: tuple[BatchRule, ...] = field(default_factory=tuple)


class _RowRuleAnswers:
    """Answers "does any row break rule R?" for every row rule in one Spark job per DataFrame.

    Pandera runs one check per rule; each check asks this object, which evaluates all row rules
    together on the first call for a DataFrame, so a batch costs one scan instead of one per rule.
    """

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self._df: DataFrame | None = None
        self._holds: dict[str, bool] = {}

    def holds(self, df: DataFrame, name: str) -> bool:
        if df is not self._df:
            self._df = df
            broken = [F.max((~r.passed()).cast("int")).alias(r.name) for r in self.rules]
            try:
                row = df.agg(*broken).first()
            except AnalysisException:  # a column a rule reads is missing: no rule can hold
                self._holds = {r.name: False for r in self.rules}
            else:
                self._holds = {r.name: not row[r.name] for r in self.rules}
        return self._holds[name]


def _row_check(rule: Rule, answers: _RowRuleAnswers) -> Check:
    return Check(lambda df: answers.holds(df, rule.name), name=rule.name)


def _batch_check(rule: BatchRule) -> Check:
    return Check(rule.holds, name=rule.name)


def pandera_schema(contract: Contract) -> DataFrameSchema:
    """The contract's pandera schema: the model's columns plus one check per rule."""
    schema = copy.deepcopy(contract.model.to_schema())
    answers = _RowRuleAnswers(contract.rules)
    schema.checks = [*schema.checks, *(_row_check(r, answers) for r in contract.rules),
                     *(_batch_check(r) for r in contract.batch_rules)]
    return schema


@dataclass(frozen=True)
class ValidationReport:
    """Pandera's verdict on a batch: schema errors and the names of the failing checks."""

    schema_errors: tuple[str, ...]
    failed_checks: tuple[str, ...]


def validate(contract: Contract, df: DataFrame) -> ValidationReport:
    """Run the pandera schema over df and read its collected errors."""
    errors = pandera_schema(contract).validate(df).pandera.errors
    schema_errors: list[str] = []
    failed: list[str] = []
    for category, by_reason in errors.items():
        for reason, entries in by_reason.items():
            for entry in entries:
                if reason == "DATAFRAME_CHECK":
                    failed.append(str(entry["check"]))
                else:
                    schema_errors.append(f"{category}/{reason} on column {entry.get('column')!r}: "
                                         f"{entry.get('error')}")
    return ValidationReport(tuple(schema_errors), tuple(failed))


def with_rule_results(contract: Contract) -> Callable[[DataFrame], DataFrame]:
    """Add arrays of the quarantine/fail rules and the warn rules each row breaks (one pass)."""

    def names(actions: tuple[Action, ...]) -> Column:
        flags = [F.when(~r.passed(), F.lit(r.name)) for r in contract.rules if r.action in actions]
        if not flags:
            return F.array().cast("array<string>")
        return F.filter(F.array(*flags), lambda x: x.isNotNull())

    def transform(df: DataFrame) -> DataFrame:
        return df.withColumns({FAILED_RULES: names(("quarantine", "fail")),
                               WARNED_RULES: names(("warn",))})

    return transform


def rule_counts(contract: Contract, checked: DataFrame) -> dict[str, int]:
    """Rows breaking each row rule, the total ('_rows') and rows to quarantine, in one job."""
    aggregates = [F.count(F.lit(1)).alias("_rows"),
                  F.sum((F.size(FAILED_RULES) > 0).cast("long")).alias("_quarantined")]
    for r in contract.rules:
        column = FAILED_RULES if r.action != "warn" else WARNED_RULES
        aggregates.append(F.sum(F.array_contains(column, r.name).cast("long")).alias(r.name))
    row = checked.agg(*aggregates).first()
    return {k: int(v or 0) for k, v in row.asDict().items()}


def sample_keys(contract: Contract, checked: DataFrame, rule: str, limit: int = 5) -> list[str]:
    """A few natural keys (or raw records) of rows breaking a rule, for error messages."""
    failing = checked.filter(F.array_contains(FAILED_RULES, rule))
    keys = F.to_json(F.struct(*[F.col(k) for k in contract.keys]))
    return [r[0] for r in failing.select(keys).limit(limit).collect()]
