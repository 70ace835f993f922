# Databricks notebook source
# MAGIC %md
# MAGIC # Score: predictions of the champion
# MAGIC
# MAGIC The score job as a notebook: the same call as `./spark-submit.sh score --from ... --to ...`
# MAGIC and `lakehouse run score`. Loads `models:/<model>@champion`, scores the flights dated
# MAGIC `from`..`to` (and a @challenger in shadow) and MERGEs them into `delay_predictions` by
# MAGIC flight and model version (a rerun with the same model changes no row).
# MAGIC
# MAGIC Parameters: `env` picks `conf/<env>.yml` (default `databricks`: Unity Catalog tables named
# MAGIC in `conf/databricks.yml`); `conf_dir` points at a folder with your own `base.yml` and
# MAGIC `<env>.yml` (empty: the `conf/` inside the installed wheel); `catalog` names the Unity
# MAGIC Catalog catalog (empty: `$LAKEHOUSE_CATALOG`, which the bundle sets on its job cluster;
# MAGIC neither set fails, naming it: no default catalog). The notebook ends with the run id as its
# MAGIC exit value.
# MAGIC
# MAGIC `from` and `to` are the first and last flight dates to score (YYYY-MM-DD; empty: the conf's
# MAGIC `score.from` and `score.to`).

# COMMAND ----------

dbutils.widgets.text("env", "databricks", "Environment: conf/<env>.yml")
dbutils.widgets.text("conf_dir", "", "Conf folder (empty: the conf/ in the wheel)")
dbutils.widgets.text("catalog", "", "Unity Catalog catalog (empty: $LAKEHOUSE_CATALOG)")
dbutils.widgets.text("from", "", "First flight date to score (empty: conf score.from)")
dbutils.widgets.text("to", "", "Last flight date to score (empty: conf score.to)")

# COMMAND ----------

from lakehouse import tables, workflow
from lakehouse.config import load_config
from lakehouse.session import build_session

config = load_config(dbutils.widgets.get("env"), dbutils.widgets.get("conf_dir"),
                     catalog=dbutils.widgets.get("catalog"))
spark = build_session(config)

# COMMAND ----------

results = workflow.run_job(spark, config, "score", dbutils.widgets.get("from"),
                           dbutils.widgets.get("to"))
print(workflow.report(spark, config, results))

# COMMAND ----------

display(tables.latest_audit(spark, config))

# COMMAND ----------

dbutils.notebook.exit(results["run_id"])
