# Databricks notebook source
# MAGIC %md
# MAGIC # Monitor: drift, realized quality and alerts of one day
# MAGIC
# MAGIC The monitor job as a notebook: the same call as `./spark-submit.sh monitor --to ...` and
# MAGIC `lakehouse run monitor`. For the models that scored the day `to` (the champion, and a
# MAGIC challenger in shadow), it MERGEs into `model_monitoring` the drift of every model feature
# MAGIC and of the prediction against the reference saved with the model (PSI, Jensen-Shannon
# MAGIC distance) and the realized quality of the flights whose outcome is known by the end of
# MAGIC that day (AUC-ROC, AUC-PR, Brier score, calibration; daily and over a trailing window);
# MAGIC then raises alerts once per episode (the `alerts` table, an ERROR line, the webhook).
# MAGIC
# MAGIC Parameters: `env` picks `conf/<env>.yml` (default `databricks`: Unity Catalog tables named
# MAGIC in `conf/databricks.yml`); `conf_dir` points at a folder with your own `base.yml` and
# MAGIC `<env>.yml` (empty: the `conf/` inside the installed wheel); `catalog` names the Unity
# MAGIC Catalog catalog (empty: `$LAKEHOUSE_CATALOG`, which the bundle sets on its job cluster;
# MAGIC neither set fails, naming it: no default catalog). The notebook ends with the run id as its
# MAGIC exit value.
# MAGIC
# MAGIC `to` is the flight date to monitor (YYYY-MM-DD; empty: the conf's `score.to`).

# COMMAND ----------

dbutils.widgets.text("env", "databricks", "Environment: conf/<env>.yml")
dbutils.widgets.text("conf_dir", "", "Conf folder (empty: the conf/ in the wheel)")
dbutils.widgets.text("catalog", "", "Unity Catalog catalog (empty: $LAKEHOUSE_CATALOG)")
dbutils.widgets.text("to", "", "Flight date to monitor (empty: conf score.to)")

# COMMAND ----------

from lakehouse import tables, workflow
from lakehouse.config import load_config
from lakehouse.session import build_session

config = load_config(dbutils.widgets.get("env"), dbutils.widgets.get("conf_dir"),
                     catalog=dbutils.widgets.get("catalog"))
spark = build_session(config)

# COMMAND ----------

results = workflow.run_job(spark, config, "monitor", None, dbutils.widgets.get("to"))
print(workflow.report(spark, config, results))

# COMMAND ----------

display(tables.latest_audit(spark, config))

# COMMAND ----------

dbutils.notebook.exit(results["run_id"])
