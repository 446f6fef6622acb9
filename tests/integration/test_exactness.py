"""Through the real job, every score and the final model equal an independent sequential SGD, and
with AdaGrad or FTRL-Proximal the independent textbook implementations (tests/reference/textbook.py)."""

from __future__ import annotations

import json
import math
import random

import pytest

from streaming.job.shard_models import FINAL_SNAPSHOTS_PER_BUNDLE
from tests.reference.textbook import TextbookAdaGrad, TextbookFtrl, textbook_run
from udfs.generator import GeneratorSettings, generate

FEATURES = ("a", "b", "c", "d")
LEARNING_RATE = 0.05
RAW_FEATURES_PROFILE = (
    "features={numeric: [{field: amount}, {field: features.a}, {field: features.b}, {field: features.c},"
    " {field: features.d}], categorical: [], time: {hour_of_day: none, day_of_week: none}}"
)


def exactness_stream(records: int, seed: int) -> list[dict]:
    """One key, raw bounded numeric features, labels from a fixed logistic rule, some unlabelled."""
    rng = random.Random(seed)
    stream = []
    for i in range(records):
        x = {name: rng.uniform(-1, 1) for name in FEATURES}
        amount = rng.uniform(0, 5)
        truth = 1 / (1 + math.exp(-(2 * x["a"] - 3 * x["c"] + 0.4 * amount - 1)))
        label = None if rng.random() < 0.1 else int(rng.random() < truth)
        stream.append({
            "txn_id": f"x-{i:06d}", "event_time": 1_767_225_600_000 + 37 * i, "account_id": f"acct-{i % 17}",
            "merchant_category": "grocery", "country": "US", "channel": "web", "amount": amount,
            "features": x, "is_fraud": label,
        })
    return stream


# The other optimizers' runs: their settings and the textbook learner over the 1 + len(FEATURES) inputs.
OPTIMIZERS = {
    "sgd": ([], None),
    "adagrad": (["model.optimizer=adagrad", "model.learning_rate=0.1", "model.l2=0.01"],
                TextbookAdaGrad(1 + len(FEATURES), 0.1, l2=0.01)),
    "ftrl": (["model.optimizer=ftrl", "model.ftrl={alpha: 0.2, beta: 1.0, l1: 0.05, l2: 0.5}", "model.initial_bias=-1.0"],
             TextbookFtrl(1 + len(FEATURES), 0.2, beta=1.0, l1=0.05, l2=0.5, initial_bias=-1.0)),
}


def reference_textbook(learner, stream: list[dict]) -> tuple[list[float], list[float], float, dict]:
    """`reference_sgd` with a textbook learner: (scores, final weights, final bias, final accumulators)."""
    inputs = [("grocery", range(1 + len(FEATURES)), [r["amount"]] + [r["features"][name] for name in FEATURES],
               r["is_fraud"]) for r in stream]
    scores, models = textbook_run(learner, 1 + len(FEATURES), inputs)
    model = models["grocery"]
    return scores, model.weights.tolist(), model.bias, {k: v.tolist() for k, v in model.accumulators.items()}


def reference_sgd(stream: list[dict]) -> tuple[list[float], list[float], float]:
    """The textbook sequential update: returns (scores in input order, final weights, final bias)."""
    weights = [0.0] * (1 + len(FEATURES))
    bias = 0.0
    scores = []
    for record in stream:
        x = [record["amount"]] + [record["features"][name] for name in FEATURES]
        p = 1 / (1 + math.exp(-(bias + sum(w * v for w, v in zip(weights, x)))))
        scores.append(p)
        if record["is_fraud"] is not None:
            error = p - record["is_fraud"]
            weights = [w - LEARNING_RATE * error * v for w, v in zip(weights, x)]
            bias -= LEARNING_RATE * error
    return scores, weights, bias


@pytest.mark.parametrize("parallelism, mode, python, optimizer", [
    (1, "throughput", "process", "sgd"), (2, "throughput", "process", "sgd"), (2, "low_latency", "process", "sgd"),
    (2, "throughput", "thread", "sgd"), (2, "throughput", "process", "adagrad"), (2, "throughput", "process", "ftrl"),
])
def test_scores_and_final_model_equal_sequential_reference(tmp_path, scoring_job, parallelism, mode, python,
                                                           optimizer):
    stream = exactness_stream(3000, seed=parallelism)
    settings, learner = OPTIMIZERS[optimizer]
    outputs = scoring_job(
        tmp_path, [json.dumps(r).encode() for r in stream],
        RAW_FEATURES_PROFILE, f"model.learning_rate={LEARNING_RATE}", "model.schedule=constant", "model.l2=0",
        f"flink.parallelism={parallelism}", "model.snapshot_every=1000", f"performance.mode={mode}",
        f"flink.python_execution_mode={python}", *settings,
    )
    if learner is None:
        expected_scores, expected_weights, expected_bias = reference_sgd(stream)
        expected_accumulators = {}
    else:
        expected_scores, expected_weights, expected_bias, expected_accumulators = reference_textbook(learner, stream)

    assert outputs.dead_letters == []
    scores = {s["txn_id"]: s for s in outputs.scores}
    assert len(outputs.scores) == len(stream) == len(scores)
    labelled_before = 0
    for record, expected in zip(stream, expected_scores):
        score = scores[record["txn_id"]]
        assert score["score"] == pytest.approx(expected, abs=1e-9), record["txn_id"]
        assert score["model_updates"] == labelled_before
        assert score["label"] == record["is_fraud"]
        labelled_before += record["is_fraud"] is not None

    # A snapshot every 1000 updates, and one more at the end of the input.
    assert sorted(s["model_updates"] for s in outputs.snapshots) == [
        *range(1000, labelled_before + 1, 1000), labelled_before]
    final = max(outputs.snapshots, key=lambda s: s["model_updates"])
    assert final["model_updates"] == labelled_before
    assert final["model_key"] == "grocery"
    assert list(final["weights"]) == ["amount", "a", "b", "c", "d"]
    assert list(final["weights"].values()) == pytest.approx(expected_weights, abs=1e-9)
    assert final["bias"] == pytest.approx(expected_bias, abs=1e-9)
    assert final["optimizer"] == optimizer
    assert list(final["accumulators"]) == list(expected_accumulators)
    for name, values in expected_accumulators.items():
        accumulator = final["accumulators"][name]
        assert [*accumulator["weights"].values(), accumulator["bias"]] == pytest.approx(values, rel=1e-9, abs=1e-9)


def test_out_of_order_and_late_records_are_all_learned_in_arrival_order(tmp_path, scoring_job):
    """Event times jump back and forth by up to a day; the models must still see each key's records
    in the order they were read, every one of them."""
    rng = random.Random(5)
    stream = exactness_stream(4000, seed=5)
    categories = ("grocery", "travel", "fuel", "gaming", "jewelry")
    for position, record in enumerate(stream):
        record["txn_id"] = f"seq-{position:06d}"  # the arrival position, checked below
        record["merchant_category"] = rng.choice(categories)
        record["event_time"] += rng.choice([0, 0, 0, -rng.randint(1, 86_400_000), rng.randint(1, 600_000)])
    outputs = scoring_job(
        tmp_path, [json.dumps(r).encode() for r in stream],
        RAW_FEATURES_PROFILE, f"model.learning_rate={LEARNING_RATE}", "performance.bundle_max_records=97",
    )

    assert outputs.dead_letters == []
    scores = {s["txn_id"]: s for s in outputs.scores}
    assert sorted(scores) == [r["txn_id"] for r in stream]
    for category in categories:
        keyed = [r for r in stream if r["merchant_category"] == category]
        expected_scores, expected_weights, expected_bias = reference_sgd(keyed)
        labelled_before = 0
        for record, expected in zip(keyed, expected_scores):
            score = scores[record["txn_id"]]
            assert score["model_updates"] == labelled_before, record["txn_id"]
            assert score["score"] == pytest.approx(expected, abs=1e-9), record["txn_id"]
            labelled_before += record["is_fraud"] is not None
        final = max((s for s in outputs.snapshots if s["model_key"] == category), key=lambda s: s["model_updates"])
        assert final["model_updates"] == labelled_before
        assert list(final["weights"].values()) == pytest.approx(expected_weights, abs=1e-9)
        assert final["bias"] == pytest.approx(expected_bias, abs=1e-9)


def test_a_shard_of_thousands_of_keys_writes_one_final_snapshot_per_key(tmp_path, scoring_job):
    # One shard holding thousands of keys: its end-of-input snapshots leave in several bundles
    # (streaming/job/, FINAL_SNAPSHOTS_PER_BUNDLE), and none may be lost or repeated.
    lines = list(generate(GeneratorSettings(records=8000, seed=44, accounts=3000)))
    outputs = scoring_job(tmp_path, lines, "model.key=account_id", "performance.shards=1",
                          "model.snapshot_every=1000000")
    keys = {score["model_key"] for score in outputs.scores}
    assert len(keys) > FINAL_SNAPSHOTS_PER_BUNDLE * 2
    assert sorted(s["model_key"] for s in outputs.snapshots) == sorted(keys)
    learned = {}
    for score in outputs.scores:
        learned[score["model_key"]] = learned.get(score["model_key"], 0) + (score["label"] is not None)
    assert {s["model_key"]: s["model_updates"] for s in outputs.snapshots} == learned
