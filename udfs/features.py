"""Feature extraction (pure Python, no Flink).

`FeatureEncoder` turns a cleaned transaction into a fixed-length list of floats and does not keep
state. Online standardization needs per-key running statistics, so it is a separate step,
`Standardizer`, whose statistics live in the key's model state.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

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
            variance = self.m2[j] / count
            std = math.sqrt(variance) if count > 1 and variance > 0 else 1.0
            out[i] = (value - self.mean[j]) / std
        return out
