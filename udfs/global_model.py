"""The data-parallel global logistic regression (pure Python, no Flink).

One model shared by every key and trained on every labelled record, the way parameter averaging
trains across workers: each scoring instance holds a published `GlobalModel` version v, computes a
`GradientPartial` on its share of the labelled records against v (`compute_partial`), and sends it
to one `Aggregator`, which combines the partials (gradients summed, divided by the number of
labelled records they cover, then ONE optimizer step) and publishes version v + 1. An instance
applies a version only when it is newer than the one it holds (`VersionHolder`). Versions travel
as versioned JSON messages (`to_message` / `from_message`; the `model-versions` topic).

The global model standardizes numeric features with its own statistics, merged from every
instance's (Chan et al.'s parallel Welford update), so that a key with few records is standardized
by what the whole stream looks like. Between versions the statistics are frozen: a gradient is
always computed with version v's weights AND v's statistics, which is what makes the aggregated
versions equal a sequential reference (`train_sequential`) on the same mini-batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Sequence

import orjson

from udfs.model import ACCUMULATOR_NAMES, LogisticRegression, Optimizer, sigmoid

MESSAGE_VERSION = 1


@dataclass(frozen=True)
class GlobalSettings:
    """`model.global`: how the global model is trained (docs/configuration.md).

    cadence_records: labelled records per version, over all instances (>= 1);
    cadence_ms: at most this long (ms) between versions while records are pending, or None;
    max_staleness: how many versions older than the current one a partial may be computed
    against and still be applied (0: synchronous, equal to the sequential reference);
    learning_rate: the global optimizer's rate (FTRL: alpha), None for the model's own;
    l2: the global optimizer's L2 (>= 0)."""

    cadence_records: int = 1000
    cadence_ms: int | None = None
    max_staleness: int = 0
    learning_rate: float | None = None
    l2: float = 0.0

    def __post_init__(self):
        checks = [
            ("cadence_records", _is_int(self.cadence_records) and self.cadence_records >= 1, "an integer >= 1"),
            ("cadence_ms", self.cadence_ms is None or (_is_int(self.cadence_ms) and self.cadence_ms >= 1),
             "null or an integer >= 1 (milliseconds)"),
            ("max_staleness", _is_int(self.max_staleness) and self.max_staleness >= 0, "an integer >= 0"),
            ("learning_rate", self.learning_rate is None or _is_rate(self.learning_rate), "null or a number in (0, 10]"),
            ("l2", isinstance(self.l2, (int, float)) and 0 <= self.l2 < math.inf, "a finite number >= 0"),
        ]
        for name, valid, allowed in checks:
            if not valid:
                raise ValueError(f"model.global.{name}: must be {allowed}, got {getattr(self, name)!r}")

    def optimizer_for(self, optimizer: Optimizer) -> Optimizer:
        """The global model's optimizer: `optimizer` (the key models') with this rate and l2."""
        changes: dict[str, Any] = {"l2": self.l2}
        if self.learning_rate is not None:
            changes["alpha" if hasattr(optimizer, "alpha") else "learning_rate"] = self.learning_rate
        return replace(optimizer, **changes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 10


class Example(NamedTuple):
    """One record for the global model: its sparse raw (not standardized) features (values[k] is
    feature indices[k]'s; the standardized features first, so `positions` index both), its label
    (None: scored only, it adds to the statistics but not to the gradient) and an offset added to
    the global margin (blend `sum`: the key model's margin when the record was scored, so both
    parts learn from the same error; 0.0 otherwise)."""

    indices: Sequence[int]
    values: Sequence[float]
    label: int | None
    offset: float = 0.0


@dataclass
class Statistics:
    """Running count, mean and sum of squared deviations (M2) of each standardized feature."""

    count: int
    mean: list[float]
    m2: list[float]

    @classmethod
    def empty(cls, size: int) -> "Statistics":
        return cls(0, [0.0] * size, [0.0] * size)

    @classmethod
    def of(cls, rows: Sequence[Sequence[float]], positions: Sequence[int]) -> "Statistics":
        """One pass of Welford's update over `rows` (each a full `values` list), at `positions`."""
        stats = cls.empty(len(positions))
        for values in rows:
            stats.add(values, positions)
        return stats

    def add(self, values: Sequence[float], positions: Sequence[int]) -> None:
        """Welford's update with one record's values at `positions`."""
        self.count += 1
        count, mean, m2 = self.count, self.mean, self.m2
        for j, i in enumerate(positions):
            delta = values[i] - mean[j]
            mean[j] += delta / count
            m2[j] += delta * (values[i] - mean[j])

    def merged(self, other: "Statistics") -> "Statistics":
        """The statistics of both sets of records together (Chan, Golub and LeVeque 1979):
        n = na + nb, d = mean_b - mean_a, mean = mean_a + d nb / n, M2 = M2a + M2b + d^2 na nb / n."""
        if other.count == 0:
            return Statistics(self.count, list(self.mean), list(self.m2))
        if self.count == 0:
            return Statistics(other.count, list(other.mean), list(other.m2))
        na, nb = self.count, other.count
        n = na + nb
        mean, m2 = [], []
        for mean_a, m2_a, mean_b, m2_b in zip(self.mean, self.m2, other.mean, other.m2):
            delta = mean_b - mean_a
            mean.append(mean_a + delta * nb / n)
            m2.append(m2_a + m2_b + delta * delta * na * nb / n)
        return Statistics(n, mean, m2)

    def standardize(self, values: Sequence[float], positions: Sequence[int]) -> list[float]:
        """A copy of `values` with each value at `positions` replaced by (value - mean) / std.
        While fewer than two records are counted, or while a feature has shown one value only (zero
        variance), its scale is unknown and the value becomes 0.0 (contributes nothing), as River's
        StandardScaler does: taking the scale as 1 would let the first different value enter raw
        (an amount of 3000 as a z-score of 3000) and throw the weights off."""
        out = list(values)
        if self.count < 2:
            for i in positions:
                out[i] = 0.0
            return out
        count = self.count
        for j, i in enumerate(positions):
            variance = self.m2[j] / count
            out[i] = (values[i] - self.mean[j]) / math.sqrt(variance) if variance > 0 else 0.0
        return out


@dataclass
class GlobalModel:
    """One published version of the global model: its number (0 = the initial model, never
    trained), the regression (weights, bias, optimizer accumulators and counters), the
    standardization statistics of `positions` (feature indices), and what made it: the time it
    was published (epoch ms), how many partials and labelled records its last step combined."""

    feature_names: tuple[str, ...]
    positions: tuple[int, ...]
    regression: LogisticRegression
    statistics: Statistics
    version: int = 0
    created_at: int = 0
    partials: int = 0
    labelled_records: int = 0

    @classmethod
    def initial(cls, feature_names: Sequence[str], positions: Sequence[int], initial_bias: float = 0.0
                ) -> "GlobalModel":
        """Version 0: zero weights, bias `initial_bias` (log-odds), no statistics."""
        return cls(tuple(feature_names), tuple(positions), LogisticRegression(len(feature_names), bias=initial_bias),
                   Statistics.empty(len(positions)))

    def standardize(self, values: Sequence[float]) -> list[float]:
        """`values` standardized by this version's statistics (see `Statistics.standardize`)."""
        return self.statistics.standardize(values, self.positions)

    def margin(self, indices: Sequence[int], standardized: Sequence[float]) -> float:
        """w . x + b for already standardized values."""
        weights = self.regression.weights
        return self.regression.bias + sum([weights[i] * v for i, v in zip(indices, standardized)])

    def predict_proba(self, indices: Sequence[int], values: Sequence[float]) -> float:
        """The probability of fraud in [0, 1] (see udfs.model.sigmoid) for raw (not standardized) sparse features."""
        return sigmoid(self.margin(indices, self.standardize(values)))

    def to_message(self) -> bytes:
        """This version as one JSON message (UTF-8) of schema MESSAGE_VERSION; weights and
        statistics by feature name, so a reader outside the job needs no feature layout."""
        regression, stats, names = self.regression, self.statistics, self.feature_names
        return orjson.dumps({
            "schema_version": MESSAGE_VERSION,
            "version": self.version,
            "created_at": self.created_at,
            "partials": self.partials,
            "labelled_records": self.labelled_records,
            "bias": regression.bias,
            "weights": dict(zip(names, regression.weights)),
            "updates": regression.updates,
            "rejected_updates": regression.rejected_updates,
            "optimizer": regression.optimizer_kind,
            "accumulators": {
                name: {"weights": dict(zip(names, values)), "bias": values[-1]}
                for name, values in zip(ACCUMULATOR_NAMES[regression.optimizer_kind], regression.accumulators)
            },
            "standardization": {
                "count": stats.count,
                "features": {names[i]: {"mean": stats.mean[j], "m2": stats.m2[j]} for j, i in enumerate(self.positions)},
            },
        })

    @classmethod
    def from_message(cls, message: bytes, feature_names: Sequence[str]) -> "GlobalModel":
        """The version a message describes, for the feature layout `feature_names`; ValueError
        when its schema version or its features differ."""
        data = orjson.loads(message)
        if data.get("schema_version") != MESSAGE_VERSION:
            raise ValueError(f"global model message version {data.get('schema_version')} is not supported "
                             f"(this release reads {MESSAGE_VERSION})")
        if list(data["weights"]) != list(feature_names):
            raise ValueError("global model message features differ from the configured features")
        index = {name: i for i, name in enumerate(feature_names)}
        stats = data["standardization"]["features"]
        kind = data["optimizer"]
        if kind not in ACCUMULATOR_NAMES:
            raise ValueError(f"global model message optimizer {kind!r} is not one of {', '.join(ACCUMULATOR_NAMES)}")
        accumulators = [list(data["accumulators"][name]["weights"].values()) + [data["accumulators"][name]["bias"]]
                        for name in ACCUMULATOR_NAMES[kind]]
        regression = LogisticRegression(len(feature_names), list(data["weights"].values()), data["bias"],
                                        data["updates"], data["rejected_updates"], accumulators, kind)
        return cls(tuple(feature_names), tuple(index[name] for name in stats), regression,
                   Statistics(data["standardization"]["count"], [v["mean"] for v in stats.values()],
                              [v["m2"] for v in stats.values()]),
                   data["version"], data["created_at"], data["partials"], data["labelled_records"])

    def copy_regression(self) -> LogisticRegression:
        """A new regression with this version's weights and bias and nothing else (counters at 0, no
        accumulators), e.g. a new key's model under cold start `global`. Its first step adopts the
        key's optimizer, whose accumulators then start so that the weights are kept (AdaGrad: G = 0;
        FTRL: n = 0 and z giving these weights; LogisticRegression.adopt): the global model's own
        accumulators sum MEAN gradients of mini-batches at the global rate, so they would mean
        something else to a key learning one record at a time at its own rate."""
        return LogisticRegression(len(self.feature_names), self.regression.weights, self.regression.bias)


@dataclass
class GradientPartial:
    """What one scoring instance sends for its share of a mini-batch: the version it computed
    against, how many labelled records it covers, the SUM over them of (p - y) x (sparse: feature
    index -> sum) and of (p - y), and the statistics of the raw values of every record it saw
    (labelled or not) since its previous partial."""

    instance: int
    base_version: int
    labelled: int
    gradient: dict[int, float]
    bias_gradient: float
    statistics: Statistics

    def to_bytes(self) -> bytes:
        """This partial as compact JSON (floats round-trip exactly), for the edge from a scoring
        instance to the aggregator and for the aggregator's state."""
        return orjson.dumps(self._plain())

    def _plain(self) -> dict[str, Any]:
        stats = self.statistics
        return {"instance": self.instance, "base_version": self.base_version, "labelled": self.labelled,
                "indices": list(self.gradient), "gradient": list(self.gradient.values()),
                "bias_gradient": self.bias_gradient, "count": stats.count, "mean": stats.mean, "m2": stats.m2}

    @classmethod
    def from_bytes(cls, data: bytes) -> "GradientPartial":
        return cls._of(orjson.loads(data))

    @classmethod
    def _of(cls, d: dict[str, Any]) -> "GradientPartial":
        return cls(d["instance"], d["base_version"], d["labelled"], dict(zip(d["indices"], d["gradient"])),
                   d["bias_gradient"], Statistics(d["count"], d["mean"], d["m2"]))


def compute_partial(model: GlobalModel, examples: Sequence[Example], instance: int = 0) -> GradientPartial:
    """The partial of `examples` against `model`: each labelled example is standardized by the
    model's statistics, scored p = sigmoid(w . x + b + offset) and adds (p - y) x and (p - y)."""
    gradient: dict[int, float] = {}
    bias_gradient = 0.0
    labelled = 0
    statistics = Statistics.empty(len(model.positions))
    for example in examples:
        statistics.add(example.values, model.positions)
        if example.label is None:
            continue
        x = model.standardize(example.values)
        error = sigmoid(model.margin(example.indices, x) + example.offset) - example.label
        for i, v in zip(example.indices, x):
            gradient[i] = gradient.get(i, 0.0) + error * v
        bias_gradient += error
        labelled += 1
    return GradientPartial(instance, model.version, labelled, gradient, bias_gradient, statistics)


def apply_partials(model: GlobalModel, partials: Sequence[GradientPartial], optimizer: Optimizer, now_ms: int
                   ) -> GlobalModel:
    """Version model.version + 1: the partials' gradients summed and divided by their labelled
    records, then one optimizer step (none when they cover no labelled record, so the version
    keeps the parameters: a heartbeat); their statistics merged in the order given."""
    held = model.regression
    regression = LogisticRegression(len(model.feature_names), held.weights, held.bias, held.updates,
                                    held.rejected_updates, held.accumulators, held.optimizer_kind)
    statistics = model.statistics
    total: dict[int, float] = {}
    bias_total = 0.0
    labelled = 0
    for partial in partials:
        statistics = statistics.merged(partial.statistics)
        for i, g in partial.gradient.items():
            total[i] = total.get(i, 0.0) + g
        bias_total += partial.bias_gradient
        labelled += partial.labelled
    if labelled:
        indices = sorted(total)
        regression.step(indices, [total[i] / labelled for i in indices], bias_total / labelled, optimizer)
    return GlobalModel(model.feature_names, model.positions, regression, statistics, model.version + 1, now_ms,
                       len(partials), labelled)


def train_sequential(model: GlobalModel, minibatches: Sequence[Sequence[Example]], optimizer: Optimizer,
                     now_ms: int = 0) -> list[GlobalModel]:
    """The reference the aggregator is held to: one model stepping on each mini-batch in turn
    (one partial of the whole mini-batch). Returns versions model.version + 1, + 2, ..."""
    versions = []
    for batch in minibatches:
        model = apply_partials(model, [compute_partial(model, batch)], optimizer, now_ms)
        versions.append(model)
    return versions


class VersionHolder:
    """The version a scoring instance holds: `offer` applies a version only if it is newer."""

    def __init__(self, model: GlobalModel):
        self.model = model

    def offer(self, candidate: GlobalModel) -> bool:
        """True if `candidate` was newer than the held version and is now held; an equal or older
        one (a replay, a reordering) is ignored."""
        if candidate.version <= self.model.version:
            return False
        self.model = candidate
        return True


@dataclass
class Aggregator:
    """Collects partials and publishes versions.

    `max_staleness` 0 (synchronous): every one of `instances` (ids 0..instances-1) sends its share
    of a mini-batch, as one partial or several, against the current version v; when each has sent
    at least one, they are combined into v + 1 (a round with no labelled record gives a heartbeat
    version with the same parameters, so no instance waits forever). The cadence is then set by
    the instances (each sends after cadence_records / instances labelled records or cadence_ms).

    `max_staleness` k > 0 (asynchronous): partials computed against a version at most k versions
    older than the current one are pooled; a version is published once the pool covers
    `cadence_records` labelled records, or when `tick` finds `cadence_ms` passed since the last
    version and the pool has any. A partial older than that is DROPPED and counted in
    `dropped_stale`: its gradient points downhill for weights the model no longer has, and applying
    it would break the promise that every step uses gradients at most k versions old. Its
    statistics do not depend on a version and are still merged. A partial based on a version newer
    than the current one means the two sides come from different runs: ValueError.
    """

    model: GlobalModel
    optimizer: Optimizer
    instances: int = 1
    max_staleness: int = 0
    cadence_records: int = 1000
    cadence_ms: int | None = None
    pending: list[GradientPartial] = field(default_factory=list)
    dropped_stale: int = 0
    dropped_stale_records: int = 0
    applied_partials: int = 0
    _stale_statistics: Statistics | None = None

    def __post_init__(self):
        if self.instances < 1 or self.max_staleness < 0 or self.cadence_records < 1:
            raise ValueError("aggregator: instances and cadence_records must be >= 1, max_staleness >= 0")

    def add(self, partial: GradientPartial, now_ms: int) -> GlobalModel | None:
        """Takes one partial; returns the version it completed, or None."""
        if not 0 <= partial.instance < self.instances:
            raise ValueError(f"partial from instance {partial.instance}; instances are 0..{self.instances - 1}")
        current = self.model.version
        if partial.base_version > current:
            raise ValueError(f"partial based on version {partial.base_version}, newer than the aggregator's {current}")
        if current - partial.base_version > self.max_staleness:
            self.dropped_stale += 1
            self.dropped_stale_records += partial.labelled
            stats = self._stale_statistics or Statistics.empty(len(self.model.positions))
            self._stale_statistics = stats.merged(partial.statistics)
            return None
        self.pending.append(partial)
        if self.max_staleness == 0:
            if len({p.instance for p in self.pending}) == self.instances:
                return self._publish(now_ms)
        elif sum(p.labelled for p in self.pending) >= self.cadence_records:
            return self._publish(now_ms)
        return None

    def tick(self, now_ms: int) -> GlobalModel | None:
        """The time cadence (asynchronous mode only): publishes when cadence_ms passed since the
        last version and some labelled record is pending; returns that version or None."""
        if (self.max_staleness > 0 and self.cadence_ms is not None and now_ms - self.model.created_at >= self.cadence_ms
                and any(p.labelled for p in self.pending)):
            return self._publish(now_ms)
        return None

    def flush(self, now_ms: int) -> GlobalModel:
        """Publishes what is pending now, whatever the cadence (a bounded run's last version, a
        heartbeat when nothing is pending) and returns that version."""
        return self._publish(now_ms)

    def to_bytes(self) -> bytes:
        """The aggregator's state (current version, pending partials, counters) as JSON, for Flink
        state: restored with `from_bytes`, it publishes exactly what it would have."""
        stale = self._stale_statistics
        return orjson.dumps({
            "model": orjson.loads(self.model.to_message()), "pending": [p._plain() for p in self.pending],
            "dropped_stale": self.dropped_stale, "dropped_stale_records": self.dropped_stale_records,
            "applied_partials": self.applied_partials,
            "stale_statistics": None if stale is None else [stale.count, stale.mean, stale.m2],
        })

    @classmethod
    def from_bytes(cls, data: bytes, feature_names: Sequence[str], optimizer: Optimizer, instances: int,
                   max_staleness: int, cadence_records: int, cadence_ms: int | None) -> "Aggregator":
        """The aggregator `to_bytes` saved, with the given (configured) settings."""
        d = orjson.loads(data)
        stale = d["stale_statistics"]
        return cls(GlobalModel.from_message(orjson.dumps(d["model"]), feature_names), optimizer, instances,
                   max_staleness, cadence_records, cadence_ms, [GradientPartial._of(p) for p in d["pending"]],
                   d["dropped_stale"], d["dropped_stale_records"], d["applied_partials"],
                   None if stale is None else Statistics(*stale))

    def _publish(self, now_ms: int) -> GlobalModel:
        partials = self.pending
        if self._stale_statistics is not None:
            partials = partials + [GradientPartial(-1, self.model.version, 0, {}, 0.0, self._stale_statistics)]
            self._stale_statistics = None
        self.model = apply_partials(self.model, partials, self.optimizer, now_ms)
        self.model.partials = len(self.pending)
        self.applied_partials += len(self.pending)
        self.pending = []
        return self.model
