"""Edges of the global model in the real job: a bounded run whose input has no record a shard can
score still ends (the aggregator publishes version 0 at the end of its input, the shards answer
with their last partials, the last version is final), and every line is dead-lettered."""

from __future__ import annotations

import json

from streaming.config import load_settings
from streaming.ops import drill as failover_drill
from streaming.ops import kafka_tools

from .conftest import PROJECT

SHARDS = 4


def test_a_bounded_run_without_a_scorable_record_ends_with_a_final_version(tmp_path, kafka_isolation):
    from streaming.job.run import run_job

    lines = [b"not json", b'{"txn_id": "t1"}', b"[1, 2]", b'{"amount": -3}']
    source = tmp_path / "transactions.jsonl"
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    settings = load_settings(PROJECT / "conf" / "kafka.yaml", [
        *kafka_isolation, "source.kind=files", f"source.paths=[{json.dumps(str(source))}]",
        f"checkpointing.directory={tmp_path / 'checkpoints'}", "checkpointing.interval_ms=300",
        "flink.parallelism=2", f"performance.shards={SHARDS}", "model.blend=global",
        "model.global.max_staleness=0"])
    kafka_tools.create_topics(settings)
    run_job(settings)  # before the fix this never returned: no partial, so no version, so no end

    committed = failover_drill.read_committed(settings)
    assert committed.scores == []
    assert len(committed.dead_letters) == len(lines)
    versions = [json.loads(value) for _, _, _, value in
                kafka_tools.tail(settings, settings.kafka.model_versions_topic, idle_timeout_s=5)]
    assert [message["version"] for message in versions] == [0, 1]
    assert versions[-1].get("final") is True and versions[-1]["labelled_records"] == 0
