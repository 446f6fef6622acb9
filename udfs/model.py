"""Keyed online logistic regression trained by plain SGD (pure Python, no Flink).

For each record of a key, in arrival order: `p = sigmoid(w . x + b)` is the score; a labelled record
then updates `w <- w - rate * ((p - y) x + l2 w)` and `b <- b - rate (p - y)`. An update that would
leave any weight or the bias non-finite or above 1e12 in magnitude is discarded (the model keeps
its previous weights) and counted in `rejected_updates`, so one corrupt record cannot destroy a
key's model and every later margin stays finite.
"""

from __future__ import annotations

import math
import struct
from array import array
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from udfs.features import Standardizer

MAX_ABS_WEIGHT = 1e12
STATE_VERSION = 2
SNAPSHOT_VERSION = 1


def sigmoid(z: float) -> float:
    """1 / (1 + e^-z) in (0, 1), without overflow for any finite or infinite z."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Sgd:
    """Plain stochastic gradient descent: rate = learning_rate (constant) or
    learning_rate / (1 + updates) ** power_t (inverse_scaling); l2 >= 0 is the weight decay."""

    learning_rate: float
    schedule: str = "constant"
    power_t: float = 0.5
    l2: float = 0.0

    def rate(self, updates: int) -> float:
        if self.schedule == "constant":
            return self.learning_rate
        return self.learning_rate / (1.0 + updates) ** self.power_t


class LogisticRegression:
    """One key's model: weights over `n_features` inputs, a bias and counters."""

    __slots__ = ("weights", "bias", "updates", "rejected_updates")

    def __init__(self, n_features: int, weights: Sequence[float] | None = None, bias: float = 0.0,
                 updates: int = 0, rejected_updates: int = 0):
        self.weights = list(weights) if weights is not None else [0.0] * n_features
        self.bias = bias
        self.updates = updates
        self.rejected_updates = rejected_updates

    def predict_proba(self, indices: Sequence[int], values: Sequence[float]) -> float:
        """Probability of the positive class (fraud) for the sparse features (indices, values), in (0, 1)."""
        weights = self.weights
        return sigmoid(self.bias + sum([weights[i] * v for i, v in zip(indices, values)]))

    def learn(self, indices: Sequence[int], values: Sequence[float], y: int, p: float, sgd: Sgd) -> bool:
        """One SGD step on (x, y) given this model's score `p` for x; False if the step was discarded.

        Only the weights of x's entries move (the others have a zero gradient), unless l2 decays all."""
        rate = sgd.rate(self.updates)
        g = p - y
        step = rate * g
        weights = self.weights
        if sgd.l2:
            weights = [w * (1.0 - rate * sgd.l2) for w in weights]
        else:
            weights = weights.copy()
        for i, v in zip(indices, values):
            weights[i] -= step * v
        bias = self.bias - step
        moved = weights if sgd.l2 else [weights[i] for i in indices]
        magnitudes = list(map(abs, moved))
        # The sum is NaN or infinite if any weight is; once it is finite, max() is reliable.
        if not (abs(bias) <= MAX_ABS_WEIGHT and math.isfinite(sum(magnitudes))
                and max(magnitudes, default=0.0) <= MAX_ABS_WEIGHT):
            self.rejected_updates += 1  # also catches NaN: every comparison with NaN is False
            return False
        self.weights = weights
        self.bias = bias
        self.updates += 1
        return True

    def top_contributions(self, indices: Sequence[int], values: Sequence[float], k: int) -> list[tuple[int, float]]:
        """Up to `k` (feature index, w_i * x_i) pairs with the largest |w_i * x_i|, largest first;
        entries that contribute exactly 0 are left out."""
        if k <= 0:
            return []
        weights = self.weights
        contributions = [(i, weights[i] * v) for i, v in zip(indices, values) if weights[i] and v]
        contributions.sort(key=_magnitude, reverse=True)  # stable: ties keep feature order
        return contributions[:k]


def _magnitude(item: tuple[int, float]) -> float:
    return abs(item[1])


class ModelState(NamedTuple):
    """A key's model as stored in Flink state (see `write_state`)."""

    positions: Sequence[int]  # the standardized features' indices
    count: int  # records seen by the standardizer
    mean: Sequence[float]
    m2: Sequence[float]
    weights: Sequence[float]
    bias: float
    updates: int
    rejected_updates: int
    last_event_time: int  # -1: never learned


# Version 2 (written): a 56-byte header, the standardized positions as int32 padded to a multiple
# of 8 bytes, then float64 weights, means and M2s, so the floats start 8-byte aligned and numpy
# reads them in place (udfs/compiled_model.py). Version 1 (read, so a savepoint of an older
# release resumes): the same fields without padding.
STATE_HEADER = struct.Struct("<B3xII4xQQqQd")  # version, n_features, n_standardized, updates,
#                                                  rejected, last_event_time, standardizer count, bias
STATE_HEADER_V1 = struct.Struct("<BIIQQqQd")


def write_state(state: ModelState) -> bytes:
    """`state` as bytes of the current STATE_VERSION."""
    k = len(state.positions)
    header = STATE_HEADER.pack(STATE_VERSION, len(state.weights), k, state.updates, state.rejected_updates,
                                state.last_event_time, state.count, state.bias)
    positions = array("i", state.positions).tobytes() + bytes(4 * (k % 2))
    body = array("d", state.weights)
    body.extend(state.mean)
    body.extend(state.m2)
    return header + positions + body.tobytes()


def read_state(data: bytes) -> ModelState:
    """The state in `data`, of version 1 or 2; ValueError for any other version."""
    version = data[0] if data else None
    if version == STATE_VERSION:
        header, padding = STATE_HEADER, True
    elif version == 1:
        header, padding = STATE_HEADER_V1, False
    else:
        raise ValueError(f"model state version {version} is not supported (this release reads 1 and {STATE_VERSION})")
    _, n, k, updates, rejected, last_event_time, count, bias = header.unpack_from(data)
    offset = header.size
    positions = array("i")
    positions.frombytes(data[offset:offset + 4 * k])
    offset += 4 * (k + k % 2) if padding else 4 * k
    values = array("d")
    values.frombytes(data[offset:offset + 8 * (n + 2 * k)])
    return ModelState(positions, count, values[n:n + k], values[n + k:n + 2 * k], values[:n], bias, updates,
                      rejected, last_event_time)


class KeyModel:
    """Everything one key needs across records: standardization statistics, the model, and the
    event time of its last update. Converts to compact versioned bytes for Flink state and to a
    plain JSON-ready snapshot."""

    __slots__ = ("standardizer", "model", "last_event_time")

    def __init__(self, n_features: int, standardized: Sequence[int]):
        self.standardizer = Standardizer(standardized)
        self.model = LogisticRegression(n_features)
        self.last_event_time = -1

    def to_bytes(self) -> bytes:
        s, m = self.standardizer, self.model
        return write_state(ModelState(s.positions, s.count, s.mean, s.m2, m.weights, m.bias, m.updates,
                                      m.rejected_updates, self.last_event_time))

    @classmethod
    def from_bytes(cls, data: bytes) -> "KeyModel":
        state = read_state(data)
        key_model = cls.__new__(cls)
        key_model.standardizer = Standardizer(state.positions, state.count, state.mean, state.m2)
        key_model.model = LogisticRegression(len(state.weights), state.weights, state.bias, state.updates,
                                             state.rejected_updates)
        key_model.last_event_time = state.last_event_time
        return key_model

    def to_snapshot(self, model_key: str, feature_names: Sequence[str]) -> dict[str, Any]:
        """A plain, versioned snapshot: weights by feature name, standardization by feature name."""
        s, m = self.standardizer, self.model
        return {
            "schema_version": SNAPSHOT_VERSION,
            "model_key": model_key,
            "bias": m.bias,
            "weights": dict(zip(feature_names, m.weights)),
            "model_updates": m.updates,
            "rejected_updates": m.rejected_updates,
            "event_time": self.last_event_time if self.last_event_time >= 0 else None,
            "standardization": {
                "count": s.count,
                "features": {feature_names[i]: {"mean": s.mean[j], "m2": s.m2[j]} for j, i in enumerate(s.positions)},
            },
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any], feature_names: Sequence[str]) -> "KeyModel":
        """The model a snapshot describes, for the feature layout `feature_names`; raises
        ValueError when the snapshot's version or features do not match."""
        if snapshot.get("schema_version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {snapshot.get('schema_version')} is not supported")
        if list(snapshot["weights"]) != list(feature_names):
            raise ValueError("snapshot features differ from the configured features")
        index = {name: i for i, name in enumerate(feature_names)}
        stats = snapshot["standardization"]["features"]
        key_model = cls.__new__(cls)
        key_model.model = LogisticRegression(len(feature_names), list(snapshot["weights"].values()),
                                             snapshot["bias"], snapshot["model_updates"],
                                             snapshot["rejected_updates"])
        key_model.standardizer = Standardizer([index[name] for name in stats], snapshot["standardization"]["count"],
                                              [v["mean"] for v in stats.values()], [v["m2"] for v in stats.values()])
        event_time = snapshot["event_time"]
        key_model.last_event_time = -1 if event_time is None else event_time
        return key_model
