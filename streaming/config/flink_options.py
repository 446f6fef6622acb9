"""Flink's configuration keys for a job's settings (no pyflink here, so the unit tier checks them)."""

from __future__ import annotations

import site
import sys
from pathlib import Path

from streaming.config import PROJECT_ROOT, ConfigError, RestartSettings, Settings

BUILD = PROJECT_ROOT / "build"  # `make jar` builds the project's jar here, `make jars` also fetches the connector
KAFKA_CONNECTOR_PATTERN = "flink-sql-connector-kafka-*.jar"


def job_jars(settings: Settings) -> list[Path]:
    """The jars on the job's class path: the project's Java pieces (jvm/; its Kafka classes load
    only in Kafka mode), in Kafka mode also Flink's Kafka connector, then the profile's own
    `flink.jars`. Raises ConfigError naming the first one that is missing and how to build it."""
    jars = [BUILD / "riskstream-flink.jar"]
    build = "make jar"  # the Makefile's target for the project's jar; `make jars` also fetches the connector
    if "kafka" in (settings.source.kind, settings.output.kind):
        connectors = sorted((BUILD / "flink-jars").glob(KAFKA_CONNECTOR_PATTERN))
        jars += connectors or [BUILD / "flink-jars" / KAFKA_CONNECTOR_PATTERN]
        build = "make jars"
    for jar in jars:
        if not jar.is_file():
            raise ConfigError(f"{jar} is missing; build it with `{build}` in {PROJECT_ROOT}")
    for jar in map(Path, settings.flink.jars):
        if not jar.is_file():
            raise ConfigError(f"flink.jars: {jar} is not a file")
    return [*jars, *map(Path, settings.flink.jars)]


def python_worker_executable(python: str | Path = sys.executable) -> Path:
    """The `riskstream-python-worker` beside the interpreter `python` (streaming/ops/python_worker.py):
    that Python, with a watchdog that ends each worker when the JVM that started it dies."""
    return Path(python).with_name("riskstream-python-worker")


def flink_options(settings: Settings) -> dict[str, str]:
    """Flink's configuration keys for the job (strings, as Flink takes them); the Python workers
    use this interpreter and its packages. The same keys apply on a mini-cluster and when the job is
    submitted to a session cluster with `flink run`."""
    flink = settings.flink
    checkpoints = settings.checkpointing
    bundling = settings.performance.bundling()
    return {
        "execution.runtime-mode": "STREAMING",  # BATCH would sort by key and break arrival order
        "parallelism.default": str(flink.parallelism),
        "taskmanager.numberOfTaskSlots": str(2 * flink.parallelism),  # preparing and scoring groups
        "pipeline.max-parallelism": str(flink.max_parallelism),
        "python.execution-mode": flink.python_execution_mode,
        "python.executable": str(python_worker_executable()),
        "python.client.executable": sys.executable,
        # Thread mode embeds CPython in the JVM, which does not read the virtual environment.
        "python.pythonpath": ":".join(site.getsitepackages()),
        "execution.checkpointing.interval": f"{checkpoints.interval_ms} ms",
        "execution.checkpointing.min-pause": f"{checkpoints.min_pause_ms} ms",
        "execution.checkpointing.dir": Path(checkpoints.directory).as_uri(),
        "execution.checkpointing.savepoint-dir": Path(checkpoints.savepoint_directory).as_uri(),
        "state.backend.type": checkpoints.state_backend,
        "execution.checkpointing.incremental": str(checkpoints.incremental).lower(),
        "execution.checkpointing.externalized-checkpoint-retention":
            "RETAIN_ON_CANCELLATION" if checkpoints.retain_on_cancel else "DELETE_ON_CANCELLATION",
        "execution.checkpointing.tolerable-failed-checkpoints": str(checkpoints.tolerable_failures),
        **restart_options(checkpoints.restart),
        "pipeline.jars": ";".join(jar.as_uri() for jar in job_jars(settings)),
        "execution.buffer-timeout.interval": f"{bundling.buffer_timeout_ms} ms",
        # Our elements are already bundles of records: let a Python worker hold only a few at a
        # time, so a checkpoint (which waits for the worker to finish them) stays short.
        "python.fn-execution.bundle.size": "64",
        "python.fn-execution.bundle.time": str(max(1, bundling.max_delay_ms)),
        # Process mode sends keyed-state writes to the JVM in batches of this many.
        "python.map-state.write-cache-size": "10000",
        # A bundle of records spans many network buffers; with too few to finish it, a
        # backpressured task blocks mid-record and cannot take a checkpoint barrier until buffers
        # free up (the source's checkpoint start delay measured 0.4-0.8 s at the default, 5;
        # 0 at 40). Overdraft buffers are used only while a record is being written.
        "taskmanager.network.memory.max-overdraft-buffers-per-gate": "40",
    }


def local_cluster_options(settings: Settings) -> dict[str, str]:
    """Flink's keys that size the embedded mini-cluster of `riskstream run` (a session cluster's
    TaskManagers take theirs from their own configuration, not from a job's)."""
    return {"taskmanager.memory.managed.size": f"{settings.flink.local_managed_memory_mb}m"}


def restart_options(restart: RestartSettings) -> dict[str, str]:
    """Flink's restart-strategy keys for `checkpointing.restart`."""
    if restart.strategy == "fixed-delay":
        return {"restart-strategy.type": "fixed-delay",
                "restart-strategy.fixed-delay.attempts": str(restart.attempts),
                "restart-strategy.fixed-delay.delay": f"{restart.delay_ms} ms"}
    if restart.strategy == "exponential-delay":
        return {"restart-strategy.type": "exponential-delay",
                "restart-strategy.exponential-delay.initial-backoff": f"{restart.delay_ms} ms",
                "restart-strategy.exponential-delay.max-backoff": f"{max(restart.delay_ms, restart.max_delay_ms)} ms"}
    return {"restart-strategy.type": "none"}
