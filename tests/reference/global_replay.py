"""A replay of the key models with the global model, one record at a time, for the job's outputs:
each key's records in arrival order, each scored with the global version its score names
(`global_version`), by udfs/prequential.py's arithmetic (`PrequentialLearner.process`, its held
version replaced before each record, its own aggregation never reached). What the job computes in
compiled batches, with versions arriving between batches, must equal it record for record.

It gives each record's probability, the key margin it was scored with (the offset of the global
model's partial under `blend: sum`) and the drift events."""

from __future__ import annotations

from typing import NamedTuple, Sequence

from streaming.config.from_settings import optimizer, transaction_reader
from udfs.drift import drift_loss, make_detector
from udfs.global_model import Example, GlobalModel, GlobalSettings, VersionHolder
from udfs.prequential import DriftEvent, LearningSettings, PrequentialLearner
from udfs.records import ModelInput


class Replayed(NamedTuple):
    probability: dict[str, float]  # by txn_id
    offset: dict[str, float]  # by txn_id: the key margin the record was scored with (0.0 unless blend sum)
    drift_events: list[DriftEvent]


class _Replay(PrequentialLearner):
    """The learner with the version it holds set from outside, recording each record's offset
    instead of training its own global model."""

    def _collect(self, example: Example, now_ms: int) -> None:
        self.offsets.append(example.offset)


def replay(settings, records: Sequence[ModelInput], version_of: dict[str, int],
           versions: dict[int, GlobalModel]) -> Replayed:
    """`records` in arrival order (each key's records in the order its shard scored them),
    `version_of` the version each txn_id's score names, `versions` the published versions by
    number; the job's `settings` (model.*)."""
    model = settings.model
    detector_settings = model.drift.detector_settings()
    encoder = transaction_reader(settings).encoder
    learner = _Replay(encoder.names, encoder.standardized,
                      LearningSettings(optimizer(settings), model.initial_bias, model.cold_start, model.blend,
                                       model.on_drift, global_model=GlobalSettings(cadence_records=10 ** 9)),
                      detector_factory=None if model.drift.detector == "none"
                      else (lambda: make_detector(detector_settings)),
                      detector_loss=lambda p, y: drift_loss(p, y, detector_settings.loss_cap))
    learner.offsets = []
    probability = {}
    for record in records:
        learner.holder = VersionHolder(versions[version_of[record.txn_id]])
        probability[record.txn_id] = learner.process(record)[0]
    return Replayed(probability, dict(zip((r.txn_id for r in records), learner.offsets)), learner.drift_events)
