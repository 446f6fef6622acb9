"""Through the real job (file sources), labels that arrive on their own stream, 1 to 5 minutes of
event time after their transactions: every label's outcome equals the one worked out from the
inputs alone, every applied label comes after its transaction's score, and a sequential reference
that takes only the interleaving from the outputs reproduces every score and final model."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from streaming.config import load_settings
from streaming.reporting.outputs import committed_lines
from tests.reference.textbook import TextbookFtrl
from udfs.cleaning import Rejected
from udfs.drift import DriftSettings, PageHinkleyParameters, drift_loss, make_detector
from udfs.label_generator import LabelStreamSettings, generate_labels
from udfs.labels import read_label

PROJECT = Path(__file__).resolve().parents[2]
START = 1_767_225_600_000
MINUTE = 60_000
TTL_MS = 4 * MINUTE
FEATURES = ("a", "b", "c")
STANDARDIZED = (0, 2)  # amount and b
LEARNING_RATE = 0.05
PROFILE = [
    "features={numeric: [{field: amount, standardize: true}, {field: features.a}, {field: features.b, standardize: true},"
    " {field: features.c}], categorical: [], time: {hour_of_day: none, day_of_week: none}}",
    f"model.learning_rate={LEARNING_RATE}", "model.schedule=constant", "model.l2=0", "model.snapshot_every=100000",
    f"labels.ttl_ms={TTL_MS}", f"labels.remember_ms={30 * MINUTE}", f"labels.unknown_wait_ms={10 * MINUTE}",
]
# Drift detection that reports (the models stay as without it) and fires often on these keys, so
# that the label stream's path to the detectors is checked by the same runs.
DRIFT = DriftSettings("page_hinkley", PageHinkleyParameters(min_instances=20, threshold=3.0))
DRIFT_PROFILE = ["model.drift={detector: page_hinkley, page_hinkley: {min_instances: 20, threshold: 3.0}}",
                 "model.on_drift=report"]
KEYS = ("grocery", "travel", "fuel")


def transactions(records: int, seed: int) -> list[dict]:
    """Three keys, a second apart, bounded features, labels from a fixed logistic rule."""
    rng = random.Random(seed)
    stream = []
    for i in range(records):
        x = {name: rng.uniform(-1, 1) for name in FEATURES}
        amount = rng.uniform(0, 50)
        truth = 1 / (1 + math.exp(-(2 * x["a"] - 3 * x["c"] + 0.04 * amount - 1)))
        stream.append({
            "txn_id": f"l-{i:05d}", "event_time": START + 1000 * i, "account_id": f"acct-{i % 13}",
            "merchant_category": rng.choice(KEYS), "country": "US", "channel": "web", "amount": amount,
            "features": x, "is_fraud": int(rng.random() < truth),
        })
    return stream


def run(tmp_path: Path, stream: list[dict], label_lines: list[bytes], mode: str, parallelism: int, *overrides: str):
    from streaming.job.run import run_job

    (tmp_path / "tx.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in stream))
    (tmp_path / "labels.jsonl").write_bytes(b"".join(line + b"\n" for line in label_lines))
    settings = load_settings(PROJECT / "conf" / "local.yaml", [
        f"source.paths=[{json.dumps(str(tmp_path / 'tx.jsonl'))}]", f"output.path={tmp_path / 'out'}",
        f"checkpointing.directory={tmp_path / 'checkpoints'}", f"flink.parallelism={parallelism}",
        f"labels.mode={mode}", f"labels.source={{kind: files, paths: [{json.dumps(str(tmp_path / 'labels.jsonl'))}]}}",
        *PROFILE, *overrides,
    ])
    job_run = run_job(settings)
    out = tmp_path / "out"
    return job_run, {name: list(committed_lines(out / name)) for name in
                     ("scores", "dead-letters", "model-snapshots", "learning", "label-dead-letters", "drift")}


def expected_outcomes(stream: list[dict], labels: list, mode: str) -> list[str]:
    """Each readable label's outcome from the inputs alone, in label-stream order: unknown without
    such a transaction; expired more than the TTL after it; else the first is applied (in mode
    both, the transaction's own label comes first) and the others are duplicate or contradicting."""
    event_time = {r["txn_id"]: r["event_time"] for r in stream}
    applied = {r["txn_id"]: r["is_fraud"] for r in stream if r["is_fraud"] is not None} if mode == "both" else {}
    outcomes = []
    for label in labels:
        if label.txn_id not in event_time:
            outcomes.append("unknown")
        elif label.label_time - event_time[label.txn_id] > TTL_MS:
            outcomes.append("expired")
        elif label.txn_id not in applied:
            applied[label.txn_id] = label.is_fraud
            outcomes.append("applied")
        else:
            outcomes.append("duplicate" if applied[label.txn_id] == label.is_fraud else "contradicting")
    return outcomes


class Reference:
    """One key's textbook model: running standardization (Welford) of the STANDARDIZED inputs, then
    plain SGD on the standardized vector (or, given a textbook learner of tests/reference/textbook.py,
    its optimizer); a label that comes later steps on the vector as scored, rounded to float32 as
    the feature log keeps it."""

    def __init__(self, learner=None):
        self.count, self.mean, self.m2 = 0, [0.0] * len(STANDARDIZED), [0.0] * len(STANDARDIZED)
        self.weights, self.bias, self.updates = [0.0] * (1 + len(FEATURES)), 0.0, 0
        self.learner = learner
        self.textbook = learner.new() if learner is not None else None

    def standardize(self, record: dict) -> list[float]:
        x = [record["amount"]] + [record["features"][name] for name in FEATURES]
        self.count += 1
        for j, i in enumerate(STANDARDIZED):
            delta = x[i] - self.mean[j]
            self.mean[j] += delta / self.count
            self.m2[j] += delta * (x[i] - self.mean[j])
            variance = self.m2[j] / self.count
            std = math.sqrt(variance) if self.count > 1 and variance > 0 else 1.0
            x[i] = (x[i] - self.mean[j]) / std
        return x

    def probability(self, x: list[float]) -> float:
        if self.learner is not None:
            return self.learner.score(self.textbook, np.array(x))
        return 1 / (1 + math.exp(-(self.bias + sum(w * v for w, v in zip(self.weights, x)))))

    def learn(self, x: list[float], label: int) -> None:
        if self.learner is not None:
            self.learner.learn(self.textbook, np.array(x), np.ones(len(x)), label, self.probability(x))
            self.weights, self.bias, self.updates = self.textbook.weights.tolist(), self.textbook.bias, self.updates + 1
            return
        error = self.probability(x) - label
        self.weights = [w - LEARNING_RATE * error * v for w, v in zip(self.weights, x)]
        self.bias -= LEARNING_RATE * error
        self.updates += 1


# The optimizer runs: settings, and the textbook learner of the reference (None: plain SGD).
OPTIMIZERS = {
    "sgd": ([], None),
    "ftrl": (["model.optimizer=ftrl", "model.ftrl={alpha: 0.3, beta: 1.0, l1: 0.02, l2: 0.2}",
              "model.initial_bias=-0.5"], TextbookFtrl(1 + len(FEATURES), 0.3, 1.0, 0.02, 0.2, initial_bias=-0.5)),
}


@pytest.mark.parametrize("mode, parallelism, optimizer", [("stream", 2, "sgd"), ("both", 1, "sgd"), ("stream", 2, "ftrl")])
def test_labels_from_their_own_stream_are_learned_once_each_as_the_inputs_say(tmp_path, mode, parallelism, optimizer):
    stream = transactions(3000, seed=parallelism)
    truth = [json.dumps(r).encode() for r in stream]  # the label stream tells each transaction's truth
    if mode == "both":  # a third carry no label of their own, so that some stream labels are first
        stream = [{**r, "is_fraud": None} if n % 3 == 0 else r for n, r in enumerate(stream)]
    label_lines = list(generate_labels(truth, LabelStreamSettings(
        seed=parallelism, min_delay_ms=MINUTE, max_delay_ms=5 * MINUTE, never_share=0.05, duplicate_share=0.05,
        contradicting_share=0.05, unknown_share=0.03, malformed_share=0.02)))
    settings, learner = OPTIMIZERS[optimizer]
    job_run, out = run(tmp_path, stream, label_lines, mode, parallelism, *settings, *DRIFT_PROFILE)

    assert job_run.records_read == len(stream)
    assert_labels_learned_as_the_inputs_say(stream, label_lines, out, mode, learner)
    assert_drift_as_the_learning_order_says(stream, out, mode)
    assert {snapshot["optimizer"] for snapshot in out["model-snapshots"]} == {optimizer}


def assert_labels_learned_as_the_inputs_say(stream: list[dict], label_lines: list[bytes], out: dict[str, list[dict]],
                                            mode: str, learner=None) -> None:
    """The checks of the module's docstring on a run's committed outputs (`out`: each output's lines);
    `learner`: the textbook optimizer of the run (None: plain SGD)."""
    assert_outcomes_as_the_inputs_say(stream, label_lines, out, mode)

    # Each applied label after its transaction's score, and the models as a sequential reference
    # replays them, taking from the outputs only the order of scores and label steps per key.
    scores = {score["txn_id"]: score for score in out["scores"]}
    records = {r["txn_id"]: r for r in stream}
    steps = defaultdict(list)
    for line in out["learning"]:
        assert line["model_updates"] > scores[line["txn_id"]]["model_updates"]
        assert not line["update_rejected"]
        steps[line["model_key"]].append(line)
    inline = mode == "both"
    for key in KEYS:
        events = [((scores[r["txn_id"]]["model_updates"], 0, n), r) for n, r in enumerate(stream)
                  if r["merchant_category"] == key]
        events += [((line["model_updates"] - 1, 1, line["model_updates"]), line) for line in steps[key]]
        model, scored = Reference(learner), {}
        for (_, kind, _), event in sorted(events, key=lambda e: e[0]):
            if kind == 0:
                x = scored[event["txn_id"]] = model.standardize(event)
                assert scores[event["txn_id"]]["score"] == pytest.approx(model.probability(x), rel=1e-9, abs=1e-12)
                assert scores[event["txn_id"]]["model_updates"] == model.updates
                if inline and event["is_fraud"] is not None:
                    model.learn(x, event["is_fraud"])
            else:  # on the vector as logged: float32 values (udfs.feature_log)
                model.learn([float(np.float32(v)) for v in scored[event["txn_id"]]], event["label"])
                assert event["model_updates"] == model.updates
                assert event["txn_id"] in records
        final = max((s for s in out["model-snapshots"] if s["model_key"] == key), key=lambda s: s["model_updates"])
        assert final["model_updates"] == model.updates
        assert list(final["weights"].values()) == pytest.approx(model.weights, rel=1e-9, abs=1e-12)
        assert final["bias"] == pytest.approx(model.bias, rel=1e-9, abs=1e-12)


def assert_drift_as_the_learning_order_says(stream: list[dict], out: dict[str, list[dict]], mode: str) -> None:
    """The drift events equal udfs/drift.py's detectors fed, key by key in the order the models
    learned (each step raises the key's update count by one), the loss of each learned record's
    score: inline labels (mode both) at their score, stream labels at their learning line."""
    scores = {score["txn_id"]: score for score in out["scores"]}
    steps = [(r["merchant_category"], scores[r["txn_id"]]["model_updates"] + 1, r["txn_id"], r["is_fraud"])
             for r in stream if mode == "both" and r["is_fraud"] is not None]
    steps += [(line["model_key"], line["model_updates"], line["txn_id"], line["label"]) for line in out["learning"]]
    detectors, expected = {}, []
    for key, updates, txn_id, label in sorted(steps):
        loss = drift_loss(scores[txn_id]["score"], label)
        detector = detectors.setdefault(key, make_detector(DRIFT))
        if detector.update(loss):
            expected.append((key, updates - 1, txn_id, loss, detector.statistics()))
    # With inline labels (mode both) the models learn as the records are scored, so the losses and
    # their detections follow from the inputs: at least 3 here. From the label stream alone they
    # depend on when each label arrives relative to the records scored after it (the two sources
    # run at their own pace): this run with threshold 3 gave 4 here and none in a CI run, so
    # there the events need only equal the reference's, however many.
    if mode == "both":
        assert len(expected) >= 3
    got = sorted((e["model_key"], e["model_updates"], e["txn_id"], e["loss"], e["statistics"]) for e in out["drift"])
    assert got == expected


def read_label_or_none(line: bytes):
    """The label on `line`, or None when the job dead-letters it as unreadable."""
    try:
        return read_label(line, 65_536)
    except Rejected:
        return None


def assert_outcomes_as_the_inputs_say(stream: list[dict], label_lines: list[bytes], out: dict[str, list[dict]],
                                      mode: str) -> None:
    """Every transaction scored once and every label accounted for in `out` (each output's committed
    lines), each with the outcome the inputs alone say."""
    readable, unreadable = [], 0
    for line in label_lines:
        try:
            readable.append(read_label(line, 65_536))
        except Rejected:
            unreadable += 1

    # Transactions as before: every one scored once; labels: every one accounted for.
    assert len(stream) == len(out["scores"]) and out["dead-letters"] == []
    assert len(label_lines) == len(out["learning"]) + len(out["label-dead-letters"])
    unreadable_stages = Counter(letter["stage"] for letter in out["label-dead-letters"] if letter["stage"] != "label")
    assert sum(unreadable_stages.values()) == unreadable > 0
    assert set(unreadable_stages) <= {"label-decode", "label-parse", "label-clean"}

    # Each label's outcome as the inputs say.
    got = {}
    for line in out["learning"]:
        got[(line["txn_id"], line["label_time"], line["label"])] = "applied"
    for letter in out["label-dead-letters"]:
        if letter["stage"] == "label":
            raw = json.loads(letter["raw"])
            got[(raw["txn_id"], raw["label_time"], raw["is_fraud"])] = letter["outcome"]
            assert letter["reason"].startswith(letter["outcome"] + ":")
    expected = expected_outcomes(stream, readable, mode)
    assert {(label.txn_id, label.label_time, label.is_fraud): outcome
            for label, outcome in zip(readable, expected)} == got
    assert {"applied", "duplicate", "contradicting", "expired", "unknown"} <= set(expected)


def test_run_prints_the_label_figures_of_a_label_stream(tmp_path):
    from tests.cli import riskstream
    from udfs.generator import GeneratorSettings, generate

    stream = list(generate(GeneratorSettings(records=400, seed=6)))  # the local profile's features
    label_lines = list(generate_labels(stream, LabelStreamSettings(
        seed=6, min_delay_ms=MINUTE, max_delay_ms=5 * MINUTE, malformed_share=0.05)))
    (tmp_path / "tx.jsonl").write_bytes(b"".join(line + b"\n" for line in stream))
    (tmp_path / "labels.jsonl").write_bytes(b"".join(line + b"\n" for line in label_lines))
    profile = tmp_path / "labels.yaml"
    profile.write_text(f"extends: {PROJECT / 'conf' / 'local.yaml'}\nsource: {{paths: [tx.jsonl]}}\n"
                       "output: {path: out}\nlabels: {mode: stream, source: {paths: [labels.jsonl]}, ttl_ms: 240000}\n")
    done = riskstream("run", "--config", str(profile), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    applied = sum(1 for _ in committed_lines(tmp_path / "out" / "learning"))
    letters = Counter(letter.get("outcome") or letter["stage"]
                      for letter in committed_lines(tmp_path / "out" / "label-dead-letters"))
    figures = {" ".join(line.split()[:2]): line for line in done.stdout.splitlines() if line.startswith("labels")}
    assert "labels read" in figures, done.stdout
    assert figures["labels read"].split()[2] == f"{len(label_lines):,}"
    assert figures["labels applied"].split()[2] == f"{applied:,}"
    assert figures["labels dead-lettered"].split()[2] == f"{sum(letters.values()):,}"
    assert figures["labels pending"].split()[2] == "0"
    assert applied + sum(letters.values()) == len(label_lines) and letters["expired"] > 0


def kafka_inputs(records: int, seed: int) -> tuple[list[dict], list[bytes]]:
    """`records` transactions and their label stream (1 to 5 minutes late; some never labelled,
    repeated, contradicted, of unknown transactions or malformed) for the Kafka runs."""
    stream = transactions(records, seed=seed)
    label_lines = list(generate_labels([json.dumps(r).encode() for r in stream], LabelStreamSettings(
        seed=seed, min_delay_ms=MINUTE, max_delay_ms=5 * MINUTE, never_share=0.05, duplicate_share=0.05,
        contradicting_share=0.05, unknown_share=0.03, malformed_share=0.02)))
    return stream, label_lines


def produce_inputs(settings, stream: list[dict], label_lines: list[bytes]) -> None:
    """Creates the profile's topics and produces the transactions (keyed by model key) and the labels
    (keyed by txn_id) into them."""
    from streaming.ops import kafka_tools

    kafka_tools.create_topics(settings)
    assert kafka_tools.produce(settings, [json.dumps(r).encode() for r in stream], key_field="merchant_category") == len(stream)
    assert kafka_tools.produce(settings, label_lines, key_field="txn_id", topic=settings.kafka.labels_topic) == len(label_lines)


def committed_outputs(settings) -> dict[str, list[dict]]:
    """What a read_committed consumer finds in the job's output topics, by output name."""
    from streaming.ops import kafka_tools

    kafka = settings.kafka
    return {name: [json.loads(value) for _, _, _, value in kafka_tools.tail(settings, topic, idle_timeout_s=8,
                                                                            until_end=True)]
            for name, topic in (("scores", kafka.scores_topic), ("dead-letters", kafka.dead_letters_topic),
                                ("model-snapshots", kafka.snapshots_topic), ("learning", kafka.learning_topic),
                                ("label-dead-letters", kafka.label_dead_letters_topic))}


def test_labels_from_a_kafka_topic_are_learned_once_each_as_the_inputs_say(tmp_path, kafka_isolation):
    """The same through Kafka: transactions keyed by model key, labels keyed by txn_id on the labels
    topic, a bounded run with exactly-once outputs."""
    from streaming.job.run import run_job

    stream, label_lines = kafka_inputs(3000, seed=8)
    settings = load_settings(PROJECT / "conf" / "kafka.yaml", [
        *kafka_isolation, "kafka.bounded=true", f"checkpointing.directory={tmp_path / 'checkpoints'}",
        "checkpointing.interval_ms=1000", "labels.mode=stream", "labels.source={kind: kafka}", *PROFILE])
    produce_inputs(settings, stream, label_lines)

    job_run = run_job(settings)

    out = committed_outputs(settings)
    assert job_run.records_read == len(stream) and job_run.labels_read == len(label_lines)
    assert_labels_learned_as_the_inputs_say(stream, label_lines, out, "stream")


# The kills' pace: up to 5 kills (the drill's 3 points and its 2 retries), each using up to 3,000
# transactions while the tasks start, the 100 the drill waits for, and 4 s at the source's ceiling
# (streaming/ops/drill.py, "Pacing"): at 800 per second in each of the 2 source subtasks, 47,500 of
# the 50,000 here (the drill checks it before it starts). Keyed by merchant category, one partition
# holds about 33,000 of them: about 42 s at its subtask's ceiling.
KILLS_RECORDS = 50_000
KILLS_RECORDS_PER_SECOND = 800
KILLS_MIN_ATTEMPT_RECORDS = 100


def test_taskmanagers_killed_mid_run_lose_and_repeat_no_label(session_cluster, kafka_isolation, tmp_path):
    """On the session cluster, Kafka exactly-once, the TaskManager killed at the drill's three
    points (streaming/ops/drill.py): the committed learning log and label dead letters hold every
    label once, with the outcome the inputs say (so a label whose transaction was scored before a
    kill is applied, never unknown), and the models equal the reference replayed in the committed
    log's order."""
    from streaming.ops import drill as failover_drill

    stream, label_lines = kafka_inputs(KILLS_RECORDS, seed=9)
    overrides = [*kafka_isolation, *failover_drill.drill_overrides(tmp_path, KILLS_RECORDS_PER_SECOND),
                 "labels.mode=stream", "labels.source={kind: kafka}", *PROFILE,
                 # No transactions split goes idle (as in the analytics tests): at this ceiling a source
                 # subtask works through one partition's fetch (up to 1 MiB) for longer than the default
                 # 10 s, and a split idle meanwhile lets the watermark pass transactions that are still
                 # to come, whose labels, read long before, are then declared unknown.
                 "event_time.transactions.idleness_ms=600000",
                 # Analytics off, as when this drill's input was sized: their exchange before the
                 # bundler holds thousands more records, which the source reads while the tasks of
                 # each attempt start, beyond the drill's STARTUP_RECORDS (seen: the input ran out
                 # before the third kill). The three-point kill with analytics on is test_failover's.
                 "analytics.enabled=false"]
    settings = load_settings(failover_drill.CLUSTER_PROFILE, overrides)
    produce_inputs(settings, stream, label_lines)
    try:
        run = failover_drill.run_with_kills(session_cluster.cluster, overrides,
                                            min_attempt_records=KILLS_MIN_ATTEMPT_RECORDS,
                                            taskmanager_overrides=session_cluster.overrides, input_records=len(stream))
    finally:
        session_cluster.cancel_jobs()
    for point in failover_drill.KILL_POINTS:  # run_with_kills fails unless Flink confirms each
        assert run.confirmed_kill(point).restored is not None

    out = committed_outputs(settings)
    learned = [(line["txn_id"], line["label_time"]) for line in out["learning"]]
    assert len(learned) == len(set(learned)), "a label was learned twice"
    assert_labels_learned_as_the_inputs_say(stream, label_lines, out, "stream")


def test_a_label_stream_rescaled_from_2_to_4_and_back_to_2_loses_and_repeats_no_label(
        session_cluster, second_taskmanager, kafka_isolation, tmp_path):
    """Issue 29, with labels from their own stream: on two TaskManagers, stopped with a savepoint at
    parallelism 2, resumed at 4, stopped again and resumed at 2 (feature logs, routes, held labels
    and models move with their key groups): every label once, with the outcome the inputs say, and
    every score and final model the reference's replayed in the committed learning log's order."""
    from streaming.ops import drill as failover_drill
    from tests.savepoints import resume_until_all_scored, stop_after

    stream, label_lines = kafka_inputs(6000, seed=10)
    overrides = [*kafka_isolation, *failover_drill.drill_overrides(tmp_path), "labels.mode=stream",
                 "labels.source={kind: kafka}", *PROFILE,
                 # As in the kill drill above: no transactions split goes idle while the job is paced.
                 "event_time.transactions.idleness_ms=600000"]
    settings = load_settings(failover_drill.CLUSTER_PROFILE, overrides)
    produce_inputs(settings, stream, label_lines)
    local = session_cluster.cluster
    try:
        paced = [*overrides, "source.max_records_per_second=50"]
        first = stop_after(local, settings, paced, None, 1500)
        second = stop_after(local, settings, [*paced, "flink.parallelism=4"], first, 1500)
        resume_until_all_scored(local, settings, overrides, second, len(stream), labels_quiet_s=5)
    finally:
        session_cluster.cancel_jobs()

    out = committed_outputs(settings)
    learned = [(line["txn_id"], line["label_time"]) for line in out["learning"]]
    assert len(learned) == len(set(learned)), "a label was learned twice"
    assert_labels_learned_as_the_inputs_say(stream, label_lines, out, "stream")


def test_no_feature_log_is_left_once_event_time_is_past_every_ttl(session_cluster, tmp_path, capsys):
    """State is bounded: on the session cluster, watched folders, the transactions (2.5 minutes of
    event time, all within one TTL) are all logged; once labels' event time is past the last
    transaction's time plus the TTL, while the transactions' folder stays quiet, the gauge
    feature_log_records is 0 and every label is accounted for in the outputs."""
    from streaming.ops import local_cluster, rest
    from tests.integration.conftest import LOCAL_PROFILE
    from tests.integration.test_job_metrics import drop, status

    stream = [{**r, "event_time": START + 100 * n} for n, r in enumerate(transactions(1500, seed=12))]
    label_lines = list(generate_labels([json.dumps(r).encode() for r in stream], LabelStreamSettings(
        seed=12, min_delay_ms=MINUTE, max_delay_ms=5 * MINUTE, never_share=0.2, duplicate_share=0.05,
        contradicting_share=0.05, unknown_share=0.03, malformed_share=0.02)))
    # The last label: an hour past the last transaction plus the TTL (expired, as the inputs say).
    last = stream[-1]
    label_lines.append(json.dumps({"txn_id": last["txn_id"], "is_fraud": last["is_fraud"],
                                   "label_time": last["event_time"] + TTL_MS + 60 * MINUTE}).encode())
    transactions_in, labels_in, output = tmp_path / "transactions", tmp_path / "labels", tmp_path / "out"
    transactions_in.mkdir()
    labels_in.mkdir()
    rest_url = session_cluster.cluster.rest_url
    rest_address = rest_url.removeprefix("http://")
    overrides = ["source.kind=directory", f"source.directory={transactions_in}", "source.discovery_interval_ms=200",
                 f"output.path={output}", f"checkpointing.directory={tmp_path / 'checkpoints'}",
                 "checkpointing.interval_ms=500", f"flink.rest_address={rest_address}", "labels.mode=stream",
                 f"labels.source={{kind: directory, directory: {json.dumps(str(labels_in))}, discovery_interval_ms: 200}}",
                 "event_time.transactions.idleness_ms=1000", "event_time.labels.idleness_ms=1000", *PROFILE]

    def figures_when(done, seconds: float) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            figures = status(rest_address, job_id, capsys)["metrics"]
            if done(figures) or time.monotonic() > deadline:
                return figures
            time.sleep(0.5)

    job_id = local_cluster.submit(session_cluster.cluster, local_cluster.submit_command(LOCAL_PROFILE, rest_address, overrides))
    try:
        drop(transactions_in, "transactions.jsonl", [json.dumps(r).encode() for r in stream])
        logged = figures_when(lambda f: f.get("feature_log_records") == len(stream), 120)
        # Time for the quiet transactions' side to send its last watermark and go idle (1-3 s at an
        # idleness of 1 s): still nothing expired, all within one TTL.
        time.sleep(3)
        still_logged = figures_when(lambda f: True, 0)
        drop(labels_in, "labels.jsonl", label_lines)
        emptied = figures_when(lambda f: f.get("feature_log_records") == 0 and f.get("labels_read") == len(label_lines), 120)
        final = figures_when(lambda f: sum(1 for _ in committed_lines(output / "learning"))
                                 + sum(1 for _ in committed_lines(output / "label-dead-letters")) == len(label_lines), 60)
        state = status(rest_address, job_id, capsys)["state"]
    finally:
        rest.cancel(rest_url, job_id)

    assert state == "RUNNING"
    assert logged["feature_log_records"] == still_logged["feature_log_records"] == len(stream), (logged, still_logged)
    assert emptied["feature_log_records"] == 0, emptied
    out = {name: list(committed_lines(output / name)) for name in
           ("scores", "dead-letters", "model-snapshots", "learning", "label-dead-letters")}
    assert_outcomes_as_the_inputs_say(stream, label_lines, out, "stream")
    # A transaction whose label never came is counted once, when its route is forgotten.
    labelled = {label.txn_id for label in map(read_label_or_none, label_lines) if label is not None}
    assert final.get("unlabelled_transactions") == sum(r["txn_id"] not in labelled for r in stream) > 0, final
