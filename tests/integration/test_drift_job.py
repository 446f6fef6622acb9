"""Drift detection through the real job (mini-cluster, parallelism 2): on a generated stream with a
drift half way, the `drift` output holds exactly the events udfs/drift.py's detectors give when
fed, key by key in arrival order, the losses of a record-at-a-time reference
(tests/reference/pipeline.py); with `model.on_drift: reset` every score, those after a reset
included, equals that reference with the same resets."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming.config.from_settings import model_scorer, transaction_reader
from streaming.reporting.outputs import committed_lines
from tests.reference.pipeline import assess_with_drift
from udfs.generator import GeneratorSettings, generate
from udfs.records import ModelInput

RECORDS = 20_000
NOW = 1_767_300_000_000


def reference_run(settings, lines: list[bytes]):
    """(scores by txn_id, drift events as (model key, txn_id, model updates, loss, statistics)) of
    one record at a time, in file order, with the job's settings."""
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    detector_settings = settings.model.drift.detector_settings()
    models, detectors = {}, {}
    scores, events = {}, []
    for n, line in enumerate(lines, 1):
        record = reader.read_envelope(f"file:{n}:/in.jsonl\t" + line.decode("latin-1"), NOW)
        assert isinstance(record, ModelInput)
        step = assess_with_drift(scorer, models, detectors, detector_settings, settings.model.on_drift, record)
        scores[record.txn_id] = (step.assessment.probability, step.assessment.updates)
        if step.event is not None:
            events.append(step.event)
    return scores, events


# One run (a job start costs about half a minute): reset, the path with the most to get right; the
# report path is the same minus the reset, and ADWIN a detector like Page-Hinkley to the job (both
# are held to the reference in batches by tests/unit/test_drift_tracking.py).
@pytest.mark.parametrize("detector, on_drift", [("page_hinkley", "reset")])
def test_drift_events_and_reset_scores_equal_the_record_at_a_time_reference(tmp_path, scoring_job, detector,
                                                                           on_drift):
    lines = list(generate(GeneratorSettings(records=RECORDS, seed=31, drift_at=0.5)))
    outputs = scoring_job(tmp_path, lines, "flink.parallelism=2", f"model.drift={{detector: {detector}}}",
                          f"model.on_drift={on_drift}", "model.snapshot_every=1000000")
    expected_scores, expected_events = reference_run(outputs.settings, lines)
    # River's defaults on this stream: several keys drift, some more than once (a reset model's
    # loss then falls as it learns again, which `mode: both` reports too).
    assert len({key for key, *_ in expected_events}) >= 10

    assert outputs.dead_letters == []
    events = list(committed_lines(Path(outputs.settings.output.path) / "drift"))
    # Each key's events in the order its records arrived; keys interleave across the two subtasks.
    order = {txn_id: n for n, txn_id in enumerate(expected_scores)}
    events.sort(key=lambda event: order[event["txn_id"]])
    assert [(e["model_key"], e["txn_id"], e["model_updates"], e["loss"], e["statistics"]) for e in events] == \
        expected_events
    assert {(e["detector"], e["action"], e["global_version"], e["schema_version"]) for e in events} == {
        (detector, on_drift, None, 1)}
    assert all(e["event_time"] == next(s["event_time"] for s in outputs.scores if s["txn_id"] == e["txn_id"])
               for e in events[:5])

    assert len(outputs.scores) == RECORDS
    for score in outputs.scores:
        probability, updates = expected_scores[score["txn_id"]]
        assert score["model_updates"] == updates, score["txn_id"]
        assert score["score"] == pytest.approx(probability, abs=1e-9, rel=0), score["txn_id"]
    if on_drift == "reset":  # the resets showed in the scores: a key's count started again after each event
        assert sum(updates == 0 for _, updates in expected_scores.values()) >= len({key for key, *_ in expected_events}) \
            + len(expected_events)
