"""`riskstream topics`, `produce` and `tail` as a user runs them: subprocesses, from a folder other
than the project's, against the project's real broker, each test on topics of its own (deleted
afterwards). What they print is checked against what a plain confluent-kafka client finds on the
broker."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest

from tests.cli import assert_one_line_failure, riskstream
from udfs.generator import GeneratorSettings, generate
from udfs.labels import read_label

ONE_MIB = 1_048_576  # the message size every topic allows (README, "Kafka mode")


def set_options(overrides: list[str]) -> list[str]:
    """`--set KEY=VALUE` for each override."""
    return [option for override in overrides for option in ("--set", override)]


def topic_names(overrides: list[str]) -> dict[str, str]:
    """The topic names these overrides set, by setting (e.g. {"transactions_topic": "test-...-tx"})."""
    named = dict(override.split("=", 1) for override in overrides)
    return {setting.removeprefix("kafka."): name for setting, name in named.items() if setting.endswith("_topic")}


def admin(settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})


def read_back(settings, topic: str, expected: int,
              timeout_s: float = 30) -> list[tuple[int, int, bytes | None, bytes, int]]:
    """Every record of `topic` as (partition, offset, key, value, timestamp in ms), read from the
    beginning of each partition with read_committed, by a consumer of this test's own. Asserts the
    partitions hold `expected` records in all (by their watermarks, so none is missed or extra)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"read-back-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        partitions = sorted(admin(settings).list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
        held = sum(high - low for low, high in (consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                                               timeout=10) for partition in partitions))
        assert held == expected, f"{topic} holds {held} records, not {expected}"
        records = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            records.append((message.partition(), message.offset(), message.key(), message.value() or b"",
                            message.timestamp()[1]))
        assert len(records) == expected
        return records
    finally:
        consumer.close()


@pytest.fixture
def topics(tmp_path, kafka_isolation, kafka_settings):
    """This test's topics, created by `riskstream topics`; returns (the --set options, the settings)."""
    options = set_options(kafka_isolation)
    created = riskstream("topics", *options, cwd=tmp_path, timeout_s=60)
    assert created.returncode == 0, created.stderr[-2000:]
    return options, kafka_settings


# ---------------------------------------------------------------- topics


def test_topics_creates_the_profiles_topics_with_its_partitions_and_a_second_call_creates_none(tmp_path,
                                                                                             kafka_isolation,
                                                                                             kafka_settings):
    names = topic_names(kafka_isolation)
    in_order = ("transactions_topic", "scores_topic", "dead_letters_topic", "snapshots_topic", "analytics_topic",
                "late_topic", "labels_topic", "learning_topic", "label_dead_letters_topic",
                "drift_topic", "model_versions_topic", "repeated_ids_topic")
    assert sorted(names) == sorted(in_order)
    listed = ", ".join(names[setting] for setting in in_order)
    options = [*set_options(kafka_isolation), "--set", "kafka.partitions=2"]

    first = riskstream("topics", *options, cwd=tmp_path, timeout_s=60)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == f"topics: created {listed}; all of {listed} exist\n"

    from confluent_kafka.admin import ConfigResource

    client = admin(kafka_settings)
    metadata = client.list_topics(timeout=10).topics
    for setting, name in names.items():
        # The global model's versions keep one order: one partition whatever kafka.partitions says.
        assert len(metadata[name].partitions) == (1 if setting == "model_versions_topic" else 2), name
        config = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)])
        (entries,) = [future.result(timeout=10) for future in config.values()]
        assert entries["max.message.bytes"].value == str(ONE_MIB), name

    second = riskstream("topics", *options, cwd=tmp_path, timeout_s=60)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout == f"topics: created none; all of {listed} exist\n"


# ---------------------------------------------------------------- produce

def hand_written_lines() -> list[tuple[bytes, bytes | None]]:
    """Lines of a file to produce, each with the message key it must get: its model key (merchant
    category by default, normalized as cleaning normalizes it), None where the job cannot read one."""
    record = {"txn_id": "h-1", "event_time": 1_767_225_600_000, "account_id": "acct-1",
              "merchant_category": " Grocery ", "country": "GB", "channel": "pos", "amount": 12.0, "currency": "GBP",
              "is_fraud": 0}
    return [
        (json.dumps(record).encode(), b"grocery"),
        (json.dumps({**record, "txn_id": "h-2", "merchant_category": "ONLINE \t retail"}).encode(), b"online retail"),
        (json.dumps({**record, "txn_id": "h-3", "merchant_category": "Café"}, ensure_ascii=False).encode(),
         "café".encode()),
        (b'{"txn_id": "h-4", "merchant_category": "fuel"', None),  # truncated JSON
        (b"", None),  # an empty line is a record too, as the file source reads it
        (b"not json at all", None),
    ]


def test_produce_file_sends_each_line_once_keyed_by_its_model_key_and_reports_the_count(tmp_path, topics):
    options, settings = topics
    generated = list(generate(GeneratorSettings(records=200, seed=17)))
    expected = [(line, json.loads(line)["merchant_category"].encode()) for line in generated] + hand_written_lines()
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(line for line, _ in expected))  # the last line without newline

    done = riskstream("produce", "--file", "tx.jsonl", *options, cwd=tmp_path, timeout_s=120)
    assert done.returncode == 0, done.stderr[-2000:]
    topic = settings.kafka.transactions_topic
    assert done.stdout == f"produced {len(expected)} records to {topic}\n"

    records = read_back(settings, topic, len(expected))
    assert Counter((value, key) for _, _, key, value, _ in records) == Counter(expected)
    partitions_of_key = {}
    for partition, _, key, _, _ in records:
        if key is not None:
            partitions_of_key.setdefault(key, set()).add(partition)
    assert all(len(partitions) == 1 for partitions in partitions_of_key.values())
    # Each key's records are in the partition in the order of the file.
    position = {line: i for i, (line, _) in enumerate(expected)}
    for key in partitions_of_key:
        in_partition = [value for _, _, k, value, _ in sorted(records) if k == key]
        assert [position[value] for value in in_partition] == sorted(position[value] for value in in_partition), key


def test_produce_generate_sends_n_records_at_the_rate_asked(tmp_path, topics):
    options, settings = topics
    count, rate = 300, 500.0
    done = riskstream("produce", "--generate", str(count), "--seed", "23", "--rate", str(rate), "--no-key", *options,
                      cwd=tmp_path, timeout_s=120)
    assert done.returncode == 0, done.stderr[-2000:]
    topic = settings.kafka.transactions_topic
    assert done.stdout == f"produced {count} records to {topic}\n"

    records = read_back(settings, topic, count)
    txn_ids = [json.loads(value)["txn_id"] for _, _, _, value, _ in records]
    assert sorted(txn_ids) == [f"t23-{i:09d}" for i in range(count)]  # the generator's ids for seed 23
    assert all(key is None for _, _, key, _, _ in records)  # --no-key
    # The producer stamps each message when it sends it: 300 records at 500/s span about 0.6 s.
    stamps = sorted(timestamp for *_, timestamp in records)
    span_s = (stamps[-1] - stamps[0]) / 1000
    assert 0.8 * (count - 1) / rate <= span_s < 3 * (count - 1) / rate, span_s


def test_produce_labels_sends_the_label_stream_keyed_by_txn_id_in_label_time_order(tmp_path, topics):
    options, settings = topics
    done = riskstream("produce", "--labels", "--generate", "400", "--seed", "29", "--label-min-delay-ms", "60000",
                      "--label-max-delay-ms", "300000", "--label-duplicate-share", "0.2",
                      "--label-contradicting-share", "0.1", *options, cwd=tmp_path, timeout_s=120)
    assert done.returncode == 0, done.stderr[-2000:]
    topic = settings.kafka.labels_topic
    sent = int(done.stdout.removeprefix("produced ").split()[0])
    assert done.stdout == f"produced {sent} labels to {topic}\n"
    assert 300 < sent < 600  # about 95% of 400 labelled, a third of them twice

    records = read_back(settings, topic, sent)
    labels = [(partition, offset, key, read_label(value, ONE_MIB)) for partition, offset, key, value, _ in records]
    assert all(key == label.txn_id.encode() for _, _, key, label in labels)  # keyed by txn_id
    transactions = {json.loads(line)["txn_id"]: json.loads(line)
                    for line in generate(GeneratorSettings(records=400, seed=29))}
    partitions_of = {}
    for partition, _, _, label in labels:
        partitions_of.setdefault(label.txn_id, set()).add(partition)
    assert all(len(partitions) == 1 for partitions in partitions_of.values())
    # A transaction's labels are in its partition in label-time order, the first one the truth;
    # more than 40 came twice.
    own_labels: dict[str, list] = {}
    for _, _, _, label in sorted(labels):
        own_labels.setdefault(label.txn_id, []).append(label)
    for txn_id, own in own_labels.items():
        assert [label.label_time for label in own] == sorted(label.label_time for label in own)
        if txn_id in transactions:
            assert own[0].is_fraud == transactions[txn_id]["is_fraud"]
    assert sum(len(own) == 2 for own in own_labels.values()) > 40


# ---------------------------------------------------------------- tail


def tail_lines(stdout: str) -> list[tuple[int, int, bytes | None, bytes]]:
    """`partition:offset<TAB>key<TAB>value` lines as (partition, offset, key or None when empty, value)."""
    parsed = []
    for line in stdout.splitlines():
        where, key, value = line.split("\t", 2)
        partition, offset = where.split(":")
        parsed.append((int(partition), int(offset), key.encode() or None, value.encode()))
    return parsed


def test_tail_prints_partition_offset_key_and_value_of_each_record(tmp_path, topics):
    options, settings = topics
    lines = [line for line, _ in hand_written_lines()] + list(generate(GeneratorSettings(records=150, seed=29)))
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    produced = riskstream("produce", "--file", "tx.jsonl", *options, cwd=tmp_path, timeout_s=120)
    assert produced.returncode == 0, produced.stderr[-2000:]
    topic = settings.kafka.transactions_topic
    on_the_broker = sorted((partition, offset, key, value) for partition, offset, key, value, _ in
                           read_back(settings, topic, len(lines)))

    # --max larger than the topic: it prints every record, then stops after the idle timeout.
    started = time.monotonic()
    everything = riskstream("tail", topic, "--max", "1000", "--idle-timeout", "5", *options,
                            cwd=tmp_path, timeout_s=60)
    elapsed = time.monotonic() - started
    assert everything.returncode == 0, everything.stderr[-2000:]
    printed = tail_lines(everything.stdout)
    assert sorted(printed) == on_the_broker
    for partition in {p for p, _, _, _ in printed}:  # each partition in its order
        offsets = [offset for p, offset, _, _ in printed if p == partition]
        assert offsets == sorted(offsets), partition
    assert elapsed < 30

    # --max smaller than the topic: exactly that many records, none twice, all of them on the broker.
    some = riskstream("tail", topic, "--max", "40", "--idle-timeout", "10", *options, cwd=tmp_path, timeout_s=60)
    assert some.returncode == 0, some.stderr[-2000:]
    shown = tail_lines(some.stdout)
    assert len(shown) == 40 and len(set(shown)) == 40
    assert set(shown) <= set(on_the_broker)


def test_tail_of_a_topic_that_does_not_exist_is_one_line_and_creates_nothing(tmp_path, topics):
    options, settings = topics
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    done = riskstream("tail", missing, "--max", "1", "--idle-timeout", "2", *options, cwd=tmp_path, timeout_s=60)
    assert_one_line_failure(done, 2, repr(missing), "does not exist", settings.kafka.transactions_topic)
    assert done.stdout == ""
    assert missing not in admin(settings).list_topics(timeout=10).topics
