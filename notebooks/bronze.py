# Databricks notebook source
# MAGIC %md
# MAGIC # Bronze: ingest newly landed files
# MAGIC
# MAGIC The bronze job as a notebook: the same call as `./spark-submit.sh bronze` and `lakehouse run
# MAGIC bronze`. Each landed file and Kafka event is read once (a Structured Streaming checkpoint
# MAGIC per table under `checkpoints/`, each micro-batch appended once by its Delta txn id), every
# MAGIC record kept as text with its lineage; one audit row per bronze table.
# MAGIC
# MAGIC Parameters: `env` picks `conf/<env>.yml` (default `databricks`: Unity Catalog tables named
# MAGIC in `conf/databricks.yml`); `conf_dir` points at a folder with your own `base.yml` and
# MAGIC `<env>.yml` (empty: the `conf/` inside the installed wheel); `catalog` names the Unity
# MAGIC Catalog catalog (empty: `$LAKEHOUSE_CATALOG`, which the bundle sets on its job cluster;
# MAGIC neither set fails, naming it: no default catalog); `accept_lost_events` (`true` once,
# MAGIC after a run failed with EventsLostError telling to run with `--accept-lost-events`: Kafka
# MAGIC deleted events bronze had yet to read) goes on from the earliest offsets the broker holds,
# MAGIC the audit row naming the offsets lost. The notebook ends with the run id as its exit value.

# COMMAND ----------

dbutils.widgets.text("env", "databricks", "Environment: conf/<env>.yml")
dbutils.widgets.text("conf_dir", "", "Conf folder (empty: the conf/ in the wheel)")
dbutils.widgets.text("catalog", "", "Unity Catalog catalog (empty: $LAKEHOUSE_CATALOG)")
dbutils.widgets.dropdown("accept_lost_events", "false", ["false", "true"],
                         "Once: go on past Kafka events deleted unread")

# COMMAND ----------

from lakehouse import tables, workflow
from lakehouse.config import load_config
from lakehouse.session import build_session

config = load_config(dbutils.widgets.get("env"), dbutils.widgets.get("conf_dir"),
                     catalog=dbutils.widgets.get("catalog"))
spark = build_session(config)

# COMMAND ----------

results = workflow.run_job(spark, config, "bronze", accept_lost_events=(
    dbutils.widgets.get("accept_lost_events") == "true"))

# COMMAND ----------

display(tables.latest_audit(spark, config))

# COMMAND ----------

dbutils.notebook.exit(results["run_id"])
