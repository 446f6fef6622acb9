"""Per-key drift tracking in a scoring shard (pure Python, no Flink): each labelled record's
prequential log loss (`udfs.drift.drift_loss` of the score the key's model gave it before learning
from it) goes, in arrival order, to its key's detector (`udfs.drift`); a detection writes a drift
event (docs/contracts.md#drift-events) and, with `model.on_drift: reset`, gives the key a new model
(`rewarm`: a copy of the global version its shard holds).

The semantics are udfs/prequential.py's (what `riskstream evaluate` runs): the record that fires
has been learned from when the key's model is reset, the detector itself is kept (it starts afresh
with the key's next labelled record, as River's do), and a reset model is a new key's model (zero
weights, `model.initial_bias`, fresh accumulators and fresh standardization statistics).

The job scores and learns a whole batch in compiled code before the detectors see its losses, so
a reset at record r of a batch comes after the key's later records of that batch were scored by
the model it discards. `DriftTracker.after_batch` then scores and learns those records again with
the new model (only that key's: keys' models are independent) and puts their results in place of
the first ones, so that every score equals a record-at-a-time run with the reset. With the global
model the re-run uses the same held version as the batch (`held`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Literal

import numpy as np
import orjson

from udfs.drift import Adwin, DriftSettings, PageHinkley, drift_loss, restore_detector
from udfs.records import KeyedLine

if TYPE_CHECKING:
    from udfs.compiled_model import ModelTable
    from udfs.global_model import GlobalModel
    from udfs.scoring import AssessedBatch, ModelScorer
    from udfs.wire import RecordBatch

DRIFT_SCHEMA_VERSION = 1
# What the job does on a detection; `rewarm` needs the global model (its held version is the new model).
JobReaction = Literal["report", "reset", "rewarm"]

# The per-record outputs of AssessedBatch that a re-run replaces (standardized is per entry).
_PER_RECORD = ("probability", "updates", "learned", "reason_index", "reason_value", "reason_count", "key_margin")


class KeyDetectors:
    """The detectors of one shard's model keys. `stored` (model key -> detector bytes, as Flink
    state holds them) is restored key by key on first use; `changed` collects the keys whose
    detector was updated since the caller last wrote them (`take_changed`)."""

    def __init__(self, settings: DriftSettings, stored: Iterable[tuple[str, bytes]] = ()):
        self.settings = settings
        self._stored = dict(stored)
        self._live: dict[str, PageHinkley | Adwin] = {}
        self.changed: set[str] = set()

    def of(self, model_key: str) -> PageHinkley | Adwin:
        detector = self._live.get(model_key)
        if detector is None:
            detector = restore_detector(self.settings, self._stored.pop(model_key, None))
            if detector is None:
                raise ValueError("model.drift.detector is none: there are no detectors to track with")
            self._live[model_key] = detector
        return detector

    def update(self, model_key: str, loss: float) -> bool:
        """Feeds `loss` (nats) to the key's detector; True when it detects drift."""
        self.changed.add(model_key)
        return self.of(model_key).update(loss)

    def take_changed(self) -> list[tuple[str, bytes]]:
        """(model key, detector bytes) of every detector updated since the last call."""
        changed = [(key, self._live[key].to_bytes()) for key in sorted(self.changed)]
        self.changed = set()
        return changed

    def __len__(self) -> int:
        return len(self._stored) + len(self._live)


class DriftTracker:
    """Feeds the detectors and reacts to their detections, for inline labels (`after_batch`) and
    for labels from the label stream (`after_label`)."""

    def __init__(self, settings: DriftSettings, on_drift: JobReaction, scorer: ModelScorer):
        if settings.detector == "none":
            raise ValueError("model.drift.detector is none: nothing to track")
        if on_drift not in ("report", "reset", "rewarm"):
            raise ValueError(f"model.on_drift: {on_drift} is not available in the job (report, reset or rewarm)")
        self.settings = settings
        self.on_drift = on_drift
        self.scorer = scorer

    def detectors(self, stored: Iterable[tuple[str, bytes]] = ()) -> KeyDetectors:
        return KeyDetectors(self.settings, stored)

    def after_batch(self, detectors: KeyDetectors, batch: RecordBatch, assessed: AssessedBatch, table: ModelTable,
                    now_ms: int, held: GlobalModel | None = None) -> list[KeyedLine]:
        """Feeds the loss of every labelled record of `batch`, which `assessed` says `table`'s models
        scored and learned from (ModelScorer.assess_columns), to its key's detector in order.
        Returns the drift events (JSON lines keyed by model key, `detected_at` = `now_ms`). With
        `reset`, a key whose detector fires gets a new model in `table`, and its later records in the
        batch are scored and learned again with it: `assessed` is updated in place (its per-record
        arrays, standardized values and snapshots), so it then says what a record-at-a-time run
        with the reset gives. `held`: the global version the batch was scored with (None: no
        global model); `rewarm` restarts the key from it (`ModelScorer.start`)."""
        events = []
        labels = batch.labels
        keys = batch.model_keys
        cap = self.settings.loss_cap
        probability = assessed.probability  # read at each record: a reset rewrites the later ones
        for r in np.flatnonzero(labels >= 0).tolist():
            key = keys[r]
            label = int(labels[r])
            loss = drift_loss(float(probability[r]), label, cap)
            if not detectors.update(key, loss):
                continue
            events.append(self._event(detectors.of(key), key, batch.txn_ids[r], int(batch.event_times[r]),
                                      int(assessed.updates[r]), loss, now_ms, held))
            if self.on_drift != "report":
                self._restart(table, table.rows[key], held)
                self._again_after(r, key, batch, assessed, table, held)
        return events

    def after_label(self, detectors: KeyDetectors, table: ModelTable, row: int, txn_id: str, event_time: int,
                    score: float, label: int, model_updates: int, now_ms: int, held: GlobalModel | None = None
                    ) -> KeyedLine | None:
        """For a label from the label stream, once the model at `row` of `table` learned from it:
        feeds the loss of `score` (the score the record was given, 0..1) for `label` (0 or 1) to
        the key's detector. On a detection returns the drift event (`model_updates`: the model's
        updates before it learned from this label) and, with `reset` or `rewarm` (from `held`),
        gives the key a new model."""
        key = table.keys[row]
        loss = drift_loss(score, label, self.settings.loss_cap)
        if not detectors.update(key, loss):
            return None
        if self.on_drift != "report":
            self._restart(table, row, held)
        return self._event(detectors.of(key), key, txn_id, event_time, model_updates, loss, now_ms, held)

    def _restart(self, table: ModelTable, row: int, held: GlobalModel | None) -> None:
        """The key's new model: a new key's with cold start zeros (`reset`) or global (`rewarm`)."""
        table.reset(row, self.scorer.start(held, "global" if self.on_drift == "rewarm" else "zeros"))

    def _again_after(self, r: int, key: str, batch: RecordBatch, assessed: AssessedBatch, table: ModelTable,
                     held: GlobalModel | None) -> None:
        """Scores and learns the key's records after position r again, with the key's model as it is
        now, and puts the results in `assessed` in place of the first run's."""
        later = np.array([s for s in range(r + 1, len(batch)) if batch.model_keys[s] == key], np.int64)
        snapshots = assessed.snapshots
        # The key's snapshots taken at or before r stay; those of its later records go with them.
        kept = int(np.count_nonzero(self._snapshot_taken(assessed)[:r + 1]
                                    & np.array([k == key for k in batch.model_keys[:r + 1]])))
        of_key = [i for i, line in enumerate(snapshots) if line.key == key]
        for i in reversed(of_key[kept:]):
            del snapshots[i]
        if not len(later):
            return
        again = self.scorer.assess_columns(batch.take(later), table, held)
        for name in _PER_RECORD:
            getattr(assessed, name)[later] = getattr(again, name)
        indptr = batch.indptr
        entries = np.concatenate([np.arange(indptr[s], indptr[s + 1]) for s in later.tolist()])
        assessed.standardized[entries] = again.standardized
        snapshots.extend(again.snapshots)

    def _snapshot_taken(self, assessed: AssessedBatch) -> np.ndarray:
        """Per record: whether its learning step made a snapshot (ModelScorer.assess_columns's rule:
        the key's updates after it are a multiple of snapshot_every)."""
        return assessed.learned & ((assessed.updates + 1) % self.scorer.snapshot_every == 0)

    def _event(self, detector: PageHinkley | Adwin, key: str, txn_id: str, event_time: int, model_updates: int,
               loss: float, now_ms: int, held: GlobalModel | None) -> KeyedLine:
        return KeyedLine(orjson.dumps({
            "schema_version": DRIFT_SCHEMA_VERSION,
            "model_key": key,
            "txn_id": txn_id,
            "event_time": event_time,
            "detected_at": now_ms,
            "model_updates": model_updates,
            "global_version": None if held is None else held.version,
            "loss": loss,
            "detector": detector.name,
            "statistics": detector.statistics(),
            "action": self.on_drift,
        }).decode("utf-8"), key)
