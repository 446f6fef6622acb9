"""The data-parallel global model through the real job: bounded file runs at parallelism 2 whose
versions go round through the broker (model-versions topic) and back to every shard, synchronously
with inline labels (`blend: sum`; `blend: key` with `cold_start: global` and `on_drift: rewarm`)
and asynchronously with a label stream (`blend: sum`; `blend: global`'s scores are
udfs/global_scoring.py's, held to the reference in tests/unit/test_global_scoring.py); and one
whose outputs are files (`blend: sum`), so its versions go round through a folder, with no broker
(`make run`'s route). Synchronous runs are held to two references: the versions to
`train_sequential` on the mini-batches they name, and every score to a record-at-a-time replay of
the key models with the version the score names (tests/reference/global_replay.py). (A TaskManager
killed mid-run: tests/drills/test_global_model_drill.py, `make drill-global`.)"""

from __future__ import annotations

import json

import pytest

from streaming.config import load_settings
from streaming.config.from_settings import model_scorer, transaction_reader
from streaming.ops import drill as failover_drill
from streaming.ops import kafka_tools
from streaming.reporting.outputs import committed_lines, committed_parts
from tests.reference.global_replay import replay
from tests.reference.pipeline import read_bundle
from udfs.generator import GeneratorSettings, generate_with_kinds
from udfs.global_model import Example, GlobalModel, train_sequential

from .conftest import LOCAL_PROFILE, PROJECT

RECORDS = 3000
SHARDS = 4
CADENCE = 400  # labelled records per version: a share of 100 per shard
# A version comes back about every two checkpoints, so how many rounds a run makes depends on how
# long it reads: 300 records/s gave 3 to 4 rounds on a loaded machine (CI, 2026-12-07); 200 gives
# the runs half as much time again.
KAFKA_ROUTE_RECORDS_PER_SECOND = 200


def global_model_settings(tmp_path, profile, records: int, *overrides):
    """The settings of a bounded run on `records` generated records (written to a file in
    `tmp_path`) with model.blend global at parallelism 2, read at 300 records/s unless `overrides`
    say otherwise; returns (settings, lines)."""
    lines = [line for _, line in generate_with_kinds(GeneratorSettings(records=records, seed=7, malformed_share=0.0))]
    source = tmp_path / "transactions.jsonl"
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    settings = load_settings(profile, [
        "source.kind=files", f"source.paths=[{json.dumps(str(source))}]",
        f"checkpointing.directory={tmp_path / 'checkpoints'}", "checkpointing.interval_ms=300",
        # Keyed by account, the records spread evenly over the shards: a synchronous round waits
        # for every shard's share.
        "model.key=account_id", "flink.parallelism=2", f"performance.shards={SHARDS}", "model.blend=global",
        "model.learning_rate=0.5",
        # Slow enough that versions come back while the file is still being scored.
        "source.max_records_per_second=300", *overrides])
    return settings, lines


def run_with_global_model(tmp_path, isolation, *overrides):
    """Runs the job on a generated file with model.blend global; returns (settings, lines, scores,
    version messages in topic order)."""
    from streaming.job.run import run_job

    settings, lines = global_model_settings(tmp_path, PROJECT / "conf" / "kafka.yaml", RECORDS, *isolation,
                                            f"model.global.cadence_records={CADENCE}",
                                            f"source.max_records_per_second={KAFKA_ROUTE_RECORDS_PER_SECOND}",
                                            *overrides)
    kafka_tools.create_topics(settings)
    run_job(settings)
    scores = [score for _, score in failover_drill.read_committed(settings).scores]
    versions = [value for _, _, _, value in kafka_tools.tail(settings, settings.kafka.model_versions_topic,
                                                              idle_timeout_s=5)]
    return settings, lines, scores, versions


def folder_versions(folder) -> list[bytes]:
    """The version messages in a model-versions folder's committed part files, in publishing order:
    a part file holds the versions of one checkpoint in order, and the FileSink names its files by
    bucket instance (not by time), so the files are put in the order of their first version."""
    files = [[line.rstrip(b"\n") for line in part.open("rb") if line.strip()] for part in committed_parts(folder)]
    return [message for lines in sorted(files, key=lambda lines: json.loads(lines[0])["version"]) for message in lines]


def records_of(settings, lines) -> dict:
    """The records of `lines` as the job reads them, by shard, each shard's in arrival order."""
    reader = transaction_reader(settings)
    return read_bundle(reader, "\n".join(line.decode("utf-8") for line in lines), SHARDS, 0)[0]


def reference_rounds(settings, lines, published: list[dict], offsets: dict[str, float] | None = None
                     ) -> list[list[Example]]:
    """The mini-batch of each published version after the first, as its `records_by_shard` says:
    each shard's next records in arrival order (udfs/global_scoring.py), in shard order, each with
    its `offset` by txn_id (blend sum: the key margin it was scored with; none: 0.0). Asserts that
    every record is in exactly one."""
    by_shard = records_of(settings, lines)
    offsets = offsets or {}
    taken = dict.fromkeys(by_shard, 0)
    rounds = []
    for message in published[1:]:
        batch = []
        for shard, count in sorted((int(shard), count) for shard, count in message["records_by_shard"].items()):
            batch += [Example(r.indices, r.values, r.label, offsets.get(r.txn_id, 0.0))
                      for r in by_shard[shard][taken[shard]:taken[shard] + count]]
            taken[shard] += count
        rounds.append(batch)
    assert taken == {shard: len(records) for shard, records in by_shard.items()}
    return rounds


def assert_versions_equal_the_reference(settings, lines, versions, offsets: dict[str, float] | None = None
                                        ) -> list[dict]:
    """Asserts that the version messages (in topic order) are versions 0, 1, ... once each, the last
    one final, and that each equals `train_sequential` on its mini-batch of `lines` (with `offsets`
    by txn_id, 1e-9); returns them decoded."""
    published = [json.loads(message) for message in versions]
    numbers = [message["version"] for message in published]
    assert numbers == list(range(len(numbers))), "versions are published once each, in order, from version 0"
    assert published[-1].get("final") is True and not any(message.get("final") for message in published[:-1])

    scorer = model_scorer(settings, transaction_reader(settings).encoder)
    reference = train_sequential(GlobalModel.initial(scorer.feature_names, scorer.standardized,
                                                     settings.model.initial_bias),
                                 reference_rounds(settings, lines, published, offsets),
                                 settings.model.global_.global_settings().optimizer_for(scorer.optimizer))
    assert len(reference) == len(published) - 1 >= 3, "too few rounds to compare"
    names = scorer.feature_names
    for expected, message in zip(reference, published[1:]):
        got = GlobalModel.from_message(json.dumps(message).encode(), names)
        assert got.regression.bias == pytest.approx(expected.regression.bias, abs=1e-9)
        assert got.regression.weights == pytest.approx(expected.regression.weights, abs=1e-9)
        assert got.statistics.count == expected.statistics.count
        assert got.statistics.mean == pytest.approx(expected.statistics.mean, rel=1e-9)
        assert got.statistics.m2 == pytest.approx(expected.statistics.m2, rel=1e-9)
    return published


def assert_synchronous_run(settings, lines, scores, versions):
    """What a synchronous run (max_staleness 0) must have done, whatever the route of its versions:
    every record scored once, by a published version, each key's with versions in order, and
    versions coming back while it scored; every score equal to the replay of the key models with
    the version it names (1e-9); the versions equal to the sequential reference, with every record
    in exactly one. `scores` in an order that keeps each key's scores in the order they were made.
    Returns the replay and each txn_id's version."""
    names = model_scorer(settings, transaction_reader(settings).encoder).feature_names
    models = {json.loads(message)["version"]: GlobalModel.from_message(message, names) for message in versions}
    numbers = sorted(models)

    assert len(scores) == len(lines)
    assert {score["global_version"] for score in scores} <= set(numbers)
    used = sorted({score["global_version"] for score in scores})
    assert len(used) > 2, f"versions did not come back while scoring: {used} of {numbers}"
    by_key: dict[str, list[int]] = {}
    for score in scores:
        by_key.setdefault(score["model_key"], []).append(score["global_version"])
    assert all(versions_used == sorted(versions_used) for versions_used in by_key.values()), \
        "a key was scored with an older version after a newer one"

    # The key models, record by record with the version each score names, give the job's scores.
    version_of = {score["txn_id"]: score["global_version"] for score in scores}
    records = [record for shard_records in records_of(settings, lines).values() for record in shard_records]
    expected = replay(settings, records, version_of, models)
    for score in scores:
        assert score["score"] == pytest.approx(expected.probability[score["txn_id"]], abs=1e-9, rel=0), \
            score["txn_id"]

    # The versions equal the sequential reference, under sum with the key margins as offsets.
    published = assert_versions_equal_the_reference(settings, lines, versions, expected.offset)
    assert published[-1]["labelled_records"] + sum(message["labelled_records"] for message in published[1:-1]) \
        == sum(1 for score in scores if score["label"] is not None)
    return expected, version_of


# Two synchronous runs (a job run costs about 40 s): blend sum, the key part learning from the
# blended error; and blend key with new keys and drifted keys (a low Page-Hinkley threshold) started
# from the held version. Keyed by merchant category (20 values over 4 shards) a key has many records,
# so that drifts fire and a rewarmed key goes on learning; by account (the first run) most keys are new.
SYNCHRONOUS = {
    "sum": ("model.blend=sum",),
    "cold-start-rewarm": ("model.key=merchant_category", "model.blend=key", "model.cold_start=global", "model.on_drift=rewarm",
                          "model.drift={detector: page_hinkley, page_hinkley: {min_instances: 20, threshold: 3.0}}"),
}


@pytest.mark.parametrize("run", list(SYNCHRONOUS))
def test_synchronous_versions_and_scores_equal_the_references(tmp_path, kafka_isolation, run):
    settings, lines, scores, versions = run_with_global_model(tmp_path, kafka_isolation,
                                                              "model.global.max_staleness=0", *SYNCHRONOUS[run])
    expected, version_of = assert_synchronous_run(settings, lines, scores, versions)
    if settings.model.blend == "sum":  # keyed by account most keys have one record, scored at key margin 0
        assert sum(offset != 0.0 for offset in expected.offset.values()) > 200
        return
    # New keys started from the held version and drifted keys were rewarmed from it: the drift
    # topic holds the replay's events, each naming the version held.
    drift = [json.loads(value) for _, _, _, value in kafka_tools.tail(settings, settings.kafka.drift_topic,
                                                                       idle_timeout_s=5)]
    assert len(expected.drift_events) >= 10
    assert sorted((e["model_key"], e["txn_id"]) for e in drift) == \
        sorted((e.model_key, e.txn_id) for e in expected.drift_events)
    assert {e["action"] for e in drift} == {"rewarm"}
    assert all(e["global_version"] == version_of[e["txn_id"]] for e in drift)


FILE_ROUTE_RECORDS = 1500
FILE_ROUTE_CADENCE = 100  # a share of 25 per shard: a version every second or so once scoring runs
# The source runs ahead while the Python workers start (several seconds), and what it read by then
# is scored in one burst with version 0: slow enough that most records come after that.
FILE_ROUTE_RECORDS_PER_SECOND = 120


def test_without_a_broker_versions_go_round_through_a_folder_and_the_run_ends(tmp_path):
    """Outputs to files (the local profile, `make run`): the versions go to and come back from
    <output.path>/model-versions, with the same guarantees as through the broker (`blend: sum`,
    what `make run` uses); the bounded run ends by itself after the final version."""
    from streaming.job.run import run_job

    out = tmp_path / "out"
    settings, lines = global_model_settings(tmp_path, LOCAL_PROFILE, FILE_ROUTE_RECORDS, f"output.path={out}",
                                            f"model.global.cadence_records={FILE_ROUTE_CADENCE}",
                                            "model.global.max_staleness=0", "model.blend=sum",
                                            f"source.max_records_per_second={FILE_ROUTE_RECORDS_PER_SECOND}")
    assert settings.output.kind == "files"
    job_run = run_job(settings)

    assert job_run.ending == "finished"
    # Part files are named by bucket instance, not time: each key's scores in the order they were
    # made, which is its records' order in the input (arrival order).
    position = {json.loads(line)["txn_id"]: index for index, line in enumerate(lines)}
    scores = sorted(committed_lines(out / "scores"), key=lambda score: position[score["txn_id"]])
    assert_synchronous_run(settings, lines, scores, folder_versions(out / "model-versions"))


STALENESS = 1


def test_labels_from_their_own_stream_train_the_global_model_asynchronously(tmp_path, kafka_isolation):
    from streaming.job.run import run_job
    from tests.integration.test_label_stream import MINUTE, PROFILE, transactions
    from udfs.label_generator import LabelStreamSettings, generate_labels

    stream = transactions(2000, seed=5)
    label_lines = list(generate_labels([json.dumps(r).encode() for r in stream], LabelStreamSettings(
        seed=5, min_delay_ms=MINUTE, max_delay_ms=3 * MINUTE, never_share=0.05, duplicate_share=0.05)))
    (tmp_path / "tx.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in stream))
    (tmp_path / "labels.jsonl").write_bytes(b"".join(line + b"\n" for line in label_lines))
    settings = load_settings(PROJECT / "conf" / "kafka.yaml", [
        *kafka_isolation, "source.kind=files", f"source.paths=[{json.dumps(str(tmp_path / 'tx.jsonl'))}]",
        "labels.mode=stream", f"labels.source={{kind: files, paths: [{json.dumps(str(tmp_path / 'labels.jsonl'))}]}}",
        f"checkpointing.directory={tmp_path / 'checkpoints'}", "checkpointing.interval_ms=300",
        # blend sum: a label's step adds the global margin of the version held when it arrives.
        "flink.parallelism=2", f"performance.shards={SHARDS}", *PROFILE, "model.blend=sum",
        # About one version per checkpoint, so that few partials are too stale to apply.
        "source.max_records_per_second=300",
        # Asynchronous: a shard never waits, and the aggregator drops partials more than 1 version old.
        "model.global.cadence_records=200", f"model.global.max_staleness={STALENESS}"])
    kafka_tools.create_topics(settings)
    run_job(settings)

    def committed(topic):
        return [json.loads(value) for _, _, _, value in kafka_tools.tail(settings, topic, idle_timeout_s=5)]

    published, learned = committed(settings.kafka.model_versions_topic), committed(settings.kafka.learning_topic)
    scores = [score for _, score in failover_drill.read_committed(settings).scores]
    numbers = [message["version"] for message in published]
    assert numbers == list(range(len(numbers))) and len(numbers) > 3
    assert published[-1].get("final") is True
    # Every version's step applied only partials at most STALENESS versions old.
    for message in published[1:]:
        oldest = message["oldest_base_version"]
        assert oldest is None or message["version"] - 1 - oldest <= STALENESS, message["version"]
    # The global model learned from the labels the key models learned from (stream mode: no inline
    # label), or dropped them with partials too stale to apply, and its statistics counted every
    # scored record once, dropped or not.
    applied = sum(message["labelled_records"] for message in published)
    assert learned and applied > 0 and applied + published[-1]["dropped_stale_records"] == len(learned)
    assert published[-1]["standardization"]["count"] == len(scores) == len(stream)
    assert {score["global_version"] for score in scores} <= set(numbers)
    by_key: dict[str, list[int]] = {}
    for score in scores:  # in each partition's order: a key's scores in the order they were made
        by_key.setdefault(score["model_key"], []).append(score["global_version"])
    assert all(versions_used == sorted(versions_used) for versions_used in by_key.values()), \
        "a key was scored with an older version after a newer one"

