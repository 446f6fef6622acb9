"""The global model's failover drill (`make drill-global`, not part of `make test`: about 2.5
minutes on the session cluster): a TaskManager killed while versions sit in an open transaction
changes no committed version and applies none twice. Not folded into tests/integration/test_failover.py's
drill: that one holds every score bit for bit to a run without failures, and a score of the global
model depends on when its version arrived."""

from __future__ import annotations

from streaming.config import load_settings
from streaming.ops import drill as failover_drill
from streaming.ops import kafka_tools
from tests.integration.test_global_model_job import SHARDS, assert_versions_equal_the_reference
from udfs.generator import GeneratorSettings, generate_with_kinds

# The drill's pace: up to 3 tries at the open-transaction point, each using up to 4,300 records
# (streaming/ops/drill.py, "Pacing") at 300 records per second from one partition.
DRILL_RECORDS = 15_000
DRILL_CADENCE = 2000


def test_a_taskmanager_killed_with_versions_in_an_open_transaction_changes_no_version(
        session_cluster, kafka_isolation, tmp_path):
    # One partition, so that every shard sees its records in the order produced, as the reference does.
    overrides = [*kafka_isolation, *failover_drill.drill_overrides(tmp_path, records_per_second=300),
                 "kafka.partitions=1", "model.key=account_id", f"performance.shards={SHARDS}", "model.blend=global",
                 "model.learning_rate=0.5", f"model.global.cadence_records={DRILL_CADENCE}",
                 "model.global.max_staleness=0"]
    settings = load_settings(failover_drill.CLUSTER_PROFILE, overrides)
    kafka_tools.create_topics(settings)
    lines = [line for _, line in generate_with_kinds(GeneratorSettings(records=DRILL_RECORDS, seed=8,
                                                                       malformed_share=0.0))]
    assert kafka_tools.produce(settings, lines, total=len(lines), key_field=settings.model.key) == DRILL_RECORDS
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
