"""A hostile run through the real job (issue 30): a stream about half malformed in every way the
cleaning tests name, plus deep, huge and at-the-cap documents and duplicated txn_ids
(tests/hostile_stream.py), from files and through Kafka with a TaskManager killed mid-run, both at
parallelism 2. Each record is scored or dead-lettered exactly once, at the stage and with a reason
the stream states for it; redeliveries are dead-lettered at `dedup` naming their first delivery,
also when that delivery was checkpointed before the kill; txn_ids under another model key are
reported once; no raw account id reaches any output. CI runs 4,000 records; `make hostile`
(tests/hostile/) runs the same checks on 100,000 (docs/operations.md, "A hostile run").

The file run was seen to fail on planted faults: with de-duplication off (dedup.horizon_ms=0) "386
records should have been dead-lettered" (the redeliveries, scored); with the cap one byte lower
(cleaning.max_record_bytes=65535) "record 1263 (at_cap): decode: ... it should have been scored"."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict, deque
from pathlib import Path

import pytest

from streaming.config import load_settings
from streaming.ops import drill as failover_drill
from streaming.ops import kafka_tools, local_cluster
from streaming.reporting.outputs import OUTPUTS, committed_lines
from tests.hostile_stream import (
    HORIZON_MS,
    MAX_RECORD_BYTES,
    Hostile,
    assert_no_account_id,
    hostile_stream,
    reconcile,
    summary_table,
)
from tests.output_schemas import part_lines
from tests.pseudonyms import hmac_pseudonym

from .conftest import run_scoring_job

RECORDS = 4000
SEED = 30
# The runs' settings beside their profile's: parallelism 2, the size cap and horizon the stream expects.
JOB_OVERRIDES = ("flink.parallelism=2", f"cleaning.max_record_bytes={MAX_RECORD_BYTES}", f"dedup.horizon_ms={HORIZON_MS}")
# The Kafka run's pace: 80 records a second in each of the 2 source subtasks (25 s for 4,000), and the
# kill once an attempt has read 1,500 and two more checkpoints completed (after which 10 s of input
# is left: failover_drill.check_pacing).
KAFKA_RECORDS_PER_SECOND = 80
KILL_AFTER_RECORDS = 1500


@pytest.fixture(scope="module")
def stream() -> list[Hostile]:
    return hostile_stream(RECORDS, SEED)


def test_a_hostile_stream_from_files_reconciles_record_by_record(stream, tmp_path):
    print(f"\n{run_from_files(stream, tmp_path)}")  # counts per stage and kind, shown by pytest -s


def test_a_hostile_stream_through_kafka_with_a_taskmanager_killed_reconciles(session_cluster, kafka_isolation,
                                                                             stream, tmp_path):
    summary = run_through_kafka_with_a_kill(session_cluster, kafka_isolation, stream, tmp_path,
                                            KAFKA_RECORDS_PER_SECOND, KILL_AFTER_RECORDS)
    print(f"\n{summary}")  # counts per stage and kind, shown by pytest -s


def run_from_files(stream: list[Hostile], workdir: Path) -> str:
    """The job from one file of `stream`'s lines; checks its committed outputs (reconcile, no raw
    account id) and returns the counts per stage and kind as text."""
    started = time.monotonic()
    run = run_scoring_job(workdir / "hostile", [hostile.line for hostile in stream], *JOB_OVERRIDES)
    elapsed = time.monotonic() - started
    path = run.settings.source.paths[0]
    out = Path(run.settings.output.path)

    def position_of_source(source):
        assert source["file"] == path, source
        return source["line"] - 1

    def position_of_text(text):
        match = re.fullmatch(r"file (.+) line (\d+)", text)
        assert match and match[1] == path, text
        return int(match[2]) - 1

    key = run.settings.pseudonym_key()
    counts = reconcile(stream, run.scores, run.dead_letters, list(committed_lines(out / "repeated-ids")),
                       position_of_source, position_of_text, lambda account: hmac_pseudonym(account, key))
    checked = sum(assert_no_account_id(part_lines(out / name), name) for name in OUTPUTS if (out / name).is_dir())
    assert checked >= len(stream)
    return f"files: {len(stream)} records in {elapsed:.0f} s\n{summary_table(counts)}"


def run_through_kafka_with_a_kill(session_cluster, kafka_isolation: list[str], stream: list[Hostile], workdir: Path,
                                  records_per_second: int, kill_after_records: int) -> str:
    """`stream` produced to this test's topic (keyed by model key), the job on the session cluster with
    exactly-once output, its TaskManager SIGKILLed (with its Python workers) once an attempt has read
    `kill_after_records` and two checkpoints completed since, and a replacement started; checks the
    committed outputs as run_from_files does, and that a redelivery whose first delivery was
    committed before the kill was dead-lettered after it. Returns the counts per stage and kind."""
    overrides = [*kafka_isolation, *failover_drill.drill_overrides(workdir, records_per_second), *JOB_OVERRIDES]
    settings = load_settings(failover_drill.CLUSTER_PROFILE, overrides)
    kafka_tools.create_topics(settings)
    lines = [hostile.line for hostile in stream]
    assert kafka_tools.produce(settings, lines, total=len(lines), key_field=settings.model.key) == len(lines)
    positions = input_positions(settings, stream)
    failover_drill.check_pacing(settings, len(stream) - kill_after_records,
                                failover_drill.action_need_records(settings), "the kill")

    local = session_cluster.cluster
    started = time.monotonic()
    try:
        watch = failover_drill.Watch(local, failover_drill.DrillRun(job_id=failover_drill.submit(local, overrides)))
        watch.until(f"{kill_after_records} records in", lambda: watch.attempt_records() >= kill_after_records, 600)
        completed = watch.checkpoints()["counts"]["completed"]
        # Two more: the later one was triggered after the records above were read.
        watch.until("two more checkpoints", lambda: watch.checkpoints()["counts"]["completed"] >= completed + 2, 120,
                    poll_s=0.2)
        busy = local.busy_taskmanager_pids()
        assert busy, "no TaskManager runs the job"
        killed_at_ms = int(time.time() * 1000)
        local_cluster.kill_tree(busy[0])
        local.start_taskmanager(session_cluster.overrides)  # as a supervisor would
        watch.until_finished(900)
    finally:
        session_cluster.cancel_jobs()
    elapsed = time.monotonic() - started
    assert watch.checkpoints()["counts"]["restored"] >= 1, "the job never restored a checkpoint"

    committed = failover_drill.read_committed(settings)
    scores = [score for _, score in committed.scores]
    letters = [letter for _, letter in committed.dead_letters]
    reports = [value for _, _, _, value in kafka_tools.tail(settings, settings.kafka.repeated_ids_topic,
                                                            idle_timeout_s=5, until_end=True)]
    topic = settings.kafka.transactions_topic

    def position_of_source(source):
        assert source["topic"] == topic, source
        return positions[(source["partition"], source["offset"])]

    def position_of_text(text):
        match = re.fullmatch(r"topic (.+) partition (\d+) offset (\d+)", text)
        assert match and match[1] == topic, text
        return positions[(int(match[2]), int(match[3]))]

    key = settings.pseudonym_key()
    counts = reconcile(stream, scores, letters, [json.loads(report) for report in reports], position_of_source,
                       position_of_text, lambda account: hmac_pseudonym(account, key))
    for name in ("scores_topic", "dead_letters_topic", "snapshots_topic", "repeated_ids_topic"):
        output_topic = getattr(settings.kafka, name)
        assert_no_account_id((value for _, _, _, value in kafka_tools.tail(settings, output_topic, idle_timeout_s=5,
                                                                            until_end=True)), output_topic)

    # Dedup state is checkpointed: a redelivery whose first delivery's score was committed before the
    # kill (scored_at earlier) and which was itself handled after it (received_at later) was still
    # dead-lettered, once (reconcile checked once).
    scored_at = {(score["txn_id"], score["model_key"]): score["scored_at"] for score in scores}
    across = []
    for letter in letters:
        if letter["stage"] == "dedup" and letter["received_at"] > killed_at_ms:
            first = stream[stream[position_of_source(letter["source"])].first]
            if scored_at[(first.txn_id, first.model_key)] < killed_at_ms:
                across.append(letter)
    assert across, "no redelivery had its first delivery committed before the kill and came after it"
    return (f"kafka: {len(stream)} records in {elapsed:.0f} s (job), TaskManager killed after "
            f"{kill_after_records} records, {len(across)} redeliveries across the kill\n{summary_table(counts)}")


def input_positions(settings, stream: list[Hostile]) -> dict[tuple[int, int], int]:
    """(partition, offset) of each record of `stream` in the transactions topic -> its index in
    `stream`, read back from the topic. Equal lines are told apart by their order: a partition keeps
    the order they were produced in, and equal lines in different partitions (no message key) are
    malformed ones whose outcomes are equal."""
    indices: dict[bytes, deque[int]] = defaultdict(deque)
    for index, hostile in enumerate(stream):
        indices[hostile.line].append(index)
    messages = sorted(kafka_tools.tail(settings, settings.kafka.transactions_topic, idle_timeout_s=10, until_end=True),
                      key=lambda message: (message[0], message[1]))
    assert len(messages) == len(stream)
    return {(partition, offset): indices[value].popleft() for partition, offset, _, value in messages}
