"""The reference of reading and scoring: one record at a time, on a `KeyModel` (udfs/model.py),
exactly as DESIGN.md states the model. The job reads a bundle at a time
(TransactionReader.read_bundle_columns) and scores a batch at a time in compiled code
(ModelScorer.score_columns); the unit tests hold both to these functions."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import orjson

from udfs.cleaning import SCHEMA_VERSION
from udfs.drift import DriftSettings, drift_loss, make_detector
from udfs.model import KeyModel
from udfs.reading import TransactionReader, shard_of
from udfs.records import KeyedLine, ModelInput
from udfs.scoring import ModelScorer


def read_bundle(reader: TransactionReader, bundle: str, shards: int, now_ms: int
                ) -> tuple[dict[int, list[ModelInput]], list[KeyedLine]]:
    """Reads every record of a bundle (envelopes joined by newlines, in arrival order) one at a time
    (`TransactionReader.read_envelope`). Returns the model inputs grouped by `shard_of` their
    model key, each group in arrival order, and the dead letters as JSON lines."""
    by_shard: dict[int, list[ModelInput]] = {}
    dead_letters: list[KeyedLine] = []
    for envelope in bundle.split("\n"):
        result = reader.read_envelope(envelope, now_ms)
        if isinstance(result, KeyedLine):
            dead_letters.append(result)
        else:
            by_shard.setdefault(shard_of(result.model_key, shards), []).append(result)
    return by_shard, dead_letters


class Assessment(NamedTuple):
    """What a key's model made of one record: its probability of fraud before learning (0..1), the
    model's updates before learning, the top (feature index, contribution) pairs, and whether it learned."""

    probability: float
    updates: int
    reasons: list[tuple[int, float]]
    learned: bool


def assess(scorer: ModelScorer, key_model: KeyModel, record: ModelInput) -> Assessment:
    """Standardizes the record's features, scores it, and learns from it when it has a label."""
    indices = record.indices
    values = key_model.standardizer.transform(record.values)
    model = key_model.model
    p = model.predict_proba(indices, values)
    updates = model.updates
    reasons = model.top_contributions(indices, values, scorer.top_reasons)
    learned = record.label is not None and model.learn(indices, values, record.label, p, scorer.optimizer)
    return Assessment(p, updates, reasons, learned)


class DriftStep(NamedTuple):
    """What `assess_with_drift` made of one record."""

    assessment: Assessment
    key_model: KeyModel  # the model that scored the record (after a reset no longer the key's)
    event: tuple[str, str, int, float, dict] | None  # (model key, txn_id, updates, loss, statistics) at a drift


def assess_with_drift(scorer: ModelScorer, models: dict[str, KeyModel], detectors: dict, settings: DriftSettings,
                      on_drift: str, record: ModelInput) -> DriftStep:
    """One record through its key's model and drift detector, as DESIGN.md states them: `assess` on
    the key's model (a new one on first use); for a labelled record its loss capped at
    `settings.loss_cap` (`drift_loss`) fed to the key's detector (`make_detector` on first use); at
    a detection with `on_drift` "reset" the key gets a new model. `models` and `detectors` (model
    key -> model, detector) are updated in place."""
    key = record.model_key
    key_model = models.setdefault(key, scorer.new_model())
    assessment = assess(scorer, key_model, record)
    if record.label is None:
        return DriftStep(assessment, key_model, None)
    detector = detectors.setdefault(key, make_detector(settings))
    loss = drift_loss(assessment.probability, record.label, settings.loss_cap)
    if not detector.update(loss):
        return DriftStep(assessment, key_model, None)
    if on_drift == "reset":
        models[key] = scorer.new_model()
    return DriftStep(assessment, key_model, (key, record.txn_id, assessment.updates, loss, detector.statistics()))


def score_line(scorer: ModelScorer, record: ModelInput, assessment: Assessment, now_ms: int) -> str:
    """The score of `record` as one JSON line (README, "Data contracts")."""
    return orjson.dumps({
        "schema_version": SCHEMA_VERSION,
        "txn_id": record.txn_id,
        "model_key": record.model_key,
        "score": assessment.probability,
        "label": record.label,
        "event_time": record.event_time,
        "model_updates": assessment.updates,
        "reasons": [{"feature": scorer.feature_names[i], "contribution": c} for i, c in assessment.reasons],
        "scored_at": now_ms,
        **record.context._asdict(),
    }).decode("utf-8")


def score_and_learn(scorer: ModelScorer, key_model: KeyModel, record: ModelInput, now_ms: int
                    ) -> tuple[str, str | None]:
    """(score as a JSON line, snapshot as a JSON line or None); updates `key_model` in place.

    The score is the model's probability of fraud before it learns from this record;
    `model_updates` is how many updates the model had when it scored.
    """
    assessment = assess(scorer, key_model, record)
    score = score_line(scorer, record, assessment, now_ms)
    snapshot = None
    if assessment.learned:
        key_model.last_event_time = record.event_time
        if key_model.model.updates % scorer.snapshot_every == 0:
            snapshot = scorer.snapshot(key_model, record.model_key)
    return score, snapshot


def score_batch(scorer: ModelScorer, records: Sequence[ModelInput], models: dict[str, KeyModel],
                load_model: Callable[[str], KeyModel | None], now_ms: int) -> tuple[list[str], list[KeyedLine]]:
    """Scores and learns from `records` one after another, in order, with `score_and_learn`.
    `models` caches the models this batch uses: a key missing from it is loaded with `load_model`
    (None: a new model). Afterwards `models` holds every model the batch touched, for the caller
    to store. Returns (score JSON lines, snapshot JSON lines)."""
    scores = []
    snapshots = []
    for record in records:
        key_model = models.get(record.model_key)
        if key_model is None:
            key_model = load_model(record.model_key)
            if key_model is None:
                key_model = scorer.new_model()
            else:  # a stored model continues with the configured optimizer, as ModelTable.add converts it
                key_model.model.adopt(scorer.optimizer)
            models[record.model_key] = key_model
        score, snapshot = score_and_learn(scorer, key_model, record, now_ms)
        scores.append(score)
        if snapshot is not None:
            snapshots.append(snapshot)
    return scores, snapshots
