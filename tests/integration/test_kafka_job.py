"""The job against the real broker: exactly-once scores and dead letters, and the same models as a
run of the same stream from a file."""

from __future__ import annotations

import json

import pytest

from streaming.ops import drill as failover_drill
from streaming.ops import kafka_tools
from streaming.reporting.outputs import latest_snapshots
from udfs.generator import GeneratorSettings, generate_with_kinds

from .conftest import PROJECT

RECORDS = 50_000


def test_a_bounded_kafka_run_delivers_every_record_exactly_once(tmp_path, scoring_job, kafka_settings, kafka_isolation,
                                                                capsys):
    from streaming.job.run import run_job

    settings = kafka_settings.model_copy(update={
        "kafka": kafka_settings.kafka.model_copy(update={"bounded": True, "delivery": "exactly-once"}),
        "checkpointing": kafka_settings.checkpointing.model_copy(
            update={"directory": str(tmp_path / "checkpoints"), "interval_ms": 1000}),
    })
    kafka_tools.create_topics(settings)
    generated = list(generate_with_kinds(GeneratorSettings(records=RECORDS, seed=41, malformed_share=0.05)))
    lines = [line for _, line in generated]
    assert kafka_tools.produce(settings, lines, total=len(lines), key_field="merchant_category") == RECORDS

    run_job(settings)

    committed = failover_drill.read_committed(settings)
    scores, dead_letters = committed.scores, committed.dead_letters

    produced = list(kafka_tools.tail(settings, settings.kafka.transactions_topic, max_records=RECORDS, idle_timeout_s=8))
    by_offset = {(partition, offset): value for partition, offset, _, value in produced}
    assert len(by_offset) == RECORDS

    seen_ids = [score["txn_id"] for _, score in scores]
    assert len(seen_ids) == len(set(seen_ids)), "a score was delivered twice"
    letter_offsets = [(letter["source"]["partition"], letter["source"]["offset"]) for _, letter in dead_letters]
    assert len(letter_offsets) == len(set(letter_offsets)), "a dead letter was delivered twice"
    assert len(scores) + len(dead_letters) == RECORDS
    assert set(letter_offsets) <= set(by_offset)
    valid = {json.loads(v)["txn_id"] for kind, v in generated if kind is None}
    assert set(seen_ids) == valid
    assert any(letter["txn_id"] is None for _, letter in dead_letters)
    for key, score in scores:
        assert key.decode() == score["model_key"]
    for key, letter in dead_letters:
        assert (key.decode() if key else None) == letter["txn_id"] or (key is None and letter["txn_id"] is None)
        assert letter["source"]["topic"] == settings.kafka.transactions_topic
    snapshot_messages = list(kafka_tools.tail(settings, settings.kafka.snapshots_topic, max_records=len(committed.snapshots),
                                              idle_timeout_s=8))
    assert len(snapshot_messages) == len(committed.snapshots) > 0
    for _, _, key, value in snapshot_messages:
        assert key.decode() == json.loads(value)["model_key"]

    # `riskstream report` of a Kafka-output profile reads the committed scores and dead letters.
    from streaming.cli import main

    options = [arg for override in kafka_isolation for arg in ("--set", override)]
    assert main(["report", "--config", str(PROJECT / "conf" / "kafka.yaml"), *options,
                 "--to", str(tmp_path / "report"), "--idle-timeout", "3"]) == 0
    assert capsys.readouterr().out.strip().endswith(str((tmp_path / "report" / "index.html").resolve()))
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert f"<th>records scored</th><td>{len(scores):,}</td>" in page
    assert f"<th>records dead-lettered</th><td>{len(dead_letters):,}</td>" in page

    from_file = scoring_job(tmp_path / "file", lines)
    kafka_models = latest_snapshots(committed.snapshots)
    file_models = latest_snapshots(from_file.snapshots)
    assert kafka_models.keys() == file_models.keys()
    for key, model in kafka_models.items():
        assert model["model_updates"] == file_models[key]["model_updates"]
        assert model["weights"] == pytest.approx(file_models[key]["weights"], abs=1e-12)
        assert model["bias"] == pytest.approx(file_models[key]["bias"], abs=1e-12)
