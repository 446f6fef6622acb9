"""The one configuration object of a Riskstream job, loaded from a YAML profile in `conf/`.

Every setting is validated when the job starts: an unknown key, a wrong type, an impossible value or
settings that contradict one another raise `ConfigError` with one line naming the field and what is
allowed. Once loaded, nothing in it can be changed (mappings included). Overrides come from
`--set dotted.key=value` on the command line (values are read as YAML scalars) and, for secrets, from
the environment (`RISKSTREAM_PSEUDONYM_KEY`).
"""

from __future__ import annotations

import os
from typing import Literal, NamedTuple

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveInt,
    SecretStr,
    model_validator,
)

from streaming.config.base import PSEUDONYM_KEY_ENV, ConfigError, ModelKeyField, ReadOnlyMapping, Section
from streaming.config.dedup_settings import DAY_MS, DedupSettings
from streaming.config.drift_settings import DriftSection, OnDrift
from streaming.config.endpoints import KafkaSettings, LabelSourceSettings, OutputSettings, SourceSettings
from streaming.config.global_settings import Blend, ColdStart, GlobalModelSection


class MissingValue(Section):
    """What to do when a field is absent or null: dead-letter the record, or use `value`."""

    action: Literal["dead_letter", "impute"]
    value: str | float | int | None = None


class CleaningSettings(Section):
    max_record_bytes: int = Field(default=65536, ge=64, le=16 * 1024 * 1024)
    # How much of a rejected record's bytes a dead letter keeps when the record is over the cap.
    dead_letter_raw_bytes: int = Field(default=1024, ge=0, le=65536)
    default_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    # The channels cleaning accepts, as it normalizes them (lower case); others are dead-lettered.
    channels: tuple[str, ...] = ("web", "pos", "atm", "mobile")
    # Per-field policy for absent or null values; keys are contract fields or `features.<name>`.
    # Unlisted: required fields are dead-lettered, `currency` takes `default_currency`,
    # `merchant_id` becomes null, `is_fraud` means "score only", `features.<name>` is dead-lettered.
    missing: ReadOnlyMapping[str, MissingValue] = {}

    @model_validator(mode="after")
    def _channels_can_match(self) -> "CleaningSettings":
        from udfs.cleaning import normalize_categorical

        # A record's channel is compared after normalization, so any other spelling here, or no
        # channel at all, silently dead-letters the records it was meant to let through.
        if not self.channels:
            raise ValueError("cleaning.channels: at least one channel is needed; "
                             "with none every record is dead-lettered")
        for channel in self.channels:
            if not channel or normalize_categorical("channel", channel) != channel:
                raise ValueError(f"cleaning.channels: {channel!r} never matches a cleaned channel; "
                                 f"write it lower case, without surrounding or repeated spaces")
        return self

    @model_validator(mode="after")
    def _usable_missing_policies(self) -> "CleaningSettings":
        from udfs.cleaning import CONTRACT_FIELDS, REQUIRED_FIELDS, normalize_categorical

        for name, policy in self.missing.items():
            if name not in CONTRACT_FIELDS and not name.startswith("features."):
                allowed = ", ".join(sorted(CONTRACT_FIELDS))
                raise ValueError(f"cleaning.missing.{name}: unknown field; allowed: {allowed}, features.<name>")
            if policy.action != "impute":
                continue
            # An imputed value that cleaning or the features reject dead-letters every record that
            # lacks the field, with a reason that blames the record.
            where = f"cleaning.missing.{name}.value"
            if policy.value is None and (name in REQUIRED_FIELDS or name.startswith("features.")):
                raise ValueError(f"{where}: impute needs a value (a null {name} is dead-lettered; "
                                 f"action: dead_letter says so)")
            if name == "channel" and normalize_categorical("channel", str(policy.value)) not in self.channels:
                raise ValueError(f"{where}: {policy.value!r} is not one of cleaning.channels "
                                 f"({', '.join(self.channels)})")
            if name.startswith("features.") and not isinstance(policy.value, (int, float)):
                raise ValueError(f"{where}: a feature's value must be a number (got {policy.value!r})")
        return self


class PrivacySettings(Section):
    # The HMAC key that pseudonymizes account_id. The environment variable RISKSTREAM_PSEUDONYM_KEY
    # wins over this value; a profile for real data should leave it unset.
    pseudonym_key: SecretStr | None = None


class NumericFeature(Section):
    field: str = Field(pattern=r"^(amount|features\.[A-Za-z0-9_]+)$")
    log: bool = False  # log1p(value); needs value > -1
    standardize: bool = False  # online z-score with per-key running mean and variance


class CategoricalFeature(Section):
    field: Literal["merchant_category", "country", "channel", "currency", "merchant_id"]
    encoding: Literal["one_hot", "hashed"]
    vocabulary: tuple[str, ...] = ()  # one_hot: normalized values; others encode as all zeros
    buckets: int = Field(default=0, ge=0, le=1 << 20)  # hashed: number of buckets (crc32 mod buckets)

    @model_validator(mode="after")
    def _encoding_needs(self) -> "CategoricalFeature":
        where = f"features.categorical.{self.field}"
        if self.encoding == "hashed":
            if self.buckets < 1:
                raise ValueError(f"{where}.buckets: hashed needs buckets >= 1")
            if self.vocabulary:
                raise ValueError(f"{where}.vocabulary: only one_hot uses a vocabulary; hashed uses buckets")
            return self
        if not self.vocabulary:
            raise ValueError(f"{where}.vocabulary: one_hot needs at least one value")
        if self.buckets:
            raise ValueError(f"{where}.buckets: only hashed uses buckets; one_hot uses a vocabulary")
        from udfs.cleaning import COUNTRY_CODE, CURRENCY_CODE, normalize_categorical

        normalized = [normalize_categorical(self.field, value) for value in self.vocabulary]
        if len(set(normalized)) != len(normalized):
            raise ValueError(f"{where}.vocabulary: values repeat after normalization")
        # Cleaning dead-letters any other country or currency, so such a column would always be 0.
        codes = {"country": (COUNTRY_CODE, "an ISO-3166 alpha-2 code"),
                 "currency": (CURRENCY_CODE, "an ISO-4217 code")}
        if self.field in codes:
            code, what = codes[self.field]
            for value, cleaned in zip(self.vocabulary, normalized):
                if not code.match(cleaned):
                    raise ValueError(f"{where}.vocabulary: {value!r} is not {what}, which cleaning requires")
        return self


TimeEncoding = Literal["none", "one_hot", "cyclic"]


class TimeFeatures(Section):
    hour_of_day: TimeEncoding = "none"  # UTC hour from event_time
    day_of_week: TimeEncoding = "none"  # UTC weekday from event_time, Monday = 0


class FeatureSettings(Section):
    numeric: tuple[NumericFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()
    time: TimeFeatures = TimeFeatures()

    @model_validator(mode="after")
    def _some_features(self) -> "FeatureSettings":
        if not self.numeric and not self.categorical and self.time == TimeFeatures():
            raise ValueError("features: at least one numeric, categorical or time feature is needed")
        return self

    @model_validator(mode="after")
    def _each_feature_once(self) -> "FeatureSettings":
        # A model snapshot maps feature names to weights: a name given twice loses a weight, and
        # the snapshot no longer matches the configured features.
        numeric = [(feature.field, feature.log) for feature in self.numeric]
        for field, log in numeric:
            if numeric.count((field, log)) > 1:
                raise ValueError(f"features.numeric: {field} with log: {str(log).lower()} is listed twice")
        categorical = [feature.field for feature in self.categorical]
        for field in categorical:
            if categorical.count(field) > 1:
                raise ValueError(f"features.categorical: {field} is listed twice; one encoding per field")
        return self


class FtrlSettings(Section):
    """FTRL-Proximal's parameters (McMahan et al. 2013): a coordinate's rate is
    alpha / (beta + sqrt(n)); l1 and l2 regularize the weights (not the bias)."""

    alpha: float = Field(default=0.1, gt=0, le=100)
    beta: float = Field(default=1.0, gt=0, le=1e6)
    l1: float = Field(default=0.0, ge=0, le=1e6)
    l2: float = Field(default=0.0, ge=0, le=1e6)


class ModelSettings(Section):
    key: ModelKeyField = "merchant_category"
    # sgd (plain, as before), adagrad (River's AdaGrad) or ftrl (FTRL-Proximal): docs/design.md, "The model".
    optimizer: Literal["sgd", "adagrad", "ftrl"] = "sgd"
    # The step size of sgd and adagrad (ftrl's is model.ftrl.alpha).
    learning_rate: float = Field(default=0.01, gt=0, le=10)
    # sgd only. constant: rate = learning_rate; inverse_scaling: rate = learning_rate / (1 + updates) ** power_t
    schedule: Literal["constant", "inverse_scaling"] = "constant"
    power_t: float = Field(default=0.5, gt=0, le=1)
    # sgd: weight decay of every weight; adagrad: l2 w added to the gradient of the record's entries.
    l2: NonNegativeFloat = 0.0
    ftrl: FtrlSettings = FtrlSettings()
    # A new key's bias, in log-odds (-3.5: a prior fraud probability of about 3%).
    initial_bias: float = Field(default=0.0, ge=-30, le=30)
    # A snapshot of a key's model is written after every this many updates, and at end of input.
    snapshot_every: PositiveInt = 1000
    top_reasons: int = Field(default=3, ge=0, le=20)
    # A drift detector per key on its labelled records' log loss, and what a detection does to the
    # key's model (streaming/config/drift_settings.py; docs/configuration.md#modeldrift).
    drift: DriftSection = DriftSection()
    on_drift: OnDrift = "report"

    # The data-parallel global model (streaming/config/global_settings.py, docs/design.md#global-model).
    cold_start: ColdStart = "zeros"
    blend: Blend = "key"
    global_: GlobalModelSection = Field(default_factory=GlobalModelSection, alias="global")

    @property
    def uses_global(self) -> bool:
        """Whether the job trains the global model (and reads its versions back from Kafka)."""
        return self.cold_start == "global" or self.blend != "key" or self.on_drift == "rewarm"

    @model_validator(mode="after")
    def _settings_of_the_optimizer(self) -> "ModelSettings":
        # A setting the configured optimizer would ignore is a mistake worth a line, not a silent no-op.
        if self.optimizer != "sgd" and self.schedule != "constant":
            raise ValueError(f"model.schedule: {self.schedule} is for model.optimizer sgd; "
                             f"{self.optimizer} adapts its own rates (use constant)")
        if self.optimizer == "ftrl" and self.l2:
            raise ValueError("model.l2: ftrl takes its L2 from model.ftrl.l2 (set model.l2 to 0)")
        if self.optimizer != "ftrl" and "ftrl" in self.model_fields_set:
            raise ValueError(f"model.ftrl: only model.optimizer ftrl uses it (the optimizer is {self.optimizer})")
        return self


class RestartSettings(Section):
    """What Flink does when a task fails: `none` fails the job; `fixed-delay` restarts it up to
    `attempts` times, `delay_ms` apart; `exponential-delay` restarts it without limit, waiting
    `delay_ms` at first and doubling the wait up to `max_delay_ms`. A restart resumes from the last
    completed checkpoint."""

    strategy: Literal["none", "fixed-delay", "exponential-delay"] = "none"
    attempts: int = Field(default=3, ge=1, le=1_000_000)
    delay_ms: int = Field(default=1000, ge=0, le=3_600_000)
    max_delay_ms: int = Field(default=60_000, ge=0, le=3_600_000)

    @model_validator(mode="after")
    def _backoff_can_grow(self) -> "RestartSettings":
        # Flink refuses these when the job starts, with a stack trace instead of a line.
        if self.strategy == "exponential-delay":
            if self.delay_ms < 1:
                raise ValueError("checkpointing.restart.delay_ms: exponential-delay needs delay_ms >= 1")
            if self.max_delay_ms < self.delay_ms:
                raise ValueError(f"checkpointing.restart.max_delay_ms: must be >= delay_ms ({self.delay_ms}) "
                                 f"for exponential-delay")
        return self


class CheckpointSettings(Section):
    """Checkpoints of the job's state (models, source offsets, open sink transactions).

    `state_backend`: `hashmap` keeps state on the JVM heap (fast; bounded by memory), `rocksdb` in
    RocksDB on local disk (bounded by disk; with `incremental`, a checkpoint uploads only the files
    that changed since the last). `retain_on_cancel` keeps the last checkpoint when the job is
    cancelled, so `riskstream submit --from` can resume from it. `tolerable_failures` checkpoints
    may fail in a row (a broker restart makes them fail) before the job itself fails over.
    Savepoints (`riskstream stop`) go to `savepoint_directory`.
    """

    interval_ms: PositiveInt = 2000
    # The least time between the end of one checkpoint and the start of the next: when checkpoints
    # take longer than the interval, it leaves the job time to work between them.
    min_pause_ms: int = Field(default=0, ge=0, le=3_600_000)
    directory: str = "var/checkpoints"
    savepoint_directory: str = "var/savepoints"
    state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    incremental: bool = False
    retain_on_cancel: bool = False
    tolerable_failures: int = Field(default=0, ge=0, le=1000)
    restart: RestartSettings = RestartSettings()

    @model_validator(mode="after")
    def _incremental_needs_rocksdb(self) -> "CheckpointSettings":
        if self.incremental and self.state_backend != "rocksdb":
            raise ValueError("checkpointing.incremental: only the rocksdb state_backend checkpoints incrementally")
        return self


class Bundling(NamedTuple):
    """How records are batched on their way through Python (see PerformanceSettings)."""

    max_records: int  # records in a bundle, at most
    max_delay_ms: int  # how long a bundle waits for more records, at most
    buffer_timeout_ms: int  # how often Flink's network buffers flush, at least


BUNDLING_MODES = {"throughput": Bundling(2000, 200, 100), "low_latency": Bundling(512, 5, 5)}


class PerformanceSettings(Section):
    """How records are batched on their way through Python.

    Records cross into Python in bundles of up to `bundle_max_records`, and a bundle waits at most
    `bundle_max_delay_ms` for more records; Flink's network buffers flush at least every
    `buffer_timeout_ms`. The two modes set all three (throughput: 2000 / 200 ms / 100 ms;
    low_latency: 512 / 5 ms / 5 ms: a bundle leaves after 5 ms, and grows only while the job is
    behind, so that it catches up); a value given here wins over the mode's. Model keys are hashed
    into `shards` groups, each scored by one Python call per bundle; changing `shards` needs fresh
    state, like `flink.max_parallelism`. `parallel_prepare` is off in low_latency mode because a
    numbered bundle sends a batch to every shard, too many for bundles of a few records.
    """

    mode: Literal["throughput", "low_latency"] = "throughput"
    bundle_max_records: PositiveInt | None = None
    bundle_max_delay_ms: int | None = Field(default=None, ge=0, le=60_000)
    buffer_timeout_ms: int | None = Field(default=None, ge=0, le=60_000)
    shards: int = Field(default=32, ge=1, le=4096)
    # Spread bundles over all parallel workers for decoding, cleaning and features, and restore
    # each shard's order before scoring. Worth it when one source subtask reads most of the input
    # (one file) and bundles are large; needs aligned checkpoints (Flink's default).
    parallel_prepare: bool | None = None  # None: True in throughput mode, False in low_latency

    def spreads_bundles(self) -> bool:
        """Whether bundles are numbered and spread over all preparing workers."""
        return self.parallel_prepare if self.parallel_prepare is not None else self.mode == "throughput"

    def bundling(self) -> Bundling:
        """The mode's bundling, with the values given here in its place."""
        mode = BUNDLING_MODES[self.mode]
        return Bundling(
            self.bundle_max_records if self.bundle_max_records is not None else mode.max_records,
            self.bundle_max_delay_ms if self.bundle_max_delay_ms is not None else mode.max_delay_ms,
            self.buffer_timeout_ms if self.buffer_timeout_ms is not None else mode.buffer_timeout_ms,
        )


class WindowSettings(Section):
    """Windows of `size_ms` starting every `slide_ms` (tumbling when slide_ms is left out)."""

    size_ms: PositiveInt
    slide_ms: PositiveInt | None = None

    @model_validator(mode="after")
    def _slide_divides_size(self) -> "WindowSettings":
        if self.slide_ms is not None and (self.slide_ms > self.size_ms or self.size_ms % self.slide_ms):
            raise ValueError(f"analytics.windows.slide_ms: must divide size_ms ({self.size_ms}), got {self.slide_ms}")
        return self


class AnalyticsSettings(Section):
    """Event-time windowed figures of the scored stream per group (udfs/analytics.py says how
    windows, watermarks and late records are defined), written to `<output>/analytics` and
    `<output>/late` (or the kafka.analytics_topic and kafka.late_topic). Off unless a profile
    turns it on (conf/local.yaml does, so every profile that extends it): it costs CPU per record,
    and an event-time watermark, read from each record's event_time in the source
    (event_time.transactions)."""

    enabled: bool = False
    group_by: tuple[Literal["merchant_category", "country", "channel", "currency"], ...] = (
        "merchant_category", "country")
    windows: tuple[WindowSettings, ...] = (WindowSettings(size_ms=60_000),)
    # A window is emitted when the watermark reaches its end plus this (the watermark: event_time.transactions).
    allowed_lateness_ms: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _something_to_compute(self) -> "AnalyticsSettings":
        if self.enabled and not (self.group_by and self.windows):
            raise ValueError("analytics.group_by, analytics.windows: at least one of each is needed when enabled")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("analytics.group_by: a field may appear once")
        return self


class WatermarkSettings(Section):
    """How one input's event time advances, per split (a file, a Kafka partition)."""

    # A split's watermark trails the largest event time it has read by this much.
    out_of_orderness_ms: int = Field(default=5_000, ge=0)
    # A split that sends nothing for this long (processing time) stops holding the watermark back;
    # a source subtask that reads nothing for this long emits the watermark of all it read, then
    # (one period later) stops holding it back (RecordBundler.java).
    idleness_ms: PositiveInt = 10_000


class EventTimeSettings(Section):
    """The event time of the job's inputs, shared by everything that needs it. transactions: their
    event_time, for windowed analytics and to expire a label stream's feature logs (the job
    watermarks transactions only when one of those is on); labels: their label_time."""

    transactions: WatermarkSettings = WatermarkSettings()
    labels: WatermarkSettings = WatermarkSettings()


class LabelSettings(Section):
    """What the models learn from (docs/labels.md; udfs/label_outcomes.py decides each
    label's outcome). inline: the `is_fraud` a transaction carries, when it is scored. stream: labels
    from `source`, joined to their transactions by txn_id; an inline is_fraud is shown in the score
    but not learned from. both: inline labels when scored, and stream labels (a stream label for a
    transaction learned inline is a second label). Times are epoch milliseconds of event time."""

    mode: Literal["inline", "stream", "both"] = "inline"
    source: LabelSourceSettings | None = None
    # A label more than this after its transaction's event_time is expired (not learned from); a
    # scored transaction's features are kept this long for its label.
    ttl_ms: PositiveInt = 30 * DAY_MS
    # A label whose transaction has not been scored waits this long (after its label_time) for it,
    # then is unknown.
    unknown_wait_ms: int = Field(default=3_600_000, ge=0)
    # How long after its event_time a transaction's txn_id is remembered, so that a label later than
    # the TTL is told apart (expired) from one for a transaction never seen (unknown); at least
    # ttl_ms. Unset: twice ttl_ms.
    remember_ms: PositiveInt | None = None

    @model_validator(mode="after")
    def _source_when_streamed(self) -> "LabelSettings":
        if self.mode != "inline" and self.source is None:
            raise ValueError(f"labels.source: a label source is needed when labels.mode is '{self.mode}'")
        if self.remember_ms is not None and self.remember_ms < self.ttl_ms:
            raise ValueError(f"labels.remember_ms: must be >= labels.ttl_ms ({self.ttl_ms}), got {self.remember_ms}")
        return self

    @property
    def streamed(self) -> bool:
        """Whether labels come from a label stream (mode stream or both)."""
        return self.mode != "inline"

    def remembered_ms(self) -> int:
        return self.remember_ms if self.remember_ms is not None else 2 * self.ttl_ms


class FlinkSettings(Section):
    parallelism: PositiveInt = 2
    # Pinned so keyed state in a savepoint maps to the same key groups after a change.
    max_parallelism: PositiveInt = 128
    python_execution_mode: Literal["thread", "process"] = "thread"
    # Jars of your own for the job's class path (the project's jars are added by the job itself).
    jars: tuple[str, ...] = ()
    # host:port of the session cluster's REST API, for `riskstream submit`, `status` and `stop`
    # (`jobmanager:8081` inside the compose stack).
    rest_address: str = Field(default="127.0.0.1:18081", pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$")
    # MiB of managed memory in the embedded mini-cluster of `riskstream run`: RocksDB's block cache
    # and write buffers (and the Python workers' share). Flink's own default for a local run, 128,
    # starves RocksDB: its lookups read from disk (measured: the label stream's router took 2.8
    # times the CPU). A session cluster's TaskManagers size theirs in conf/flink/config.yaml.
    local_managed_memory_mb: int = Field(default=1024, ge=128)

    @property
    def rest_url(self) -> str:
        return f"http://{self.rest_address}"

    @model_validator(mode="after")
    def _parallelism_fits(self) -> "FlinkSettings":
        if self.parallelism > self.max_parallelism:
            raise ValueError(f"flink.parallelism: must be <= flink.max_parallelism ({self.max_parallelism})")
        return self


class Settings(Section):
    source: SourceSettings
    output: OutputSettings = OutputSettings()
    cleaning: CleaningSettings = CleaningSettings()
    privacy: PrivacySettings = PrivacySettings()
    features: FeatureSettings
    model: ModelSettings = ModelSettings()
    checkpointing: CheckpointSettings = CheckpointSettings()
    kafka: KafkaSettings = KafkaSettings()
    performance: PerformanceSettings = PerformanceSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    labels: LabelSettings = LabelSettings()
    dedup: DedupSettings = DedupSettings()
    event_time: EventTimeSettings = EventTimeSettings()
    flink: FlinkSettings = FlinkSettings()

    @model_validator(mode="after")
    def _sections_agree(self) -> "Settings":
        from udfs.cleaning import normalize_categorical

        channels = self.cleaning.channels
        for feature in self.features.categorical:
            if feature.field == "channel":  # one_hot: a hashed feature has no vocabulary
                # Cleaning dead-letters any other channel, so such a column would always be 0.
                for value in feature.vocabulary:
                    if normalize_categorical("channel", value) not in channels:
                        raise ValueError(f"features.categorical.channel.vocabulary: {value!r} is not one of "
                                         f"cleaning.channels ({', '.join(channels)})")
        kafka = self.kafka
        if self.output.kind == "kafka" and kafka.delivery == "exactly-once":
            # A transaction stays open from one checkpoint to the next; the broker aborts one that
            # outlives its timeout, and with it the output of that interval.
            if self.checkpointing.interval_ms >= kafka.transaction_timeout_ms:
                raise ValueError(f"checkpointing.interval_ms: must be below kafka.transaction_timeout_ms "
                                 f"({kafka.transaction_timeout_ms}) for exactly-once Kafka output")
        return self

    @property
    def transactions_in_event_time(self) -> bool:
        """Whether transactions carry event-time watermarks: for windowed analytics, to expire the
        feature logs of a label stream, or to expire the txn_ids remembered for de-duplication."""
        return self.analytics.enabled or self.labels.streamed or self.dedup.enabled

    def pseudonym_key(self) -> bytes:
        """The account_id HMAC key: the environment's, else the profile's; fails if neither is set."""
        key = os.environ.get(PSEUDONYM_KEY_ENV) or None
        if key is None and self.privacy.pseudonym_key is not None:
            key = self.privacy.pseudonym_key.get_secret_value()
        if not key:
            raise ConfigError(f"privacy.pseudonym_key: not set; set it in the profile or in ${PSEUDONYM_KEY_ENV}")
        return key.encode("utf-8")


