# Two commands set everything up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
JAR := build/riskstream-flink.jar
JAVA_SOURCES := $(wildcard streaming/jvm/riskstream/flink/*.java)
SAMPLE := data/sample.jsonl

RIVER_VENV := .venv-river
RIVER_INSTALLED := $(RIVER_VENV)/.installed
BENCH_ARGS ?=

KAFKA_LIBS := build/kafka-libs/.resolved
FLINK_KAFKA := build/flink-jars/.resolved
KAFKA_JAR := build/riskstream-flink-kafka.jar
KAFKA_JAVA_SOURCES := $(wildcard streaming/jvm-kafka/riskstream/flink/kafka/*.java)

JAVA_TEST_LIBS := build/java-test-libs/.resolved
JAVA_TEST_SOURCES := $(wildcard streaming/jvm-test/riskstream/flink/*.java)

.PHONY: run test lint unit integration java-test bench jar jars kafka-libs kafka-up kafka-down cluster-up cluster-down clean lock compose-test

run: $(JAR) $(SAMPLE)
	$(VENV)/bin/riskstream run --config conf/local.yaml
	$(VENV)/bin/riskstream report --config conf/local.yaml

# The checks in order of cost, so that a mistake fails early: ruff (well under a minute), the unit
# tier (no JVM, no services: about a minute), the Java operators' tests, then the integration tier
# with the project's Kafka broker and session cluster, started here and stopped again whatever
# happens (about 20 minutes). Each pytest run lists its 15 slowest tests.
PYTEST := $(PY) -m pytest -q --durations=15
# Starts the broker and the session cluster, runs the integration tier, and stops both on the way
# out: on success, on failure and on Ctrl-C (the trap keeps the tests' exit status).
WITH_SERVICES = trap 'status=$$?; set +e; $(VENV)/bin/riskstream cluster down; kafka/kafka.sh down; exit $$status' EXIT; \
	trap 'exit 130' INT TERM; \
	kafka/kafka.sh up; $(VENV)/bin/riskstream cluster up --overrides conf/flink/test.yaml

test: lint unit $(JAR) $(KAFKA_JAR) $(KAFKA_LIBS) java-test
	set -e; $(WITH_SERVICES); $(PYTEST) tests/integration

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .

unit: $(INSTALLED)
	$(PYTEST) tests/unit

integration: $(JAR) $(KAFKA_JAR) $(KAFKA_LIBS)
	set -e; $(WITH_SERVICES); $(PYTEST) tests/integration

# The Java operators' unit tests (streaming/jvm-test), on Flink's operator test harness, compiled
# against the installed PyFlink's jars and run with JUnit's console launcher.
java-test: $(JAR) $(JAVA_TEST_LIBS)
	rm -rf build/java-test-classes && mkdir -p build/java-test-classes
	flink_home=$$($(PY) -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))') && \
	class_path="$$flink_home/lib/*:$(JAR):build/java-test-libs/*" && \
	javac --release 11 -nowarn -d build/java-test-classes -cp "$$class_path" $(JAVA_TEST_SOURCES) && \
	java -cp "build/java-test-classes:$$class_path" org.junit.platform.console.ConsoleLauncher execute \
		--disable-banner --disable-ansi-colors --details=tree --include-engine=junit-jupiter --fail-if-no-tests --scan-class-path build/java-test-classes

kafka-up: $(KAFKA_LIBS)
	kafka/kafka.sh up

kafka-down:
	kafka/kafka.sh down

# The local Flink session cluster (conf/flink; pid files, logs and lib/ under var/flink).
cluster-up: $(JAR) $(KAFKA_JAR)
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
# BENCH_ARGS="--only jobs --only stages --repeat 3" for part of it (bench/run_bench.py).
bench: $(JAR) $(KAFKA_JAR) $(KAFKA_LIBS) $(RIVER_INSTALLED)
	kafka/kafka.sh up
	$(PY) bench/run_bench.py $(BENCH_ARGS); status=$$?; $(VENV)/bin/riskstream cluster down; kafka/kafka.sh down; exit $$status

jar: $(JAR)

# Every jar a job needs: the project's Java pieces and Flink's Kafka connector.
jars: $(JAR) $(KAFKA_JAR)

# Every package at the version of constraints.txt, the lock file the Dockerfile installs from too.
$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# Re-resolves pyproject.toml's dependencies (and the tests') into constraints.txt, in a fresh
# environment; setuptools is pinned for the image's offline editable install.
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet --upgrade setuptools
	build/lock-venv/bin/python -m pip install --quiet -e '.[test]'
	{ sed -n '/^#/p' constraints.txt; build/lock-venv/bin/python -m pip freeze --exclude-editable; \
	  build/lock-venv/bin/python -m pip freeze --all | grep '^setuptools=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf build/lock-venv

# The docker-compose stack, built and run for real (needs a Docker engine; not part of `make test`,
# which checks the compose file and the Dockerfile statically): see docker/compose-test.sh.
compose-test:
	docker/compose-test.sh

# River needs a newer numpy than PyFlink allows, so it gets its own environment, for the benchmark only.
$(RIVER_INSTALLED): pyproject.toml | $(INSTALLED)
	$(PYTHON) -m venv $(RIVER_VENV)
	$(RIVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RIVER_VENV)/bin/python -m pip install --quiet "river==0.26.1" "immutabledict>=4" "msgspec>=0.19" "numba>=0.61" "orjson>=3.9" "pydantic>=2.5,<3" "pyyaml>=6" "tqdm>=4.60"
	$(RIVER_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

# Compiled against the jars of the installed PyFlink, so the classes always match its Flink version.
$(JAR): $(INSTALLED) $(JAVA_SOURCES)
	rm -rf build/classes && mkdir -p build/classes
	flink_home=$$($(PY) -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))') && \
	javac --release 11 -nowarn -d build/classes -cp "$$flink_home/lib/*:$$flink_home/opt/*" $(JAVA_SOURCES)
	jar cf $@ -C build/classes .

# The operator test harness matching PyFlink's Flink version, and JUnit (streaming/jvm-test/pom.xml).
$(JAVA_TEST_LIBS): streaming/jvm-test/pom.xml $(INSTALLED)
	rm -rf build/java-test-libs
	flink_version=$$($(PY) -c 'import pyflink.version; print(pyflink.version.__version__)') && \
	cd streaming/jvm-test && mvn -q -B dependency:copy-dependencies -Dflink.version=$$flink_version \
		-DoutputDirectory=../../build/java-test-libs
	touch $@

# The Flink Kafka connector matching PyFlink's Flink version (kafka/pom.xml, profile flink-connector).
$(FLINK_KAFKA): kafka/pom.xml
	rm -rf build/flink-jars
	cd kafka && mvn -q -B -P flink-connector dependency:copy-dependencies -DoutputDirectory=../build/flink-jars
	touch $@

$(KAFKA_JAR): $(INSTALLED) $(FLINK_KAFKA) $(KAFKA_JAVA_SOURCES)
	rm -rf build/kafka-classes && mkdir -p build/kafka-classes
	flink_home=$$($(PY) -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))') && \
	javac --release 11 -nowarn -d build/kafka-classes -cp "$$flink_home/lib/*:build/flink-jars/*" $(KAFKA_JAVA_SOURCES)
	jar cf $@ -C build/kafka-classes .

$(SAMPLE): | $(INSTALLED)
	$(VENV)/bin/riskstream generate --out $@ --records 200000 --malformed-share 0.02 --drift-at 0.6

clean:
	rm -rf build out var .pytest_cache $(RIVER_VENV)
