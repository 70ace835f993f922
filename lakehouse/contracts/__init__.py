"""Data contracts of the silver tables (pandera models + row and batch rules)."""

from lakehouse.contracts.core import (
    BatchRule,
    Contract,
    ContractViolation,
    Rule,
    pandera_schema,
    rule_counts,
    validate,
    with_rule_results,
)
from lakehouse.contracts.rules import contracts

__all__ = ["BatchRule", "Contract", "ContractViolation", "Rule", "contracts", "pandera_schema",
           "rule_counts", "validate", "with_rule_results"]
