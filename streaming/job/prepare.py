"""The preparing operators: a bundle of raw transactions becomes per-shard batches of clean,
encoded records (and dead letters); a bundle of raw labels becomes label lines for LabelRouter.java
(and dead letters). Decode, parse, clean and features are udfs/'s decisions."""

from __future__ import annotations

import secrets
from typing import NamedTuple

from pyflink.common import Row
from pyflink.datastream import ProcessFunction, RuntimeContext

from streaming.job.bundles import DEAD_LETTERS, LABEL_DEAD_LETTERS, ROUTES, now_ms
from streaming.job.identity import METRICS_GROUP
from udfs.cleaning import Rejected
from udfs.feature_log import log_id_of, where
from udfs.labels import read_label
from udfs.live_metrics import DEAD_LETTER_STAGES, dead_letters_by_stage, records_in_bundle
from udfs.reading import TransactionReader
from udfs.wire import (
    RecordBatch,
    keyed_lines_bundle,
    label_line,
    pack_shard_batch,
    route_line,
    split_bundle_header,
    split_envelope,
)

EMPTY_BATCH = RecordBatch.of([])


class ReadBundle(ProcessFunction):
    """Decode, parse, clean and encode a bundle of records; emits Row(shard, (shard, that shard's
    records in arrival order as a packed RecordBatch)) per shard (the shard in front, to be keyed
    by in Java: java_operators.keyed_by_shard), and the bundle's dead letters, as JSON lines, to
    DEAD_LETTERS."""

    def __init__(self, reader: TransactionReader, shards: int, keyed_output: bool, watermarked: bool,
                 routing: LabelRouting | None = None):
        self.reader = reader
        self.shards = shards
        self.keyed_output = keyed_output
        self.watermarked = watermarked  # records carry their split's watermark (SplitWatermarkTagger.java)
        self.routing = routing  # None: labels are inline only, nothing is logged or routed
        self.metrics = None
        self.records_read = None
        self.dead_lettered = {}
        self.worker = ""
        self.logs_made = 0

    def open(self, runtime_context: RuntimeContext):
        # Counters go up once per bundle, by the bundle's count: per record would cost the hot path.
        self.metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.records_read = self.metrics.counter("records_read")
        # A key-value group, so that Prometheus gets one metric with a `stage` label.
        self.dead_lettered = {stage: self.metrics.add_group("stage", stage).counter("dead_lettered")
                              for stage in DEAD_LETTER_STAGES}
        # Feature log ids are unique across workers and runs (see udfs.feature_log.log_id_of).
        self.worker = secrets.token_hex(6)
        self.logs_made = 0

    def process_element(self, bundle, ctx):
        stream, seq, records = split_bundle_header(bundle.decode("utf-8"))
        by_shard, dead_letters = self.reader.read_bundle_columns(records, self.shards, now_ms(), self.watermarked)
        self.records_read.inc(records_in_bundle(records))
        if dead_letters:  # keyed by txn_id, when known
            for stage, count in dead_letters_by_stage(dead_letters).items():
                if stage not in self.dead_lettered:  # a stage udfs/ added since
                    self.dead_lettered[stage] = self.metrics.add_group("stage", stage).counter("dead_lettered")
                self.dead_lettered[stage].inc(count)
            yield DEAD_LETTERS, keyed_lines_bundle(dead_letters, self.keyed_output)
        # A numbered bundle gives every shard a batch, even an empty one, so that each shard can
        # tell an empty batch from one still on its way (see udfs/ordering.py).
        shards = range(self.shards) if stream is not None else by_shard
        routes = []
        for shard in shards:
            batch = by_shard.get(shard)
            if batch is None or self.routing is None or not len(batch):
                yield Row(shard, (shard, pack_shard_batch(stream, seq, batch if batch is not None else EMPTY_BATCH)))
                continue
            log_id = log_id_of(int(batch.event_times.max()) + self.routing.ttl_ms, len(batch), self.worker,
                               self.logs_made)
            self.logs_made += 1
            routes += self.routing.routes(batch, shard, log_id)
            yield Row(shard, (shard, pack_shard_batch(stream, seq, batch, log_id)))
        if routes:
            yield ROUTES, b"\n".join(routes)


class LabelRouting(NamedTuple):
    """What the preparing operator tells LabelRouter.java of the transactions it sends to be scored."""

    ttl_ms: int  # labels.ttl_ms: how long a batch's features are logged after its latest event time
    learn_inline: bool  # labels.mode both: the inline label is learned from at scoring

    def routes(self, batch: RecordBatch, shard: int, log_id: str) -> list[bytes]:
        """One `udfs.wire.route_line` per record of `batch`, in order."""
        inline = batch.labels.tolist() if self.learn_inline else [-1] * len(batch)
        return [route_line(txn_id, shard, event_time, label, where(log_id, row))
                for row, (txn_id, event_time, label) in enumerate(zip(batch.txn_ids, batch.event_times.tolist(), inline))]


class ReadLabels(ProcessFunction):
    """Decodes, parses and cleans a bundle of labels (udfs.labels.read_label): emits the usable
    ones as one bundle of `label_line`s for LabelRouter.java, and dead letters (stages
    label-decode, label-parse, label-clean) to LABEL_DEAD_LETTERS."""

    def __init__(self, reader: TransactionReader, keyed_output: bool):
        self.reader = reader  # for its size cap and its dead letters (pseudonymized raw text)
        self.keyed_output = keyed_output
        self.labels_read = None
        self.dead_lettered = None

    def open(self, runtime_context: RuntimeContext):
        metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.labels_read = metrics.counter("labels_read")
        self.dead_lettered = metrics.counter("labels_unreadable")

    def process_element(self, bundle, ctx):
        lines, dead_letters = [], []
        now = now_ms()
        envelopes = bundle.decode("utf-8").split("\n")
        for envelope in envelopes:
            source, raw = split_envelope(envelope)
            try:
                lines.append(label_line(read_label(raw, self.reader.rules.max_record_bytes)))
            except Rejected as rejected:
                dead_letters.append(self.reader.dead_letter(raw, rejected, source, now))
        self.labels_read.inc(len(envelopes))
        if lines:
            yield b"\n".join(lines)
        if dead_letters:
            self.dead_lettered.inc(len(dead_letters))
            yield LABEL_DEAD_LETTERS, keyed_lines_bundle(dead_letters, self.keyed_output)

