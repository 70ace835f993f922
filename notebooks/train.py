# Databricks notebook source
# MAGIC %md
# MAGIC # Train: tune, register, promote
# MAGIC
# MAGIC The train job as a notebook: the same call as `./spark-submit.sh train` and `lakehouse run
# MAGIC train`. Hyperopt searches model families and their parameters on `flight_features`, on
# MAGIC conf's `train` windows; every trial is an MLflow run; the model is registered and takes
# MAGIC `@champion` only if it beats the current champion on the same evaluation window by the
# MAGIC promotion margin (else `@challenger`). It always trains and answers no monitoring alert:
# MAGIC the daily workflow's train task (`daily` notebook, `stages` = `train`) trains when no
# MAGIC champion exists or alerts make retraining due, and closes them.
# MAGIC
# MAGIC Parameters: `env` picks `conf/<env>.yml` (default `databricks`: Unity Catalog tables named
# MAGIC in `conf/databricks.yml`); `conf_dir` points at a folder with your own `base.yml` and
# MAGIC `<env>.yml` (empty: the `conf/` inside the installed wheel); `catalog` names the Unity
# MAGIC Catalog catalog (empty: `$LAKEHOUSE_CATALOG`, which the bundle sets on its job cluster;
# MAGIC neither set fails, naming it: no default catalog). The notebook ends with the run id as its
# MAGIC exit value.

# COMMAND ----------

dbutils.widgets.text("env", "databricks", "Environment: conf/<env>.yml")
dbutils.widgets.text("conf_dir", "", "Conf folder (empty: the conf/ in the wheel)")
dbutils.widgets.text("catalog", "", "Unity Catalog catalog (empty: $LAKEHOUSE_CATALOG)")

# COMMAND ----------

from lakehouse import tables, workflow
from lakehouse.config import load_config
from lakehouse.session import build_session

config = load_config(dbutils.widgets.get("env"), dbutils.widgets.get("conf_dir"),
                     catalog=dbutils.widgets.get("catalog"))
spark = build_session(config)

# COMMAND ----------

results = workflow.run_job(spark, config, "train")
print(workflow.report(spark, config, results))

# COMMAND ----------

display(tables.latest_audit(spark, config))

# COMMAND ----------

dbutils.notebook.exit(results["run_id"])
