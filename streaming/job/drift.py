"""The scoring operators' drift detectors (model.drift): keyed state, and the in-memory copy the
tracking (udfs.drift_tracking) works with. Only built when model.drift.detector is not none."""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from streaming.config import Settings
from udfs.drift_tracking import DriftTracker, KeyDetectors
from udfs.scoring import ModelScorer


class ShardDrift:
    """The drift detectors of one scoring subtask's shards, as ShardModels keeps their models.

    Keyed map state "drift" (model key -> udfs.drift detector bytes) is the only record of a
    detector; the worker keeps each shard's detectors in memory (KeyDetectors), read from state
    the first time it sees the shard after a start or restore, and writes every updated detector
    through (`write_through`) before the bundle's output leaves. New state: a savepoint taken
    without it restores, and its keys start with fresh detectors. Call the methods that take a
    shard while that shard is the operator's current key."""

    def __init__(self, tracker: DriftTracker):
        self.tracker = tracker
        self.state = None
        self.shards: dict[int, KeyDetectors] = {}

    def open(self, runtime_context: RuntimeContext) -> None:
        # Pickled bytes, as the models' (see ShardModels.open).
        self.state = runtime_context.get_map_state(MapStateDescriptor("drift", Types.STRING(),
                                                                      Types.PICKLED_BYTE_ARRAY()))
        self.shards = {}

    def detectors(self, shard: int) -> KeyDetectors:
        """The shard's detectors, read from state the first time this worker needs them."""
        detectors = self.shards.get(shard)
        if detectors is None:
            detectors = self.shards[shard] = self.tracker.detectors(self.state.items())
        return detectors

    def write_through(self, detectors: KeyDetectors) -> None:
        """Writes the current shard's updated detectors to state."""
        for key, data in detectors.take_changed():
            self.state.put(key, data)


def shard_drift(settings: Settings, scorer: ModelScorer) -> ShardDrift | None:
    """The scoring operators' detectors as model.drift and model.on_drift say; None when
    model.drift.detector is none (no state, no output, no cost)."""
    model = settings.model
    if model.drift.detector == "none":
        return None
    return ShardDrift(DriftTracker(model.drift.detector_settings(), model.on_drift, scorer))
