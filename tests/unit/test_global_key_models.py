"""The key models with the global model on, in the job's compiled code (ModelScorer.assess_columns
given the held version, udfs/drift_tracking.py for rewarm), against udfs/prequential.py's
arithmetic with the same version held fixed: globally standardized features, `blend: sum`'s
blended score, learning and offsets, `blend: key` on the global scale, `cold_start: global` and
`on_drift: rewarm`, for SGD, AdaGrad and FTRL (1e-12)."""

from __future__ import annotations

import math

import orjson
import pytest

from streaming.config import load_settings
from streaming.config.from_settings import transaction_reader
from tests.unit.conftest import LOCAL_PROFILE
from udfs.drift import DriftSettings, PageHinkleyParameters, drift_loss, make_detector
from udfs.drift_tracking import DriftTracker
from udfs.generator import GeneratorSettings, generate
from udfs.global_columns import Pending, partial_of
from udfs.global_model import Example, GlobalModel, GlobalSettings, VersionHolder, compute_partial, train_sequential
from udfs.global_scoring import GlobalPart, ShardGlobal, segment_bytes
from udfs.model import AdaGrad, Ftrl, Sgd
from udfs.prequential import LearningSettings, PrequentialLearner
from udfs.records import ModelInput
from udfs.scoring import ModelScorer
from udfs.wire import RecordBatch

NOW = 1_767_300_000_000
PRIOR = math.log(0.03 / 0.97)
SENSITIVE = DriftSettings("page_hinkley", PageHinkleyParameters(min_instances=20, threshold=3.0), loss_cap=8.0)
OPTIMIZERS = {"sgd": Sgd(0.05, l2=0.001), "adagrad": AdaGrad(0.1, l2=0.001), "ftrl": Ftrl(0.2, 1.0, 0.001, 0.01)}


@pytest.fixture(scope="module")
def setup() -> tuple[tuple[str, ...], tuple[int, ...], list[ModelInput], GlobalModel]:
    """(feature names, standardized positions, 2,400 records with a drift half way, and a global
    version trained on 600 other records: weights and statistics far from version 0's)."""
    reader = transaction_reader(load_settings(LOCAL_PROFILE))
    lines = list(generate(GeneratorSettings(records=3000, seed=41, drift_at=0.6, unlabelled_share=0.1)))
    records = [reader.read_envelope(f"file:{n}:/in.jsonl\t" + line.decode("latin-1"), NOW)
               for n, line in enumerate(lines, 1)]
    assert all(isinstance(r, ModelInput) for r in records)
    names, positions = reader.encoder.names, reader.encoder.standardized
    examples = [Example(r.indices, r.values, r.label) for r in records[:600]]
    held = train_sequential(GlobalModel.initial(names, positions, PRIOR),
                            [examples[i:i + 100] for i in range(0, 600, 100)], Sgd(0.5))[-1]
    assert held.statistics.count == 600 and any(held.regression.weights)
    return names, positions, records[600:], held


CASES = [  # (blend, cold_start, on_drift)
    ("sum", "zeros", "report"),
    ("key", "global", "report"),
    ("key", "zeros", "rewarm"),
    ("sum", "global", "rewarm"),
]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("blend, cold_start, on_drift", CASES)
def test_compiled_key_models_with_a_held_version_equal_the_prequential_learner(setup, optimizer, blend, cold_start,
                                                                              on_drift):
    names, positions, records, held = setup
    chosen = OPTIMIZERS[optimizer]
    drifting = on_drift != "report"
    learner = PrequentialLearner(
        names, positions, LearningSettings(chosen, PRIOR, cold_start, blend, on_drift,
                                           global_model=GlobalSettings(cadence_records=10 ** 9)),
        detector_factory=(lambda: make_detector(SENSITIVE)) if drifting else None,
        detector_loss=lambda p, y: drift_loss(p, y, SENSITIVE.loss_cap))
    learner.holder = VersionHolder(held)  # the version every record is scored with
    expected = [learner.process(record)[0] for record in records]
    offsets = [example.offset for example in learner._buffers[0]]

    scorer = ModelScorer(names, positions, chosen, snapshot_every=10 ** 6, top_reasons=3, initial_bias=PRIOR,
                         blend=blend, cold_start=cold_start)
    tracker = DriftTracker(SENSITIVE, on_drift, scorer) if drifting else None
    detectors = None if tracker is None else tracker.detectors()
    table = scorer.new_table()
    part = GlobalPart(names, positions, PRIOR, 0, 1, blend=blend)
    shard = ShardGlobal(held)
    scores, margins, events = [], [], []
    for start in range(0, len(records), 97):
        batch = RecordBatch.of(records[start:start + 97])
        assessed = scorer.assess_columns(batch, table, held)
        if tracker is not None:
            events += tracker.after_batch(detectors, batch, assessed, table, NOW, held)
        scores += assessed.probability.tolist()
        margins += assessed.key_margin.tolist()
        part.add(shard, batch, True, assessed.key_margin if blend == "sum" else None)

    assert scores == pytest.approx(expected, abs=1e-12, rel=0)
    if drifting:
        assert len(events) >= 3 and [e.key for e in events] == [e.model_key for e in learner.drift_events]
        assert all(f'"global_version":{held.version}' in line for line in events)
    for key, state in learner.keys.items():
        row = table.rows[key]
        assert table.weights[row].tolist() == pytest.approx(state.key_model.model.weights, abs=1e-12, rel=0)
        assert table.bias[row] == pytest.approx(state.key_model.model.bias, abs=1e-12, rel=0)
        assert table.updates[row] == state.key_model.model.updates
        assert table.count[row] == 0  # the key's own standardizer is not used with the global model
    # The global model's partial learns from the same error: the key margin each record was scored with.
    assert shard.pending.offsets.tolist() == pytest.approx(offsets, abs=1e-12, rel=0)
    if blend == "sum":
        assert margins == pytest.approx(offsets, abs=1e-12, rel=0) and any(offsets)
    else:
        assert not any(offsets)
    partial, reference = partial_of(held, shard.pending, 0), compute_partial(held, learner._buffers[0], 0)
    assert partial.bias_gradient == pytest.approx(reference.bias_gradient, abs=1e-9, rel=0)
    assert [partial.gradient[i] for i in sorted(reference.gradient)] == \
        pytest.approx([reference.gradient[i] for i in sorted(reference.gradient)], abs=1e-9, rel=0)


def test_sum_reasons_are_the_entries_of_largest_summed_contribution(setup):
    names, positions, records, held = setup
    scorer = ModelScorer(names, positions, Sgd(0.05), 10 ** 6, top_reasons=3, blend="sum")
    table = scorer.new_table()
    scorer.assess_columns(RecordBatch.of(records[:500]), table, held)  # the keys learn something
    record = next(r for r in records[500:] if r.model_key in table.rows)
    before = table.weights[table.rows[record.model_key]].copy()
    assessed = scorer.assess_columns(RecordBatch.of([record]), table, held)
    x = held.standardize(record.values)
    combined = [(i, (before[i] + held.regression.weights[i]) * v) for i, v in zip(record.indices, x)
                if before[i] + held.regression.weights[i] and v]
    combined.sort(key=lambda item: abs(item[1]), reverse=True)
    count = int(assessed.reason_count[0])
    assert count == min(3, len(combined))
    assert assessed.reason_index[0, :count].tolist() == [i for i, _ in combined[:count]]
    assert assessed.reason_value[0, :count].tolist() == pytest.approx([c for _, c in combined[:count]], abs=1e-12)


def test_pending_segments_written_without_offsets_read_as_offset_zero():
    piece = Pending.empty().appended([0, 2], [0, 3], [1.5, 1.0], [1])
    earlier = b'{"indptr":[0,2],"indices":[0,3],"values":[1.5,1.0],"labels":[1],"counted":[true]}'
    assert segment_bytes(piece) == earlier  # no offset: written as an earlier release wrote it
    read = Pending.of_plain(orjson.loads(earlier))
    assert read.offsets.tolist() == [0.0] and read.labels.tolist() == [1]
    with_offset = Pending.empty().appended([0, 2], [0, 3], [1.5, 1.0], [1], offsets=[-0.25])
    assert Pending.of_plain(orjson.loads(segment_bytes(with_offset))).offsets.tolist() == [-0.25]


def test_every_blend_cold_start_and_reaction_turns_the_global_model_on_in_both_profiles():
    from tests.unit.conftest import PROJECT

    stream = ["labels.mode=stream", "labels.source={kind: files, paths: [/tmp/labels.jsonl]}"]
    for profile in (LOCAL_PROFILE, PROJECT / "conf" / "kafka.yaml"):  # files and Kafka outputs: both have a route
        for overrides in (["model.blend=sum"], ["model.blend=sum", *stream], ["model.blend=global"],
                          ["model.cold_start=global"], ["model.on_drift=rewarm"]):
            assert load_settings(profile, overrides).model.uses_global, overrides
    assert not load_settings(LOCAL_PROFILE, ["model.blend=key"]).model.uses_global
