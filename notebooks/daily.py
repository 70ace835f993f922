# Databricks notebook source
# MAGIC %md
# MAGIC # Daily workflow
# MAGIC
# MAGIC The daily workflow in one notebook: the same call as `./spark-submit.sh daily` and
# MAGIC `lakehouse run daily`. Bronze, silver, gold, score, monitor, train (only when no
# MAGIC `@champion` exists or the monitor made retraining due, unless `train` says otherwise) and,
# MAGIC when the new model was promoted, score again run in this session as a DAG; a stage that
# MAGIC fails on something transient is retried, a data error (a contract halt, an empty training
# MAGIC window) fails at once and stops only the stages that depend on it. On a schedule, the
# MAGIC bundle's `lakehouse_daily` job runs the same stages as separate tasks.
# MAGIC
# MAGIC Parameters: `env` picks `conf/<env>.yml` (default `databricks`: Unity Catalog tables named
# MAGIC in `conf/databricks.yml`); `conf_dir` points at a folder with your own `base.yml` and
# MAGIC `<env>.yml` (empty: the `conf/` inside the installed wheel); `catalog` names the Unity
# MAGIC Catalog catalog (empty: `$LAKEHOUSE_CATALOG`, which the bundle sets on its job cluster;
# MAGIC neither set fails, naming it: no default catalog). The notebook ends with the run id as its
# MAGIC exit value.
# MAGIC
# MAGIC `from`/`to` are the flight dates to score (empty: `score.from`/`score.to`); `train` is
# MAGIC `auto`, `always` or `never`; `stages` a comma-separated subset of
# MAGIC `bronze,silver,gold,score,monitor,train`; `full` = `true` rebuilds gold in full (`--full`).

# COMMAND ----------

dbutils.widgets.text("env", "databricks", "Environment: conf/<env>.yml")
dbutils.widgets.text("conf_dir", "", "Conf folder (empty: the conf/ in the wheel)")
dbutils.widgets.text("catalog", "", "Unity Catalog catalog (empty: $LAKEHOUSE_CATALOG)")
dbutils.widgets.dropdown("full", "false", ["false", "true"], "Rebuild gold in full (--full)")
dbutils.widgets.text("from", "", "First flight date to score (empty: conf score.from)")
dbutils.widgets.text("to", "", "Last flight date to score (empty: conf score.to)")
dbutils.widgets.dropdown("train", "auto", ["auto", "always", "never"], "Train")
dbutils.widgets.text("stages", "", "Stages, comma-separated (empty: all)")

# COMMAND ----------

from lakehouse import tables, workflow
from lakehouse.config import load_config
from lakehouse.session import build_session

config = load_config(dbutils.widgets.get("env"), dbutils.widgets.get("conf_dir"),
                     catalog=dbutils.widgets.get("catalog"))
spark = build_session(config)

# COMMAND ----------

results = workflow.run_job(spark, config, "daily", dbutils.widgets.get("from"),
                           dbutils.widgets.get("to"), dbutils.widgets.get("train"),
                           dbutils.widgets.get("stages"),
                           full_gold=dbutils.widgets.get("full") == "true")
print(workflow.report(spark, config, results))

# COMMAND ----------

display(tables.latest_audit(spark, config))

# COMMAND ----------

dbutils.notebook.exit(results["run_id"])
