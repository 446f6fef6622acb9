# The one image of the docker-compose stack (docker-compose.yml): the broker, the Flink JobManager
# and TaskManager, and the riskstream command, from the project's own lock file (constraints.txt)
# and Maven builds (kafka/pom.xml, jvm/pom.xml). Base image: `docker/base-image.sh` makes it where
# no registry answers. The build uses only what the classic builder supports, as docker-compose
# 1.29 does.

FROM debian:bookworm-slim AS base
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# (The slim image has no man pages, and Java's package fails where it cannot link its own.)
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*

# Build stage: the virtual environment, the broker's and the connector's jars, the project's Java
# pieces (jvm/, built by Maven). Nothing of it but those reaches the runtime image (no compilers,
# no Maven, no extra CA).
FROM base AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv openjdk-17-jdk-headless maven make \
      ca-certificates ca-certificates-java \
 && rm -rf /var/lib/apt/lists/*
# Certificate authorities of a TLS-inspecting gateway, if the build context has any
# (docker/build-ca/README.md): split into one file per certificate, as update-ca-certificates and
# its Java hook (Maven's trust store) need them; pip is pointed at the system bundle.
COPY docker/build-ca/ /tmp/build-ca/
RUN for file in /tmp/build-ca/*.crt /tmp/build-ca/*.pem; do \
      [ -f "$file" ] || continue; \
      awk -v prefix="/usr/local/share/ca-certificates/build-$(basename "$file")" \
        '/BEGIN CERTIFICATE/ { count++; out = sprintf("%s-%03d.crt", prefix, count) } \
         count { print > out } /END CERTIFICATE/ { close(out) }' "$file"; \
    done \
 && update-ca-certificates > /dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/riskstream
# Dependencies first, so that a change of the sources rebuilds in seconds: the runtime dependencies
# of pyproject.toml at the versions of constraints.txt (and setuptools, for the editable install).
COPY pyproject.toml constraints.txt ./
RUN python3 -m venv .venv \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/dependencies.txt \
 && .venv/bin/pip install --quiet -c constraints.txt -r /tmp/dependencies.txt setuptools
# The broker and the Flink Kafka connector, resolved from Maven Central by kafka/pom.xml, with the
# Makefile's own rules (the environment above counts as installed).
COPY Makefile ./
COPY kafka/pom.xml kafka/
RUN touch .venv/.installed \
 && make --no-print-directory build/kafka-libs/.resolved build/flink-jars/.resolved \
 && rm -rf "$HOME/.m2"
# The project's Java pieces, one Maven project (jvm/): first what its build needs from Maven
# Central (`make java-deps` runs the build on the pom alone), then the jar, built offline.
COPY jvm/pom.xml jvm/
RUN make --no-print-directory java-deps
COPY jvm/src/main jvm/src/main/
RUN make --no-print-directory jars MAVEN_FLAGS=--offline && rm -rf jvm/target "$HOME/.m2"

FROM base
RUN useradd --create-home --uid 1000 riskstream \
 && mkdir -p /var/lib/riskstream/checkpoints /var/lib/riskstream/savepoints /opt/riskstream/var/kafka \
 && chown -R riskstream /var/lib/riskstream /opt/riskstream
WORKDIR /opt/riskstream
COPY --from=build /opt/riskstream/.venv .venv/
COPY --from=build /opt/riskstream/build build/
COPY pyproject.toml README.md Makefile constraints.txt ./
COPY conf conf/
COPY kafka kafka/
COPY udfs udfs/
COPY streaming streaming/
COPY tests tests/
# The project itself, editable (the code stays in /opt/riskstream, where the cluster and the jobs
# find conf/ and build/), offline: everything it needs is in the environment already.
RUN .venv/bin/pip install --quiet --no-deps --no-build-isolation --no-index -e . \
 && chown -R riskstream var
ENV PATH=/opt/riskstream/.venv/bin:$PATH \
    RISKSTREAM_PROFILE=conf/compose.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/opt/riskstream/var/numba-cache
USER riskstream
# The model's compiled code, cached in the image, so that no container compiles it at start.
RUN python -c "from udfs.scoring import compile_model_code; compile_model_code()"
CMD ["riskstream", "--help"]
