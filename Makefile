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
ENV ?= local
FROM ?= 2013-01-01
TO ?= 2013-12-31
PYTEST_ARGS ?=

.PHONY: help setup run test bench clean-data lint kafka

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(JARS_DIR)/.resolved-spark:
	mkdir -p $(JARS_DIR)
	for a in $(DELTA_JARS) $(KAFKA_JARS); do mvn -q -B dependency:copy -Dartifact=$$a -DoutputDirectory=$(JARS_DIR) || exit 1; done
	touch $@

$(BROKER_DIR)/.resolved: kafka/pom.xml
	mvn -q -B -f kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(abspath $(BROKER_DIR))
	touch $@

setup: $(VENV)/.installed $(JARS_DIR)/.resolved-spark $(BROKER_DIR)/.resolved  ## Create the virtualenv, fetch the Delta, Kafka and broker jars (once)

run: setup  ## Seed the landing zone with the full year and run the daily pipeline end to end
	$(LAKEHOUSE) seed --env $(ENV) --from $(FROM) --to $(TO)
	$(LAKEHOUSE) run daily --env $(ENV)

test: setup  ## Run the whole test suite (unit, contract and end-to-end tests)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup  ## Run the benchmarks under bench/ (prints ratios measured side by side)
	$(PY) bench/bronze.py
	$(PY) bench/silver.py
	$(PY) bench/streaming.py

kafka: setup  ## Start a single-node Kafka broker on 127.0.0.1:$(KAFKA_PORT) until Ctrl-C (data in data/kafka)
	$(PY) -m lakehouse.broker --port $(KAFKA_PORT) --folder data/kafka

clean-data:  ## Remove the local landing zone, tables, checkpoints and MLflow store
	rm -rf data
