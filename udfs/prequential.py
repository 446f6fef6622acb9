"""A prequential learner for one process (pure Python, no Flink): score each record, then learn
from it when it has a label, with per-key models, the data-parallel global model
(udfs/global_model.py), cold start, blending and a reaction to drift. `riskstream evaluate` runs
it; the job's exact per-key path is its `blend: key` case.

The global model is trained as the job trains it with `max_staleness` 0: the labelled records are
dealt round-robin to `instances` simulated scoring instances; after every `cadence_records`
labelled records each instance computes its partial against the version all of them hold, the
`Aggregator` combines the partials into the next version, and every instance applies it. With
staleness 0 that equals one model stepping on sequential mini-batches of `cadence_records`
labelled records (tests/unit/test_global_model.py), so `instances` changes nothing but speed.
`model.global.cadence_ms` and `max_staleness` are not simulated here (the stream has no
processing time); the job honours them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, Sequence

from udfs.global_model import Aggregator, Example, GlobalModel, GlobalSettings, VersionHolder, compute_partial
from udfs.model import KeyModel, Sgd, sigmoid
from udfs.records import ModelInput

COLD_STARTS = ("zeros", "global")
BLENDS = ("key", "global", "sum")
DRIFT_REACTIONS = ("report", "reset", "rewarm")
# What a key's drift detector is fed for each labelled record: the loss of the score it was given,
# or that loss minus the global model's own loss on the same record (the key's excess over global).
DRIFT_INPUTS = ("loss", "excess_over_global", "residual")
MIN_PROBABILITY = 1e-15  # log loss of a probability of exactly 0 or 1 is capped at -log(1e-15) ~ 34.5


@dataclass(frozen=True)
class LearningSettings:
    """How the models learn (docs/configuration.md, `model.*`).

    optimizer: the key models' optimizer (udfs/model.py: Sgd, AdaGrad or Ftrl; its l2 is also what
      pulls a `sum` key model toward zero);
    initial_bias: a new model's bias, in log-odds (e.g. log(0.03 / 0.97) for 3% fraud);
    cold_start: `zeros` (a new key starts at zero weights and initial_bias) or `global` (a new key
      starts as a copy of the global version its instance holds);
    blend: `key` (score with the key's model), `global` (the global model only) or `sum` (the key
      margin added to the global margin; both learn from that sum's error, the key model starts at
      zero whatever cold_start says, so a new key scores with the global model);
    on_drift: when the key's detector fires, `report` only, `reset` the key's model to a new one
      (cold start zeros) or `rewarm` it (cold start global);
    drift_input: what the key's detector is fed per labelled record: `loss` (the loss of the score
      given) or `excess_over_global` (that loss minus the loss the global model alone gives the
      record, before either learns from it): a change that hits every key alike, or a loss that
      falls as a new key learns, cancels out, while a key model gone stale against a global model
      that has adapted shows as a rise (docs/evaluation.md#drift); or `residual`, the score minus
      the label (in [-1, 1]: its mean is the key's calibration error, which a change moves either way);
    global_model: the global model's training (`model.global`); used when cold_start is global,
      blend is not key, or on_drift is rewarm.
    """

    optimizer: Any = Sgd(0.01)
    initial_bias: float = 0.0
    cold_start: str = "zeros"
    blend: str = "key"
    on_drift: str = "report"
    drift_input: str = "loss"
    global_model: GlobalSettings = field(default_factory=GlobalSettings)

    def __post_init__(self):
        for name, allowed in (("cold_start", COLD_STARTS), ("blend", BLENDS), ("on_drift", DRIFT_REACTIONS),
                              ("drift_input", DRIFT_INPUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name}: must be one of {' | '.join(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.initial_bias, bool) or not isinstance(self.initial_bias, (int, float)) \
                or not abs(self.initial_bias) <= 20:
            raise ValueError(f"model.initial_bias: must be a number in [-20, 20] (log-odds), got {self.initial_bias!r}")

    @property
    def uses_global(self) -> bool:
        """Whether the global model is trained at all."""
        return (self.cold_start == "global" or self.blend != "key" or self.on_drift == "rewarm"
                or self.drift_input == "excess_over_global")


class DriftDetector(Protocol):
    """udfs/drift.py's detectors: `update` takes one labelled record's log loss, True on drift."""

    def update(self, value: float) -> bool: ...


class Details(NamedTuple):
    """What the learner did with one record besides its probability."""

    global_version: int  # the global version the record was scored with; -1 without a global model
    model_updates: int  # the key model's updates before this record
    new_key: bool  # the key's first record
    drift: bool  # the key's detector fired on this record


class DriftEvent(NamedTuple):
    model_key: str
    txn_id: str
    record: int  # 0-based position in the stream of the record that fired
    global_version: int
    statistics: dict[str, Any]  # the detector's statistics() when it has one


class _KeyState:
    __slots__ = ("key_model", "detector")

    def __init__(self, key_model: KeyModel, detector: DriftDetector | None):
        self.key_model = key_model
        self.detector = detector


def log_loss(probability: float, label: int) -> float:
    """-log of the probability given to the true label, capped at -log(MIN_PROBABILITY)."""
    return -math.log(max(probability if label else 1.0 - probability, MIN_PROBABILITY))


class PrequentialLearner:
    """Scores records in order, then learns from each labelled one (see the module docstring).

    `feature_names` and `standardized` are the FeatureEncoder's `names` and `standardized`;
    `detector_factory` makes one drift detector per key (None: no drift detection), fed
    `detector_loss(probability, label)` for each labelled record (the job feeds udfs/drift.py's
    `drift_loss`, capped at model.drift.loss_cap: pass it for the job's detections); `instances`
    is how many scoring instances the global model's training simulates (>= 1)."""

    def __init__(self, feature_names: Sequence[str], standardized: Sequence[int], settings: LearningSettings,
                 instances: int = 1, detector_factory: Callable[[], DriftDetector] | None = None,
                 detector_loss: Callable[[float, int], float] = log_loss):
        self.feature_names = tuple(feature_names)
        self.standardized = tuple(standardized)
        self.settings = settings
        self.detector_factory = detector_factory
        self.detector_loss = detector_loss
        self.keys: dict[str, _KeyState] = {}
        self.drift_events: list[DriftEvent] = []
        self.records = 0
        self.holder: VersionHolder | None = None
        self.aggregator: Aggregator | None = None
        if settings.uses_global:
            initial = GlobalModel.initial(self.feature_names, self.standardized, settings.initial_bias)
            self.holder = VersionHolder(initial)
            cadence = settings.global_model
            self.aggregator = Aggregator(initial, cadence.optimizer_for(settings.optimizer), instances,
                                         max_staleness=0, cadence_records=cadence.cadence_records)
        self._buffers: list[list[Example]] = [[] for _ in range(instances)]
        self._buffered = 0  # records in the buffers (they are dealt round-robin)
        self._buffered_labelled = 0

    @property
    def global_model(self) -> GlobalModel | None:
        """The global version the instances hold (None without a global model)."""
        return None if self.holder is None else self.holder.model

    def process(self, record: ModelInput) -> tuple[float, Details]:
        """The record's probability of fraud (0..1) before learning from it, and the details."""
        settings = self.settings
        state = self.keys.get(record.model_key)
        new_key = state is None
        if state is None:
            state = _KeyState(self._new_key_model(settings.cold_start),
                              None if self.detector_factory is None else self.detector_factory())
            self.keys[record.model_key] = state
        model = state.key_model.model
        held = self.global_model
        indices = record.indices
        # With a global model every part sees the features standardized by the global statistics,
        # not by the handful of records a new key has seen; without one, exactly the job's path.
        x = state.key_model.standardizer.transform(record.values) if held is None else held.standardize(record.values)
        key_margin = 0.0
        global_margin = None if held is None else held.margin(indices, x)
        if settings.blend == "key":
            probability = model.predict_proba(indices, x)
        else:
            if settings.blend == "sum":
                weights = model.weights
                key_margin = model.bias + sum([weights[i] * v for i, v in zip(indices, x)])
            probability = sigmoid(global_margin + key_margin)
        updates = model.updates
        drift = False
        label = record.label
        if label is not None and settings.blend != "global":
            # Under `sum` the key learns from the blended error: learn's gradient is (p - y) x for the p given.
            model.learn(indices, x, label, probability, settings.optimizer)
        if held is not None:
            self._collect(Example(indices, record.values, label, key_margin), record.event_time)
        if label is not None and state.detector is not None:
            value = self.detector_loss(probability, label) if settings.drift_input != "residual" \
                else probability - label
            if settings.drift_input == "excess_over_global":
                value -= self.detector_loss(sigmoid(global_margin), label)
            drift = bool(state.detector.update(value))
            if drift:
                self._react(state, record, held)
        self.records += 1
        return probability, Details(-1 if held is None else held.version, updates, new_key, drift)

    def _new_key_model(self, cold_start: str) -> KeyModel:
        if self.settings.blend == "sum":  # the global margin carries the prior; the key part starts at zero
            return KeyModel(len(self.feature_names), self.standardized)
        key_model = KeyModel(len(self.feature_names), self.standardized, self.settings.initial_bias)
        if cold_start == "global":
            key_model.model = self.global_model.copy_regression()
        return key_model

    def _react(self, state: _KeyState, record: ModelInput, held: GlobalModel | None) -> None:
        statistics = getattr(state.detector, "statistics", None)
        self.drift_events.append(DriftEvent(record.model_key, record.txn_id, self.records,
                                            -1 if held is None else held.version,
                                            dict(statistics()) if callable(statistics) else {}))
        reaction = self.settings.on_drift
        if reaction != "report":
            state.key_model = self._new_key_model("global" if reaction == "rewarm" else "zeros")

    def _collect(self, example: Example, now_ms: int) -> None:
        """Deals the record to the next simulated instance; after cadence_records labelled records
        every instance sends its partial and all of them apply the version that completes."""
        buffers = self._buffers
        buffers[self._buffered % len(buffers)].append(example)
        self._buffered += 1
        if example.label is None:
            return
        self._buffered_labelled += 1
        if self._buffered_labelled < self.settings.global_model.cadence_records:
            return
        held = self.holder.model
        version = None
        for instance, examples in enumerate(buffers):
            version = self.aggregator.add(compute_partial(held, examples, instance), now_ms) or version
        self.holder.offer(version)
        self._buffers = [[] for _ in buffers]
        self._buffered = self._buffered_labelled = 0
