"""Savepoint fixtures (tests/fixtures/savepoints/<name>/): a savepoint of the Kafka-sourced job taken
by an earlier commit, the exact input it was taken from, and a manifest saying how. Used by
tests/integration/test_savepoint_compat.py, which restores them, and by
tests/fixtures/savepoints/make_fixture.py, which makes them.

A fixture folder holds:
- `savepoint/`: the savepoint as Flink wrote it (`_metadata` and any state files; relocatable);
- `input.jsonl.gz`: every record of the input topic, one JSON line each, in the order produced;
- `manifest.json`: the commit that took it, the job's profile and `--set` overrides, the fixed
  topic names (the Kafka source's split state holds topic, partition and offset, so a restore
  must read topics of these names), which records each partition had, and how many of each
  partition's records the job had read when the savepoint was taken (its source offsets).

Also the steps the savepoint and rescaling tests share on the session cluster: stop a job with a
savepoint part way through, resume one until everything is scored.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming.config import Settings
from streaming.ops import drill as failover_drill
from streaming.ops import kafka_tools, local_cluster, rest

PROJECT = Path(__file__).resolve().parents[1]
FIXTURES = PROJECT / "tests" / "fixtures" / "savepoints"
MANIFEST = "manifest.json"
INPUT = "input.jsonl.gz"
SAVEPOINT = "savepoint"

# The model's inputs in the order of its weights: raw numbers, nothing standardized or encoded, so
# that the job's model is the textbook sequential SGD of `reference_models`.
FEATURES = ("amount", "a", "b", "c", "d")
RAW_FEATURES = ("features={numeric: [{field: amount}, {field: features.a}, {field: features.b},"
                " {field: features.c}, {field: features.d}], categorical: [],"
                " time: {hour_of_day: none, day_of_week: none}}")


def topic_overrides(prefix: str) -> list[str]:
    """`--set` overrides naming every topic, the consumer group and the transactional ids after
    `prefix` (as kafka_tools.isolated_overrides does, but fixed: a fixture's source state names
    its topic)."""
    return [f"kafka.transactions_topic={prefix}-tx", f"kafka.scores_topic={prefix}-scores",
            f"kafka.dead_letters_topic={prefix}-dead", f"kafka.snapshots_topic={prefix}-snap",
            f"kafka.analytics_topic={prefix}-analytics", f"kafka.late_topic={prefix}-late",
            f"kafka.labels_topic={prefix}-labels", f"kafka.learning_topic={prefix}-learning",
            f"kafka.label_dead_letters_topic={prefix}-label-dead", f"kafka.drift_topic={prefix}-drift",
            f"kafka.consumer_group={prefix}",
            f"kafka.transactional_id_prefix={prefix}"]


def state_overrides(state_dir: Path) -> list[str]:
    return [f"checkpointing.directory={state_dir / 'checkpoints'}",
            f"checkpointing.savepoint_directory={state_dir / 'savepoints'}"]


@dataclass(frozen=True)
class Fixture:
    folder: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, folder: Path) -> "Fixture":
        return cls(folder, json.loads((folder / MANIFEST).read_text(encoding="utf-8")))

    @property
    def savepoint(self) -> Path:
        return self.folder / SAVEPOINT

    @property
    def profile(self) -> Path:
        return PROJECT / self.manifest["job"]["profile"]

    def lines(self) -> list[bytes]:
        """The input, checked against the digest the manifest recorded when the fixture was made."""
        data = gzip.decompress((self.folder / INPUT).read_bytes())
        assert hashlib.sha256(data).hexdigest() == self.manifest["input"]["sha256"], "the input is not the fixture's"
        return data.splitlines()

    def overrides(self, state_dir: Path) -> list[str]:
        """The fixture job's `--set` overrides on its topics, with checkpoints and savepoints under
        `state_dir`. Its model is plain SGD (constant rate, no L2), as `reference_models` computes."""
        return [*self.manifest["job"]["overrides"], *topic_overrides(self.manifest["kafka"]["prefix"]),
                *state_overrides(state_dir)]

    def source_offsets(self) -> dict[int, int]:
        """Partition -> offset of the first record the savepoint's source had not read."""
        return {int(partition): offset for partition, offset in self.manifest["savepoint"]["source_offsets"].items()}


def recreate_topics(settings: Settings, timeout_s: float = 60) -> None:
    """Deletes the profile's topics, waits until the broker no longer lists them, and creates them
    afresh: each is then empty, and a record produced to it gets the offset it had when the fixture
    was made."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_tools.client_config(settings))
    names = set(settings.kafka.topics())
    kafka_tools.delete_topics(settings)
    deadline = time.monotonic() + timeout_s
    while names & set(admin.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {sorted(names)} still listed {timeout_s:.0f} s after deleting them")
        time.sleep(0.5)
    created = kafka_tools.create_topics(settings)
    assert set(created) == names, f"not created afresh: {sorted(names - set(created))}"


def partition_layout(settings: Settings, count: int) -> dict[int, list[str]]:
    """The txn_id of every record of the transactions topic, by partition, in offset order (offsets
    from 0 without gaps: the topic is new and its producer is not transactional)."""
    layout: dict[int, list[tuple[int, str]]] = {}
    for partition, offset, _, value in kafka_tools.tail(settings, settings.kafka.transactions_topic,
                                                        max_records=count, idle_timeout_s=10):
        layout.setdefault(partition, []).append((offset, json.loads(value)["txn_id"]))
    for records in layout.values():
        records.sort()
        assert [offset for offset, _ in records] == list(range(len(records))), "offsets with gaps"
    return {partition: [txn_id for _, txn_id in records] for partition, records in sorted(layout.items())}


def layout_digest(txn_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(txn_ids).encode()).hexdigest()


@dataclass
class ReferenceModel:
    weights: list[float]
    bias: float = 0.0
    updates: int = 0


def reference_models(lines: list[bytes], learning_rate: float) -> tuple[dict[str, tuple[float, int]],
                                                                       dict[str, ReferenceModel]]:
    """The textbook sequential logistic SGD per model key (merchant_category), over the records in
    input order, each scored before it is learned from (unlabelled ones only scored). Returns
    (txn_id -> (score, updates before it)) and (model key -> final model)."""
    scores: dict[str, tuple[float, int]] = {}
    models: dict[str, ReferenceModel] = {}
    for line in lines:
        record = json.loads(line)
        model = models.setdefault(record["merchant_category"], ReferenceModel([0.0] * len(FEATURES)))
        x = [record["amount"]] + [record["features"][name] for name in FEATURES[1:]]
        p = 1 / (1 + math.exp(-(model.bias + sum(w * v for w, v in zip(model.weights, x)))))
        scores[record["txn_id"]] = (p, model.updates)
        if record["is_fraud"] is not None:
            error = p - record["is_fraud"]
            model.weights = [w - learning_rate * error * v for w, v in zip(model.weights, x)]
            model.bias -= learning_rate * error
            model.updates += 1
    return scores, models


# How long a job may take to reach what a step waits for, on this 2-core machine.
TIMEOUT_S = 180


def stop_after(local: local_cluster.LocalCluster, settings, overrides: list[str], from_path: str | None,
               records: int) -> str:
    """Submits the job (resumed from `from_path`, or afresh), waits until its source has read
    `records` records in this attempt, stops it with a savepoint and returns the savepoint's path.

    A stop whose savepoint fails while the job runs on is tried again, at most twice, as a user
    would: Flink 2.2 fails the savepoint when a task finishes as it is triggered ("TaskManager
    received a checkpoint request for unknown task": a bounded labels source reaching its end), and
    the job goes on running."""
    run = failover_drill.DrillRun(job_id=failover_drill.submit(local, overrides, from_path))
    watch = failover_drill.Watch(local, run)
    watch.until(f"{records} records", lambda: watch.attempt_records() >= records, TIMEOUT_S)
    directory = Path(settings.checkpointing.savepoint_directory).as_uri()
    for attempt in range(3):
        try:
            savepoint = rest.stop_with_savepoint(local.rest_url, run.job_id, directory)
            break
        except rest.ClusterError:
            if attempt == 2 or watch.job()["state"] != "RUNNING":
                raise
            time.sleep(1)
    watch.until_finished(TIMEOUT_S)
    return savepoint


def resume_until_all_scored(local: local_cluster.LocalCluster, settings, overrides: list[str], from_path: str | None,
                            expected_scores: int, quiet_s: float = 0,
                            labels_quiet_s: float | None = None) -> tuple[str, failover_drill.Committed]:
    """Submits the job resumed from `from_path` (None: started afresh), waits until the scores
    topic holds `expected_scores` committed scores and then `quiet_s` more seconds, ends the job
    with stop --drain (a Kafka source
    restored from a savepoint does not end by itself, FLINK-31006; draining passes the end of input
    through the job, which writes each model's final snapshot), and returns the job id and what a
    read_committed consumer finds in the output topics. With `labels_quiet_s`, it also waits until
    the labels' source (bounded: it reads to its end, then waits) has read nothing for that long."""
    job_id = failover_drill.submit(local, overrides, from_path)
    watch = failover_drill.Watch(local, failover_drill.DrillRun(job_id=job_id))
    watch.until(f"{expected_scores} committed outputs",
                lambda: failover_drill.committed_outputs(settings) >= expected_scores, TIMEOUT_S, poll_s=1)
    if labels_quiet_s is not None:  # a drain ends the labels' input where it is, read or not
        last = {"read": -1, "since": time.monotonic()}

        def labels_read_to_their_end() -> bool:
            read = labels_read(watch)
            if read != last["read"]:
                last.update(read=read, since=time.monotonic())
            return time.monotonic() - last["since"] >= labels_quiet_s

        watch.until(f"the labels' source to read nothing for {labels_quiet_s} s", labels_read_to_their_end,
                    TIMEOUT_S, poll_s=0.5)
    time.sleep(quiet_s)
    savepoints = Path(settings.checkpointing.savepoint_directory).as_uri()
    rest.stop_with_savepoint(local.rest_url, job_id, savepoints, drain=True)
    watch.until_finished(TIMEOUT_S)
    return job_id, failover_drill.read_committed(settings, idle_timeout_s=3)


def labels_read(watch: failover_drill.Watch) -> int:
    """Records the labels' source has read in the current attempt, as the REST API reports them."""
    source = next(vertex for vertex in watch.job()["vertices"] if "labels-source" in vertex["name"])
    return source["metrics"]["read-records"]
