"""sigmoid, SGD logistic regression and KeyModel state (udfs/model.py)."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from udfs.model import KeyModel, LogisticRegression, Sgd, sigmoid


def every(x: list[float]) -> list[int]:
    """The indices of a dense vector given as a sparse one: all of them, zeros included."""
    return list(range(len(x)))


# ---------------------------------------------------------------- sigmoid


@pytest.mark.parametrize("z", [1000.0, -1000.0, 1e308, -1e308, math.inf, -math.inf, 745.2, -745.2, 710.0, -710.0])
def test_sigmoid_is_finite_and_in_unit_interval_at_extreme_margins(z):
    p = sigmoid(z)
    assert math.isfinite(p)
    assert 0.0 <= p <= 1.0
    assert (p > 0.5) if z > 0 else (p < 0.5)


def test_sigmoid_saturates_at_the_right_ends():
    assert sigmoid(math.inf) == 1.0
    assert sigmoid(-math.inf) == 0.0
    assert sigmoid(1000.0) == 1.0
    assert sigmoid(-1000.0) < 1e-300


def test_sigmoid_is_symmetric_and_matches_the_definition_for_moderate_margins():
    for z in [i / 4 for i in range(-160, 161)] + [0.1234, -7.77, 33.3]:
        assert abs(sigmoid(-z) - (1.0 - sigmoid(z))) <= 1e-12, z
        assert sigmoid(z) == pytest.approx(1.0 / (1.0 + math.exp(-z)), rel=1e-12, abs=1e-300), z


def test_sigmoid_of_zero_is_one_half():
    assert sigmoid(0.0) == 0.5


# ---------------------------------------------------------------- SGD step vs numerical gradient


def loss(weights: list[float], bias: float, x: list[float], y: int, l2: float) -> float:
    """Log loss of one example plus l2/2 * ||w||^2 (the bias is not regularized)."""
    z = bias + sum(w * xi for w, xi in zip(weights, x))
    p = 1.0 / (1.0 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p)) + l2 / 2 * sum(w * w for w in weights)


def numerical_gradient(weights, bias, x, y, l2, h=1e-6):
    grad_w = []
    for i in range(len(weights)):
        up = list(weights)
        down = list(weights)
        up[i] += h
        down[i] -= h
        grad_w.append((loss(up, bias, x, y, l2) - loss(down, bias, x, y, l2)) / (2 * h))
    grad_b = (loss(weights, bias + h, x, y, l2) - loss(weights, bias - h, x, y, l2)) / (2 * h)
    return grad_w, grad_b


@pytest.mark.parametrize("l2", [0.0, 0.3, 2.0])
@pytest.mark.parametrize("seed", range(6))
def test_sgd_step_is_the_gradient_of_regularized_log_loss(l2, seed):
    rng = random.Random(seed)
    n = 6
    weights = [rng.uniform(-1, 1) for _ in range(n)]
    bias = rng.uniform(-1, 1)
    x = [rng.uniform(-2, 2) for _ in range(n)]
    y = seed % 2
    rate = 0.05
    model = LogisticRegression(n, weights, bias)
    p = model.predict_proba(every(x), x)
    assert model.learn(every(x), x, y, p, Sgd(rate, l2=l2)) is True

    grad_w, grad_b = numerical_gradient(weights, bias, x, y, l2)
    step_w = [(old - new) / rate for old, new in zip(weights, model.weights)]
    step_b = (bias - model.bias) / rate
    assert step_w == pytest.approx(grad_w, abs=1e-6)
    assert step_b == pytest.approx(grad_b, abs=1e-6)
    assert model.updates == 1


def test_l2_does_not_decay_the_bias():
    model = LogisticRegression(2, [0.0, 0.0], bias=5.0)
    x = [0.0, 0.0]
    p = model.predict_proba(every(x), x)
    model.learn(every(x), x, 1, p, Sgd(0.1, l2=10.0))
    assert model.bias == pytest.approx(5.0 - 0.1 * (p - 1), abs=1e-15)


def test_predict_proba_is_sigmoid_of_the_margin():
    model = LogisticRegression(3, [0.5, -1.0, 2.0], bias=0.25)
    x = [1.0, 2.0, -0.5]
    margin = 0.25 + 0.5 * 1.0 - 1.0 * 2.0 + 2.0 * -0.5
    assert model.predict_proba(every(x), x) == pytest.approx(1 / (1 + math.exp(-margin)), rel=1e-15)


# ---------------------------------------------------------------- learning-rate schedules


@pytest.mark.parametrize("updates", [0, 1, 3, 99, 10_000])
def test_constant_rate_does_not_depend_on_updates(updates):
    assert Sgd(0.2).rate(updates) == 0.2


@pytest.mark.parametrize("updates, power_t", [(0, 0.5), (3, 0.5), (99, 0.5), (8, 1.0), (15, 0.25)])
def test_inverse_scaling_rate(updates, power_t):
    expected = 0.5 / (1 + updates) ** power_t
    assert Sgd(0.5, "inverse_scaling", power_t).rate(updates) == pytest.approx(expected, rel=1e-15)


def test_learn_uses_the_inverse_scaling_rate_for_the_models_update_count():
    model = LogisticRegression(1, [0.0], updates=3)
    model.learn([0], [2.0], 1, 0.25, Sgd(0.5, "inverse_scaling", 0.5))
    rate = 0.5 / math.sqrt(4)
    assert model.weights == [pytest.approx(0.0 - rate * (0.25 - 1) * 2.0, rel=1e-15)]
    assert model.updates == 4


# ---------------------------------------------------------------- discarded updates


@pytest.mark.parametrize("x, y, p", [
    ([2e12, 0.0], 0, 1.0),  # a weight would reach -2e12
    ([math.nan, 0.0], 1, 0.5),  # a weight would be NaN
    ([math.inf, 0.0], 1, 0.5),  # a weight would be infinite
    ([1.0, 0.0], 1, math.nan),  # every weight and the bias would be NaN
])
def test_an_update_that_would_break_the_weights_is_discarded(x, y, p):
    model = LogisticRegression(2, [0.5, -0.5], bias=0.1, updates=7)
    assert model.learn(every(x), x, y, p, Sgd(1.0)) is False
    assert model.weights == [0.5, -0.5]
    assert model.bias == 0.1
    assert model.updates == 7
    assert model.rejected_updates == 1


def test_an_update_that_would_push_the_bias_over_1e12_is_discarded():
    model = LogisticRegression(1, [0.0], bias=1e12)
    assert model.learn([0], [0.0], 1, 0.0, Sgd(5000.0)) is False
    assert model.bias == 1e12 and model.rejected_updates == 1 and model.updates == 0


def test_an_update_reaching_exactly_1e12_is_kept():
    model = LogisticRegression(1, [0.0])
    assert model.learn([0], [1e12], 0, 1.0, Sgd(1.0)) is True
    assert model.weights == [-1e12]
    assert model.rejected_updates == 0 and model.updates == 1


def test_discarded_updates_accumulate_and_the_model_keeps_learning():
    model = LogisticRegression(1, [0.0])
    model.learn([0], [math.nan], 1, 0.5, Sgd(0.1))
    model.learn([0], [math.inf], 1, 0.5, Sgd(0.1))
    assert model.learn([0], [1.0], 1, 0.5, Sgd(0.1)) is True
    assert model.rejected_updates == 2
    assert model.weights == [pytest.approx(0.05)]


# ---------------------------------------------------------------- explanations


def test_top_contributions_are_ordered_by_absolute_contribution():
    model = LogisticRegression(5, [0.5, -3.0, 1.0, 0.0, 2.0])
    x = [1.0, 1.0, -4.0, 5.0, 0.1]
    assert model.top_contributions(every(x), x, 3) == [(2, -4.0), (1, -3.0), (0, 0.5)]


def test_top_contributions_match_a_brute_force_ranking():
    rng = random.Random(5)
    model = LogisticRegression(20, [rng.uniform(-2, 2) for _ in range(20)])
    x = [rng.uniform(-3, 3) for _ in range(20)]
    everything = sorted(((i, w * xi) for i, (w, xi) in enumerate(zip(model.weights, x))),
                        key=lambda item: -abs(item[1]))
    for k in (1, 4, 20):
        assert model.top_contributions(every(x), x, k) == everything[:k]


def test_top_contributions_of_k_zero_is_empty():
    assert LogisticRegression(2, [1.0, 2.0]).top_contributions([0, 1], [1.0, 1.0], 0) == []


def test_top_contributions_skip_features_that_contribute_nothing():
    model = LogisticRegression(3, [0.0, 2.0, 1.0])
    assert model.top_contributions([0, 1, 2], [5.0, 0.0, 1.0], 3) == [(2, 1.0)]


# ---------------------------------------------------------------- sparse vectors


def random_sparse(rng: random.Random, n: int) -> tuple[list[int], list[float]]:
    """Sorted unique indices (sometimes none, sometimes all) with values, a few of them exactly 0."""
    k = rng.choice([0, 1, rng.randint(1, n), n])
    indices = sorted(rng.sample(range(n), k))
    values = [rng.choice([0.0, 1.0, rng.uniform(-4, 4), rng.uniform(-4, 4)]) for _ in indices]
    return indices, values


def densified(n: int, indices: list[int], values: list[float]) -> list[float]:
    x = [0.0] * n
    for i, v in zip(indices, values):
        x[i] = v
    return x


@pytest.mark.parametrize("sgd", [Sgd(0.1), Sgd(0.1, l2=0.05), Sgd(0.3, "inverse_scaling", 0.5),
                                 Sgd(0.3, "inverse_scaling", 0.5, l2=0.2)],
                         ids=["constant", "constant-l2", "inverse-scaling", "inverse-scaling-l2"])
def test_a_sparse_vector_scores_and_learns_exactly_like_the_same_vector_given_densely(sgd):
    rng = random.Random(repr(sgd))
    n = 15
    start = [rng.uniform(-1, 1) for _ in range(n)]  # non-zero everywhere, so unlisted weights matter
    sparse = LogisticRegression(n, start, bias=0.3)
    dense = LogisticRegression(n, start, bias=0.3)
    for step in range(400):
        indices, values = random_sparse(rng, n)
        x = densified(n, indices, values)
        p_sparse = sparse.predict_proba(indices, values)
        p_dense = dense.predict_proba(every(x), x)
        assert p_sparse == p_dense, step
        assert sparse.top_contributions(indices, values, 4) == dense.top_contributions(every(x), x, 4), step
        y = rng.randint(0, 1)
        assert sparse.learn(indices, values, y, p_sparse, sgd) is dense.learn(every(x), x, y, p_dense, sgd) is True
        assert sparse.weights == dense.weights, step
        assert sparse.bias == dense.bias, step
        assert sparse.updates == dense.updates == step + 1
    assert sparse.weights != start  # it did learn


def test_predict_proba_uses_only_the_listed_entries():
    model = LogisticRegression(4, [0.5, 100.0, -2.0, 100.0], bias=0.25)
    margin = 0.25 + 0.5 * 2.0 + -2.0 * 3.0
    assert model.predict_proba([0, 2], [2.0, 3.0]) == pytest.approx(1 / (1 + math.exp(-margin)), rel=1e-15)
    assert model.predict_proba([], []) == pytest.approx(1 / (1 + math.exp(-0.25)), rel=1e-15)


def test_without_l2_learn_moves_only_the_weights_of_listed_indices():
    rng = random.Random(17)
    n = 12
    for _ in range(200):
        start = [rng.uniform(-1, 1) for _ in range(n)]
        model = LogisticRegression(n, start, bias=-0.2, updates=rng.randint(0, 50))
        indices, values = random_sparse(rng, n)
        y = rng.randint(0, 1)
        p = model.predict_proba(indices, values)
        sgd = rng.choice([Sgd(0.2), Sgd(0.5, "inverse_scaling", 0.5)])
        rate = sgd.learning_rate if sgd.schedule == "constant" else 0.5 / math.sqrt(1 + model.updates)
        assert model.learn(indices, values, y, p, sgd) is True
        listed = dict(zip(indices, values))
        for i in range(n):
            if i in listed:
                assert model.weights[i] == pytest.approx(start[i] - rate * (p - y) * listed[i], rel=1e-14, abs=1e-15)
            else:
                assert model.weights[i] == start[i]  # untouched, exactly
        assert model.bias == pytest.approx(-0.2 - rate * (p - y), rel=1e-14)


def test_a_listed_zero_leaves_its_weight_unchanged():
    model = LogisticRegression(3, [0.7, -0.4, 0.1])
    assert model.learn([0, 1], [0.0, 2.0], 1, 0.25, Sgd(0.5)) is True
    assert model.weights[0] == 0.7 and model.weights[2] == 0.1
    assert model.weights[1] == pytest.approx(-0.4 + 0.5 * 0.75 * 2.0)


def test_with_l2_learn_decays_the_weights_of_unlisted_indices_too():
    model = LogisticRegression(4, [1.0, -2.0, 0.5, 3.0], bias=0.0)
    p = model.predict_proba([1], [1.5])
    assert model.learn([1], [1.5], 0, p, Sgd(0.1, l2=0.5)) is True
    decay = 1 - 0.1 * 0.5
    assert model.weights[0] == pytest.approx(1.0 * decay, rel=1e-15)
    assert model.weights[2] == pytest.approx(0.5 * decay, rel=1e-15)
    assert model.weights[3] == pytest.approx(3.0 * decay, rel=1e-15)
    assert model.weights[1] == pytest.approx(-2.0 * decay - 0.1 * p * 1.5, rel=1e-15)


def test_a_sparse_update_that_would_break_a_listed_weight_is_discarded_whole():
    model = LogisticRegression(4, [0.5, -0.5, 0.25, 0.0], bias=0.1, updates=3)
    assert model.learn([1, 3], [1.0, 3e12], 0, 1.0, Sgd(1.0)) is False  # weight 3 would reach -3e12
    assert model.weights == [0.5, -0.5, 0.25, 0.0]
    assert model.bias == 0.1 and model.updates == 3 and model.rejected_updates == 1


def test_top_contributions_rank_only_the_listed_entries():
    model = LogisticRegression(6, [0.5, -3.0, 1.0, 9.0, 2.0, -7.0])
    assert model.top_contributions([0, 1, 2, 4], [1.0, 1.0, -4.0, 0.1], 3) == [(2, -4.0), (1, -3.0), (0, 0.5)]
    assert model.top_contributions([5], [0.0], 3) == []


# ---------------------------------------------------------------- KeyModel state

NAMES = ("log_amount", "count", "channel=web", "channel=pos", "hour_of_day_sin", "hour_of_day_cos")
STANDARDIZED = (0, 1, 4)


def trained_key_model(records: int = 40, seed: int = 3) -> KeyModel:
    rng = random.Random(seed)
    key_model = KeyModel(len(NAMES), STANDARDIZED)
    sgd = Sgd(0.1, l2=0.01)
    for i in range(records):
        x = key_model.standardizer.transform([rng.uniform(0, 8), rng.randint(0, 9), rng.choice([0.0, 1.0]),
                                              rng.choice([0.0, 1.0]), rng.uniform(-1, 1), rng.uniform(-1, 1)])
        p = key_model.model.predict_proba(every(x), x)
        key_model.model.learn(every(x), x, rng.randint(0, 1), p, sgd)
        key_model.last_event_time = 1_767_225_600_000 + i
    key_model.model.learn(every(NAMES), [math.nan] * len(NAMES), 1, 0.5, sgd)  # one discarded update to round-trip
    return key_model


def state_of(key_model: KeyModel) -> tuple:
    s, m = key_model.standardizer, key_model.model
    return (tuple(s.positions), s.count, list(s.mean), list(s.m2), list(m.weights), m.bias, m.updates,
            m.rejected_updates, key_model.last_event_time)


@pytest.mark.parametrize("key_model", [KeyModel(len(NAMES), STANDARDIZED), KeyModel(3, ()), trained_key_model()],
                         ids=["fresh", "no-standardization", "trained"])
def test_key_model_bytes_round_trip(key_model):
    restored = KeyModel.from_bytes(key_model.to_bytes())
    assert state_of(restored) == state_of(key_model)
    assert restored.to_bytes() == key_model.to_bytes()


@pytest.mark.parametrize("key_model", [KeyModel(len(NAMES), STANDARDIZED), trained_key_model()],
                         ids=["fresh", "trained"])
def test_key_model_snapshot_survives_json_and_restores_identical_state(key_model):
    text = orjson.dumps(key_model.to_snapshot("grocery", NAMES))
    restored = KeyModel.from_snapshot(orjson.loads(text), NAMES)
    assert restored.to_bytes() == key_model.to_bytes()
    assert state_of(restored) == state_of(key_model)


def test_snapshot_describes_the_model_by_feature_name():
    key_model = trained_key_model()
    snapshot = orjson.loads(orjson.dumps(key_model.to_snapshot("grocery", NAMES)))
    assert snapshot["model_key"] == "grocery"
    assert snapshot["weights"] == dict(zip(NAMES, key_model.model.weights))
    assert snapshot["bias"] == key_model.model.bias
    assert snapshot["model_updates"] == 40
    assert snapshot["rejected_updates"] == 1
    assert snapshot["event_time"] == 1_767_225_600_000 + 39
    assert list(snapshot["standardization"]["features"]) == [NAMES[i] for i in STANDARDIZED]
    assert isinstance(snapshot["schema_version"], int)


def test_snapshot_of_a_model_that_never_learned_has_no_event_time():
    assert KeyModel(len(NAMES), STANDARDIZED).to_snapshot("k", NAMES)["event_time"] is None


def test_from_snapshot_rejects_another_version():
    snapshot = trained_key_model().to_snapshot("grocery", NAMES)
    for version in (snapshot["schema_version"] + 1, None, "1"):
        with pytest.raises(ValueError):
            KeyModel.from_snapshot(dict(snapshot, schema_version=version), NAMES)


@pytest.mark.parametrize("names", [
    NAMES[:-1],  # a feature fewer
    NAMES + ("day_of_week=0",),  # a feature more
    (NAMES[1], NAMES[0]) + NAMES[2:],  # another order
    ("log_amount_v2",) + NAMES[1:],  # a renamed feature
], ids=["fewer", "more", "reordered", "renamed"])
def test_from_snapshot_rejects_mismatched_features(names):
    snapshot = trained_key_model().to_snapshot("grocery", NAMES)
    with pytest.raises(ValueError):
        KeyModel.from_snapshot(snapshot, names)


def test_from_bytes_rejects_another_state_version():
    data = bytearray(trained_key_model().to_bytes())
    data[0] += 1  # the version is the first byte of the header
    with pytest.raises(ValueError):
        KeyModel.from_bytes(bytes(data))
