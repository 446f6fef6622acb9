"""`riskstream topics`, `produce` and `tail`: the project's Kafka tools, on confluent-kafka.

Every client gets `settings.kafka.client_properties()` (security settings included) and the
configured message size limit; property values are never printed.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from typing import Any, Iterable, Iterator

from streaming.config import ServiceUnreachable, Settings
from streaming.config.from_settings import cleaning_rules
from udfs.cleaning import CleaningRules, Rejected, decode, model_key_of, parse

# The confluent-kafka clients' own log (librdkafka: connection attempts, retries) goes here rather
# than straight to stderr; the CLI shows it only with --verbose.
CLIENT_LOG = logging.getLogger("riskstream.kafka-client")


def show_client_log(verbose: bool) -> None:
    """Sends CLIENT_LOG to stderr (`verbose`), else nowhere: a missing broker is then reported once,
    in one line, by `check_broker`."""
    CLIENT_LOG.propagate = False
    CLIENT_LOG.handlers[:] = [logging.StreamHandler() if verbose else logging.NullHandler()]
    CLIENT_LOG.setLevel(logging.DEBUG if verbose else logging.CRITICAL)


class DeliveryFailed(RuntimeError):
    """Records the producer could not deliver; the message says how many and the first error."""


def client_config(settings: Settings) -> dict[str, Any]:
    """The configuration of a confluent-kafka client: `kafka.client_properties()` (security
    settings included) and the client log."""
    return {**settings.kafka.client_properties(), "logger": CLIENT_LOG}


def check_broker(settings: Settings, timeout_s: float = 5) -> None:
    """Raises ServiceUnreachable (one line: the bootstrap address and how to start the project's
    broker) unless a broker answers a metadata request within `timeout_s` seconds."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(settings))
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException:
        admin.poll(0)  # hands the client's queued log lines to CLIENT_LOG (shown with --verbose)
        raise ServiceUnreachable(
            f"no Kafka broker answers at {settings.kafka.bootstrap_servers} (kafka.bootstrap_servers); start the "
            f"project's broker with `make kafka-up`, or point the profile at yours") from None


def check_topic(settings: Settings, *wanted: str) -> None:
    """Raises ConfigError naming the first of the `wanted` topics that does not exist and the
    topics there are, unless all exist (one metadata request)."""
    from confluent_kafka.admin import AdminClient

    from streaming.config import ConfigError

    topics = AdminClient(client_config(settings)).list_topics(timeout=10).topics
    for topic in wanted:
        if topic not in topics:
            known = ", ".join(sorted(name for name in topics if not name.startswith("_"))) or "none"
            raise ConfigError(f"topic {topic!r} does not exist at {settings.kafka.bootstrap_servers}; "
                              f"topics there: {known}")


def create_topics(settings: Settings) -> list[str]:
    """Creates the project's topics with the configured partitions; existing ones are left as they
    are. Returns the names it created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    kafka = settings.kafka
    admin = AdminClient(client_config(settings))
    # The global model's versions keep one order: one partition, whatever kafka.partitions says.
    wanted = [NewTopic(name, 1 if name == kafka.model_versions_topic else kafka.partitions, kafka.replication_factor,
                       config={"max.message.bytes": str(kafka.max_message_bytes)}) for name in kafka.topics()]
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=30).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def isolated_overrides(prefix: str) -> list[str]:
    """`--set` overrides that give one run topics, a consumer group and transactional ids of its
    own (`<prefix>-tx-<id>`, ...), so that runs on one broker never see each other's records."""
    run = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return [f"kafka.transactions_topic={run}-tx", f"kafka.scores_topic={run}-scores",
            f"kafka.dead_letters_topic={run}-dead", f"kafka.snapshots_topic={run}-snap",
            f"kafka.analytics_topic={run}-analytics", f"kafka.late_topic={run}-late", f"kafka.labels_topic={run}-labels",
            f"kafka.learning_topic={run}-learning", f"kafka.label_dead_letters_topic={run}-label-dead",
            f"kafka.drift_topic={run}-drift",
            f"kafka.model_versions_topic={run}-versions", f"kafka.repeated_ids_topic={run}-repeated",
            f"kafka.consumer_group={run}", f"kafka.transactional_id_prefix={run}"]


def delete_topics(settings: Settings) -> None:
    """Deletes the project's topics (those that exist), so a broker does not pile up test runs."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(settings))
    for future in admin.delete_topics(list(settings.kafka.topics()), operation_timeout=30).values():
        try:
            future.result()
        except KafkaException:  # a topic that was never created
            pass


def partition_key(line: bytes, key_field: str, rules: CleaningRules) -> bytes | None:
    """The message key of a raw transaction line (any bytes) when the job is keyed by `key_field`
    (a `ModelKeyField`; or txn_id, for a label line) and cleans with `rules`: the line's model key as the job derives it
    (`model_key_of`, after the job's own `decode` and `parse`), UTF-8, so that all of a key's
    records share a partition and keep their order. For account_id it is the normalized id, not
    its pseudonym. None when the job would dead-letter the line for its key (not UTF-8, over the
    size cap, not a JSON object, the field missing or unusable): its partition does not matter."""
    try:
        key = model_key_of(parse(decode(line, rules.max_record_bytes)), key_field, rules)
    except Rejected:
        return None
    return key.encode("utf-8") if key is not None else None


def produce(settings: Settings, lines: Iterable[bytes], *, total: int | None = None, rate: float | None = None,
            key_field: str | None = None, topic: str | None = None) -> int:
    """Sends each line as one message (idempotent producer, acks=all), keyed by `partition_key`
    unless `key_field` is None, at about `rate` messages/s (None: as fast as possible), with a
    progress bar on stderr. Returns how many were acknowledged; raises if any delivery failed."""
    from confluent_kafka import Producer
    from tqdm import tqdm

    producer = Producer({
        **client_config(settings),
        "enable.idempotence": True,  # retries never duplicate or reorder a partition's records
        "acks": "all",
        "linger.ms": 5,
        "message.max.bytes": settings.kafka.max_message_bytes,
    })
    topic = topic or settings.kafka.transactions_topic
    rules = cleaning_rules(settings)  # the job's: an imputed model key gets the same message key
    failures: list[str] = []
    delivered = 0

    def on_delivery(error, _message):
        nonlocal delivered
        if error is not None:
            failures.append(str(error))
        else:
            delivered += 1

    started = time.perf_counter()
    with tqdm(total=total, unit=" records", mininterval=0.5, file=sys.stderr) as progress:
        for sent, line in enumerate(lines, 1):
            key = partition_key(line, key_field, rules) if key_field else None
            while True:
                try:
                    producer.produce(topic, value=line, key=key, on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
            producer.poll(0)
            progress.update(1)
            if rate:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
    if failures:
        raise DeliveryFailed(f"{len(failures)} records were not delivered; first: {failures[0]}")
    return delivered


def tail(settings: Settings, topic: str, *, from_beginning: bool = True, max_records: int | None = None,
         idle_timeout_s: float | None = None, committed_only: bool = True,
         until_end: bool = False) -> Iterator[tuple[int, int, bytes | None, bytes]]:
    """(partition, offset, key, value) of the topic's committed records (read_committed), until
    `max_records` were read or nothing arrived for `idle_timeout_s` (None: follow forever), counted
    from when the consumer got its partitions, so a slow group join does not end it early. With
    `committed_only=False` also records of open and aborted transactions (read_uncommitted).

    With `until_end`, it also stops as soon as every partition has been read to its end as the
    broker reports it when the reader gets there (read_committed: the last stable offset, before
    any transaction still open). On a topic nothing writes to any more (the outputs of a job that
    has ended, an input produced before) that is every record an idle timeout would give, without
    waiting the timeout out after the last one."""
    from confluent_kafka import Consumer, KafkaError, KafkaException

    consumer = Consumer({
        **client_config(settings),
        "group.id": f"riskstream-tail-{uuid.uuid4()}",
        "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
        "fetch.max.bytes": settings.kafka.max_message_bytes * 4,
        "max.partition.fetch.bytes": settings.kafka.max_message_bytes,
        # An event each time the reader reaches a partition's end (until_end counts them).
        "enable.partition.eof": until_end,
    })
    last_record = time.monotonic()  # of the last record, or when the partitions were assigned
    not_at_end: set[int] | None = None  # the assigned partitions whose end the reader has not reached

    def assigned(_consumer, partitions):
        nonlocal last_record, not_at_end
        last_record = time.monotonic()
        not_at_end = {partition.partition for partition in partitions}

    consumer.subscribe([topic], on_assign=assigned)
    read = 0
    try:
        while max_records is None or read < max_records:
            message = consumer.poll(0.5)
            if message is None:
                if idle_timeout_s is not None and time.monotonic() - last_record > idle_timeout_s:
                    return
                continue
            if message.error() and message.error().code() == KafkaError._PARTITION_EOF:
                if not_at_end is not None:
                    not_at_end.discard(message.partition())
                    if not not_at_end:
                        return
                continue
            if message.error():
                raise KafkaException(message.error())
            read += 1
            last_record = time.monotonic()
            yield message.partition(), message.offset(), message.key(), message.value()
    finally:
        consumer.close()
