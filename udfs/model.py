"""Keyed online logistic regression (pure Python, no Flink), trained by one of three optimizers.

For each record of a key, in arrival order: `p = sigmoid(w . x + b)` is the score; a labelled record
then takes one optimizer step on the log-loss gradient `g = (p - y) x` (the bias's: `p - y`):

- `Sgd`: `w <- w - rate * (g + l2 w)` (the l2 decay reaches every weight), `b <- b - rate (p - y)`.
- `AdaGrad` (River's form): per coordinate `G += g_i^2; w_i <- w_i - rate / sqrt(G + eps) * g_i`,
  with `g_i = (p - y) x_i + l2 w_i` for the record's entries only (lazy, sparse L2); the bias has its
  own `G` and no L2.
- `Ftrl`: FTRL-Proximal (McMahan et al. 2013, "Ad Click Prediction: a View from the Trenches",
  Algorithm 1), per coordinate `sigma = (sqrt(n + g_i^2) - sqrt(n)) / alpha; z += g_i - sigma w_i;
  n += g_i^2`, then `w_i = 0` if `|z| <= l1`, else `-(z - sign(z) l1) / ((beta + sqrt(n)) / alpha + l2)`;
  the bias has its own `z, n` and neither l1 nor l2.

The weights are stored (not recomputed from z and n at each score), so every optimizer scores the
same way. A step that would leave any weight or the bias non-finite or above 1e12 in magnitude, or
an accumulator non-finite, is discarded whole (the model keeps its previous weights and
accumulators) and counted in `rejected_updates`, so one corrupt record cannot destroy a key's model
and every later margin stays finite.
"""

from __future__ import annotations

import math
import struct
from array import array
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Sequence, Union

from udfs.features import Standardizer

MAX_ABS_WEIGHT = 1e12
STATE_VERSION = 3
SNAPSHOT_VERSION = 1


def sigmoid(z: float) -> float:
    """1 / (1 + e^-z) in [0, 1], without overflow for any finite or infinite z: exactly 1.0 for z
    above about 37 and 0.0 below about -745, where doubles round it."""
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

    kind: ClassVar[str] = "sgd"
    accumulators: ClassVar[tuple[str, ...]] = ()

    def rate(self, updates: int) -> float:
        if self.schedule == "constant":
            return self.learning_rate
        return self.learning_rate / (1.0 + updates) ** self.power_t


@dataclass(frozen=True)
class AdaGrad:
    """AdaGrad as River's `optim.AdaGrad`: per coordinate, G += g^2 and w -= learning_rate / sqrt(G + eps) * g;
    l2 >= 0 adds l2 * w_i to the gradient of each entry of the record (not to the bias's)."""

    learning_rate: float
    eps: float = 1e-8
    l2: float = 0.0

    kind: ClassVar[str] = "adagrad"
    accumulators: ClassVar[tuple[str, ...]] = ("g2",)  # the sum of squared gradients, G


@dataclass(frozen=True)
class Ftrl:
    """FTRL-Proximal with per-coordinate learning rates alpha / (beta + sqrt(n)) (alpha > 0, beta > 0)
    and L1 (l1 >= 0, makes weights exactly 0) and L2 (l2 >= 0) regularization of the weights."""

    alpha: float
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 0.0

    kind: ClassVar[str] = "ftrl"
    accumulators: ClassVar[tuple[str, ...]] = ("z", "n")

    def weight(self, z: float, n: float, l1: float, l2: float) -> float:
        """The weight FTRL-Proximal's closed form gives for the accumulators z, n (l1, l2: the
        weights' own, or 0 for the bias)."""
        if abs(z) <= l1:  # also False for a NaN z, whose weight is NaN, so the guard discards it
            return 0.0
        return -(z - (l1 if z > 0 else -l1)) / ((self.beta + math.sqrt(n)) / self.alpha + l2)

    def z_keeping(self, w: float, n: float, l1: float, l2: float) -> float:
        """The z for which `weight(z, n, l1, l2)` is w (to rounding): how a model that did not learn
        with FTRL starts with its weights as they are."""
        if w == 0.0:
            return 0.0
        return -w * ((self.beta + math.sqrt(n)) / self.alpha + l2) - (l1 if w > 0 else -l1)


Optimizer = Union[Sgd, AdaGrad, Ftrl]
# The optimizer kinds in the order of their codes in the model state (version 3).
OPTIMIZER_KINDS = (Sgd.kind, AdaGrad.kind, Ftrl.kind)
ACCUMULATOR_NAMES = {optimizer.kind: optimizer.accumulators for optimizer in (Sgd, AdaGrad, Ftrl)}


def converted_accumulators(optimizer: Optimizer, kind: str, accumulators: list[list[float]],
                           weights: Sequence[float], bias: float) -> list[list[float]]:
    """The accumulators a model whose optimizer was `kind` (with `accumulators`) continues with
    under `optimizer`, with its weights and bias kept as they are: its own when the kind is the
    same (FTRL's z and n also when alpha, beta, l1 or l2 changed: a coordinate's weight then
    follows the new parameters from its next step); none for SGD; zeros for AdaGrad (G = 0: the
    first step of each coordinate is as large as on a new model); for FTRL n = 0 and each z such
    that FTRL's closed form gives the current weight. Each accumulator has one entry per weight
    and the bias's last."""
    if optimizer.kind == kind:
        return accumulators
    if isinstance(optimizer, Ftrl):
        o = optimizer
        z = [o.z_keeping(w, 0.0, o.l1, o.l2) for w in weights]
        z.append(o.z_keeping(bias, 0.0, 0.0, 0.0))
        return [z, [0.0] * (len(weights) + 1)]
    return [[0.0] * (len(weights) + 1) for _ in optimizer.accumulators]


# One coordinate an AdaGrad or FTRL step moves: (weight index, or -1 for the bias; its new value;
# the new values of its accumulators, in ACCUMULATOR_NAMES order).
Move = tuple[int, float, tuple[float, ...]]


def adaptive_step(optimizer: AdaGrad | Ftrl, weights, bias: float, accumulators, indices: Sequence[int],
                  values: Sequence[float], scale: float, bias_gradient: float) -> list[Move] | None:
    """The coordinates one AdaGrad or FTRL step moves, for the log-loss gradient `scale * values[j]`
    of weight `indices[j]` and `bias_gradient` of the bias, the bias's move last; None when the
    guard discards the step (a weight or the bias non-finite or over 1e12, an accumulator
    non-finite). `weights` and `accumulators[slot]` (n_features + 1 entries, the bias's last) are
    read only: the reference model and the compiled table's label step (ModelTable.learn_logged)
    share this code, and write the moves with `apply_moves`."""
    moves: list[Move] = []
    if isinstance(optimizer, AdaGrad):
        rate, eps, l2 = optimizer.learning_rate, optimizer.eps, optimizer.l2
        g2 = accumulators[0]
        for i, v in zip(indices, values):
            g = scale * v + l2 * weights[i]
            total = g2[i] + g * g
            moves.append((i, weights[i] - rate / math.sqrt(total + eps) * g, (total,)))
        total = g2[-1] + bias_gradient * bias_gradient
        moves.append((-1, bias - rate / math.sqrt(total + eps) * bias_gradient, (total,)))
    else:
        z, n = accumulators
        for i, g in [(i, scale * v) for i, v in zip(indices, values)] + [(-1, bias_gradient)]:
            n_new = n[i] + g * g
            sigma = (math.sqrt(n_new) - math.sqrt(n[i])) / optimizer.alpha
            z_new = z[i] + g - sigma * (weights[i] if i >= 0 else bias)
            l1, l2 = (optimizer.l1, optimizer.l2) if i >= 0 else (0.0, 0.0)
            moves.append((i, optimizer.weight(z_new, n_new, l1, l2), (z_new, n_new)))
    if all(abs(w) <= MAX_ABS_WEIGHT and all(map(math.isfinite, state)) for _, w, state in moves):
        return moves
    return None


def apply_moves(moves: list[Move], weights, accumulators) -> float:
    """Writes `adaptive_step`'s moves into `weights` and `accumulators`; returns the new bias."""
    for i, w, state in moves[:-1]:
        weights[i] = w
        for accumulator, value in zip(accumulators, state):
            accumulator[i] = value
    _, bias, state = moves[-1]
    for accumulator, value in zip(accumulators, state):
        accumulator[-1] = value
    return bias


class LogisticRegression:
    """One key's model: weights over `n_features` inputs, a bias, counters, and the accumulators
    of the optimizer it learns with (`optimizer_kind`: a list per accumulator name of
    `ACCUMULATOR_NAMES`, each of n_features + 1 entries, the bias's last)."""

    __slots__ = ("weights", "bias", "updates", "rejected_updates", "optimizer_kind", "accumulators")

    def __init__(self, n_features: int, weights: Sequence[float] | None = None, bias: float = 0.0,
                 updates: int = 0, rejected_updates: int = 0, accumulators: Sequence[Sequence[float]] | None = None,
                 optimizer_kind: str = Sgd.kind):
        self.weights = list(weights) if weights is not None else [0.0] * n_features
        self.bias = bias
        self.updates = updates
        self.rejected_updates = rejected_updates
        self.optimizer_kind = optimizer_kind
        slots = len(ACCUMULATOR_NAMES[optimizer_kind])
        self.accumulators = ([list(values) for values in accumulators] if accumulators is not None
                             else [[0.0] * (n_features + 1) for _ in range(slots)])
        if len(self.accumulators) != slots or any(len(a) != n_features + 1 for a in self.accumulators):
            raise ValueError(f"{optimizer_kind} needs {slots} accumulators of {n_features + 1} entries")

    def adopt(self, optimizer: Optimizer) -> None:
        """Makes `optimizer` the one this model learns with, converting its accumulators as
        `converted_accumulators` says (nothing changes when it already is)."""
        if optimizer.kind != self.optimizer_kind:
            self.accumulators = converted_accumulators(optimizer, self.optimizer_kind, self.accumulators,
                                                       self.weights, self.bias)
            self.optimizer_kind = optimizer.kind

    def predict_proba(self, indices: Sequence[int], values: Sequence[float]) -> float:
        """Probability of the positive class (fraud) for the sparse features (indices, values), in [0, 1]
        (see `sigmoid`)."""
        weights = self.weights
        return sigmoid(self.bias + sum([weights[i] * v for i, v in zip(indices, values)]))

    def learn(self, indices: Sequence[int], values: Sequence[float], y: int, p: float, optimizer: Optimizer) -> bool:
        """One optimizer step on (x, y) given this model's score `p` for x: the step `step` takes for
        the gradient (p - y) x and bias gradient p - y. False if the step was discarded.

        Only the weights of x's entries move (the others have a zero gradient), unless SGD's l2 decays all."""
        error = p - y
        return self._step(indices, values, error, error, optimizer)

    def step(self, indices: Sequence[int], gradient: Sequence[float], bias_gradient: float,
             optimizer: Optimizer) -> bool:
        """One optimizer step on an explicit sparse gradient of the log loss (without the L2 term,
        which the optimizer adds its own way): `gradient[j]` for weight `indices[j]` (each index at
        most once), `bias_gradient` for the bias. Adopts `optimizer` first (see `adopt`). False if
        the step was discarded (the model is unchanged but for `rejected_updates`).

        `learn(indices, values, y, p, o)` equals `step(indices, [(p - y) * v for v in values], p - y, o)`
        exactly for AdaGrad and FTRL, and to rounding for SGD (which scales x by rate * (p - y), as it
        always has)."""
        return self._step(indices, gradient, 1.0, bias_gradient, optimizer)

    def _step(self, indices: Sequence[int], values: Sequence[float], scale: float, bias_gradient: float,
              optimizer: Optimizer) -> bool:
        """The step for the gradient `scale * values[j]` at `indices[j]` and `bias_gradient`."""
        self.adopt(optimizer)
        if isinstance(optimizer, Sgd):
            stepped = self._sgd(indices, values, scale, bias_gradient, optimizer)
        else:
            moves = adaptive_step(optimizer, self.weights, self.bias, self.accumulators, indices, values, scale,
                                  bias_gradient)
            if moves is not None:
                self.bias = apply_moves(moves, self.weights, self.accumulators)
            stepped = moves is not None
        if not stepped:
            self.rejected_updates += 1  # also catches NaN: every comparison with NaN is False
            return False
        self.updates += 1
        return True

    def _sgd(self, indices, values, scale, bias_gradient, sgd: Sgd) -> bool:
        rate = sgd.rate(self.updates)
        step = rate * scale
        weights = self.weights
        if sgd.l2:
            weights = [w * (1.0 - rate * sgd.l2) for w in weights]
        else:
            weights = weights.copy()
        for i, v in zip(indices, values):
            weights[i] -= step * v
        bias = self.bias - rate * bias_gradient
        moved = weights if sgd.l2 else [weights[i] for i in indices]
        magnitudes = list(map(abs, moved))
        # The sum is NaN or infinite if any weight is; once it is finite, max() is reliable.
        if not (abs(bias) <= MAX_ABS_WEIGHT and math.isfinite(sum(magnitudes))
                and max(magnitudes, default=0.0) <= MAX_ABS_WEIGHT):
            return False
        self.weights = weights
        self.bias = bias
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
    optimizer_kind: str = Sgd.kind  # the optimizer the accumulators are of (one of OPTIMIZER_KINDS)
    # One sequence per accumulator of ACCUMULATOR_NAMES[optimizer_kind], of len(weights) + 1 entries
    # (the bias's last); none for SGD.
    accumulators: Sequence[Sequence[float]] = ()


# Version 3 (written): a 56-byte header, the standardized positions as int32 padded to a multiple
# of 8 bytes, then float64 weights, means and M2s, then the optimizer's accumulators (each of
# n_features + 1 entries, the bias's last), so the floats start 8-byte aligned and numpy reads them
# in place (udfs/compiled_model.py). The header's second byte is the optimizer's code (its
# position in OPTIMIZER_KINDS: 0 SGD, 1 AdaGrad, 2 FTRL), which says how many accumulators follow.
# Read, so that a savepoint of an older release resumes, as SGD states without accumulators:
# version 2 (the same layout, the optimizer byte 0 and no accumulators) and version 1 (version 2
# without the padding). A state of another optimizer than the configured one continues with its
# weights as they are (LogisticRegression.adopt, converted_accumulators).
STATE_HEADER = struct.Struct("<BB2xII4xQQqQd")  # version, optimizer code, n_features, n_standardized,
#                                                  updates, rejected, last_event_time, standardizer count, bias
STATE_HEADER_V2 = struct.Struct("<B3xII4xQQqQd")
STATE_HEADER_V1 = struct.Struct("<BIIQQqQd")


def write_state(state: ModelState) -> bytes:
    """`state` as bytes of the current STATE_VERSION."""
    k = len(state.positions)
    header = STATE_HEADER.pack(STATE_VERSION, OPTIMIZER_KINDS.index(state.optimizer_kind), len(state.weights), k,
                               state.updates, state.rejected_updates, state.last_event_time, state.count, state.bias)
    positions = array("i", state.positions).tobytes() + bytes(4 * (k % 2))
    body = array("d", state.weights)
    body.extend(state.mean)
    body.extend(state.m2)
    for accumulator in state.accumulators:
        body.extend(accumulator)
    return header + positions + body.tobytes()


def read_state(data: bytes) -> ModelState:
    """The state in `data`, of version 1, 2 or 3; ValueError for any other version or optimizer code."""
    version = data[0] if data else None
    if version == STATE_VERSION:
        _, code, n, k, updates, rejected, last_event_time, count, bias = STATE_HEADER.unpack_from(data)
        if code >= len(OPTIMIZER_KINDS):
            raise ValueError(f"model state of an unknown optimizer (code {code})")
        kind, offset, padding = OPTIMIZER_KINDS[code], STATE_HEADER.size, True
    elif version in (1, 2):
        header = STATE_HEADER_V1 if version == 1 else STATE_HEADER_V2
        _, n, k, updates, rejected, last_event_time, count, bias = header.unpack_from(data)
        kind, offset, padding = Sgd.kind, header.size, version == 2
    else:
        raise ValueError(f"model state version {version} is not supported (this release reads 1 to {STATE_VERSION})")
    positions = array("i")
    positions.frombytes(data[offset:offset + 4 * k])
    offset += 4 * (k + k % 2) if padding else 4 * k
    slots = len(ACCUMULATOR_NAMES[kind])
    values = array("d")
    values.frombytes(data[offset:offset + 8 * (n + 2 * k + slots * (n + 1))])
    body = n + 2 * k
    accumulators = [values[body + s * (n + 1):body + (s + 1) * (n + 1)] for s in range(slots)]
    return ModelState(positions, count, values[n:n + k], values[n + k:n + 2 * k], values[:n], bias, updates,
                      rejected, last_event_time, kind, accumulators)


class KeyModel:
    """Everything one key needs across records: standardization statistics, the model, and the
    event time of its last update. Converts to compact versioned bytes for Flink state and to a
    plain JSON-ready snapshot."""

    __slots__ = ("standardizer", "model", "last_event_time")

    def __init__(self, n_features: int, standardized: Sequence[int], initial_bias: float = 0.0):
        """A new key's model: weights 0, bias `initial_bias` (log-odds of fraud: the prior's)."""
        self.standardizer = Standardizer(standardized)
        self.model = LogisticRegression(n_features, bias=initial_bias)
        self.last_event_time = -1

    def to_bytes(self) -> bytes:
        s, m = self.standardizer, self.model
        return write_state(ModelState(s.positions, s.count, s.mean, s.m2, m.weights, m.bias, m.updates,
                                      m.rejected_updates, self.last_event_time, m.optimizer_kind, m.accumulators))

    @classmethod
    def from_bytes(cls, data: bytes) -> "KeyModel":
        state = read_state(data)
        key_model = cls.__new__(cls)
        key_model.standardizer = Standardizer(state.positions, state.count, state.mean, state.m2)
        key_model.model = LogisticRegression(len(state.weights), state.weights, state.bias, state.updates,
                                             state.rejected_updates, state.accumulators, state.optimizer_kind)
        key_model.last_event_time = state.last_event_time
        return key_model

    def to_snapshot(self, model_key: str, feature_names: Sequence[str]) -> dict[str, Any]:
        """A plain, versioned snapshot: weights by feature name, standardization by feature name,
        the optimizer and its accumulators ({name: {"weights": {feature: value}, "bias": value}})."""
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
            "optimizer": m.optimizer_kind,
            "accumulators": {name: {"weights": dict(zip(feature_names, values)), "bias": values[-1]}
                             for name, values in zip(ACCUMULATOR_NAMES[m.optimizer_kind], m.accumulators)},
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any], feature_names: Sequence[str]) -> "KeyModel":
        """The model a snapshot describes, for the feature layout `feature_names`; raises
        ValueError when the snapshot's version, features or optimizer do not match. A snapshot
        without `optimizer` (written before there were others) is of SGD."""
        if snapshot.get("schema_version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {snapshot.get('schema_version')} is not supported")
        if list(snapshot["weights"]) != list(feature_names):
            raise ValueError("snapshot features differ from the configured features")
        kind = snapshot.get("optimizer", Sgd.kind)
        if kind not in ACCUMULATOR_NAMES:
            raise ValueError(f"snapshot of an unknown optimizer {kind!r}")
        accumulators = snapshot.get("accumulators", {})
        if sorted(accumulators) != sorted(ACCUMULATOR_NAMES[kind]) or any(
                list(accumulators[name]["weights"]) != list(feature_names) for name in accumulators):
            raise ValueError(f"snapshot accumulators {sorted(accumulators)} are not those of {kind} "
                             f"{list(ACCUMULATOR_NAMES[kind])} over the configured features")
        index = {name: i for i, name in enumerate(feature_names)}
        stats = snapshot["standardization"]["features"]
        key_model = cls.__new__(cls)
        key_model.model = LogisticRegression(
            len(feature_names), list(snapshot["weights"].values()), snapshot["bias"], snapshot["model_updates"],
            snapshot["rejected_updates"],
            [[*accumulators[name]["weights"].values(), accumulators[name]["bias"]] for name in ACCUMULATOR_NAMES[kind]],
            kind)
        key_model.standardizer = Standardizer([index[name] for name in stats], snapshot["standardization"]["count"],
                                              [v["mean"] for v in stats.values()], [v["m2"] for v in stats.values()])
        event_time = snapshot["event_time"]
        key_model.last_event_time = -1 if event_time is None else event_time
        return key_model
