"""The keyed online logistic regression of `udfs.model`, compiled, over whole batches (no Flink).

`udfs.model` (pure Python, one record at a time) is the reference; this module computes the same
thing for a batch of records of many keys at once: the models of a shard's keys are rows of numpy
arrays (`ModelTable`), and `learn_batch`, compiled by numba, walks the batch in arrival order doing
for each record exactly what `ModelScorer.assess` does: update the key's standardization
statistics and standardize, score (probability of fraud before learning), pick the top reasons,
and take one step of the table's optimizer (SGD, AdaGrad or FTRL) when the record has a label,
with the same non-finite guard. The arithmetic is the reference's, operation for operation and in
the same order; the unit tests hold the two to 1e-12 (tests/unit/test_compiled_model.py).

The compiled code is cached on disk (numba's `cache=True`, beside this file or in
NUMBA_CACHE_DIR), so a worker that starts loads it rather than compiling it again.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Sequence

import numba
import numpy as np

from udfs.model import (
    MAX_ABS_WEIGHT,
    OPTIMIZER_KINDS,
    STATE_HEADER,
    STATE_VERSION,
    AdaGrad,
    Ftrl,
    KeyModel,
    Optimizer,
    Sgd,
    adaptive_step,
    apply_moves,
    converted_accumulators,
    read_state,
    sigmoid,
)

# No global weights: learn_batch's per-key path (model.blend key or no global model).
_NO_WEIGHTS = np.zeros(0)


@numba.njit(cache=True)
def _sigmoid(z):
    if z >= 0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return e / (1.0 + e)


def learn_batch(start, rows, indptr, indices, values, labels, event_times,
                weights, bias, updates, rejected, last_event_time, count, mean, m2, positions, accumulators,
                optimizer: Optimizer, snapshot_every,
                probability, updates_before, learned, reason_index, reason_value, reason_count, standardized,
                key_margin, prestandardized: bool = False, global_weights=_NO_WEIGHTS, global_bias: float = 0.0) -> int:
    """Scores and learns from records start.. of a batch in order, each with its key's model
    row `rows[r]`, as `ModelScorer.assess` would; fills the per-record outputs (probability 0..1,
    model updates before learning, learned, up to reason_index.shape[1] top reasons as (feature
    index, contribution)), `standardized` (the values of each record's entries as the model saw
    them, after standardization: what a label arriving later learns from), `key_margin` (the key
    model's w . x + b the record was scored with) and updates the table in
    place, learning with `optimizer` (the table's: `accumulators` has its layout). Returns the
    position after the first record whose update makes its key's update count a multiple of
    `snapshot_every` (the caller snapshots that key there, then calls again from that position),
    or the batch's length.

    With the global model (udfs/prequential.py's semantics): `prestandardized` says `values` are
    already standardized (by the held version's statistics: the key's own statistics are then
    neither used nor updated); non-empty `global_weights` (one per feature) with `global_bias` make
    the score model.blend `sum`'s, sigmoid((global_bias + global_weights . x) + key margin), the key
    learning from that sum's error, and the reasons the entries of largest |(w_key + w_global) x|.
    The defaults are the per-key path, unchanged.

    Every array must be C-contiguous, of the dtype `RecordBatch` and `ModelTable` give it (checked).
    The compiled code is called through a C function pointer with the arrays' addresses rather
    than with the arrays themselves: numba, given numpy arrays, releases its references to them
    with PyGILState_Ensure, which deadlocks in PyFlink's thread mode (its embedded interpreter
    runs Python on JVM threads the GIL state API does not know). ctypes releases the GIL for the call.
    """
    arrays = (rows, indptr, indices, values, labels, event_times, weights, bias, updates, rejected,
              last_event_time, count, mean, m2, positions, accumulators, probability, updates_before, learned,
              reason_index, reason_value, reason_count, standardized, key_margin, global_weights)
    for array_, dtype in zip(arrays, _DTYPES):
        if array_.dtype != dtype or not array_.flags.c_contiguous:
            raise TypeError(f"learn_batch needs C-contiguous {dtype} arrays, got {array_.dtype}")
    if accumulators.shape != (weights.shape[0], len(optimizer.accumulators), weights.shape[1] + 1):
        raise ValueError(f"accumulators of shape {accumulators.shape} are not those of {optimizer.kind}")
    if global_weights.shape[0] not in (0, weights.shape[1]) or key_margin.shape[0] < rows.shape[0]:
        raise ValueError("global_weights needs one weight per feature, key_margin one value per record")
    return _learn_batch_pointer()(
        start, rows.shape[0], indices.shape[0], weights.shape[0], weights.shape[1], positions.shape[0],
        reason_index.shape[1], accumulators.shape[1], *[array_.ctypes.data for array_ in arrays],
        OPTIMIZER_KINDS.index(optimizer.kind), *_parameters(optimizer), snapshot_every,
        bool(prestandardized), global_weights.shape[0], float(global_bias))


def _parameters(optimizer: Optimizer) -> tuple[float, bool, float, float, float, float, float]:
    """The compiled code's optimizer parameters: (rate or FTRL's alpha, inverse scaling, power_t, l2,
    AdaGrad's eps, FTRL's beta, FTRL's l1)."""
    if isinstance(optimizer, Sgd):
        return optimizer.learning_rate, optimizer.schedule != "constant", optimizer.power_t, optimizer.l2, 0.0, 0.0, 0.0
    if isinstance(optimizer, AdaGrad):
        return optimizer.learning_rate, False, 0.0, optimizer.l2, optimizer.eps, 0.0, 0.0
    return optimizer.alpha, False, 0.0, optimizer.l2, 0.0, optimizer.beta, optimizer.l1


_DTYPES = tuple(np.dtype(t) for t in (
    np.int64, np.int64, np.int32, np.float64, np.int8, np.int64,  # the batch
    np.float64, np.float64, np.int64, np.int64, np.int64, np.int64, np.float64, np.float64, np.int64,  # the table
    np.float64,  # its accumulators
    np.float64, np.int64, np.bool_, np.int32, np.float64, np.int8, np.float64, np.float64,  # the outputs
    np.float64))  # the global weights (blend sum)
_NUMBA_TYPES = {np.dtype(np.int64): numba.types.int64, np.dtype(np.int32): numba.types.int32,
                np.dtype(np.float64): numba.types.float64, np.dtype(np.int8): numba.types.int8,
                np.dtype(np.bool_): numba.types.uint8}
@functools.cache
def _learn_batch_pointer():
    """`_learn_batch_c` as a ctypes function (built once)."""
    scalars = [ctypes.c_int64] * 8
    pointers = [ctypes.c_void_p] * len(_DTYPES)
    parameters = [ctypes.c_int64, ctypes.c_double, ctypes.c_bool, *[ctypes.c_double] * 5, ctypes.c_int64,
                  ctypes.c_bool, ctypes.c_int64, ctypes.c_double]
    return ctypes.CFUNCTYPE(ctypes.c_int64, *scalars, *pointers, *parameters)(_learn_batch_c.address)


_SGD, _ADAGRAD, _FTRL = (OPTIMIZER_KINDS.index(kind) for kind in (Sgd.kind, AdaGrad.kind, Ftrl.kind))


@numba.njit(cache=True)
def _ftrl_weight(z, n, alpha, beta, l1, l2):
    # Ftrl.weight
    if abs(z) <= l1:
        return 0.0
    return -(z - (l1 if z > 0 else -l1)) / ((beta + np.sqrt(n)) / alpha + l2)


@numba.njit(cache=True)
def _adaptive_step(optimizer, row, indices, begin, end, x, error, weights, bias, accumulators,
                   rate, l2, eps, beta, l1, moved):
    """udfs.model.adaptive_step and apply_moves for the record's entries x (indices[begin:end]) and
    the log-loss error p - y, on the table's row; False (nothing changed) when the guard discards
    the step. `rate` is AdaGrad's learning rate or FTRL's alpha."""
    n_entries = end - begin
    bias_slot = weights.shape[1]
    ok = True
    for e in range(n_entries + 1):
        if e < n_entries:
            i = indices[begin + e]
            g = error * x[e]
            w = weights[row, i]
            l1_i, l2_i = l1, l2
        else:  # the bias: no L1 or L2
            i = bias_slot
            g = error
            w = bias[row]
            l1_i, l2_i = 0.0, 0.0
        if optimizer == _ADAGRAD:
            if e < n_entries:
                g = g + l2 * w
            total = accumulators[row, 0, i] + g * g
            moved[e, 0] = w - rate / np.sqrt(total + eps) * g
            moved[e, 1] = total
            if not np.isfinite(total):
                ok = False
        else:
            n_old = accumulators[row, 1, i]
            n_new = n_old + g * g
            sigma = (np.sqrt(n_new) - np.sqrt(n_old)) / rate
            z_new = accumulators[row, 0, i] + g - sigma * w
            moved[e, 0] = _ftrl_weight(z_new, n_new, rate, beta, l1_i, l2_i)
            moved[e, 1] = z_new
            moved[e, 2] = n_new
            if not (np.isfinite(z_new) and np.isfinite(n_new)):
                ok = False
        if not abs(moved[e, 0]) <= MAX_ABS_WEIGHT:
            ok = False
    if not ok:
        return False
    slots = accumulators.shape[1]
    for e in range(n_entries + 1):
        i = indices[begin + e] if e < n_entries else bias_slot
        if e < n_entries:
            weights[row, i] = moved[e, 0]
        else:
            bias[row] = moved[e, 0]
        for s in range(slots):
            accumulators[row, s, i] = moved[e, 1 + s]
    return True


@numba.njit(cache=True)
def _learn_batch(start, rows, indptr, indices, values, labels, event_times,
                 weights, bias, updates, rejected, last_event_time, count, mean, m2, positions, accumulators,
                 optimizer, learning_rate, inverse_scaling, power_t, l2, eps, beta, l1, snapshot_every,
                 probability, updates_before, learned, reason_index, reason_value, reason_count, standardized,
                 key_margin, prestandardized, global_weights, global_bias):
    n_records = rows.shape[0]
    summed = global_weights.shape[0] > 0  # blend sum: the global margin added to the key's
    n_features = weights.shape[1]
    top_k = reason_index.shape[1]
    scratch = np.empty(n_features)
    moved = np.empty((n_features + 1, 3))  # AdaGrad and FTRL: (weight, accumulators) per entry, the bias's last
    x = np.empty(n_features)  # the record's standardized values; a row has at most one entry per feature
    for r in range(start, n_records):
        row = rows[r]
        begin = indptr[r]
        end = indptr[r + 1]
        for e in range(end - begin):
            x[e] = values[begin + e]
        # Standardizer.transform: add the record to the statistics, then z-score.
        if positions.shape[0] > 0 and not prestandardized:
            count[row] += 1
            c = count[row]
            for j in range(positions.shape[0]):
                i = positions[j]
                value = values[begin + i]
                delta = value - mean[row, j]
                mean[row, j] += delta / c
                m2[row, j] += delta * (value - mean[row, j])
                variance = m2[row, j] / c
                std = np.sqrt(variance) if c > 1 and variance > 0 else 1.0
                x[i] = (value - mean[row, j]) / std
        for e in range(end - begin):
            standardized[begin + e] = x[e]
        # LogisticRegression.predict_proba: the sum in feature order, then the bias.
        margin = 0.0
        for e in range(end - begin):
            margin += weights[row, indices[begin + e]] * x[e]
        key_margin[r] = bias[row] + margin
        if summed:  # udfs/prequential.py: sigmoid(global margin + key margin)
            global_margin = 0.0
            for e in range(end - begin):
                global_margin += global_weights[indices[begin + e]] * x[e]
            p = _sigmoid((global_bias + global_margin) + (bias[row] + margin))
        else:
            p = _sigmoid(bias[row] + margin)
        probability[r] = p
        updates_before[r] = updates[row]
        # LogisticRegression.top_contributions: largest |w x| first, ties in feature order
        # (a stable sort), entries contributing exactly 0 left out.
        found = 0
        while found < top_k:
            best = -1
            best_magnitude = -1.0
            for e in range(end - begin):
                w = weights[row, indices[begin + e]]
                if summed:  # the sum's weight of the entry
                    w += global_weights[indices[begin + e]]
                if w == 0.0 or x[e] == 0.0:
                    continue
                contribution = w * x[e]
                taken = False
                for f in range(found):
                    if reason_index[r, f] == indices[begin + e]:
                        taken = True
                if not taken and abs(contribution) > best_magnitude:
                    best = e
                    best_magnitude = abs(contribution)
            if best < 0:
                break
            reason_index[r, found] = indices[begin + best]
            w = weights[row, indices[begin + best]]
            if summed:
                w += global_weights[indices[begin + best]]
            reason_value[r, found] = w * x[best]
            found += 1
        reason_count[r] = found
        learned[r] = 0
        if labels[r] < 0:
            continue
        # LogisticRegression.learn, with its guard against non-finite or huge weights.
        if optimizer != _SGD:
            if not _adaptive_step(optimizer, row, indices, begin, end, x, p - labels[r], weights, bias,
                                  accumulators, learning_rate, l2, eps, beta, l1, moved):
                rejected[row] += 1
                continue
        else:
            rate = learning_rate / (1.0 + updates[row]) ** power_t if inverse_scaling else learning_rate
            step = rate * (p - labels[r])
            if l2 != 0.0:
                decay = 1.0 - rate * l2
                for i in range(n_features):
                    scratch[i] = weights[row, i] * decay
            else:
                for i in range(n_features):
                    scratch[i] = weights[row, i]
            for e in range(end - begin):
                scratch[indices[begin + e]] -= step * x[e]
            new_bias = bias[row] - step
            ok = abs(new_bias) <= MAX_ABS_WEIGHT
            if l2 != 0.0:
                for i in range(n_features):
                    if not abs(scratch[i]) <= MAX_ABS_WEIGHT:
                        ok = False
            else:
                for e in range(end - begin):
                    if not abs(scratch[indices[begin + e]]) <= MAX_ABS_WEIGHT:
                        ok = False
            if not ok:
                rejected[row] += 1
                continue
            for i in range(n_features):
                weights[row, i] = scratch[i]
            bias[row] = new_bias
        updates[row] += 1
        last_event_time[row] = event_times[r]
        learned[r] = 1
        if updates[row] % snapshot_every == 0:
            return r + 1
    return n_records


@numba.cfunc(numba.types.int64(
    *[numba.types.int64] * 8, *[numba.types.CPointer(_NUMBA_TYPES[d]) for d in _DTYPES],
    numba.types.int64, numba.types.float64, numba.types.boolean, *[numba.types.float64] * 5, numba.types.int64,
    numba.types.boolean, numba.types.int64, numba.types.float64), cache=True)
def _learn_batch_c(start, n_records, n_entries, capacity, n_features, n_standardized, top_k, slots,
                   rows, indptr, indices, values, labels, event_times, weights, bias, updates, rejected,
                   last_event_time, count, mean, m2, positions, accumulators, probability, updates_before, learned,
                   reason_index, reason_value, reason_count, standardized, key_margin, global_weights,
                   optimizer, learning_rate, inverse_scaling, power_t, l2, eps, beta, l1, snapshot_every,
                   prestandardized, n_global, global_bias):
    carray = numba.carray
    return _learn_batch(
        start, carray(rows, n_records), carray(indptr, n_records + 1), carray(indices, n_entries),
        carray(values, n_entries), carray(labels, n_records), carray(event_times, n_records),
        carray(weights, (capacity, n_features)), carray(bias, capacity), carray(updates, capacity),
        carray(rejected, capacity), carray(last_event_time, capacity), carray(count, capacity),
        carray(mean, (capacity, n_standardized)), carray(m2, (capacity, n_standardized)),
        carray(positions, n_standardized), carray(accumulators, (capacity, slots, n_features + 1)),
        optimizer, learning_rate, inverse_scaling, power_t, l2, eps, beta, l1, snapshot_every,
        carray(probability, n_records), carray(updates_before, n_records), carray(learned, n_records),
        carray(reason_index, (n_records, top_k)), carray(reason_value, (n_records, top_k)),
        carray(reason_count, n_records), carray(standardized, n_entries), carray(key_margin, n_records),
        prestandardized, carray(global_weights, n_global), global_bias)


class ModelTable:
    """The models of many keys as rows of numpy arrays (under 1 KB a key at 88 features, where a
    `KeyModel` of Python objects takes about 10 KB). `rows` maps a model key to its row, `keys`
    the other way."""

    def __init__(self, n_features: int, standardized: Sequence[int], capacity: int = 64,
                 optimizer: Optimizer = Sgd(0.01), initial_bias: float = 0.0):
        self.n_features = n_features
        self.positions = np.array(standardized, dtype=np.int64)
        k = len(self.positions)
        self._positions_bytes = self.positions.astype(np.int32).tobytes() + bytes(4 * (k % 2))
        self.optimizer = optimizer  # the one every row learns with; a loaded state is converted to it
        self.initial_bias = initial_bias
        self._optimizer_code = OPTIMIZER_KINDS.index(optimizer.kind)
        # A new row's accumulators: zeros, but FTRL's bias z, which makes the bias start at initial_bias.
        self._new_accumulators = np.array(converted_accumulators(optimizer, Sgd.kind, [], [], initial_bias))
        self.rows: dict[str, int] = {}
        self.keys: list[str] = []
        n = n_features
        self.weights, self.bias = np.zeros((capacity, n)), np.zeros(capacity)
        self.updates, self.rejected = np.zeros(capacity, np.int64), np.zeros(capacity, np.int64)
        self.last_event_time, self.count = np.full(capacity, -1, np.int64), np.zeros(capacity, np.int64)
        self.mean, self.m2 = np.zeros((capacity, k)), np.zeros((capacity, k))
        # (row, accumulator of ACCUMULATOR_NAMES[optimizer.kind], feature; the bias's last): none for SGD
        self.accumulators = np.zeros((capacity, len(optimizer.accumulators), n + 1))
        # What `add` starts a new key's row from: (weights, bias), e.g. the global version a shard
        # holds (model.cold_start global), or None: zero weights and initial_bias.
        self.start: tuple[np.ndarray, float] | None = None

    _ARRAYS = ("weights", "bias", "updates", "rejected", "last_event_time", "count", "mean", "m2", "accumulators")

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, model_key: str, state: bytes | None = None) -> int:
        """A new row for `model_key`: its model from Flink state bytes (`udfs.model.read_state`:
        version 1, 2 or 3; of another optimizer than the table's, converted as
        `LogisticRegression.adopt` does), or a new model (bias `initial_bias`). ValueError when the
        state's feature layout differs from the table's."""
        row = len(self.keys)
        if row == len(self.bias):
            self._grow(2 * row)
        if state is not None:
            self._load(row, state)
        else:
            self._begin(row, self.start)
        self.rows[model_key] = row
        self.keys.append(model_key)
        return row

    def reset(self, row: int, start: tuple[np.ndarray, float] | None = None) -> None:
        """Makes the row's model a new key's: zero weights and the bias at `initial_bias`, or the
        weights and bias of `start` (on_drift rewarm: the held global version's), no updates,
        fresh optimizer accumulators and fresh standardization statistics (udfs/prequential.py's
        `on_drift: reset` and `rewarm` replace the whole KeyModel too)."""
        for name in self._ARRAYS:
            getattr(self, name)[row] = -1 if name == "last_event_time" else 0
        self._begin(row, start)

    def _begin(self, row: int, start: tuple[np.ndarray, float] | None) -> None:
        """A zeroed row's first parameters: `initial_bias`, or `start`'s weights and bias with the
        accumulators the table's optimizer continues them with (`LogisticRegression.adopt`)."""
        if start is None:
            self.bias[row] = self.initial_bias
            if self._new_accumulators.size:
                self.accumulators[row, :, -1] = self._new_accumulators[:, -1]
            return
        weights, bias = start
        self.weights[row], self.bias[row] = weights, bias
        if self.accumulators.shape[1]:
            self.accumulators[row] = converted_accumulators(self.optimizer, Sgd.kind, [], list(weights), bias)

    def _grow(self, capacity: int) -> None:
        used = len(self.keys)
        for name in self._ARRAYS:
            old = getattr(self, name)
            new = np.zeros((capacity,) + old.shape[1:], old.dtype)
            if name == "last_event_time":
                new[:] = -1
            new[:used] = old[:used]
            setattr(self, name, new)

    def _load(self, row: int, data: bytes) -> None:
        state = read_state(data)
        if len(state.weights) != self.n_features or list(state.positions) != self.positions.tolist():
            raise ValueError(f"model state has {len(state.weights)} features, standardized at "
                             f"{list(state.positions)}; the configuration has {self.n_features}, standardized at "
                             f"{self.positions.tolist()}")
        self.weights[row], self.mean[row], self.m2[row] = state.weights, state.mean, state.m2
        self.bias[row], self.updates[row], self.rejected[row] = state.bias, state.updates, state.rejected_updates
        self.last_event_time[row], self.count[row] = state.last_event_time, state.count
        if self.accumulators.shape[1]:
            self.accumulators[row] = converted_accumulators(self.optimizer, state.optimizer_kind, state.accumulators,
                                                            state.weights, state.bias)

    def to_bytes(self, row: int) -> bytes:
        """The row's model as Flink state, exactly as `KeyModel.to_bytes` writes it."""
        header = STATE_HEADER.pack(STATE_VERSION, self._optimizer_code, self.n_features, len(self.positions),
                                   int(self.updates[row]), int(self.rejected[row]), int(self.last_event_time[row]),
                                   int(self.count[row]), float(self.bias[row]))
        return b"".join((header, self._positions_bytes, self.weights[row].tobytes(), self.mean[row].tobytes(),
                         self.m2[row].tobytes(), self.accumulators[row].tobytes()))

    def margin(self, row: int, indices: np.ndarray, values: np.ndarray) -> float:
        """The row's w . x + b for standardized sparse values, summed in the reference's order."""
        weights = self.weights[row]
        margin = 0.0
        for i, v in zip(indices.tolist(), values.tolist()):
            margin += weights[i] * v
        return float(self.bias[row]) + margin

    def learn_logged(self, row: int, indices: np.ndarray, values: np.ndarray, label: int, event_time: int,
                     offset: float | None = None) -> bool:
        """One step of the table's optimizer for the row's model on a record scored earlier, for a
        label that came later: `values` are the record's standardized values as logged when it was
        scored (the standardization statistics are not updated again), and the probability is
        recomputed from the row's current weights (plus `offset` on the margin: model.blend sum's
        global margin). `LogisticRegression.learn`'s arithmetic in its
        order, with its guard; the last update's event time becomes `event_time` (ms). False when
        the guard discarded the step (counted in `rejected`)."""
        weights = self.weights[row]
        margin = 0.0
        for i, v in zip(indices.tolist(), values.tolist()):  # the reference's order of summation
            margin += weights[i] * v
        bias = float(self.bias[row])
        p = sigmoid(bias + margin) if offset is None else sigmoid(offset + (bias + margin))
        optimizer = self.optimizer
        if isinstance(optimizer, Sgd):
            rate = optimizer.rate(int(self.updates[row]))
            step = rate * (p - label)
            new = weights * (1.0 - rate * optimizer.l2) if optimizer.l2 else weights.copy()
            new[indices] -= step * values  # a record has at most one entry per feature
            new_bias = bias - step
            moved = new if optimizer.l2 else new[indices]
            stepped = abs(new_bias) <= MAX_ABS_WEIGHT and bool(np.all(np.abs(moved) <= MAX_ABS_WEIGHT))
            if stepped:
                self.weights[row] = new
                self.bias[row] = new_bias
        else:
            error = p - label
            # On Python floats, as the reference computes (numpy scalars would warn where it overflows).
            moves = adaptive_step(optimizer, weights.tolist(), bias, self.accumulators[row].tolist(), indices.tolist(),
                                  values.tolist(), error, error)
            stepped = moves is not None
            if stepped:
                self.bias[row] = apply_moves(moves, weights, self.accumulators[row])  # the row's views, in place
        if not stepped:
            self.rejected[row] += 1
            return False
        self.updates[row] += 1
        self.last_event_time[row] = event_time
        return True

    def key_model(self, row: int) -> KeyModel:
        """The row's model as the reference `KeyModel` (for snapshots and comparisons)."""
        return KeyModel.from_bytes(self.to_bytes(row))
