"""Savepoints keep restoring (issue 25, "What must hold"): a savepoint taken by commit c926163 of the
Kafka-sourced job (tests/fixtures/savepoints/c926163-kafka-sgd, made by make_fixture.py there)
restores from any folder and continues where it stopped; and a run stopped with a savepoint at
parallelism 2, resumed at 4, stopped again and resumed at 2 on two TaskManagers is one
uninterrupted run (issue 29). Both on the local session cluster against the real broker, with plain
SGD, so that every score and final model can be compared with the sequential reference over the
whole input (tests/savepoints.py): a model that did not start from the restored state differs. And
the same c926163 savepoint (model state version 2, plain SGD) resumed with `model.optimizer: adagrad`:
each restored model continues from its weights with AdaGrad's accumulators at zero (state version
3's migration, docs/design.md "The model"), and with drift detection turned on in report mode,
whose keyed state (`drift`) the savepoint does not have: its keys start with fresh detectors.

A change to operator uids or state formats must keep these passing, or ship a tested migration.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from streaming.config import load_settings
from streaming.ops import drill as failover_drill
from streaming.ops import kafka_tools, rest
from streaming.reporting.outputs import latest_snapshots
from tests.analytics_reference import analytics_overrides, assert_committed_analytics_as_the_reference
from tests.reference.textbook import TextbookAdaGrad, TextbookModel
from tests.savepoints import (
    FEATURES,
    FIXTURES,
    Fixture,
    layout_digest,
    partition_layout,
    recreate_topics,
    reference_models,
    resume_until_all_scored,
    state_overrides,
    stop_after,
)

FIXTURE = FIXTURES / "c926163-kafka-sgd"


@pytest.fixture
def fixture(tmp_path) -> Fixture:
    """The fixture, copied into this test's folder: a savepoint must restore from any folder."""
    shutil.copytree(FIXTURE, tmp_path / FIXTURE.name)
    return Fixture.load(tmp_path / FIXTURE.name)


@pytest.fixture
def fixture_topics(session_cluster, fixture, tmp_path):
    """The fixture job's settings and overrides, on its own topics (their names are in the
    savepoint), deleted and created afresh, with the fixture's input produced into them as it was
    when the savepoint was taken: each record at the partition and offset it had then."""
    overrides = fixture.overrides(tmp_path / "state")
    settings = load_settings(fixture.profile, overrides)
    recreate_topics(settings)
    lines = fixture.lines()
    assert kafka_tools.produce(settings, lines, total=len(lines), key_field=settings.model.key) == len(lines)
    layout = partition_layout(settings, len(lines))
    expected = fixture.manifest["input"]["partitions"]
    assert {str(partition): {"records": len(txn_ids), "txn_ids_sha256": layout_digest(txn_ids)}
            for partition, txn_ids in layout.items()} == expected, \
        "the records are not where the fixture's source state expects them (has the producer's partitioner changed?)"
    yield settings, overrides, lines, layout
    session_cluster.cancel_jobs()  # a failed test must not leave its job holding the slots
    kafka_tools.delete_topics(settings)


def assert_scores_and_models_equal_reference(committed: failover_drill.Committed, lines: list[bytes],
                                             settings, scored: set[str], redelivered: list[bytes] = ()) -> None:
    """Exactly the records `scored` were scored, each once, with the sequential reference's score
    (over the whole input, before and after any savepoint), and every model key's final snapshot
    is the reference's final model, to 1e-9; the `redelivered` copies of earlier lines (within
    dedup.horizon_ms) were dead-lettered as redeliveries, each once, and changed no model."""
    assert committed.scores, "nothing was scored"
    assert (settings.model.schedule, settings.model.l2) == ("constant", 0), "the reference is plain SGD"
    reference_scores, reference = reference_models(lines, settings.model.learning_rate)
    txn_ids = [score["txn_id"] for _, score in committed.scores]
    assert len(txn_ids) == len(set(txn_ids)), "a record was scored twice"
    assert set(txn_ids) == scored, (f"{len(scored - set(txn_ids))} records were never scored, "
                                    f"{len(set(txn_ids) - scored)} were scored that should not have been")
    assert sorted((letter["stage"], letter["txn_id"]) for _, letter in committed.dead_letters) == sorted(
        ("dedup", json.loads(line)["txn_id"]) for line in redelivered)
    for key, score in committed.scores:
        expected_score, updates_before = reference_scores[score["txn_id"]]
        assert key.decode() == score["model_key"]
        assert score["model_updates"] == updates_before, score
        assert score["score"] == pytest.approx(expected_score, abs=1e-9), score

    models = latest_snapshots(committed.snapshots)
    assert models.keys() == reference.keys()
    for key, model in models.items():
        expected = reference[key]
        assert model["model_updates"] == expected.updates, key
        assert list(model["weights"]) == list(FEATURES)
        assert list(model["weights"].values()) == pytest.approx(expected.weights, abs=1e-9), key
        assert model["bias"] == pytest.approx(expected.bias, abs=1e-9), key


def split_at_the_savepoint(fixture: Fixture, lines: list[bytes], layout: dict[int, list[str]]
                           ) -> tuple[set[str], set[str]]:
    """The txn_ids of `lines` before the fixture savepoint's source offsets (each partition's first
    records in `layout`, partition -> txn_ids in offset order) and those after them; both non-empty."""
    offsets = fixture.source_offsets()
    before = {txn_id for partition, txn_ids in layout.items() for txn_id in txn_ids[:offsets[partition]]}
    after = {json.loads(line)["txn_id"] for line in lines} - before
    assert before and after, offsets
    return before, after


def test_the_c926163_savepoint_restores_from_another_folder_and_continues(session_cluster, fixture, fixture_topics):
    settings, overrides, lines, layout = fixture_topics
    assert fixture.manifest["commit"].startswith("c926163")
    assert {str(path.relative_to(fixture.savepoint)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in fixture.savepoint.rglob("*") if path.is_file()} == fixture.manifest["savepoint"]["files"]
    before, after = split_at_the_savepoint(fixture, lines, layout)

    local = session_cluster.cluster
    job_id, committed = resume_until_all_scored(local, settings, overrides, str(fixture.savepoint), len(after))

    restored = rest.rest(local.rest_url, "GET", f"/jobs/{job_id}/checkpoints")["latest"]["restored"]
    assert restored["is_savepoint"] and restored["external_path"].removeprefix("file:") == str(fixture.savepoint)
    # Each record after the savepoint's source offsets scored once, none before them again; the
    # scores and the final models (every key's, also one whose records all came before the
    # savepoint) as the sequential reference over all records gives them: the restored models
    # were used.
    assert_scores_and_models_equal_reference(committed, lines, settings, after)


def test_a_drain_after_a_quiet_spell_writes_every_final_snapshot(session_cluster, kafka_isolation, tmp_path):
    """Analytics on (as the Kafka profile ships), so the source marks its splits idle after
    event_time.transactions.idleness_ms without a record: a stop with --drain after such a quiet
    spell still passes the end of input through to the scoring operator, which writes every model's
    final snapshot. Flink 2.2 drops that end-of-input watermark in an idle source's own chain
    (FLINK-40499); the operator chained after the source emits it (docs/analytics.md)."""
    fixture = Fixture.load(FIXTURE)
    overrides = [*fixture.manifest["job"]["overrides"], *kafka_isolation, *state_overrides(tmp_path),
                 "event_time.transactions.idleness_ms=500"]
    settings = load_settings(fixture.profile, overrides)
    assert settings.analytics.enabled
    kafka_tools.create_topics(settings)
    lines = fixture.lines()
    assert kafka_tools.produce(settings, lines, total=len(lines), key_field=settings.model.key) == len(lines)
    # Every score committed (a checkpoint after the last record), then 2 s more: four idleness periods.
    _, committed = resume_until_all_scored(session_cluster.cluster, settings, overrides, None, len(lines), quiet_s=2)
    assert_scores_and_models_equal_reference(committed, lines, settings, {json.loads(line)["txn_id"] for line in lines})


def reference_turning_to_adagrad(lines: list[bytes], learning_rate: float, before: set[str]
                                 ) -> tuple[dict[str, tuple[float, int]], dict[str, TextbookModel]]:
    """Per model key, the textbook sequential SGD over the records in `before` (those the savepoint
    had learned from), then the textbook AdaGrad at the same rate from the weights and bias SGD left,
    with G = 0, over the others. Returns (txn_id -> (score, updates before it)) and (model key ->
    final model, every one with its AdaGrad accumulator, zeros where it never stepped)."""
    n = len(FEATURES)
    adagrad = TextbookAdaGrad(n, learning_rate)
    scores: dict[str, tuple[float, int]] = {}
    models: dict[str, TextbookModel] = {}
    for line in lines:
        record = json.loads(line)
        model = models.setdefault(record["merchant_category"], TextbookModel(np.zeros(n), 0.0))
        if record["txn_id"] not in before and not model.accumulators:
            model.accumulators = {"g2": np.zeros(n + 1)}  # the restored model turns to AdaGrad here
        x = np.array([record["amount"]] + [record["features"][name] for name in FEATURES[1:]])
        p = adagrad.score(model, x)
        scores[record["txn_id"]] = (p, model.updates)
        if record["is_fraud"] is None:
            continue
        if model.accumulators:
            adagrad.learn(model, x, np.ones(n), record["is_fraud"], p)
        else:
            error = p - record["is_fraud"]
            model.weights = model.weights - learning_rate * error * x
            model.bias -= learning_rate * error
            model.updates += 1
    for model in models.values():
        model.accumulators = model.accumulators or {"g2": np.zeros(n + 1)}
    return scores, models


def test_the_c926163_sgd_savepoint_resumes_with_adagrad(session_cluster, fixture, fixture_topics):
    settings, overrides, lines, layout = fixture_topics
    before, after = split_at_the_savepoint(fixture, lines, layout)
    # Drift detection reports only, so the models are as without it; its state is new to the savepoint.
    adagrad = [*overrides, "model.optimizer=adagrad", "model.drift={detector: adwin}", "model.on_drift=report"]
    settings = load_settings(fixture.profile, adagrad)
    assert (settings.model.optimizer, settings.model.l2) == ("adagrad", 0)

    _, committed = resume_until_all_scored(session_cluster.cluster, settings, adagrad, str(fixture.savepoint),
                                           len(after))

    reference_scores, reference = reference_turning_to_adagrad(lines, settings.model.learning_rate, before)
    txn_ids = [score["txn_id"] for _, score in committed.scores]
    assert len(txn_ids) == len(set(txn_ids)) and set(txn_ids) == after
    for _, score in committed.scores:
        expected_score, updates_before = reference_scores[score["txn_id"]]
        assert score["model_updates"] == updates_before, score
        assert score["score"] == pytest.approx(expected_score, abs=1e-9), score
    models = latest_snapshots(committed.snapshots)
    assert models.keys() == reference.keys()
    for key, model in models.items():
        expected = reference[key]
        assert model["optimizer"] == "adagrad" and model["model_updates"] == expected.updates, key
        assert list(model["weights"].values()) == pytest.approx(expected.weights.tolist(), abs=1e-9), key
        assert model["bias"] == pytest.approx(expected.bias, abs=1e-9), key
        g2 = model["accumulators"]["g2"]
        assert [*g2["weights"].values(), g2["bias"]] == pytest.approx(expected.accumulators["g2"].tolist(),
                                                                      rel=1e-9, abs=1e-9), key
    # Keys learned with AdaGrad after the savepoint (some keys may have no record after it).
    assert sum(model.accumulators["g2"][-1] > 0 for model in reference.values()) >= len(reference) // 2


def test_a_run_rescaled_from_2_to_4_and_back_to_2_is_one_uninterrupted_run(session_cluster, second_taskmanager,
                                                                           kafka_isolation, tmp_path):
    """Issue 29: stopped with a savepoint at parallelism 2, resumed at 4, stopped again and resumed
    at 2, on two TaskManagers: every record scored once, as the sequential reference scores it, and
    every model the reference's; the committed outputs grow after each rescale (no transaction left
    open blocks read_committed readers); the windowed analytics are those of one uninterrupted run."""
    fixture = Fixture.load(FIXTURE)
    overrides = [*fixture.manifest["job"]["overrides"], *kafka_isolation, *state_overrides(tmp_path),
                 *analytics_overrides()]
    settings = load_settings(fixture.profile, overrides)
    assert settings.flink.parallelism == 2 and settings.analytics.enabled
    kafka_tools.create_topics(settings)
    lines = fixture.lines()
    # Redeliveries of the first records, after the end: scored in the first leg, redelivered in the
    # last, after two restores at other parallelisms (dedup.horizon_ms: a day; the input spans less).
    redelivered = lines[:40]
    produced = lines + redelivered
    assert kafka_tools.produce(settings, produced, total=len(produced), key_field=settings.model.key) == len(produced)
    local = session_cluster.cluster

    # Paced, so that each leg stops part way through (with analytics on, the exchange before the
    # bundler holds thousands of records while the tasks start).
    paced = [*overrides, "source.max_records_per_second=25"]
    first = stop_after(local, settings, paced, None, 800)
    after_first = failover_drill.committed_outputs(settings)
    assert 0 < after_first < len(lines), after_first

    # At parallelism 4: keyed state (models, pending windows), source splits and the sinks'
    # transactions spread over 4.
    second = stop_after(local, settings, [*paced, "flink.parallelism=4"], first, 600)
    after_second = failover_drill.committed_outputs(settings)
    assert after_first < after_second < len(lines), (after_first, after_second)

    # Back at parallelism 2, to the end of the input.
    resumed, committed = resume_until_all_scored(local, settings, overrides, second, len(produced))
    vertices = rest.rest(local.rest_url, "GET", f"/jobs/{resumed}")["vertices"]
    assert {vertex["parallelism"] for vertex in vertices} == {2}, [(v["name"], v["parallelism"]) for v in vertices]
    restored = rest.rest(local.rest_url, "GET", f"/jobs/{resumed}/checkpoints")["latest"]["restored"]
    assert restored["is_savepoint"] and restored["external_path"] == second

    assert_scores_and_models_equal_reference(committed, lines, settings, {json.loads(line)["txn_id"] for line in lines},
                                             redelivered)
    assert_committed_analytics_as_the_reference(settings, [score for _, score in committed.scores])
