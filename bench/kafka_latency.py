"""Kafka-mode latency for `make bench`: from the moment a transaction is produced to the moment its
score is readable by a read_committed consumer, at a steady produce rate.

For each setting the job runs unbounded (`riskstream run --config conf/kafka.yaml`) on fresh topics;
a warm-up batch is produced until its scores come back, then WARM_UP_SECONDS of transactions at
RATE/s (not measured: the JVM is still compiling the hot paths), then RECORDS transactions at RATE/s. The
producer notes each txn_id's send time just before handing it to the client; a read_committed
consumer notes when its score arrives. Returns p50/p99 in milliseconds per setting and delivery.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PROFILE = PROJECT / "conf" / "kafka.yaml"
RATE = 2000
RECORDS = 20_000
WARM_UP_SECONDS = 15
# The low-latency setting scores bundles of a few records; thread mode calls Python without the
# process mode's per-call transfer, which is what small bundles pay for. Thread mode has one Python
# interpreter lock per JVM, so a second parallel subtask adds a shuffle and lock contention but no
# Python capacity: parallelism 1 (measured: p99 about 80 ms at 1, 120-490 ms at 2).
# Two shards, not 32: a bundle of a few records would otherwise call the scoring function once per
# shard it touches, about ten times per 5 ms bundle, which took p50 from 27 to 111 ms.
LOW_LATENCY = ["performance.mode=low_latency", "flink.python_execution_mode=thread", "flink.parallelism=1",
               "performance.shards=2"]
SETTINGS = (
    ("default", "at-least-once", []),
    ("low_latency", "at-least-once", LOW_LATENCY),
    ("default", "exactly-once", []),
)


def measure(setting: str, delivery: str, extra: list[str]) -> dict:
    from confluent_kafka import Consumer, Producer

    from streaming.config import load_settings
    from streaming.config.from_settings import cleaning_rules
    from streaming.ops import kafka_tools
    from udfs.generator import GeneratorSettings, generate

    run = uuid.uuid4().hex[:8]
    overrides = [*kafka_tools.isolated_overrides("latency"), f"kafka.delivery={delivery}",
                 f"checkpointing.directory={PROJECT / 'var' / 'bench-latency' / run}", *extra]
    settings = load_settings(PROFILE, overrides)
    rules = cleaning_rules(settings)
    kafka_tools.create_topics(settings)
    received: dict[str, float] = {}
    stop = threading.Event()

    def consume():
        # A reader that wants scores as soon as they are committed: fetches wait at most 10 ms
        # (librdkafka's default of 500 ms alone added about 100 ms here).
        consumer = Consumer({**settings.kafka.client_properties(), "group.id": f"lat-reader-{run}",
                             "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                             "fetch.wait.max.ms": 5, "fetch.min.bytes": 1 << 20})
        consumer.subscribe([settings.kafka.scores_topic])
        while not stop.is_set():
            message = consumer.poll(0.05)
            if message is not None and not message.error():
                received[json.loads(message.value())["txn_id"]] = time.time()
        consumer.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    command = [str(PROJECT / ".venv/bin/riskstream"), "run", "--config", str(PROFILE)]
    for override in overrides:
        command += ["--set", override]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                           env={**os.environ, "FLINK_LOG_DIR": str(PROJECT / "var" / "log")})
    producer = Producer({**settings.kafka.client_properties(), "enable.idempotence": True, "acks": "all",
                         "linger.ms": 1})
    try:
        warm_up = list(generate(GeneratorSettings(records=200, seed=90)))
        for line in warm_up:
            producer.produce(settings.kafka.transactions_topic, line,
                             key=kafka_tools.partition_key(line, settings.model.key, rules))
        producer.flush()
        deadline = time.monotonic() + 120
        while len(received) < len(warm_up) and time.monotonic() < deadline:
            time.sleep(0.2)
        if len(received) < len(warm_up):
            raise RuntimeError(f"{setting}/{delivery}: the job did not score the warm-up batch in 120 s")
        sent: dict[str, float] = {}
        warm_up_records = WARM_UP_SECONDS * RATE
        started = time.monotonic()
        stream = generate(GeneratorSettings(records=warm_up_records + RECORDS, seed=91))
        for index, line in enumerate(stream):
            delay = index / RATE - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
            if index >= warm_up_records:
                sent[json.loads(line)["txn_id"]] = time.time()
            producer.produce(settings.kafka.transactions_topic, line,
                             key=kafka_tools.partition_key(line, settings.model.key, rules))
            producer.poll(0)
        producer.flush()
        deadline = time.monotonic() + 60
        while not sent.keys() <= received.keys() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        os.killpg(job.pid, signal.SIGTERM)
        try:
            job.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
        reader.join()
        kafka_tools.delete_topics(settings)
    ordered = [(received[t] - sent[t]) * 1000 for t in sent if t in received]
    if os.environ.get("RISKSTREAM_LATENCY_TRACE"):
        print([round(statistics.median(ordered[i:i + 2000])) for i in range(0, len(ordered), 2000)])
    latencies = sorted(ordered)
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[int(0.99 * (len(latencies) - 1))],
        "records": len(sent),
        "scored": len(latencies),
    }


def kafka_latency(repeat: int = 1) -> dict:
    """{setting: {delivery: {p50, p99, records, scored, runs}}} for the settings in SETTINGS: each
    measured `repeat` times, the medians of the runs' p50 and p99."""
    results: dict[str, dict] = {}
    for setting, delivery, extra in SETTINGS:
        runs = [measure(setting, delivery, extra) for _ in range(repeat)]
        results.setdefault(setting, {})[delivery] = {
            "p50": statistics.median(run["p50"] for run in runs), "p99": statistics.median(run["p99"] for run in runs),
            "records": sum(run["records"] for run in runs), "scored": sum(run["scored"] for run in runs),
            "runs": runs}
        each = ", ".join(f"{run['p99']:.0f}" for run in runs)
        print(f"  kafka latency, {setting}, {delivery}: p50 {results[setting][delivery]['p50']:.0f} ms, "
              f"p99 {results[setting][delivery]['p99']:.0f} ms (median of {repeat}; p99 of each run: {each})",
              flush=True)
    return results


if __name__ == "__main__":
    print(json.dumps(kafka_latency(), indent=2))
