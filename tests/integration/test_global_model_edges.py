"""Edges of the global model in the real job: a bounded run whose input has no record a shard can
score still ends (the aggregator publishes version 0 at the end of its input, the shards answer
with their last partials, the last version is final), and every line is dead-lettered. Through the
folder route, as `make run` takes it (no broker)."""

from __future__ import annotations

import json

from .conftest import run_scoring_job
from .test_global_model_job import folder_versions


def test_a_bounded_run_without_a_scorable_record_ends_with_a_final_version(tmp_path):
    lines = [b"not json", b'{"txn_id": "t1"}', b"[1, 2]", b'{"amount": -3}']
    # Before the fix this never returned: no partial, so no version, so the versions source never ended.
    outputs = run_scoring_job(tmp_path, lines, "flink.parallelism=2", "performance.shards=4", "model.blend=global",
                              "model.global.max_staleness=0", "checkpointing.interval_ms=300")

    assert outputs.scores == []
    assert len(outputs.dead_letters) == len(lines)
    versions = [json.loads(message) for message in folder_versions(tmp_path / "out" / "model-versions")]
    assert [message["version"] for message in versions] == [0, 1]
    assert versions[-1].get("final") is True and versions[-1]["labelled_records"] == 0
