"""Model state version 3 (udfs/model.py write_state/read_state, udfs/compiled_model.py ModelTable):
the optimizer and its accumulators round-trip through bytes and snapshots, and the states of
earlier releases (versions 1 and 2, plain SGD) are read and continue under any optimizer."""

from __future__ import annotations

import random
import struct

import numpy as np
import orjson
import pytest

from tests.reference.textbook import TextbookAdaGrad, TextbookModel
from udfs.compiled_model import ModelTable
from udfs.model import STATE_VERSION, AdaGrad, Ftrl, KeyModel, Sgd, read_state

NAMES = ("amount", "a", "b", "c=x", "c=y", "d")
STANDARDIZED = (0, 1)
OPTIMIZERS = {"sgd": Sgd(0.05), "adagrad": AdaGrad(0.1, l2=0.01), "ftrl": Ftrl(0.1, beta=1.0, l1=0.05, l2=0.5)}


def trained(optimizer, records: int = 60, seed: int = 1, initial_bias: float = 0.0) -> KeyModel:
    rng = random.Random(seed)
    key_model = KeyModel(len(NAMES), STANDARDIZED, initial_bias)
    for i in range(records):
        indices = [0, 1, 2, rng.choice([3, 4]), 5]
        x = key_model.standardizer.transform([rng.uniform(0, 9), rng.gauss(0, 1), rng.gauss(0, 1), 1.0,
                                              rng.uniform(-1, 1)])
        label = rng.randint(0, 1)
        p = key_model.model.predict_proba(indices, x)
        key_model.model.learn(indices, x, label, p, optimizer)
        key_model.last_event_time = 1_767_225_600_000 + i
    return key_model


def state_of(key_model: KeyModel) -> tuple:
    s, m = key_model.standardizer, key_model.model
    return (tuple(s.positions), s.count, list(s.mean), list(s.m2), list(m.weights), m.bias, m.updates,
            m.rejected_updates, key_model.last_event_time, m.optimizer_kind, [list(a) for a in m.accumulators])


# Versions 1 and 2 as the releases before this one wrote them, independently of udfs.model.
def version_2_bytes(key_model: KeyModel) -> bytes:
    s, m = key_model.standardizer, key_model.model
    k = len(s.positions)
    header = struct.pack("<B3xII4xQQqQd", 2, len(m.weights), k, m.updates, m.rejected_updates,
                         key_model.last_event_time, s.count, m.bias)
    return (header + np.array(s.positions, np.int32).tobytes() + bytes(4 * (k % 2))
            + np.array(list(m.weights) + list(s.mean) + list(s.m2), np.float64).tobytes())


def version_1_bytes(key_model: KeyModel) -> bytes:
    s, m = key_model.standardizer, key_model.model
    header = struct.pack("<BIIQQqQd", 1, len(m.weights), len(s.positions), m.updates, m.rejected_updates,
                         key_model.last_event_time, s.count, m.bias)
    return (header + np.array(s.positions, np.int32).tobytes()
            + np.array(list(m.weights) + list(s.mean) + list(s.m2), np.float64).tobytes())


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_version_3_bytes_round_trip_with_the_optimizer_and_its_accumulators(kind):
    key_model = trained(OPTIMIZERS[kind], initial_bias=-2.0)
    data = key_model.to_bytes()
    assert data[0] == STATE_VERSION == 3 and data[1] == ("sgd", "adagrad", "ftrl").index(kind)
    restored = KeyModel.from_bytes(data)
    assert state_of(restored) == state_of(key_model)
    assert restored.to_bytes() == data
    assert len(restored.model.accumulators) == len(OPTIMIZERS[kind].accumulators)
    # The table reads and writes the same bytes.
    table = ModelTable(len(NAMES), STANDARDIZED, optimizer=OPTIMIZERS[kind])
    assert table.to_bytes(table.add("k", data)) == data


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_a_snapshot_round_trips_the_optimizer_and_its_accumulators(kind):
    key_model = trained(OPTIMIZERS[kind])
    snapshot = orjson.loads(orjson.dumps(key_model.to_snapshot("grocery", NAMES)))
    assert snapshot["optimizer"] == kind
    expected = {"sgd": [], "adagrad": ["g2"], "ftrl": ["z", "n"]}[kind]
    assert list(snapshot["accumulators"]) == expected
    for name, values in zip(expected, key_model.model.accumulators):
        assert snapshot["accumulators"][name] == {"weights": dict(zip(NAMES, values[:-1])), "bias": values[-1]}
    restored = KeyModel.from_snapshot(snapshot, NAMES)
    assert state_of(restored) == state_of(key_model)


def test_a_snapshot_of_an_earlier_release_reads_as_sgd():
    snapshot = trained(Sgd(0.05)).to_snapshot("grocery", NAMES)
    del snapshot["optimizer"], snapshot["accumulators"]
    restored = KeyModel.from_snapshot(snapshot, NAMES)
    assert restored.model.optimizer_kind == "sgd" and restored.model.accumulators == []


def test_a_snapshot_with_accumulators_of_another_optimizer_is_refused():
    snapshot = trained(AdaGrad(0.1)).to_snapshot("grocery", NAMES)
    with pytest.raises(ValueError, match="accumulators"):
        KeyModel.from_snapshot(dict(snapshot, optimizer="ftrl"), NAMES)
    with pytest.raises(ValueError, match="optimizer"):
        KeyModel.from_snapshot(dict(snapshot, optimizer="adam"), NAMES)


@pytest.mark.parametrize("old_bytes", [version_1_bytes, version_2_bytes], ids=["v1", "v2"])
def test_an_sgd_state_of_an_earlier_release_reads_as_version_3_sgd(old_bytes):
    key_model = trained(Sgd(0.05))
    old = old_bytes(key_model)
    assert old[0] in (1, 2) and old != key_model.to_bytes()
    state = read_state(old)
    assert state.optimizer_kind == "sgd" and state.accumulators == []
    assert KeyModel.from_bytes(old).to_bytes() == key_model.to_bytes()
    table = ModelTable(len(NAMES), STANDARDIZED, optimizer=Sgd(0.05))
    assert table.to_bytes(table.add("k", old)) == key_model.to_bytes()


@pytest.mark.parametrize("old_bytes", [version_1_bytes, version_2_bytes], ids=["v1", "v2"])
@pytest.mark.parametrize("kind", ["adagrad", "ftrl"])
def test_an_sgd_state_of_an_earlier_release_continues_under_another_optimizer(old_bytes, kind):
    optimizer = OPTIMIZERS[kind]
    key_model = trained(Sgd(0.05))
    table = ModelTable(len(NAMES), STANDARDIZED, optimizer=optimizer)
    row = table.add("k", old_bytes(key_model))
    loaded = read_state(table.to_bytes(row))
    # The weights are kept; AdaGrad starts from G = 0, FTRL from n = 0 and the z that keeps them.
    assert (list(loaded.weights), loaded.bias) == (key_model.model.weights, key_model.model.bias)
    assert loaded.optimizer_kind == kind
    if kind == "adagrad":
        assert [list(a) for a in loaded.accumulators] == [[0.0] * (len(NAMES) + 1)]
    else:
        z, n = loaded.accumulators
        assert list(n) == [0.0] * (len(NAMES) + 1)
        assert [optimizer.weight(z_i, 0.0, optimizer.l1, optimizer.l2) for z_i in z[:-1]] == \
            pytest.approx(key_model.model.weights, rel=1e-13)
        assert optimizer.weight(z[-1], 0.0, 0.0, 0.0) == pytest.approx(key_model.model.bias, rel=1e-13)
    # The reference converts the same way when it adopts the optimizer.
    reference = KeyModel.from_bytes(old_bytes(key_model))
    reference.model.adopt(optimizer)
    assert table.to_bytes(row) == reference.to_bytes()


def test_an_sgd_model_continued_with_adagrad_is_the_textbook_adagrad_from_its_weights():
    key_model = trained(Sgd(0.05), records=80)
    table = ModelTable(len(NAMES), STANDARDIZED, optimizer=AdaGrad(0.1))
    restored = KeyModel.from_bytes(table.to_bytes(table.add("k", version_2_bytes(key_model))))
    textbook = TextbookAdaGrad(len(NAMES), 0.1)
    model = TextbookModel(np.array(key_model.model.weights), key_model.model.bias,
                          accumulators={"g2": np.zeros(len(NAMES) + 1)})
    rng = random.Random(9)
    for _ in range(100):
        x = np.array([rng.gauss(0, 1) for _ in NAMES])
        label = rng.randint(0, 1)
        p = restored.model.predict_proba(range(len(NAMES)), x.tolist())
        assert p == pytest.approx(textbook.score(model, x), abs=1e-12)
        restored.model.learn(range(len(NAMES)), x.tolist(), label, p, AdaGrad(0.1))
        textbook.learn(model, x, np.ones(len(NAMES)), label, p)
    assert restored.model.weights == pytest.approx(model.weights.tolist(), abs=1e-12)
    assert restored.model.bias == pytest.approx(model.bias, abs=1e-12)


@pytest.mark.parametrize("stored, configured", [("adagrad", "ftrl"), ("ftrl", "adagrad"), ("ftrl", "sgd"),
                                                ("adagrad", "sgd")])
def test_a_state_of_one_optimizer_is_converted_to_the_configured_one_on_load(stored, configured):
    key_model = trained(OPTIMIZERS[stored])
    table = ModelTable(len(NAMES), STANDARDIZED, optimizer=OPTIMIZERS[configured])
    row = table.add("k", key_model.to_bytes())
    reference = KeyModel.from_bytes(key_model.to_bytes())
    reference.model.adopt(OPTIMIZERS[configured])
    assert table.to_bytes(row) == reference.to_bytes()
    assert read_state(table.to_bytes(row)).optimizer_kind == configured
    assert list(table.weights[row]) == key_model.model.weights


def test_an_unknown_optimizer_code_is_refused():
    data = bytearray(trained(AdaGrad(0.1)).to_bytes())
    data[1] = 7
    with pytest.raises(ValueError, match="optimizer"):
        KeyModel.from_bytes(bytes(data))


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_a_new_row_starts_as_a_new_reference_model(kind):
    table = ModelTable(len(NAMES), STANDARDIZED, optimizer=OPTIMIZERS[kind], initial_bias=-3.5)
    row = table.add("k")
    reference = KeyModel(len(NAMES), STANDARDIZED, -3.5)
    reference.model.adopt(OPTIMIZERS[kind])
    assert table.to_bytes(row) == reference.to_bytes()
    assert table.bias[row] == -3.5
