"""The figures the job publishes as Flink metrics (udfs/live_metrics.py), against independent
computations over the same records: udfs.metrics.log_loss, the dead letters' own JSON, the
records a real TransactionReader reads from a bundle."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from tests.unit.conftest import file_envelope
from udfs.generator import GeneratorSettings, generate
from udfs.live_metrics import DEAD_LETTER_STAGES, RecentLogLoss, dead_letters_by_stage, micro, records_in_bundle
from udfs.metrics import log_loss
from udfs.model import Sgd
from udfs.scoring import ModelScorer

NOW = 1_767_300_000_000


def random_batches(rng: random.Random, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches of (scores, labels) of random sizes, some empty, some unlabelled, some larger than a
    window; scores include 0 and 1 exactly (clipped) and labels -1 (no label)."""
    out = []
    for _ in range(batches):
        n = rng.choice([0, 1, 3, 17, 40, 250])
        scores = np.array([rng.choice([0.0, 1.0, rng.random()]) if rng.random() < 0.1 else rng.random()
                           for _ in range(n)])
        labels = np.array([rng.choice([-1, 0, 0, 1]) for _ in range(n)], np.int8)
        out.append((scores, labels))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [1, 7, 100])
def test_the_recent_log_loss_is_the_log_loss_of_the_last_labelled_records(seed, window):
    rng = random.Random(seed)
    recent = RecentLogLoss(window)
    pairs: list[tuple[float, int]] = []  # every labelled (score, label) so far, in order
    for scores, labels in random_batches(rng, 40):
        recent.add(scores, labels)
        pairs += [(s, int(y)) for s, y in zip(scores.tolist(), labels.tolist()) if y >= 0]
        last = pairs[-window:]
        assert recent.labelled == len(last)
        if not last:
            assert np.isnan(recent.value()) and recent.value_micro() == 0
            continue
        expected = log_loss([s for s, _ in last], [y for _, y in last])
        assert recent.value() == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert recent.value_micro() == round(expected * 1e6)
    assert len(pairs) > window  # the window wrapped around


def test_the_recent_log_loss_starts_empty_and_ignores_unlabelled_records():
    recent = RecentLogLoss(3)
    assert recent.labelled == 0 and recent.value_micro() == 0
    recent.add(np.array([0.2, 0.9]), np.array([-1, -1], np.int8))
    assert recent.labelled == 0 and recent.value_micro() == 0
    recent.add(np.array([0.5]), np.array([1], np.int8))
    assert recent.labelled == 1 and recent.value_micro() == 693147  # ln 2 = 0.693147(18...)


def test_a_window_must_hold_a_record():
    with pytest.raises(ValueError, match="window"):
        RecentLogLoss(0)


@pytest.mark.parametrize("value, expected", [(0.0712345678, 71235), (0.0000004, 0), (0.0000006, 1), (2.5, 2_500_000)])
def test_micro_units_are_millionths_rounded(value, expected):
    assert micro(value) == expected


def test_the_bundle_counts_are_what_a_real_reader_makes_of_the_bundle(local_reader):
    """records_in_bundle against what TransactionReader.read_bundle_columns reads from the same
    bundle (each record scored or dead-lettered), and dead_letters_by_stage against the stages the
    dead letters' JSON lines carry."""
    lines = list(generate(GeneratorSettings(records=2000, seed=41, malformed_share=0.08)))
    lines[5] = b""  # an empty line is a record too (dead-lettered at decode)
    seen_stages: Counter = Counter()
    for start in range(0, len(lines), 300):
        chunk = lines[start:start + 300]
        bundle = "\n".join(file_envelope(line, number) for number, line in enumerate(chunk, start + 1))
        by_shard, dead_letters = local_reader.read_bundle_columns(bundle, 2, NOW)
        assert records_in_bundle(bundle) == len(chunk) == sum(map(len, by_shard.values())) + len(dead_letters)
        by_stage = dead_letters_by_stage(dead_letters)
        assert by_stage == Counter(json.loads(letter)["stage"] for letter in dead_letters)
        seen_stages.update(by_stage)
    assert set(seen_stages) == set(DEAD_LETTER_STAGES), seen_stages  # the generator makes every kind


def test_the_recent_log_loss_fed_as_the_job_feeds_it_is_that_of_the_scores_written(local_reader):
    lines = list(generate(GeneratorSettings(records=1500, seed=42, unlabelled_share=0.2)))
    encoder = local_reader.encoder
    scorer = ModelScorer(encoder.names, encoder.standardized, Sgd(0.05), snapshot_every=100, top_reasons=3)
    table = scorer.new_table()
    recent = RecentLogLoss(500)
    written = []
    for start in range(0, len(lines), 200):
        bundle = "\n".join(file_envelope(line, number) for number, line in enumerate(lines[start:start + 200], 1))
        batch = local_reader.read_bundle_columns(bundle, 1, NOW)[0][0]
        assessed = scorer.assess_columns(batch, table)  # as ScoreShard does
        recent.add(assessed.probability, batch.labels)
        written += [json.loads(score) for score in scorer.score_lines(batch, assessed, NOW)]
    labelled = [(score["score"], score["label"]) for score in written if score["label"] is not None][-500:]
    assert recent.labelled == 500
    assert recent.value() == pytest.approx(log_loss(*map(list, zip(*labelled))), rel=1e-12)
