# lakehouse: `make help` lists the targets. Every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LAKEHOUSE := $(VENV)/bin/lakehouse
JARS_DIR ?= .jars
# Delta Lake for Spark 4.1: the pip wheel holds no jars, so Maven fetches them once into $(JARS_DIR).
DELTA_JARS := io.delta:delta-spark_4.1_2.13:4.2.0 io.delta:delta-storage:4.2.0
# Spark's Kafka source for the pinned Spark 4.1.1 and the three jars pyspark does not ship.
KAFKA_JARS := org.apache.spark:spark-sql-kafka-0-10_2.13:4.1.1 \
	org.apache.spark:spark-token-provider-kafka-0-10_2.13:4.1.1 \
	org.apache.kafka:kafka-clients:3.9.1 org.apache.commons:commons-pool2:2.12.1
# A single-node Kafka broker (kafka/pom.xml and its dependencies), kept off Spark's classpath.
BROKER_DIR := $(JARS_DIR)/kafka-broker
KAFKA_PORT ?= 9092
# Test tools, kept apart from the Spark classpath: Quartz checks the bundle's cron schedule.
TOOL_JARS := org.quartz-scheduler:quartz:2.5.2
ENV ?= local
FROM ?= 2013-01-01
TO ?= 2013-12-31
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` and `make slow-test`, each with its own Spark session; a
# test file stays on one.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: help setup run test slow-test cluster-test wheel-test lint wheel bench clean-data kafka

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

# The spark extra (pyspark, delta-spark) is installed here; a cluster brings its own Spark.
$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[spark,test,lint]'
	touch $@

$(JARS_DIR)/.resolved-spark:
	mkdir -p $(JARS_DIR)
	for a in $(DELTA_JARS) $(KAFKA_JARS); do mvn -q -B dependency:copy -Dartifact=$$a -DoutputDirectory=$(JARS_DIR) || exit 1; done
	touch $@

$(BROKER_DIR)/.resolved: kafka/pom.xml
	mvn -q -B -f kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(abspath $(BROKER_DIR))
	touch $@

$(JARS_DIR)/tools/.resolved:
	mkdir -p $(JARS_DIR)/tools
	for a in $(TOOL_JARS); do mvn -q -B dependency:copy -Dartifact=$$a -DoutputDirectory=$(JARS_DIR)/tools || exit 1; done
	touch $@

setup: $(VENV)/.installed $(JARS_DIR)/.resolved-spark $(BROKER_DIR)/.resolved $(JARS_DIR)/tools/.resolved  ## Create the virtualenv, fetch the Delta, Kafka, broker and tool jars (once)

run: setup  ## Seed the landing zone with the full year and run the daily pipeline end to end
	$(LAKEHOUSE) seed --env $(ENV) --from $(FROM) --to $(TO)
	$(LAKEHOUSE) run daily --env $(ENV)

# PYTEST_ARGS adds options (-k gold); a -m there would replace the target's selection.
# make test's JVMs run C1 alone with the serial collector (tests/conftest.py says why); the slow
# tests keep the JVM's defaults.
test: setup  ## Run the test suite except the slow end-to-end tests (unit, contract, job and stream tests)
	LAKEHOUSE_TEST_JAVA_OPTIONS="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC" $(PY) -m pytest $(XDIST) -m "not slow and not cluster and not install" $(PYTEST_ARGS)

slow-test: setup  ## Run the slow end-to-end tests (whole jobs run many times; CI runs them after make test)
	$(PY) -m pytest $(XDIST) -m "slow and not cluster and not install" $(PYTEST_ARGS)

cluster-test: setup  ## Start a Spark standalone cluster on 127.0.0.1, run the daily job on it, stop it
	$(PY) -m pytest tests -m cluster $(PYTEST_ARGS)

wheel-test: setup  ## Build the wheel, install it with the spark extra into fresh virtualenvs (3.11, 3.12), run it
	$(PY) -m pytest tests/test_wheel.py -m install $(PYTEST_ARGS)

lint: setup  ## ruff (E, F, I, UP, B, RUF) over the repository, mypy over lakehouse/
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pre-commit validate-config .pre-commit-config.yaml

wheel: setup  ## Build dist/lakehouse-<version>-py3-none-any.whl (conf/ inside; Spark an extra)
	rm -f dist/lakehouse-*.whl
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .

bench: setup  ## Run the benchmarks under bench/ (prints ratios measured side by side)
	$(PY) bench/bronze.py
	$(PY) bench/silver.py
	$(PY) bench/gold.py
	$(PY) bench/scoring.py
	$(PY) bench/tuning.py
	$(PY) bench/streaming.py

kafka: setup  ## Start a single-node Kafka broker on 127.0.0.1:$(KAFKA_PORT) until Ctrl-C (data in data/kafka)
	$(PY) -m lakehouse.broker --port $(KAFKA_PORT) --folder data/kafka

clean-data:  ## Remove the local landing zone, tables, checkpoints and MLflow store
	rm -rf data
