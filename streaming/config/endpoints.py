"""Where a job's records come from and go to: its sources (transactions, labels), its outputs, and
the Kafka cluster and topics shared by the job and the CLI tools."""

from __future__ import annotations

import os
from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field, PositiveInt, SecretStr, field_validator, model_validator

from streaming.config.base import SECRET_MASK, ReadOnlyMapping, Section


class InputSettings(Section):
    """An input's kind and where it is (SourceSettings, LabelSourceSettings); `_section` names it in errors."""

    _section: ClassVar[str]
    # kafka: the input's topic (see KafkaSettings for offsets, group and bounds).
    kind: Literal["files", "directory", "kafka"] = "files"
    # files: a fixed set of files, read once (a bounded stream).
    paths: tuple[str, ...] = ()
    # directory: every file that appears in it, watched continuously (an unbounded stream).
    directory: str | None = None
    discovery_interval_ms: PositiveInt = 1000

    @model_validator(mode="after")
    def _one_kind_of_input(self) -> "InputSettings":
        section = self._section
        if self.kind == "files" and not self.paths:
            raise ValueError(f"{section}.paths: at least one file is needed when {section}.kind is 'files'")
        if self.kind == "directory" and not self.directory:
            raise ValueError(f"{section}.directory: a directory is needed when {section}.kind is 'directory'")
        return self


class SourceSettings(InputSettings):
    """Where transactions come from (kafka: the kafka.transactions_topic)."""

    _section: ClassVar[str] = "source"
    # A ceiling on the records each source subtask reads per second (none when unset): for replaying
    # a backlog without flooding the outputs, or to watch a job work through a fixed input.
    max_records_per_second: PositiveInt | None = None


class OutputSettings(Section):
    """Where the job writes. files: JSON lines under `<path>/scores`, `<path>/dead-letters` and
    `<path>/model-snapshots`; kafka: the kafka.*_topic topics (message key: the model key, or the
    txn_id for dead letters)."""

    kind: Literal["files", "kafka"] = "files"
    path: str = "out/local"


KAFKA_PROPERTY_ENV_PREFIX = "RISKSTREAM_KAFKA__"


def _property_text(value: object) -> object:
    """A client property's value as Kafka reads it, text: YAML's unquoted true, 5 or 0.5 (in a
    profile or with --set kafka.properties.linger.ms=5) become "true", "5" and "0.5"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return value


# A Kafka client property's value: secret text (never printed), numbers and booleans as Kafka writes them.
PropertyValue = Annotated[SecretStr, BeforeValidator(_property_text)]


class KafkaSettings(Section):
    """The Kafka cluster, topics and delivery settings shared by the job and the CLI tools.

    `properties` are extra client properties (e.g. security.protocol, sasl.mechanism,
    sasl.jaas.config, ssl.truststore.location) given to every producer, consumer and admin client
    and to Flink's Kafka connector. Environment variables RISKSTREAM_KAFKA__<NAME> add or override
    them (NAME upper case with '.' written as '_': RISKSTREAM_KAFKA__SASL_JAAS_CONFIG is
    sasl.jaas.config). Their values are secret: never printed or logged.
    """

    bootstrap_servers: str = "127.0.0.1:19092"
    transactions_topic: str = "transactions"
    scores_topic: str = "risk-scores"
    dead_letters_topic: str = "dead-letters"
    snapshots_topic: str = "model-snapshots"
    # Written only with analytics.enabled.
    analytics_topic: str = "analytics"
    late_topic: str = "late-records"
    # Labels that arrive after their transactions (`riskstream produce --labels`), keyed by txn_id,
    # and the job's log of the labels it learned from (labels.mode stream or both).
    labels_topic: str = "labels"
    learning_topic: str = "learning"
    label_dead_letters_topic: str = "label-dead-letters"
    drift_topic: str = "drift"  # drift events, with model.drift.detector other than none
    # The global model's versions (model.cold_start global or model.blend not key): written by the
    # job's aggregator and read back by every scoring instance; one partition (one order).
    model_versions_topic: str = "model-versions"
    # txn_ids scored under two model keys within dedup.horizon_ms (RepeatedIds.java), with dedup on.
    repeated_ids_topic: str = "repeated-ids"
    partitions: PositiveInt = 3
    replication_factor: PositiveInt = 1
    # The largest message any client sends or accepts; the broker's message.max.bytes must allow it.
    max_message_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1024 * 1024)
    properties: ReadOnlyMapping[str, PropertyValue] = {}
    # The job's source: consumer group, where to start without committed offsets (or from them),
    # and whether to stop at the offsets present when it starts (a bounded run).
    consumer_group: str = "riskstream"
    starting_offsets: Literal["earliest", "latest", "committed"] = "earliest"
    bounded: bool = False
    # The job's sinks. exactly-once writes in Kafka transactions committed at checkpoints; the
    # prefix must stay the same across restarts, and the timeout must not exceed the broker's
    # transaction.max.timeout.ms (15 minutes by default).
    delivery: Literal["exactly-once", "at-least-once"] = "exactly-once"
    transactional_id_prefix: str = Field(default="riskstream", pattern=r"^[A-Za-z0-9._-]+$")
    transaction_timeout_ms: int = Field(default=600_000, ge=1000, le=900_000)

    @field_validator("properties")
    @classmethod
    def _no_masked_secret(cls, properties):
        # A profile written by `riskstream config show` holds the mask, not the secret: refused, so
        # that a client does not connect with "**********" as its password.
        for name, value in properties.items():
            if value.get_secret_value() == SECRET_MASK:
                raise ValueError(f"kafka.properties.{name}: {SECRET_MASK} is the mask `riskstream config show` "
                                 f"prints, not a value; give the real one here or in "
                                 f"{KAFKA_PROPERTY_ENV_PREFIX}{name.upper().replace('.', '_')}")
        return properties

    def client_properties(self) -> dict[str, str]:
        """bootstrap.servers plus `properties` plus the environment's overrides (secret values)."""
        merged = {"bootstrap.servers": self.bootstrap_servers}
        merged.update({name: value.get_secret_value() for name, value in self.properties.items()})
        for name, value in os.environ.items():
            if name.startswith(KAFKA_PROPERTY_ENV_PREFIX):
                merged[name[len(KAFKA_PROPERTY_ENV_PREFIX):].lower().replace("_", ".")] = value
        return merged

    def topics(self) -> tuple[str, ...]:
        return (self.transactions_topic, self.scores_topic, self.dead_letters_topic, self.snapshots_topic,
                self.analytics_topic, self.late_topic, self.labels_topic, self.learning_topic,
                self.label_dead_letters_topic, self.drift_topic, self.model_versions_topic, self.repeated_ids_topic)


class LabelSourceSettings(InputSettings):
    """Where labels come from (kafka: the kafka.labels_topic, with the transactions' offsets and bounds)."""

    _section: ClassVar[str] = "labels.source"


