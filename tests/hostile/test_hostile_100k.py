"""The hostile run at scale (`make hostile`; about 10 minutes): 100,000 records of
tests/hostile_stream.py, from files and through Kafka with a TaskManager killed mid-run, both at
parallelism 2, with the checks of tests/integration/test_hostile_run.py (which runs 4,000 in CI).
Each run prints its counts per stage and kind (pytest -s shows them)."""

from __future__ import annotations

import pytest

from tests.hostile_stream import hostile_stream
from tests.integration.test_hostile_run import run_from_files, run_through_kafka_with_a_kill

RECORDS = 100_000
SEED = 300
# 1,000 records a second in each of the 2 source subtasks (50 s for 100,000 at least), the kill once
# an attempt has read 30,000.
KAFKA_RECORDS_PER_SECOND = 1000
KILL_AFTER_RECORDS = 30_000


@pytest.fixture(scope="module")
def stream():
    return hostile_stream(RECORDS, SEED)


def test_100k_hostile_records_from_files_reconcile(stream, tmp_path):
    print(f"\n{run_from_files(stream, tmp_path)}")


def test_100k_hostile_records_through_kafka_with_a_taskmanager_killed_reconcile(session_cluster, kafka_isolation,
                                                                                stream, tmp_path):
    summary = run_through_kafka_with_a_kill(session_cluster, kafka_isolation, stream, tmp_path,
                                            KAFKA_RECORDS_PER_SECOND, KILL_AFTER_RECORDS)
    print(f"\n{summary}")
