"""The global model's drills (`make drill-global`, not part of `make test`: about 2.5 minutes each
on the session cluster): a TaskManager killed while versions sit in an open transaction changes no
committed version and applies none twice; and a synchronous run rescaled from parallelism 2 to 4
and back to 2 with savepoints keeps every version and score as the references say. Not folded into tests/integration/test_failover.py's
drill: that one holds every score bit for bit to a run without failures, and a score of the global
model depends on when its version arrived."""

from __future__ import annotations

from streaming.config import load_settings
from streaming.ops import drill as failover_drill
from streaming.ops import kafka_tools
from tests.integration.test_global_model_job import SHARDS, assert_synchronous_run, assert_versions_equal_the_reference
from tests.savepoints import resume_until_all_scored, stop_after
from udfs.generator import GeneratorSettings, generate_with_kinds

# The drill's pace: up to 3 tries at the open-transaction point, each using up to 4,300 records
# (streaming/ops/drill.py, "Pacing") at 300 records per second from one partition.
DRILL_RECORDS = 15_000
DRILL_CADENCE = 2000


def drill_job(kafka_isolation: list[str], tmp_path, seed: int):
    """The drills' job (a synchronous global model, account keys over SHARDS shards) on this test's
    topics, with DRILL_RECORDS generated records produced into one partition, so that every shard
    sees its records in the order produced, as the reference does: (overrides, settings, lines)."""
    overrides = [*kafka_isolation, *failover_drill.drill_overrides(tmp_path, records_per_second=300),
                 "kafka.partitions=1", "model.key=account_id", f"performance.shards={SHARDS}", "model.blend=global",
                 "model.learning_rate=0.5", f"model.global.cadence_records={DRILL_CADENCE}",
                 "model.global.max_staleness=0"]
    settings = load_settings(failover_drill.CLUSTER_PROFILE, overrides)
    kafka_tools.create_topics(settings)
    lines = [line for _, line in generate_with_kinds(GeneratorSettings(records=DRILL_RECORDS, seed=seed,
                                                                       malformed_share=0.0))]
    assert kafka_tools.produce(settings, lines, total=len(lines), key_field=settings.model.key) == DRILL_RECORDS
    return overrides, settings, lines


def test_a_taskmanager_killed_with_versions_in_an_open_transaction_changes_no_version(
        session_cluster, kafka_isolation, tmp_path):
    overrides, settings, lines = drill_job(kafka_isolation, tmp_path, seed=8)
    try:
        run = failover_drill.run_with_kills(session_cluster.cluster, overrides, min_attempt_records=100,
                                            taskmanager_overrides=session_cluster.overrides,
                                            input_records=DRILL_RECORDS, points=("open-transaction",))
    finally:
        session_cluster.cancel_jobs()
    kill = run.confirmed_kill("open-transaction")
    assert kill.restored == kill.completed_before, kill

    # The versions the restored job published again equal, once each, those of a run without failures.
    versions = [value for _, _, _, value in kafka_tools.tail(settings, settings.kafka.model_versions_topic,
                                                              idle_timeout_s=5)]
    assert_versions_equal_the_reference(settings, lines, versions)
    scores = [score for _, score in failover_drill.read_committed(settings).scores]
    assert len(scores) == DRILL_RECORDS == len({score["txn_id"] for score in scores})


def test_a_synchronous_run_rescaled_from_2_to_4_and_back_to_2_is_as_the_references_say(
        session_cluster, second_taskmanager, kafka_isolation, tmp_path):
    """Issue 29, with the global model on: stopped with a savepoint at parallelism 2, resumed at 4
    on two TaskManagers, stopped again and resumed at 2 (each shard's partial and version held move
    with its key group): every record scored once by a published version, every score the replay
    of the key models with the version it names, and the versions the sequential reference's, once
    each (assert_synchronous_run)."""
    overrides, settings, lines = drill_job(kafka_isolation, tmp_path, seed=9)
    local = session_cluster.cluster
    try:
        first = stop_after(local, settings, overrides, None, 4000)
        second = stop_after(local, settings, [*overrides, "flink.parallelism=4"], first, 4000)
        resume_until_all_scored(local, settings, overrides, second, DRILL_RECORDS, quiet_s=3)
    finally:
        session_cluster.cancel_jobs()

    versions = [value for _, _, _, value in kafka_tools.tail(settings, settings.kafka.model_versions_topic,
                                                              idle_timeout_s=5, until_end=True)]
    scores = [score for _, score in failover_drill.read_committed(settings).scores]
    assert_synchronous_run(settings, lines, scores, versions)
