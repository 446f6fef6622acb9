"""Feature extraction (pure Python, no Flink).

`FeatureEncoder` turns a cleaned transaction into a fixed-length list of floats and does not keep
state. Online standardization needs per-key running statistics, so it is a separate step,
`Standardizer`, whose statistics live in the key's model state.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np

from udfs.cleaning import MissingPolicy, Rejected, normalize_categorical

# Larger magnitudes are treated as corrupt input: they would swamp every other feature and could
# overflow the model's margin.
MAX_ABS_FEATURE = 1e12
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


class NumericSpec(Protocol):
    field: str  # "amount" or "features.<name>"
    log: bool
    standardize: bool


class CategoricalSpec(Protocol):
    field: str
    encoding: str  # "one_hot" | "hashed"
    vocabulary: Sequence[str]
    buckets: int


class EncodedBatch(NamedTuple):
    """The encoded transactions of a batch as CSR rows (see `FeatureEncoder.encode_batch`)."""

    rows: np.ndarray  # int64: positions in the input of the encoded (not rejected) transactions, ascending
    indptr: np.ndarray  # int64, len(rows) + 1: row r's entries are indices[indptr[r]:indptr[r + 1]]
    indices: np.ndarray  # int32 feature indices, per row in the order `encode` gives them
    values: np.ndarray  # float64


@dataclass(frozen=True)
class _Numeric:
    name: str
    field: str | None  # None: read `amount`; else the key inside `features`
    log: bool


class FeatureEncoder:
    """Maps a cleaned transaction to a sparse vector over `names`; raises `Rejected` at stage
    `features`.

    Numeric fields are read as finite numbers with |value| <= 1e12 (log: log1p, needs value > -1).
    One-hot categoricals give 1.0 at the value's position (0s for values outside the vocabulary);
    hashed ones give 1.0 at crc32(value) mod buckets. Time features come from event_time in UTC:
    one_hot (24 hours / 7 days) or cyclic (sin and cos of the angle).
    """

    def __init__(
        self,
        numeric: Sequence[NumericSpec],
        categorical: Sequence[CategoricalSpec],
        hour_of_day: str,
        day_of_week: str,
        missing_policy: Callable[[str], MissingPolicy],
    ):
        self._numeric = [
            _Numeric(
                name=("log_" if spec.log else "") + spec.field.removeprefix("features."),
                field=None if spec.field == "amount" else spec.field.removeprefix("features."),
                log=spec.log,
            )
            for spec in numeric
        ]
        self._missing_policy = {n.field: missing_policy(f"features.{n.field}") for n in self._numeric if n.field}
        names = [n.name for n in self._numeric]
        self.standardized = tuple(i for i, spec in enumerate(numeric) if spec.standardize)
        self._categorical: list[tuple[str, int, dict[str, int] | None, int]] = []
        for spec in categorical:
            offset = len(names)
            if spec.encoding == "one_hot":
                vocabulary = [normalize_categorical(spec.field, value) for value in spec.vocabulary]
                if len(set(vocabulary)) != len(vocabulary):
                    raise ValueError(f"features.categorical.{spec.field}.vocabulary: values repeat after normalization")
                positions = {value: i for i, value in enumerate(vocabulary)}
                self._categorical.append((spec.field, offset, positions, 0))
                names += [f"{spec.field}={value}" for value in positions]
            else:
                self._categorical.append((spec.field, offset, None, spec.buckets))
                names += [f"{spec.field}#{bucket}" for bucket in range(spec.buckets)]
        self._hour = (hour_of_day, len(names))
        names += _time_names("hour_of_day", hour_of_day, 24)
        self._weekday = (day_of_week, len(names))
        names += _time_names("day_of_week", day_of_week, 7)
        self.names: tuple[str, ...] = tuple(names)

    def encode(self, txn: dict[str, Any]) -> tuple[list[int], list[float]]:
        """The feature vector of one cleaned transaction, sparse: (indices, values) of the entries
        that can be non-zero. The numeric features always come first, at indices 0..n-1 in the
        configured order, so `values[:n]` are the numeric values (see the class docstring)."""
        values = [self._numeric_value(txn, spec) for spec in self._numeric]
        indices = list(range(len(values)))
        for field, offset, positions, buckets in self._categorical:
            value = txn[field]
            if value is None:
                continue
            if positions is not None:
                position = positions.get(value)
                if position is None:
                    continue
            else:
                position = zlib.crc32(value.encode("utf-8")) % buckets
            indices.append(offset + position)
            values.append(1.0)
        event_time = txn["event_time"]
        _encode_time(indices, values, *self._hour, (event_time // MS_PER_HOUR) % 24, 24)
        _encode_time(indices, values, *self._weekday, (event_time // MS_PER_DAY + EPOCH_WEEKDAY) % 7, 7)
        return indices, values

    def encode_batch(self, txns: Sequence[dict[str, Any]]) -> tuple[EncodedBatch, list[tuple[int, Rejected]]]:
        """Each transaction's `encode` result as CSR rows; the rejected ones as (position, Rejected)
        with the same stage, reason and txn_id as `encode` raises.

        Row r equals encode(txns[rows[r]]) bit for bit: the same indices in the same order and the
        same values (log1p is math.log1p, since numpy's differs from it in the last bit for a few
        percent of values; the sin and cos of the 24 hour and 7 weekday angles are computed once, as
        `encode` computes them). The numeric checks run on whole columns; a record that fails one
        is passed to `encode`, so its first failing feature gives the reason, as it would one by one.
        Input outside the cleaned-transaction contract that makes `encode` raise something other
        than `Rejected` raises that here too.
        """
        n = len(txns)
        if n == 0:
            return _empty_batch(), []
        numeric = self._numeric_matrix(txns)  # (n, numeric features); NaN where not a number
        log_slots = [j for j, spec in enumerate(self._numeric) if spec.log]
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(numeric) <= MAX_ABS_FEATURE)  # also NaN and infinities
            if log_slots:
                bad[:, log_slots] |= numeric[:, log_slots] <= -1
        rejected_rows = np.flatnonzero(bad.any(axis=1))
        rejected: list[tuple[int, Rejected]] = []
        if len(rejected_rows) == 0:
            rows = np.arange(n, dtype=np.int64)
            kept = txns
        else:
            for position in rejected_rows.tolist():
                try:
                    self.encode(txns[position])
                except Rejected as rejection:
                    rejected.append((position, rejection))
                else:  # not expected, as the checks above are encode's; then encode decides every record
                    return self._encode_batch_by_record(txns)
            keep = np.ones(n, dtype=bool)
            keep[rejected_rows] = False
            rows = np.flatnonzero(keep).astype(np.int64)
            kept = [txns[i] for i in rows.tolist()]
            numeric = numeric[rows]
        m = len(kept)
        if m == 0:
            return _empty_batch(), rejected
        event_times = list(map(itemgetter("event_time"), kept))
        if set(map(type, event_times)) != {int}:
            return self._encode_batch_by_record(txns)  # outside the contract: encode's arithmetic decides
        try:
            times = np.array(event_times, dtype=np.int64)
        except OverflowError:
            return self._encode_batch_by_record(txns)
        # One slot per entry a row can have, in encode's order; `present` marks the entries each row has.
        hour_encoding, hour_offset = self._hour
        day_encoding, day_offset = self._weekday
        k = numeric.shape[1]
        width = k + len(self._categorical) + _time_width(hour_encoding) + _time_width(day_encoding)
        indices = np.empty((m, width), dtype=np.int32)
        values = np.empty((m, width), dtype=np.float64)
        present: np.ndarray | None = None
        indices[:, :k] = np.arange(k, dtype=np.int32)
        values[:, :k] = numeric
        if log_slots:
            logs = numeric[:, log_slots]
            values[:, log_slots] = np.fromiter(map(math.log1p, logs.ravel().tolist()), dtype=np.float64,
                                               count=logs.size).reshape(logs.shape)
        slot = k
        for field, offset, positions, buckets in self._categorical:
            raw = list(map(itemgetter(field), kept))
            if positions is not None:
                # None is never a vocabulary value, so it finds -1 like any value outside the vocabulary.
                found = np.fromiter(map(positions.get, raw, repeat(-1)), dtype=np.int64, count=m)
            else:
                crc32 = zlib.crc32
                found = np.array([-1 if value is None else crc32(value.encode("utf-8")) % buckets for value in raw],
                                 dtype=np.int64)
            listed = found >= 0
            if not listed.all():
                if present is None:
                    present = np.ones((m, width), dtype=bool)
                present[:, slot] = listed
            indices[:, slot] = offset + np.maximum(found, 0)
            values[:, slot] = 1.0
            slot += 1
        for encoding, offset, value, period in (
            (hour_encoding, hour_offset, (times // MS_PER_HOUR) % 24, 24),
            (day_encoding, day_offset, (times // MS_PER_DAY + EPOCH_WEEKDAY) % 7, 7),
        ):
            if encoding == "one_hot":
                indices[:, slot] = offset + value
                values[:, slot] = 1.0
                slot += 1
            elif encoding == "cyclic":
                sin, cos = _angles(period)
                indices[:, slot] = offset
                indices[:, slot + 1] = offset + 1
                values[:, slot] = sin[value]
                values[:, slot + 1] = cos[value]
                slot += 2
        if present is None:
            indptr = np.arange(m + 1, dtype=np.int64) * width
            return EncodedBatch(rows, indptr, indices.reshape(-1), values.reshape(-1)), rejected
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(present.sum(axis=1), out=indptr[1:])
        return EncodedBatch(rows, indptr, indices[present], values[present]), rejected

    def _numeric_matrix(self, txns: Sequence[dict[str, Any]]) -> np.ndarray:
        """The raw numeric values of a batch as float64, one column per numeric feature, missing
        values imputed per policy; NaN where a value is not a number `_numeric_value` takes
        (missing, of another type, or an int too large for a float)."""
        specs = self._numeric
        matrix = np.empty((len(txns), len(specs)), dtype=np.float64)
        slots = [j for j, spec in enumerate(specs) if spec.field is not None]
        if slots:
            features = list(map(itemgetter("features"), txns))
            fields = [specs[j].field for j in slots]
            columns: list[list[Any]] | None = None
            # itemgetter reads all the fields at once; only plain dicts, as it would call a subclass's
            # __missing__ where encode's get does not.
            if len(fields) > 1 and set(map(type, features)) == {dict}:
                try:
                    tuples = list(map(itemgetter(*fields), features))
                except KeyError:  # a feature is missing from some record
                    pass
                else:
                    flat = list(chain.from_iterable(tuples))
                    if set(map(type, flat)) <= _NUMBER_TYPES:
                        try:
                            matrix[:, slots] = np.array(flat, dtype=np.float64).reshape(len(tuples), len(fields))
                            slots = []
                        except OverflowError:
                            pass
                    if slots:
                        columns = [list(column) for column in zip(*tuples)]
            for column_slot, (j, field) in enumerate(zip(slots, fields)):
                raw = columns[column_slot] if columns is not None else [f.get(field) for f in features]
                matrix[:, j] = self._numeric_column(raw, field)
        for j, spec in enumerate(specs):
            if spec.field is None:
                matrix[:, j] = self._numeric_column(list(map(itemgetter("amount"), txns)), None)
        return matrix

    def _numeric_column(self, raw: list[Any], field: str | None) -> np.ndarray:
        """One numeric feature's raw values (`amount` when `field` is None) as float64, missing
        values imputed per policy; NaN where a value is not a number `_numeric_value` takes."""
        types = set(map(type, raw))
        if field is not None and type(None) in types:
            policy = self._missing_policy[field]
            if policy.impute:
                fill = policy.value
                raw = [fill if value is None else value for value in raw]
                types = set(map(type, raw))
        if types <= _NUMBER_TYPES:
            try:
                return np.array(raw, dtype=np.float64)
            except OverflowError:  # an int too large for a float: NaN below, and encode raises for its row
                pass
        numbers = []
        for value in raw:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                numbers.append(math.nan)
                continue
            try:
                numbers.append(float(value))
            except OverflowError:
                numbers.append(math.nan)
        return np.array(numbers, dtype=np.float64)

    def _encode_batch_by_record(self, txns: Sequence[dict[str, Any]]) -> tuple[EncodedBatch, list[tuple[int, Rejected]]]:
        """`encode_batch` by calling `encode` for each record (for input the vectorized path does not cover)."""
        rows: list[int] = []
        lengths = [0]
        all_indices: list[int] = []
        all_values: list[float] = []
        rejected: list[tuple[int, Rejected]] = []
        for position, txn in enumerate(txns):
            try:
                indices, values = self.encode(txn)
            except Rejected as rejection:
                rejected.append((position, rejection))
                continue
            rows.append(position)
            lengths.append(len(indices))
            all_indices += indices
            all_values += values
        return EncodedBatch(np.array(rows, dtype=np.int64), np.cumsum(lengths, dtype=np.int64),
                            np.array(all_indices, dtype=np.int32), np.array(all_values, dtype=np.float64)), rejected

    def _numeric_value(self, txn: dict[str, Any], spec: _Numeric) -> float:
        if spec.field is None:
            value = txn["amount"]
        else:
            value = txn["features"].get(spec.field)
            if value is None:
                policy = self._missing_policy[spec.field]
                if not policy.impute:
                    raise Rejected("features", f"features.{spec.field} is missing", txn["txn_id"])
                value = policy.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Rejected("features", f"{spec.name} must be a number, got {type(value).__name__}", txn["txn_id"])
        value = float(value)
        if not math.isfinite(value) or abs(value) > MAX_ABS_FEATURE:
            raise Rejected("features", f"{spec.name} is out of range ({value})", txn["txn_id"])
        if spec.log:
            if value <= -1:
                raise Rejected("features", f"{spec.name} needs a value > -1 for log1p, got {value}", txn["txn_id"])
            value = math.log1p(value)
        return value


def _time_names(name: str, encoding: str, period: int) -> list[str]:
    if encoding == "one_hot":
        return [f"{name}={i}" for i in range(period)]
    if encoding == "cyclic":
        return [f"{name}_sin", f"{name}_cos"]
    return []


def _encode_time(indices: list[int], values: list[float], encoding: str, offset: int, value: int,
                 period: int) -> None:
    if encoding == "one_hot":
        indices.append(offset + value)
        values.append(1.0)
    elif encoding == "cyclic":
        angle = 2 * math.pi * value / period
        indices += (offset, offset + 1)
        values += (math.sin(angle), math.cos(angle))


def _empty_batch() -> EncodedBatch:
    """A batch with no encoded rows."""
    return EncodedBatch(np.empty(0, dtype=np.int64), np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int32),
                        np.empty(0, dtype=np.float64))


def _time_width(encoding: str) -> int:
    """Entries a time encoding adds to every row."""
    return 1 if encoding == "one_hot" else 2 if encoding == "cyclic" else 0


_NUMBER_TYPES = frozenset((int, float))  # the types whose values encode_batch converts in one step
_ANGLES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _angles(period: int) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of 2*pi*value/period for value 0..period-1, computed as `_encode_time` does."""
    if period not in _ANGLES:
        angles = [2 * math.pi * value / period for value in range(period)]
        _ANGLES[period] = (np.array([math.sin(a) for a in angles]), np.array([math.cos(a) for a in angles]))
    return _ANGLES[period]


class Standardizer:
    """Online z-scores for chosen numeric features (Welford's running variance).

    `positions` are feature indices of numeric features, which are also their positions in an
    encoded `values` list. `transform` first adds the record to the statistics, then returns the
    values with each chosen one replaced by (value - mean) / std; std is taken as 1 while fewer
    than two values are seen or the variance is 0.
    """

    __slots__ = ("positions", "count", "mean", "m2")

    def __init__(self, positions: Sequence[int], count: int = 0, mean=None, m2=None):
        self.positions = tuple(positions)
        self.count = count
        self.mean = list(mean) if mean is not None else [0.0] * len(self.positions)
        self.m2 = list(m2) if m2 is not None else [0.0] * len(self.positions)

    def transform(self, values: list[float]) -> list[float]:
        if not self.positions:
            return values
        self.count += 1
        count = self.count
        out = list(values)
        for j, i in enumerate(self.positions):
            value = values[i]
            delta = value - self.mean[j]
            self.mean[j] += delta / count
            self.m2[j] += delta * (value - self.mean[j])
            out[i] = (value - self.mean[j]) / standard_deviation(self.m2[j], count)
        return out


def standard_deviation(m2: float, count: int) -> float:
    """The standard deviation `Standardizer` divides by for running statistics of `count` values
    whose sum of squared deviations is `m2`: sqrt(m2 / count) (the population's), or 1.0 while
    fewer than two values are seen or the variance is 0."""
    variance = m2 / count if count else 0.0
    return math.sqrt(variance) if count > 1 and variance > 0 else 1.0
