"""Pipeline stages: each reads its inputs, calls pure lakehouse functions, writes, audits."""
