# Databricks notebook source
# MAGIC %md
# MAGIC # Exploration: what to look at first
# MAGIC
# MAGIC Reads the gold tables and the champion's MLflow run of an environment, writes nothing: how
# MAGIC often flights are disrupted by hour, carrier and month; how the features are distributed for
# MAGIC disrupted and other flights; what the champion model learned (feature importances and its
# MAGIC ROC curve on the holdout window its run logged); and its predictions against what happened.
# MAGIC Run it after the daily workflow has trained and scored.
# MAGIC
# MAGIC Parameters: `env` picks `conf/<env>.yml` (default `databricks`); `conf_dir` a folder with
# MAGIC your own `base.yml` and `<env>.yml` (empty: the `conf/` inside the installed wheel);
# MAGIC `catalog` the Unity Catalog catalog (empty: `$LAKEHOUSE_CATALOG`; no default catalog).

# COMMAND ----------

dbutils.widgets.text("env", "databricks", "Environment: conf/<env>.yml")
dbutils.widgets.text("conf_dir", "", "Conf folder (empty: the conf/ in the wheel)")
dbutils.widgets.text("catalog", "", "Unity Catalog catalog (empty: $LAKEHOUSE_CATALOG)")

# COMMAND ----------

import json

import matplotlib.pyplot as plt
import mlflow.spark
import pandas as pd

from lakehouse import exploration, registry, tables
from lakehouse.config import load_config
from lakehouse.features import NUMERIC_FEATURES
from lakehouse.inference import score
from lakehouse.session import build_session
from lakehouse.training import between

config = load_config(dbutils.widgets.get("env"), dbutils.widgets.get("conf_dir"),
                     catalog=dbutils.widgets.get("catalog"))
spark = build_session(config)
features = tables.read(spark, config, "flight_features").cache()

# COMMAND ----------

# MAGIC %md
# MAGIC ## Disruption rate by hour, carrier and month
# MAGIC A flight is disrupted when it arrives 15+ minutes late, is cancelled or is diverted.

# COMMAND ----------

fig, axes = plt.subplots(1, 3, figsize=(18, 4))
for ax, by in zip(axes, ("hour", "carrier", "month"), strict=True):
    rates = exploration.disruption_rates(features, by)
    ax.bar(rates[by].astype(str), rates["disruption_rate"], color="tab:red")
    ax.set_title(f"disruption rate by scheduled departure {by}")
    ax.set_xlabel(by)
    ax.set_ylabel("share of flights disrupted")
display(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Feature distributions
# MAGIC Disrupted flights against the others, per feature (nulls left out: the model sees them as a
# MAGIC sentinel value).

# COMMAND ----------

shown = [c for c in ("sched_dep_hour", "distance", "plane_age", "temp", "wind_speed", "visib",
                     "precip", "origin_recent_disruption_rate", "route_history_disruption_rate")
         if c in NUMERIC_FEATURES]
histograms = exploration.feature_histograms(features, shown)
fig, axes = plt.subplots(3, 3, figsize=(15, 10))
for ax, (column, counts) in zip(axes.flat, histograms.items(), strict=False):
    width = counts["left"].diff().min() if len(counts) > 1 else 1.0
    ax.bar(counts["left"], counts["other"], width=width, align="edge", label="other")
    ax.bar(counts["left"], counts["disrupted"], width=width, align="edge",
           bottom=counts["other"], label="disrupted")
    ax.set_title(column)
axes.flat[0].legend()
fig.tight_layout()
display(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The champion: what it learned
# MAGIC Read from the MLflow run behind `models:/<model>@champion`: its holdout metrics and feature
# MAGIC importances.

# COMMAND ----------

mlflow_conf = registry.configure(config)
champion = exploration.champion_run(mlflow_conf["model_name"], registry.CHAMPION)
print(f"{champion.model_uri} = version {champion.version} (run {champion.run_id}); holdout "
      f"{champion.params['window_holdout_from']}..{champion.params['window_holdout_to']}: "
      f"AUC-ROC {champion.metrics['holdout_auc_roc']:.4f}, "
      f"AUC-PR {champion.metrics['holdout_auc_pr']:.4f}")
importances = pd.Series(champion.feature_importances).sort_values().tail(15)
fig, ax = plt.subplots(figsize=(8, 6))
ax.barh(importances.index, importances.to_numpy())
ax.set_title(f"feature importances, version {champion.version} (top 15)")
display(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Holdout ROC
# MAGIC The champion scores its own holdout window again; the area under this curve should match the
# MAGIC holdout AUC-ROC its run logged.

# COMMAND ----------

model = mlflow.spark.load_model(champion.model_uri)
holdout = features.filter("tail_recorded AND disrupted IS NOT NULL").transform(between(
    champion.params["window_holdout_from"], champion.params["window_holdout_to"]))
holdout_scored = exploration.with_outcomes(
    score(model, holdout, mlflow_conf["model_name"], champion.version, "", "champion", 0.5, 0),
    features)
curve = exploration.roc_curve(holdout_scored)
curve_auc = exploration.area_under(curve)
fig, ax = plt.subplots(figsize=(6, 6))
ax.plot(curve["fpr"], curve["tpr"], label=f"champion (AUC {curve_auc:.4f})")
ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
ax.set_xlabel("false positive rate")
ax.set_ylabel("true positive rate")
ax.set_title(f"holdout ROC (logged AUC-ROC {champion.metrics['holdout_auc_roc']:.4f})")
ax.legend()
display(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Predictions against outcomes
# MAGIC Every row of `delay_predictions` with what happened to the flight: per tenth of predicted
# MAGIC probability, the mean prediction against the share disrupted (a calibrated model follows the
# MAGIC diagonal).

# COMMAND ----------

scored = exploration.with_outcomes(tables.read(spark, config, "delay_predictions").filter(
    "role = 'champion' AND status = 'scored'"), features)
buckets = exploration.calibration(scored)
display(buckets)
fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
left.plot(buckets["predicted"], buckets["observed"], marker="o", label="champion")
left.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
left.set_xlabel("mean predicted probability")
left.set_ylabel("share disrupted")
left.legend()
right.bar(buckets["bucket"] / 10, buckets["flights"], width=0.1, align="edge")
right.set_xlabel("predicted probability")
right.set_ylabel("flights")
fig.tight_layout()
display(fig)

# COMMAND ----------

features.unpersist()
dbutils.notebook.exit(json.dumps({
    "model_version": champion.version,
    "holdout_auc_roc_logged": champion.metrics["holdout_auc_roc"],
    "holdout_auc_roc_from_curve": curve_auc,
    "predictions": int(buckets["flights"].sum()),
}))
