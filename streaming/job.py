"""The scoring job: `build_job(env, settings)` wires source -> prepare -> key_by -> model -> sinks.

Every decision about a record is made by `udfs/`; the functions here only hand records to it and
route what comes back (scores, dead letters, snapshots) to sinks.
"""

from __future__ import annotations

import site
import sys
import time
from pathlib import Path

from pyflink.common import Configuration, Duration, Encoder, JobClient, Types, WatermarkStrategy
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.connectors.file_system import (
    BucketAssigner,
    BulkFormat,
    FileSink,
    FileSource,
    OutputFileConfig,
    RollingPolicy,
)
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.java_gateway import get_gateway

from streaming.config import Settings
from udfs.cleaning import CleaningRules, MissingPolicy
from udfs.features import FeatureEncoder
from udfs.model import KeyModel, Sgd
from udfs.pipeline import ModelScorer, RecordPreparer

# The final watermark of a bounded input; a timer here fires only when the input has ended.
END_OF_INPUT = 2**63 - 1

DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
SNAPSHOTS = OutputTag("model-snapshots", Types.STRING())

OUTPUTS = ("scores", "dead-letters", "model-snapshots")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def flink_configuration(settings: Settings) -> Configuration:
    """Flink settings for the job; the Python workers use this interpreter and its packages."""
    flink = settings.flink
    conf = Configuration()
    values = {
        "execution.runtime-mode": "STREAMING",  # BATCH would sort by key and break arrival order
        "parallelism.default": str(flink.parallelism),
        "pipeline.max-parallelism": str(flink.max_parallelism),
        "python.execution-mode": flink.python_execution_mode,
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        # Thread mode embeds CPython in the JVM, which does not read the virtual environment.
        "python.pythonpath": ":".join(site.getsitepackages()),
        "execution.checkpointing.interval": f"{settings.checkpointing.interval_ms} ms",
        "execution.checkpointing.dir": Path(settings.checkpointing.directory).as_uri(),
        "restart-strategy.type": "fixed-delay" if flink.restart_attempts else "none",
        "restart-strategy.fixed-delay.attempts": str(flink.restart_attempts),
        "pipeline.jars": ";".join(Path(jar).as_uri() for jar in flink.jars),
    }
    for key, value in values.items():
        conf.set_string(key, value)
    return conf


def build_preparer(settings: Settings) -> RecordPreparer:
    cleaning = settings.cleaning
    rules = CleaningRules(
        pseudonym_key=settings.pseudonym_key(),
        channels=frozenset(cleaning.channels),
        default_currency=cleaning.default_currency,
        missing={name: MissingPolicy(p.action == "impute", p.value) for name, p in cleaning.missing.items()},
        max_record_bytes=cleaning.max_record_bytes,
    )
    return RecordPreparer(rules, build_encoder(settings, rules), settings.model.key, cleaning.dead_letter_raw_bytes)


def build_encoder(settings: Settings, rules: CleaningRules) -> FeatureEncoder:
    features = settings.features
    return FeatureEncoder(features.numeric, features.categorical, features.time.hour_of_day,
                          features.time.day_of_week, rules.policy)


def build_scorer(settings: Settings, encoder: FeatureEncoder) -> ModelScorer:
    model = settings.model
    sgd = Sgd(model.learning_rate, model.schedule, model.power_t, model.l2)
    return ModelScorer(encoder.names, encoder.standardized, sgd, model.snapshot_every, model.top_reasons)


class PrepareRecords(ProcessFunction):
    """Decode, parse, clean, encode; dead letters go to the DEAD_LETTERS side output."""

    def __init__(self, preparer: RecordPreparer):
        self.preparer = preparer

    def process_element(self, envelope, ctx):
        result = self.preparer.prepare(envelope, now_ms())
        if isinstance(result, str):
            yield DEAD_LETTERS, result
        else:
            yield result


class ScoreAndLearn(KeyedProcessFunction):
    """One key's model in keyed state: score each record, then learn; snapshots to SNAPSHOTS."""

    def __init__(self, scorer: ModelScorer):
        self.scorer = scorer
        self.model_state = None

    def open(self, runtime_context: RuntimeContext):
        self.model_state = runtime_context.get_state(ValueStateDescriptor("model", Types.PICKLED_BYTE_ARRAY()))

    def process_element(self, record, ctx):
        state = self.model_state.value()
        if state is None:
            key_model = self.scorer.new_model()
            ctx.timer_service().register_event_time_timer(END_OF_INPUT)  # the final snapshot
        else:
            key_model = KeyModel.from_bytes(state)
        score, snapshot = self.scorer.score_and_learn(key_model, record, now_ms())
        self.model_state.update(key_model.to_bytes())
        yield score
        if snapshot is not None:
            yield SNAPSHOTS, snapshot

    def on_timer(self, timestamp, ctx):
        state = self.model_state.value()
        if state is not None:
            yield SNAPSHOTS, self.scorer.snapshot(KeyModel.from_bytes(state), ctx.get_current_key())


def transactions_source(env: StreamExecutionEnvironment, settings: Settings) -> DataStream:
    """Raw records tagged with their file and line (see SourceTaggedLineFormat.java)."""
    line_format = BulkFormat(get_gateway().jvm.riskstream.flink.SourceTaggedLineFormat())
    source = settings.source
    if source.kind == "files":
        builder = FileSource.for_bulk_file_format(line_format, *source.paths)
    else:
        builder = FileSource.for_bulk_file_format(line_format, source.directory).monitor_continuously(
            Duration.of_millis(source.discovery_interval_ms))
    # No event-time watermarks: the model works in arrival order, and the final watermark of a
    # bounded input still arrives to fire the end-of-input timers.
    return env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), "transactions-source").uid(
        "transactions-source")


def json_lines_sink(path: Path, name: str) -> FileSink:
    return (
        FileSink.for_row_format(str(path / name), Encoder.simple_string_encoder())
        .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
        # A part file is committed at every checkpoint, so output becomes visible once per interval.
        .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
        .with_output_file_config(OutputFileConfig.builder().with_part_prefix(name).with_part_suffix(".jsonl").build())
        .build()
    )


def build_job(env: StreamExecutionEnvironment, settings: Settings) -> None:
    """Adds the scoring pipeline to `env`: transactions -> scores, dead letters, model snapshots,
    written as JSON lines under `settings.output.path`."""
    preparer = build_preparer(settings)
    scorer = build_scorer(settings, preparer.encoder)
    transactions = transactions_source(env, settings)
    prepared = transactions.process(PrepareRecords(preparer), output_type=Types.PICKLED_BYTE_ARRAY()).name(
        "decode-parse-clean-features")
    scored = (
        prepared.key_by(lambda record: record.model_key, key_type=Types.STRING())
        .process(ScoreAndLearn(scorer), output_type=Types.STRING())
        .name("score-and-learn")
        .uid("score-and-learn")
    )
    dead_letters = prepared.get_side_output(DEAD_LETTERS)
    output = Path(settings.output.path)
    scored.sink_to(json_lines_sink(output, "scores")).name("scores-sink").uid("scores-sink")
    dead_letters.sink_to(json_lines_sink(output, "dead-letters")).name("dead-letters-sink").uid("dead-letters-sink")
    scored.get_side_output(SNAPSHOTS).sink_to(json_lines_sink(output, "model-snapshots")).name(
        "model-snapshots-sink").uid("model-snapshots-sink")


def run_job(settings: Settings) -> float:
    """Builds and runs the job to the end of its input (forever for a watched directory).
    Returns the wall time in seconds."""
    started = time.perf_counter()
    start_job(settings).get_job_execution_result().result()
    return time.perf_counter() - started


def start_job(settings: Settings) -> JobClient:
    """Builds the job and starts it without waiting; the client can wait for it or cancel it."""
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(settings))
    build_job(env, settings)
    return env.execute_async("riskstream-scoring")
