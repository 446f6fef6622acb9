"""`topics`, `produce` and `tail` against the project's real Kafka broker (started by `make test`)."""

from __future__ import annotations

import json
import time
from collections import defaultdict

from streaming.ops import kafka_tools
from udfs.generator import CATEGORIES, GeneratorSettings, generate


def test_topics_are_created_once_with_the_configured_partitions(kafka_settings):
    from confluent_kafka.admin import AdminClient

    assert sorted(kafka_tools.create_topics(kafka_settings)) == sorted(kafka_settings.kafka.topics())
    assert kafka_tools.create_topics(kafka_settings) == []
    kafka = kafka_settings.kafka
    admin = AdminClient(kafka.client_properties())
    # A topic just created can be missing from the metadata the broker answers with for a moment
    # (seen once on a loaded machine), so ask until every one is there or 30 s have passed.
    deadline = time.monotonic() + 30
    metadata = admin.list_topics(timeout=10)
    while not set(kafka.topics()) <= set(metadata.topics) and time.monotonic() < deadline:
        time.sleep(0.5)
        metadata = admin.list_topics(timeout=10)
    for topic in kafka.topics():
        # The global model's versions keep one order: one partition whatever kafka.partitions says.
        assert len(metadata.topics[topic].partitions) == (1 if topic == kafka.model_versions_topic else 3), topic


def test_produced_records_are_read_back_once_each_in_key_order(kafka_settings):
    kafka_tools.create_topics(kafka_settings)
    lines = list(generate(GeneratorSettings(records=3000, seed=21, malformed_share=0.05)))
    sent = kafka_tools.produce(kafka_settings, lines, total=len(lines), key_field="merchant_category")
    assert sent == len(lines)

    received = list(kafka_tools.tail(kafka_settings, kafka_settings.kafka.transactions_topic, max_records=len(lines),
                                      idle_timeout_s=20))
    assert sorted(value for _, _, _, value in received) == sorted(lines)

    partitions_of_key = defaultdict(set)
    keyed_in_partition = defaultdict(list)
    for partition, offset, key, value in sorted(received, key=lambda r: (r[0], r[1])):
        if key is not None:
            # The generator writes categories as cleaning leaves them, so the key is the value.
            category = json.loads(value)["merchant_category"]
            assert category in CATEGORIES
            assert key.decode() == category
            partitions_of_key[key].add(partition)
            keyed_in_partition[partition].append(value)
    assert all(len(partitions) == 1 for partitions in partitions_of_key.values())
    assert len(partitions_of_key) == 20
    positions_of = defaultdict(list)  # some malformed lines (empty ones) repeat
    for position, line in enumerate(lines):
        positions_of[line].append(position)
    for partition, keyed in keyed_in_partition.items():
        positions = [positions_of[v][0] for v in keyed if len(positions_of[v]) == 1]
        assert positions == sorted(positions), f"partition {partition} is out of production order"


def test_a_tail_until_the_end_reads_what_an_idle_timeout_reads(kafka_settings):
    """On a topic nothing writes to any more, `until_end` stops with the records an idle timeout
    gives: past committed and aborted transactions (one last, its marker the partition's last
    offset), on a partition with no record at all, read_committed or not."""
    from confluent_kafka import Producer

    kafka_tools.create_topics(kafka_settings)
    # 3 partitions, the third left empty; an input topic: its values need not be output lines (the
    # integration tier checks every line read from an output topic against its schema).
    topic = kafka_settings.kafka.transactions_topic
    producer = Producer({**kafka_settings.kafka.client_properties(), "transactional.id": f"{topic}-tail-test"})
    producer.init_transactions()
    for batch, commit in enumerate([True, False, True, False]):
        producer.begin_transaction()
        for n in range(20):
            producer.produce(topic, f"{batch}-{n}".encode(), partition=n % 2)
        producer.flush()
        (producer.commit_transaction if commit else producer.abort_transaction)()

    for committed_only, batches in ((True, {"0", "2"}), (False, {"0", "1", "2", "3"})):
        idle = list(kafka_tools.tail(kafka_settings, topic, idle_timeout_s=3, committed_only=committed_only))
        to_end = list(kafka_tools.tail(kafka_settings, topic, idle_timeout_s=30, committed_only=committed_only,
                                       until_end=True))
        assert sorted(to_end) == sorted(idle) and len(idle) == 20 * len(batches)
        assert {value.decode().split("-")[0] for *_, value in to_end} == batches
