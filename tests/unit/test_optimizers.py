"""AdaGrad and FTRL-Proximal in the reference model (udfs/model.py) against the textbook
implementations of tests/reference/textbook.py, and what every optimizer shares: the step on an
explicit gradient, the guard, the conversion of accumulators, and the initial bias."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tests.reference.textbook import TextbookAdaGrad, TextbookFtrl, textbook_run
from udfs.model import AdaGrad, Ftrl, KeyModel, LogisticRegression, Sgd
from udfs.records import ModelInput, ScoreContext
from udfs.scoring import ModelScorer
from udfs.wire import RecordBatch

N_FEATURES = 9
TOLERANCE = 1e-9


def random_stream(seed: int, records: int, keys: int) -> list[tuple[str, list[int], list[float], int | None]]:
    """(key, indices, values, label): three dense numeric features, a random subset of the others
    (values 1 or uniform, some exactly 0), labels 0, 1 or none."""
    rng = random.Random(seed)
    stream = []
    for _ in range(records):
        indices = [0, 1, 2] + sorted(rng.sample(range(3, N_FEATURES), rng.randint(0, N_FEATURES - 3)))
        values = [rng.gauss(0, 1.5) for _ in range(3)] + [rng.choice([1.0, 0.0, rng.uniform(-1, 1)])
                                                          for _ in indices[3:]]
        truth = 1 / (1 + math.exp(-(values[0] - 2 * values[1] - 1)))
        label = None if rng.random() < 0.15 else int(rng.random() < truth)
        stream.append((f"k{rng.randrange(keys)}", indices, values, label))
    return stream


# (reference optimizer, textbook learner, initial bias)
OPTIMIZERS = {
    "adagrad": (AdaGrad(0.1), TextbookAdaGrad(N_FEATURES, 0.1), 0.0),
    "adagrad-l2-eps": (AdaGrad(0.5, eps=1e-3, l2=0.05),
                       TextbookAdaGrad(N_FEATURES, 0.5, eps=1e-3, l2=0.05, initial_bias=-1.5), -1.5),
    "ftrl": (Ftrl(0.1), TextbookFtrl(N_FEATURES, 0.1), 0.0),
    "ftrl-l1-l2": (Ftrl(0.3, beta=0.5, l1=0.4, l2=2.0),
                   TextbookFtrl(N_FEATURES, 0.3, beta=0.5, l1=0.4, l2=2.0, initial_bias=-3.0), -3.0),
    "ftrl-strong-l1": (Ftrl(0.2, l1=5.0), TextbookFtrl(N_FEATURES, 0.2, l1=5.0, initial_bias=0.7), 0.7),
}


def close(a, b) -> bool:
    return bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= TOLERANCE * np.maximum(1.0, np.abs(b))))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_reference_model_equals_the_textbook_optimizer_on_a_keyed_stream(name):
    optimizer, textbook, initial_bias = OPTIMIZERS[name]
    stream = random_stream(list(OPTIMIZERS).index(name), 3000, keys=5)
    expected_scores, expected_models = textbook_run(textbook, N_FEATURES, stream)
    models: dict[str, KeyModel] = {}
    for position, (key, indices, values, label) in enumerate(stream):
        key_model = models.setdefault(key, KeyModel(N_FEATURES, (), initial_bias))
        model = key_model.model
        p = model.predict_proba(indices, values)
        assert close(p, expected_scores[position]), (position, p, expected_scores[position])
        if label is not None:
            assert model.learn(indices, values, label, p, optimizer) is True
    assert models.keys() == expected_models.keys()
    for key, expected in expected_models.items():
        model = models[key].model
        assert model.updates == expected.updates
        assert close(model.weights, expected.weights), key
        assert close(model.bias, expected.bias), key
        assert model.optimizer_kind == optimizer.kind
        for name_, values in zip(optimizer.accumulators, model.accumulators):
            assert close(values, expected.accumulators[name_]), (key, name_)
    if name == "ftrl-strong-l1":  # L1 keeps some weights at exactly 0
        assert any(w == 0.0 for m in models.values() for w in m.model.weights)


def test_adagrad_first_step_by_hand():
    model = LogisticRegression(2, [0.0, 0.5])
    p = model.predict_proba([0, 1], [2.0, 1.0])
    assert model.learn([0, 1], [2.0, 1.0], 1, p, AdaGrad(0.1, eps=1e-8, l2=0.2)) is True
    g0, g1, gb = (p - 1) * 2.0, (p - 1) * 1.0 + 0.2 * 0.5, p - 1
    assert model.weights == pytest.approx([-0.1 * g0 / math.sqrt(g0 * g0 + 1e-8),
                                           0.5 - 0.1 * g1 / math.sqrt(g1 * g1 + 1e-8)], rel=1e-15)
    assert model.bias == pytest.approx(-0.1 * gb / math.sqrt(gb * gb + 1e-8), rel=1e-15)
    assert model.accumulators == [[pytest.approx(g0 * g0), pytest.approx(g1 * g1), pytest.approx(gb * gb)]]


def test_ftrl_first_step_by_hand():
    alpha, beta, l1, l2 = 0.5, 1.0, 0.1, 1.0
    model = LogisticRegression(1)
    assert model.learn([0], [3.0], 0, 0.5, Ftrl(alpha, beta, l1, l2)) is True
    g = 1.5  # (p - y) x
    z = g - (math.sqrt(g * g) / alpha) * 0.0  # the weight was 0
    assert model.accumulators == [[z, 0.5], [g * g, 0.25]]
    assert model.weights == [pytest.approx(-(z - l1) / ((beta + g) / alpha + l2), rel=1e-15)]
    assert model.bias == pytest.approx(-0.5 / ((beta + 0.5) / alpha), rel=1e-15)


@pytest.mark.parametrize("optimizer", [AdaGrad(0.2, l2=0.1), Ftrl(0.2, l1=0.01, l2=0.3), Sgd(0.2, l2=0.1)],
                         ids=["adagrad", "ftrl", "sgd"])
def test_learn_is_step_on_the_log_loss_gradient(optimizer):
    by_learn, by_step = LogisticRegression(N_FEATURES, bias=0.2), LogisticRegression(N_FEATURES, bias=0.2)
    for key, indices, values, label in random_stream(8, 300, keys=1):
        if label is None:
            continue
        p = by_learn.predict_proba(indices, values)
        assert by_learn.learn(indices, values, label, p, optimizer) is True
        assert by_step.step(indices, [(p - label) * v for v in values], p - label, optimizer) is True
        if isinstance(optimizer, Sgd):  # SGD scales x by rate * (p - y): the same to rounding
            assert by_step.weights == pytest.approx(by_learn.weights, rel=1e-12, abs=1e-15)
            by_step.weights, by_step.bias = list(by_learn.weights), by_learn.bias
        else:
            assert (by_step.weights, by_step.bias, by_step.accumulators) == \
                (by_learn.weights, by_learn.bias, by_learn.accumulators)
    assert by_learn.updates == by_step.updates > 200


@pytest.mark.parametrize("optimizer", [AdaGrad(1.0), Ftrl(1.0), Ftrl(1.0, l1=1.0, l2=1.0)], ids=["adagrad", "ftrl", "ftrl-l1"])
@pytest.mark.parametrize("indices, values, y, p", [
    ([0, 1], [math.nan, 0.0], 1, 0.5),  # a gradient would be NaN
    ([0, 1], [math.inf, 0.0], 1, 0.5),  # a gradient would be infinite
    ([0, 1], [1.0, 0.0], 1, math.nan),  # every gradient would be NaN
    ([1], [1e300], 0, 1.0),  # its square overflows
])
def test_a_step_that_would_break_the_weights_or_accumulators_is_discarded_whole(optimizer, indices, values, y, p):
    model = LogisticRegression(2, [0.5, -0.5], bias=0.1, updates=7)
    model.adopt(optimizer)
    model.learn([0, 1], [0.3, -0.2], 1, 0.4, optimizer)  # accumulators that are not all zero
    before = (list(model.weights), model.bias, [list(a) for a in model.accumulators])
    assert model.learn(indices, values, y, p, optimizer) is False
    assert (model.weights, model.bias, model.accumulators) == before
    assert model.updates == 8 and model.rejected_updates == 1
    assert model.learn([0], [1.0], 1, 0.5, optimizer) is True  # and it keeps learning
    assert model.updates == 9


def test_a_huge_adagrad_weight_is_discarded():
    model = LogisticRegression(1, [0.0])
    # With eps tiny and the first gradient tiny, the step is rate * sign(g): 2e12 here.
    assert model.learn([0], [1e-9], 0, 1.0, AdaGrad(2e12, eps=1e-30)) is False
    assert model.weights == [0.0] and model.accumulators == [[0.0, 0.0]] and model.rejected_updates == 1


def trained(optimizer, records: int = 200) -> LogisticRegression:
    model = LogisticRegression(N_FEATURES, bias=0.3)
    for _, indices, values, label in random_stream(12, records, keys=1):
        if label is not None:
            model.learn(indices, values, label, model.predict_proba(indices, values), optimizer)
    return model


@pytest.mark.parametrize("ftrl", [Ftrl(0.1), Ftrl(0.05, beta=2.0, l1=0.3, l2=1.5)], ids=["plain", "l1-l2"])
@pytest.mark.parametrize("before", [Sgd(0.05, l2=0.01), AdaGrad(0.1)], ids=["from-sgd", "from-adagrad"])
def test_a_model_turning_to_ftrl_keeps_its_weights(before, ftrl):
    model = trained(before)
    weights, bias = list(model.weights), model.bias
    model.adopt(ftrl)
    assert model.optimizer_kind == "ftrl" and model.weights == weights and model.bias == bias
    z, n = model.accumulators
    assert n == [0.0] * (N_FEATURES + 1)
    assert [ftrl.weight(z_i, 0.0, ftrl.l1, ftrl.l2) for z_i in z[:-1]] == pytest.approx(weights, rel=1e-14)
    assert ftrl.weight(z[-1], 0.0, 0.0, 0.0) == pytest.approx(bias, rel=1e-14)


def test_a_model_turning_to_adagrad_starts_with_zero_accumulators_and_to_sgd_with_none():
    model = trained(Ftrl(0.1))
    weights = list(model.weights)
    model.adopt(AdaGrad(0.1))
    assert model.optimizer_kind == "adagrad" and model.accumulators == [[0.0] * (N_FEATURES + 1)]
    assert model.weights == weights
    model.adopt(Sgd(0.1))
    assert model.optimizer_kind == "sgd" and model.accumulators == [] and model.weights == weights


def test_ftrl_keeps_its_accumulators_when_its_parameters_change():
    model = trained(Ftrl(0.1))
    accumulators = [list(a) for a in model.accumulators]
    model.adopt(Ftrl(0.5, beta=2.0, l1=1.0))
    assert model.accumulators == accumulators


def test_a_model_of_one_optimizer_continues_as_a_new_one_of_the_other_would_from_its_weights():
    # SGD until now, AdaGrad from here: the same as an AdaGrad model that starts at these weights.
    model = trained(Sgd(0.05))
    fresh = LogisticRegression(N_FEATURES, model.weights, model.bias)
    for _, indices, values, label in random_stream(13, 100, keys=1):
        if label is not None:
            for m in (model, fresh):
                m.learn(indices, values, label, m.predict_proba(indices, values), AdaGrad(0.1))
    assert (model.weights, model.bias, model.accumulators) == (fresh.weights, fresh.bias, fresh.accumulators)


@pytest.mark.parametrize("optimizer", [Sgd(0.1), AdaGrad(0.1), Ftrl(0.1)], ids=["sgd", "adagrad", "ftrl"])
def test_a_new_key_starts_at_the_initial_bias(optimizer):
    key_model = KeyModel(4, (0,), initial_bias=-3.4)
    model = key_model.model
    assert model.bias == -3.4 and model.weights == [0.0] * 4
    assert model.predict_proba([0, 2], [1.0, 1.0]) == pytest.approx(1 / (1 + math.exp(3.4)), rel=1e-15)
    model.adopt(optimizer)
    assert model.bias == -3.4
    assert model.learn([1], [1.0], 0, model.predict_proba([1], [1.0]), optimizer) is True
    assert -3.6 < model.bias < -3.4  # one small step down from the prior
    assert KeyModel(4, (0,)).model.bias == 0.0


def test_accumulators_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="accumulators"):
        LogisticRegression(3, accumulators=[[0.0] * 3], optimizer_kind="adagrad")
    with pytest.raises(ValueError, match="accumulators"):
        LogisticRegression(3, accumulators=[[0.0] * 4], optimizer_kind="ftrl")


@pytest.mark.parametrize("batch_size", [1, 64, 5000])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_compiled_model_equals_the_textbook_optimizer_on_a_keyed_stream(name, batch_size):
    optimizer, textbook, initial_bias = OPTIMIZERS[name]
    stream = random_stream(100 + list(OPTIMIZERS).index(name), 3000, keys=5)
    expected_scores, expected_models = textbook_run(textbook, N_FEATURES, stream)
    scorer = ModelScorer(tuple(f"f{i}" for i in range(N_FEATURES)), (), optimizer, snapshot_every=10**9,
                         top_reasons=2, initial_bias=initial_bias)
    context = ScoreContext("fuel", "US", "web", 1.0, "USD", "a")
    records = [ModelInput(key, f"t{i}", i, label, indices, values, context)
               for i, (key, indices, values, label) in enumerate(stream)]
    table = scorer.new_table()
    scores = []
    for start in range(0, len(records), batch_size):
        scores += scorer.assess_columns(RecordBatch.of(records[start:start + batch_size]), table).probability.tolist()
    assert close(scores, expected_scores)
    assert sorted(table.rows) == sorted(expected_models)
    for key, expected in expected_models.items():
        row = table.rows[key]
        assert table.updates[row] == expected.updates
        assert close(table.weights[row], expected.weights), key
        assert close(table.bias[row], expected.bias), key
        for slot, accumulator in enumerate(optimizer.accumulators):
            assert close(table.accumulators[row, slot], expected.accumulators[accumulator]), (key, accumulator)
