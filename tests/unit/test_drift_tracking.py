"""Per-key drift tracking in a scoring shard (udfs/drift_tracking.py): batches scored in compiled
code, their labelled records' losses fed to the detectors, against a record-at-a-time reference
(tests/reference/pipeline.py's `assess_with_drift`: `assess` with udfs/drift.py's detectors), with
`report` and `reset`; detector state through bytes; the label stream's path; the settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streaming.config import load_settings
from streaming.config.from_settings import model_scorer, transaction_reader
from tests.reference.pipeline import assess_with_drift
from tests.unit.conftest import LOCAL_PROFILE
from udfs.compiled_model import ModelTable
from udfs.drift import AdwinParameters, DriftSettings, PageHinkleyParameters, drift_loss, make_detector
from udfs.drift_tracking import DriftTracker
from udfs.generator import GeneratorSettings, generate
from udfs.model import KeyModel, Sgd
from udfs.prequential import LearningSettings, PrequentialLearner
from udfs.records import ModelInput
from udfs.scoring import ModelScorer
from udfs.wire import RecordBatch

NOW = 1_767_300_000_000
# Sensitive enough to fire many times in 3,000 records (River's defaults fire once or not at all).
SENSITIVE = DriftSettings("page_hinkley", PageHinkleyParameters(min_instances=20, threshold=3.0), loss_cap=8.0)
ADWIN = DriftSettings("adwin", adwin=AdwinParameters(delta=0.2, clock=8))


@pytest.fixture(scope="module")
def scorer_and_stream() -> tuple[ModelScorer, list[ModelInput]]:
    """The local profile's scorer (with a snapshot every 7 updates, so that resets cross snapshots)
    and 3,000 generated records with a drift half way, read by its reader."""
    settings = load_settings(LOCAL_PROFILE, ["model.snapshot_every=7", "model.learning_rate=0.05"])
    reader = transaction_reader(settings)
    lines = generate(GeneratorSettings(records=3000, seed=29, drift_at=0.5, unlabelled_share=0.1))
    records = [reader.read_envelope(f"file:{n}:/in.jsonl\t" + line.decode("latin-1"), NOW)
               for n, line in enumerate(lines, 1)]
    assert all(isinstance(r, ModelInput) for r in records)
    return model_scorer(settings, reader.encoder), records


def reference(scorer: ModelScorer, records: list[ModelInput], settings: DriftSettings, on_drift: str):
    """One record at a time: (scores, model updates before each, snapshots as (key, updates, bias),
    drift events as (key, txn_id, updates, loss, statistics), final models)."""
    models: dict[str, KeyModel] = {}
    detectors = {}
    scores, updates, snapshots, events = [], [], [], []
    for record in records:
        assessment, key_model, event = assess_with_drift(scorer, models, detectors, settings, on_drift, record)
        scores.append(assessment.probability)
        updates.append(assessment.updates)
        if assessment.learned and key_model.model.updates % scorer.snapshot_every == 0:
            snapshots.append((record.model_key, key_model.model.updates, key_model.model.bias))
        if event is not None:
            events.append(event)
    return scores, updates, snapshots, events, models


def tracked(scorer: ModelScorer, records: list[ModelInput], settings: DriftSettings, on_drift: str,
            batch_size: int = 97, restore_every: int | None = None):
    """The job's way: batches scored in compiled code, then tracked; with `restore_every`, the
    detectors go through their bytes (as Flink state) every that many batches."""
    tracker = DriftTracker(settings, on_drift, scorer)
    table = scorer.new_table()
    detectors = tracker.detectors()
    stored: dict[str, bytes] = {}
    scores, updates, snapshots, events = [], [], [], []
    for number, start in enumerate(range(0, len(records), batch_size)):
        batch = RecordBatch.of(records[start:start + batch_size])
        assessed = scorer.assess_columns(batch, table)
        lines = tracker.after_batch(detectors, batch, assessed, table, NOW)
        stored.update(detectors.take_changed())
        if restore_every and number % restore_every == restore_every - 1:
            detectors = tracker.detectors(stored.items())
        scores += assessed.probability.tolist()
        updates += assessed.updates.tolist()
        for line in assessed.snapshots:
            snapshot = json.loads(line)
            snapshots.append((line.key, snapshot["model_updates"], snapshot["bias"]))
        events += [json.loads(line) for line in lines]
        assert [line.key for line in lines] == [json.loads(line)["model_key"] for line in lines]
    return scores, updates, snapshots, events, table


def event_tuples(events: list[dict]) -> list[tuple]:
    return [(e["model_key"], e["txn_id"], e["model_updates"], e["loss"], e["statistics"]) for e in events]


@pytest.mark.parametrize("settings", [SENSITIVE, ADWIN], ids=["page_hinkley", "adwin"])
@pytest.mark.parametrize("on_drift", ["report", "reset"])
def test_batches_give_the_reference_events_scores_and_snapshots(scorer_and_stream, settings, on_drift):
    scorer, records = scorer_and_stream
    expected_scores, expected_updates, expected_snapshots, expected_events, models = reference(
        scorer, records, settings, on_drift)
    scores, updates, snapshots, events, table = tracked(scorer, records, settings, on_drift, restore_every=3)

    assert len(expected_events) >= (5 if settings is ADWIN else 20)
    assert event_tuples(events) == expected_events  # every figure exactly: same losses, same order
    assert scores == pytest.approx(expected_scores, abs=1e-12, rel=0)
    assert updates == expected_updates
    # Per key in order (the batch's re-run puts a reset key's later snapshots after the others').
    for key in {key for key, _, _ in expected_snapshots}:
        mine = [(u, b) for k, u, b in snapshots if k == key]
        theirs = [(u, b) for k, u, b in expected_snapshots if k == key]
        assert [u for u, _ in mine] == [u for u, _ in theirs], key
        assert [b for _, b in mine] == pytest.approx([b for _, b in theirs], abs=1e-12, rel=0)
    for key, key_model in models.items():
        final = table.key_model(table.rows[key])
        assert final.model.updates == key_model.model.updates
        assert final.model.weights == pytest.approx(key_model.model.weights, abs=1e-12, rel=0)
    for event in events:
        assert event["schema_version"] == 1 and event["detector"] == settings.detector
        assert event["action"] == on_drift and event["global_version"] is None and event["detected_at"] == NOW
    if on_drift == "reset":
        # A detection mid-batch with the key's later records in the same batch: the re-run was needed.
        positions = {r.txn_id: i for i, r in enumerate(records)}
        fired_at = [(positions[e["txn_id"]], e["model_key"]) for e in events]
        assert any(r.model_key == key for i, key in fired_at for r in records[i + 1:(i // 97 + 1) * 97])


def test_reset_scores_equal_the_prequential_learner_with_the_jobs_loss(scorer_and_stream):
    """`riskstream evaluate` (udfs/prequential.py) and the job agree on what a reset does."""
    scorer, records = scorer_and_stream
    learner = PrequentialLearner(scorer.feature_names, scorer.standardized,
                                 LearningSettings(optimizer=scorer.optimizer, on_drift="reset"),
                                 detector_factory=lambda: make_detector(SENSITIVE),
                                 detector_loss=lambda p, y: drift_loss(p, y, SENSITIVE.loss_cap))
    expected = [learner.process(record)[0] for record in records]
    scores, _, _, events, _ = tracked(scorer, records, SENSITIVE, "reset", batch_size=61)
    assert scores == pytest.approx(expected, abs=1e-12, rel=0)
    assert [e["txn_id"] for e in events] == [e.txn_id for e in learner.drift_events]
    assert [e["statistics"] for e in events] == [e.statistics for e in learner.drift_events]


def test_reset_re_run_rewrites_the_standardized_values_a_label_would_learn_from(scorer_and_stream):
    scorer, records = scorer_and_stream
    records = records[:400]
    batch = RecordBatch.of(records)
    table = scorer.new_table()
    assessed = scorer.assess_columns(batch, table)
    tracker = DriftTracker(SENSITIVE, "reset", scorer)
    tracker.after_batch(tracker.detectors(), batch, assessed, table, NOW)
    events = reference(scorer, records, SENSITIVE, "reset")[3]
    fired = {txn_id for _, txn_id, *_ in events}
    assert fired
    # The values each model saw: its key's standardizer, which a reset replaces with the model.
    seen = []
    key_models: dict[str, KeyModel] = {}
    for record in records:
        key_model = key_models.setdefault(record.model_key, scorer.new_model())
        values = key_model.standardizer.transform(record.values)
        seen += list(values)
        model = key_model.model
        if record.label is not None:
            model.learn(record.indices, values, record.label, model.predict_proba(record.indices, values),
                        scorer.optimizer)
        if record.txn_id in fired:
            key_models[record.model_key] = scorer.new_model()
    assert assessed.standardized.tolist() == pytest.approx(seen, abs=1e-12, rel=0)


def test_report_leaves_every_model_as_without_detection(scorer_and_stream):
    scorer, records = scorer_and_stream
    scores, updates, _, events, _ = tracked(scorer, records, SENSITIVE, "report")
    table = scorer.new_table()
    plain = []
    for start in range(0, len(records), 97):
        plain += scorer.assess_columns(RecordBatch.of(records[start:start + 97]), table).probability.tolist()
    assert events and scores == plain


def test_a_label_from_the_label_stream_feeds_its_logged_score_and_resets_the_key():
    scorer = ModelScorer(("x",), (), Sgd(0.1), snapshot_every=1000, top_reasons=1, initial_bias=-2.0)
    table = scorer.new_table()
    row = table.add("k")
    table.weights[row, 0], table.bias[row], table.updates[row] = 0.7, 0.3, 12
    tracker = DriftTracker(DriftSettings("page_hinkley", PageHinkleyParameters(min_instances=3, threshold=1.0)),
                           "reset", scorer)
    detectors = tracker.detectors()
    expected_detector = make_detector(tracker.settings)
    fired = []
    for n, (score, label) in enumerate([(0.1, 0), (0.2, 0), (0.1, 0), (0.05, 1), (0.02, 1), (0.01, 1)]):
        event = tracker.after_label(detectors, table, row, f"t{n}", 1000 + n, score, label, 12, NOW)
        loss = drift_loss(score, label)
        assert expected_detector.update(loss) == (event is not None)
        if event is not None:
            fired.append(json.loads(event))
            assert fired[-1]["loss"] == loss and fired[-1]["statistics"] == expected_detector.statistics()
            assert event.key == "k"
    # By hand: after three losses near 0.14 the fourth (-log 0.05 = 3.0) lifts the upward sum by
    # about 2.1 > 1; the detector then starts afresh and sees too few values to fire again.
    assert [e["txn_id"] for e in fired] == ["t3"] and fired[0]["event_time"] == 1003
    assert fired[0]["model_updates"] == 12 and fired[0]["action"] == "reset"
    fresh = ModelTable(1, (), optimizer=Sgd(0.1), initial_bias=-2.0)
    assert table.to_bytes(row) == fresh.to_bytes(fresh.add("k"))


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "ftrl"])
def test_model_table_reset_gives_a_new_keys_state(optimizer):
    from streaming.config.from_settings import optimizer as optimizer_of

    settings = load_settings(LOCAL_PROFILE, [f"model.optimizer={optimizer}", "model.initial_bias=-1.5"])
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    records = [reader.read_envelope(f"file:{n}:/in.jsonl\t" + line.decode("latin-1"), NOW)
               for n, line in enumerate(generate(GeneratorSettings(records=300, seed=3)), 1)]
    table = scorer.new_table()
    scorer.assess_columns(RecordBatch.of(records), table)
    row = table.rows[records[0].model_key]
    assert table.updates[row] > 0
    table.reset(row)
    assert scorer.optimizer == optimizer_of(settings)
    assert table.to_bytes(row) == scorer.new_model().to_bytes()
    assert np.all(table.count[row] == 0) and table.last_event_time[row] == -1


def test_detector_state_round_trips_per_key():
    tracker = DriftTracker(DriftSettings("adwin"), "report", ModelScorer(("x",), (), Sgd(0.1), 1000, 1))
    detectors = tracker.detectors()
    rng = np.random.default_rng(4)
    losses = rng.exponential(0.3, 200).tolist()
    for loss in losses[:100]:
        detectors.update("a", loss)
    stored = dict(detectors.take_changed())
    assert list(stored) == ["a"] and detectors.take_changed() == []
    restored = tracker.detectors(stored.items())
    for loss in losses[100:]:
        assert restored.update("a", loss) == detectors.update("a", loss)
    assert restored.of("a").to_bytes() == detectors.of("a").to_bytes() and len(restored) == 1


def test_drift_settings_are_off_by_default_and_rewarm_turns_the_global_model_on():
    settings = load_settings(LOCAL_PROFILE)
    assert settings.model.drift.detector == "none" and settings.model.on_drift == "report"
    assert settings.kafka.drift_topic == "drift" and "drift" in settings.kafka.topics()
    chosen = load_settings(LOCAL_PROFILE, ["model.drift={detector: adwin, adwin: {delta: 0.01}}", "model.on_drift=reset"])
    assert chosen.model.drift.detector_settings().adwin.delta == 0.01 and chosen.model.on_drift == "reset"
    assert not chosen.model.uses_global
    rewarm = load_settings(LOCAL_PROFILE, ["model.on_drift=rewarm"])
    assert rewarm.model.uses_global  # its new models are copies of the held global version
    with pytest.raises(ValueError):
        DriftTracker(DriftSettings(), "report", ModelScorer(("x",), (), Sgd(0.1), 1000, 1))


def test_a_runs_summary_counts_its_drift_events_and_a_new_run_sets_them_aside(tmp_path):
    from streaming.reporting.outputs import RunOutputs, summarize

    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "part-0").write_text('{"score": 0.2, "label": 0, "model_key": "a"}\n')
    (tmp_path / "drift").mkdir()
    (tmp_path / "drift" / "part-0").write_text('{"model_key": "a"}\n{"model_key": "b"}\n{"model_key": "a"}\n')
    (tmp_path / "drift" / ".part-1.inprogress").write_text('{"model_key": "c"}\n')  # not committed
    summary = summarize(tmp_path, 1, 1.0, drift_on=True)
    assert (summary.drift_events, summary.drift_keys) == (3, 2)
    assert "drift events                 3   (2 model keys; see drift/)" in summary.lines()
    assert not any(line.startswith("drift") for line in summarize(tmp_path, 1, 1.0).lines())
    RunOutputs(tmp_path).set_previous_aside()  # a run's start: the last run's drift events go too
    assert not (tmp_path / "drift").exists() and (tmp_path / ".previous" / "drift" / "part-0").exists()
