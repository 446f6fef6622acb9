"""The prequential learner (udfs/prequential.py): the job's exact per-key path, cold start, the
`sum` blend's gradients, simulated instances and the drift hook, on a generated stream read by the
local profile."""

from __future__ import annotations

import math

import pytest

from streaming.config import load_settings
from streaming.config.from_settings import transaction_reader
from tests.reference.pipeline import assess
from tests.unit.conftest import LOCAL_PROFILE
from udfs.generator import GeneratorSettings, generate
from udfs.global_model import GlobalSettings
from udfs.model import KeyModel, Sgd, sigmoid
from udfs.prequential import LearningSettings, PrequentialLearner, log_loss
from udfs.reading import TransactionReader
from udfs.records import ModelInput
from udfs.scoring import ModelScorer

NOW = 1_767_300_000_000
PRIOR = math.log(0.03 / 0.97)


@pytest.fixture(scope="module")
def reader() -> TransactionReader:
    """The local profile's reader (the pseudonyms' key does not matter to the models)."""
    return transaction_reader(load_settings(LOCAL_PROFILE))


@pytest.fixture(scope="module")
def stream(reader) -> list[ModelInput]:
    """2,000 generated records read by the local profile (20 keys, a few unlabelled)."""
    records = [reader.read_envelope(f"file:{n}:/in.jsonl\t" + line.decode("latin-1"), NOW)
               for n, line in enumerate(generate(GeneratorSettings(records=2000, seed=17, unlabelled_share=0.1)), 1)]
    assert all(isinstance(r, ModelInput) for r in records)
    return records


@pytest.fixture(scope="module")
def layout(reader) -> tuple[tuple[str, ...], tuple[int, ...]]:
    return reader.encoder.names, reader.encoder.standardized


def learner(layout, detector_factory=None, instances: int = 1, **settings) -> PrequentialLearner:
    return PrequentialLearner(*layout, LearningSettings(**settings), instances, detector_factory,
                              detector_loss=lambda p, y: -7.0)


def test_blend_key_with_sgd_and_zeros_scores_exactly_as_the_jobs_reference(stream, layout):
    sgd = Sgd(0.01)  # the local profile's
    scorer = ModelScorer(*layout, sgd, snapshot_every=1000, top_reasons=3)
    models: dict[str, KeyModel] = {}
    reference = []
    for record in stream:
        assessment = assess(scorer, models.setdefault(record.model_key, scorer.new_model()), record)
        reference.append((assessment.probability, assessment.updates))
    subject = learner(layout, optimizer=sgd)
    assert subject.global_model is None
    results = [subject.process(record) for record in stream]
    assert [p for p, _ in results] == pytest.approx([p for p, _ in reference], abs=1e-12, rel=0)
    assert [d.model_updates for _, d in results] == [u for _, u in reference]
    assert max(u for _, u in reference) > 100 and len({p for p, _ in reference}) > 1500


def renamed(record: ModelInput, key: str) -> ModelInput:
    return record._replace(model_key=key, txn_id=record.txn_id + "-" + key)


@pytest.mark.parametrize("blend", ["key", "sum", "global"])
def test_with_cold_start_global_a_new_keys_first_score_is_the_global_models(stream, layout, blend):
    subject = learner(layout, optimizer=Sgd(0.05), cold_start="global", blend=blend, initial_bias=PRIOR,
                      global_model=GlobalSettings(cadence_records=100, learning_rate=0.5))
    for record in stream[:1500]:
        subject.process(record)
    held = subject.global_model
    assert held.version >= 10
    expected = []
    for n, record in enumerate(stream[1500:1510]):
        expected.append(held.predict_proba(record.indices, record.values))
        probability, details = subject.process(renamed(record, f"new-{n}"))
        assert details.new_key and details.global_version == held.version
        assert probability == pytest.approx(expected[-1], abs=1e-12)
    assert max(expected) - min(expected) > 1e-3  # the global model's weights, not only its prior, set the score


def test_with_cold_start_zeros_a_new_key_starts_at_the_initial_bias(stream, layout):
    subject = learner(layout, optimizer=Sgd(0.05), initial_bias=PRIOR)
    for record in stream[:20]:
        subject.process(record)
    probability, details = subject.process(renamed(stream[20], "fresh"))
    assert details.new_key and details.model_updates == 0
    assert probability == pytest.approx(0.03, abs=1e-12)


def test_blend_sum_gradients_of_both_parts_equal_finite_differences_of_the_log_loss(stream, layout):
    key_rate, global_rate = 0.05, 0.5
    subject = learner(layout, optimizer=Sgd(key_rate), blend="sum",
                      global_model=GlobalSettings(cadence_records=1, learning_rate=global_rate))  # one step per label
    for record in stream[:800]:
        subject.process(record)
    record = next(r for r in stream[800:] if r.label is not None and r.model_key in subject.keys)
    held = subject.global_model
    key = subject.keys[record.model_key].key_model.model
    x = held.standardize(record.values)
    assert any(key.weights) and any(held.regression.weights)

    def loss(global_weights, global_bias, key_weights, key_bias) -> float:
        margin = global_bias + key_bias + sum((global_weights[i] + key_weights[i]) * v for i, v in zip(record.indices, x))
        return log_loss(sigmoid(margin), record.label)

    parameters = [list(held.regression.weights), held.regression.bias, list(key.weights), key.bias]

    def derivative(part: int, index: int | None, h: float = 1e-6) -> float:
        def moved(by: float) -> float:
            changed = [list(p) if isinstance(p, list) else p for p in parameters]
            if index is None:
                changed[part] += by
            else:
                changed[part][index] += by
            return loss(*changed)
        return (moved(h) - moved(-h)) / (2 * h)

    before = [list(held.regression.weights), held.regression.bias, list(key.weights), key.bias]
    subject.process(record)
    after_global = subject.global_model.regression
    assert subject.global_model.version == held.version + 1
    key = subject.keys[record.model_key].key_model.model
    for i in record.indices:
        assert (before[0][i] - after_global.weights[i]) / global_rate == pytest.approx(derivative(0, i), abs=1e-7)
        assert (before[2][i] - key.weights[i]) / key_rate == pytest.approx(derivative(2, i), abs=1e-7)
    assert (before[1] - after_global.bias) / global_rate == pytest.approx(derivative(1, None), abs=1e-7)
    assert (before[3] - key.bias) / key_rate == pytest.approx(derivative(3, None), abs=1e-7)
    assert abs(derivative(3, None)) > 1e-3


def test_simulated_instances_change_nothing_but_speed(stream, layout):
    settings = dict(optimizer=Sgd(0.05), blend="sum", global_model=GlobalSettings(cadence_records=60, learning_rate=0.5))
    one, three = learner(layout, **settings), learner(layout, instances=3, **settings)
    pairs = [(one.process(r), three.process(r)) for r in stream]
    assert [a[0] for a, _ in pairs] == pytest.approx([b[0] for _, b in pairs], abs=1e-9, rel=0)
    assert one.global_model.version == three.global_model.version > 20
    assert [a[1].global_version for a, _ in pairs] == [b[1].global_version for _, b in pairs]


class FiresOnce:
    """A drift detector (udfs/drift.py's interface) that fires at its `at`-th value, once."""

    def __init__(self, at: int):
        self.at, self.seen = at, 0

    def update(self, value: float) -> bool:
        assert value == -7.0  # what the learner's detector_loss gives
        self.seen += 1
        return self.seen == self.at

    def statistics(self) -> dict:
        return {"seen": self.seen}


@pytest.mark.parametrize("on_drift", ["report", "reset", "rewarm"])
def test_a_drift_is_reported_and_the_key_reset_or_rewarmed_as_configured(stream, layout, on_drift):
    subject = learner(layout, lambda: FiresOnce(30), optimizer=Sgd(0.05), initial_bias=PRIOR, on_drift=on_drift,
                      global_model=GlobalSettings(cadence_records=50, learning_rate=0.5))
    fired = None
    for position, record in enumerate(stream):
        _, details = subject.process(record)
        if details.drift:
            fired = position, record
            break
    assert fired is not None
    position, record = fired
    event = subject.drift_events[0]
    assert (event.model_key, event.txn_id, event.record, event.statistics) == (record.model_key, record.txn_id,
                                                                              position, {"seen": 30})
    follower = next(r for r in stream[position + 1:] if r.model_key == record.model_key)
    if on_drift == "report":  # the key's model as it is, standardizing with its own statistics
        kept = KeyModel.from_bytes(subject.keys[record.model_key].key_model.to_bytes())
        expected = kept.model.predict_proba(follower.indices, kept.standardizer.transform(follower.values))
    elif on_drift == "reset":
        expected = 0.03  # zero weights, the initial bias
    else:
        expected = subject.global_model.predict_proba(follower.indices, follower.values)
    probability, details = subject.process(follower)
    assert probability == pytest.approx(expected, abs=1e-12)
    assert (details.model_updates == 0) == (on_drift != "report")


@pytest.mark.parametrize("changes, message", [
    ({"blend": "mean"}, "model.blend: must be one of key | global | sum, got 'mean'"),
    ({"cold_start": "random"}, "model.cold_start: must be one of zeros | global, got 'random'"),
    ({"on_drift": "stop"}, "model.on_drift: must be one of report | reset | rewarm, got 'stop'"),
    ({"initial_bias": math.nan}, "model.initial_bias: must be a number in"),
])
def test_learning_settings_refuse_bad_values_in_one_line(changes, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace("(", r"\(")):
        LearningSettings(**changes)


@pytest.mark.parametrize("changes, uses_global", [
    ({}, False), ({"cold_start": "global"}, True), ({"blend": "sum"}, True), ({"blend": "global"}, True),
    ({"on_drift": "rewarm"}, True), ({"on_drift": "reset"}, False),
])
def test_the_global_model_is_trained_only_when_something_uses_it(changes, uses_global):
    assert LearningSettings(**changes).uses_global is uses_global


class Records:
    """A detector that never fires and keeps every value it is fed."""

    def __init__(self):
        self.values: list[float] = []

    def update(self, value: float) -> bool:
        self.values.append(value)
        return False


@pytest.mark.parametrize("drift_input", ["loss", "excess_over_global", "residual"])
def test_the_detector_is_fed_the_configured_drift_input(stream, layout, drift_input):
    detectors: list[Records] = []

    def factory() -> Records:
        detectors.append(Records())
        return detectors[-1]

    subject = PrequentialLearner(*layout, LearningSettings(
        optimizer=Sgd(0.05), blend="sum", drift_input=drift_input,
        global_model=GlobalSettings(cadence_records=50, learning_rate=0.5)), 1, factory, detector_loss=log_loss)
    expected: dict[str, list[float]] = {}
    for record in stream[:600]:
        global_probability = subject.global_model.predict_proba(record.indices, record.values)
        probability, _ = subject.process(record)
        if record.label is None:
            continue
        label = record.label
        loss = -math.log(probability if label else 1.0 - probability)
        value = {"loss": loss, "residual": probability - label,
                 "excess_over_global": loss + math.log(global_probability if label else 1.0 - global_probability)}
        expected.setdefault(record.model_key, []).append(value[drift_input])
    fed = {key: state.detector.values for key, state in subject.keys.items() if state.detector.values}
    assert fed.keys() == expected.keys()
    for key, values in expected.items():
        assert fed[key] == pytest.approx(values, abs=1e-12)
    if drift_input == "excess_over_global":  # the key parts start at zero: no excess until they learn
        assert all(values[0] == pytest.approx(0.0, abs=1e-12) for values in fed.values())


def test_a_drift_input_against_the_global_model_trains_it():
    assert LearningSettings(drift_input="excess_over_global").uses_global
    with pytest.raises(ValueError, match="model.drift_input: must be one of loss"):
        LearningSettings(drift_input="gain")
