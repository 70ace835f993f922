# Databricks notebook source
# MAGIC %md
# MAGIC # Gold: point-in-time features and route KPIs
# MAGIC
# MAGIC The gold job as a notebook: the same call as `./spark-submit.sh gold` and `lakehouse run
# MAGIC gold`. Rebuilds `flight_features` (each flight seen as of one hour before departure) and
# MAGIC `route_daily_kpis` from silver.
# MAGIC
# MAGIC Parameters: `env` picks `conf/<env>.yml` (default `databricks`: Unity Catalog tables named
# MAGIC in `conf/databricks.yml`); `conf_dir` points at a folder with your own `base.yml` and
# MAGIC `<env>.yml` (empty: the `conf/` inside the installed wheel); `catalog` names the Unity
# MAGIC Catalog catalog (empty: `$LAKEHOUSE_CATALOG`, which the bundle sets on its job cluster;
# MAGIC neither set fails, naming it: no default catalog); `full` = `true` rebuilds both tables in
# MAGIC full (`--full`) instead of the dates silver's changes reach. The notebook ends with the run
# MAGIC id as its exit value.

# COMMAND ----------

dbutils.widgets.text("env", "databricks", "Environment: conf/<env>.yml")
dbutils.widgets.text("conf_dir", "", "Conf folder (empty: the conf/ in the wheel)")
dbutils.widgets.text("catalog", "", "Unity Catalog catalog (empty: $LAKEHOUSE_CATALOG)")
dbutils.widgets.dropdown("full", "false", ["false", "true"], "Rebuild gold in full (--full)")

# COMMAND ----------

from lakehouse import tables, workflow
from lakehouse.config import load_config
from lakehouse.session import build_session

config = load_config(dbutils.widgets.get("env"), dbutils.widgets.get("conf_dir"),
                     catalog=dbutils.widgets.get("catalog"))
spark = build_session(config)

# COMMAND ----------

results = workflow.run_job(spark, config, "gold",
                           full_gold=dbutils.widgets.get("full") == "true")

# COMMAND ----------

display(tables.latest_audit(spark, config))

# COMMAND ----------

dbutils.notebook.exit(results["run_id"])
