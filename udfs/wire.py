"""Every format that crosses between the job's operators, or between Python and Java, with its
writer and its reader (pure Python, no Flink). docs/formats.md lists each with its producer and
consumer. In the order a record meets them:

  sentinels         NO_WATERMARK and END_OF_INPUT, Java's Long.MIN_VALUE and Long.MAX_VALUE as
                    Flink's watermarks use them, defined here once
  envelopes         a record as the source delivers it (`file:` / `kafka:` tags), and the split's
                    watermark SplitWatermarkTagger.java puts before it
  bundle headers    the number of a bundle of envelopes spread over parallel workers (RecordBundler.java)
  RecordBatch       cleaned records as columns, and their bytes
  shard batches     a shard's RecordBatch with its bundle's number and its feature log id
  label lines       the lines between the job's Python operators and LabelRouter.java
  analytics header  what the window operator reads before a scored batch's lines

This module imports nothing of `udfs` but the record types and the label contract, so that every
other module may import from it.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

from udfs.labels import Label
from udfs.records import KeyedLine, ModelInput, ScoreContext

if TYPE_CHECKING:
    from udfs.features import EncodedBatch


# ---------------------------------------------------------------- sentinels
#
# Flink's watermarks are Java longs: before any event time is known an operator's watermark is
# Long.MIN_VALUE, and a bounded input ends with Long.MAX_VALUE (Watermark.MAX_WATERMARK), which
# fires every event-time timer. The Python side reads and writes them as these integers.

JAVA_LONG_MIN = -2**63  # Long.MIN_VALUE
JAVA_LONG_MAX = 2**63 - 1  # Long.MAX_VALUE

# The watermark before any event time is known (a split's or an operator's), as Flink has it; a
# record of a RecordBatch whose split's watermark is not tracked carries it too.
NO_WATERMARK = JAVA_LONG_MIN

# The final watermark of a bounded input: a timer set at it fires only when the input has ended.
END_OF_INPUT = JAVA_LONG_MAX


# ---------------------------------------------------------------- envelopes
#
# A record as the source delivers it to Python, tagged with where it came from, and the split's
# watermark that SplitWatermarkTagger.java puts before it when event time is on.

_ESCAPE = re.compile(r"\\([\\tn])")
_UNESCAPED = {"\\": "\\", "t": "\t", "n": "\n"}


def split_envelope(envelope: str) -> tuple[dict[str, Any], bytes]:
    """(source coordinates, raw bytes) of a record as the source delivered it.

    The file source sends `file:<line>:<path>\\t<payload>` with the payload's bytes as ISO-8859-1
    characters (see SourceTaggedLineFormat.java), the Kafka source
    `kafka:<partition>:<offset>:<topic>\\t<payload>` likewise with backslash and newline escaped
    (see TaggedKafkaDeserializer.java); anything else is kept whole as the payload.
    """
    tag, separator, payload = envelope.partition("\t")
    if separator and tag.startswith("kafka:"):
        _, partition, offset, topic = (tag.split(":", 3) + ["", "", ""])[:4]
        if partition.isdigit() and offset.isdigit():
            if "\\" in payload:  # backslash and newline were escaped for bundling
                payload = _ESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], payload)
            source = {"topic": topic, "partition": int(partition), "offset": int(offset)}
            return source, payload.encode("latin-1")
    if separator and tag.startswith("file:"):
        _, line, path = (tag.split(":", 2) + ["", ""])[:3]
        if line.isdigit():
            path = _ESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], path)
            return {"file": path, "line": int(line)}, payload.encode("latin-1")
    return {}, envelope.encode("utf-8")


def split_watermark_tag(envelope: str) -> tuple[int, str]:
    """(the split's watermark in epoch ms, or NO_WATERMARK; the envelope) of a record that
    SplitWatermarkTagger.java tagged as `@<watermark>\t<envelope>`; an untagged envelope (which
    the job never sends) has NO_WATERMARK."""
    if envelope.startswith("@"):
        watermark, separator, rest = envelope.partition("\t")
        try:
            return int(watermark[1:]), rest
        except ValueError:
            pass
    return NO_WATERMARK, envelope


def source_tag(envelope: str) -> str:
    """The source tag in front of an envelope ("file:..." or "kafka:..."; see `split_envelope`), ""
    for an envelope without one (whose text is all payload, never to be copied as a tag)."""
    tag, separator, _ = envelope.partition("\t")
    return tag if separator and tag.startswith(("file:", "kafka:")) else ""


def envelope_payload(envelope: str) -> bytes:
    """`split_envelope(envelope)[1]`, without building the source coordinates for the file source's
    envelopes (they are only needed for a dead letter)."""
    tag, separator, payload = envelope.partition("\t")
    if separator and tag.startswith("file:") and tag[5:].partition(":")[0].isdigit():
        return payload.encode("latin-1")
    return split_envelope(envelope)[1]


# ---------------------------------------------------------------- bundle headers
#
# Records are joined by newlines into bundles between the JVM and Python, so that Python is called
# per bundle, not per record (RecordBundler.java). A bundle spread over parallel workers starts
# with a header line that numbers it, so that each shard can put its batches back in order
# (udfs/ordering.py).

def split_bundle_header(bundle: str) -> tuple[str | None, int | None, str]:
    """(stream, sequence number, records) of a bundle; (None, None, bundle) if it has no header.

    A header is a first line `#<stream>:<seq>`; a record line never starts with '#' because the
    file source tags every line with `file:`."""
    if not bundle.startswith("#"):
        return None, None, bundle
    header, _, records = bundle.partition("\n")
    stream, _, seq = header[1:].rpartition(":")
    return stream, int(seq), records


# ---------------------------------------------------------------- RecordBatch
#
# Cleaned records ready for their keys' models, as columns: what the preparing operator sends the
# scoring operator (inside a shard batch).

class RecordBatch(NamedTuple):
    """Cleaned records ready for their keys' models, as columns, in arrival order: record r has
    model key `model_keys[r]`, and its sparse feature vector is indices/values[indptr[r]:indptr[r+1]]."""

    model_keys: list[str]
    txn_ids: list[str]
    event_times: np.ndarray  # int64, epoch ms
    labels: np.ndarray  # int8: 0, 1, or -1 for no label
    indptr: np.ndarray  # int64, one more than there are records
    indices: np.ndarray  # int32 feature indices
    values: np.ndarray  # float64
    # The records' ScoreContext, field by field.
    categories: list[str]
    countries: list[str]
    channels: list[str]
    amounts: np.ndarray  # float64
    currencies: list[str]
    accounts: list[str]
    # int64: each record's source split's watermark at its arrival (SplitWatermarkTagger.java), for
    # windowed analytics; NO_WATERMARK when not tracked.
    source_watermarks: np.ndarray
    # Each record's source tag ("file:<line>:<path>", "kafka:<partition>:<offset>:<topic>", udfs.wire.
    # split_envelope; "" when not known), for the dead letter of a redelivery (udfs/dedup.py).
    sources: list[str]

    def __len__(self) -> int:
        return len(self.model_keys)

    def without_labels(self) -> "RecordBatch":
        """The batch with every label -1 (none): what learning sees of it in labels.mode stream.
        (Not `_replace`: NamedTuple's checks the field count with `len`, which counts records here.)"""
        fields = list(self)
        fields[RecordBatch._fields.index("labels")] = np.full(len(self), -1, np.int8)
        return RecordBatch(*fields)

    @classmethod
    def of(cls, records: Sequence[ModelInput]) -> "RecordBatch":
        """The batch of `ModelInput` records (the reference's form)."""
        lengths = [len(record.indices) for record in records]
        contexts = [record.context for record in records]
        return cls([record.model_key for record in records], [record.txn_id for record in records],
                   np.array([record.event_time for record in records], np.int64),
                   np.array([-1 if record.label is None else record.label for record in records], np.int8),
                   np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int64),
                   np.array([i for record in records for i in record.indices], np.int32),
                   np.array([v for record in records for v in record.values], np.float64),
                   [c.merchant_category for c in contexts], [c.country for c in contexts], [c.channel for c in contexts],
                   np.array([c.amount for c in contexts], np.float64), [c.currency for c in contexts],
                   [c.account for c in contexts], np.full(len(records), NO_WATERMARK, np.int64),
                   [""] * len(records))

    @classmethod
    def of_encoded(cls, txns: Sequence[dict[str, Any]], encoded: EncodedBatch, model_key_field: str,
                   source_watermarks: np.ndarray | None = None, sources: Sequence[str] | None = None
                   ) -> "RecordBatch":
        """The batch of the cleaned transactions `txns` that `encoded` (their features) kept;
        `source_watermarks` and `sources`, when given, hold each of `txns`' source watermark and
        source tag."""
        rows = encoded.rows.tolist()
        kept = [txns[i] for i in rows]
        watermarks = (np.full(len(kept), NO_WATERMARK, np.int64) if source_watermarks is None
                      else source_watermarks[encoded.rows])
        return cls([txn[model_key_field] for txn in kept], [txn["txn_id"] for txn in kept],
                   np.array([txn["event_time"] for txn in kept], np.int64),
                   np.array([-1 if txn["is_fraud"] is None else txn["is_fraud"] for txn in kept], np.int8),
                   encoded.indptr, encoded.indices, encoded.values,
                   [txn["merchant_category"] for txn in kept], [txn["country"] for txn in kept],
                   [txn["channel"] for txn in kept],
                   np.array([txn["amount"] for txn in kept], np.float64), [txn["currency"] for txn in kept],
                   [txn["account_id"] for txn in kept], watermarks,
                   [""] * len(kept) if sources is None else [sources[i] for i in rows])

    def records(self) -> list[ModelInput]:
        """The batch as `ModelInput` records."""
        indptr, indices, values = self.indptr.tolist(), self.indices.tolist(), self.values.tolist()
        contexts = map(ScoreContext, self.categories, self.countries, self.channels, self.amounts.tolist(),
                       self.currencies, self.accounts)
        return [ModelInput(key, txn_id, event_time, None if label < 0 else label,
                           indices[indptr[r]:indptr[r + 1]], values[indptr[r]:indptr[r + 1]], context)
                for r, (key, txn_id, event_time, label, context)
                in enumerate(zip(self.model_keys, self.txn_ids, self.event_times.tolist(), self.labels.tolist(),
                                 contexts))]

    def take(self, rows: np.ndarray) -> "RecordBatch":
        """The records at positions `rows` (ascending), as a batch."""
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # Position of each kept entry: its row's start in this batch plus its place in the row.
        entries = np.repeat(self.indptr[rows] - indptr[:-1], lengths) + np.arange(indptr[-1])
        positions = rows.tolist()
        return RecordBatch([self.model_keys[r] for r in positions], [self.txn_ids[r] for r in positions],
                           self.event_times[rows], self.labels[rows], indptr, self.indices[entries],
                           self.values[entries], [self.categories[r] for r in positions],
                           [self.countries[r] for r in positions],
                           [self.channels[r] for r in positions], self.amounts[rows],
                           [self.currencies[r] for r in positions], [self.accounts[r] for r in positions],
                           self.source_watermarks[rows], [self.sources[r] for r in positions])

    # Packed for the hop between operators: a header (records, entries, text bytes, source bytes),
    # the arrays, the string columns as newline-separated UTF-8 (cleaning collapses every whitespace,
    # so none holds a newline), then the source tags, newline-separated and compressed: a tag repeats
    # its file's path or its topic on every record, which would otherwise add a sixth to the bytes
    # every record costs on the way (measured: 10 core-µs a record on the bench's file paths).
    _HEADER = struct.Struct("<qqqq")

    def to_bytes(self) -> bytes:
        text = "\n".join(self.model_keys + self.txn_ids + self.categories + self.countries + self.channels
                         + self.currencies + self.accounts).encode("utf-8", "surrogatepass")
        sources = zlib.compress("\n".join(self.sources).encode("utf-8", "surrogatepass"), 1)
        return b"".join((self._HEADER.pack(len(self), len(self.indices), len(text), len(sources)),
                         self.event_times.tobytes(), self.indptr.tobytes(), self.values.tobytes(),
                         self.amounts.tobytes(), self.source_watermarks.tobytes(),
                         self.indices.tobytes(), self.labels.tobytes(), text, sources))

    @classmethod
    def from_bytes(cls, data: bytes) -> "RecordBatch":
        n, nnz, text_bytes, source_bytes = cls._HEADER.unpack_from(data)
        offset = cls._HEADER.size
        arrays = []
        for dtype, count in ((np.int64, n), (np.int64, n + 1), (np.float64, nnz), (np.float64, n), (np.int64, n),
                             (np.int32, nnz), (np.int8, n)):
            arrays.append(np.frombuffer(data, dtype, count, offset))
            offset += count * np.dtype(dtype).itemsize
        event_times, indptr, values, amounts, source_watermarks, indices, labels = arrays
        strings = data[offset:offset + text_bytes].decode("utf-8", "surrogatepass").split("\n") if n else []
        keys, txn_ids, categories, countries, channels, currencies, accounts = (
            strings[i * n:(i + 1) * n] for i in range(7))
        offset += text_bytes
        sources = (zlib.decompress(data[offset:offset + source_bytes]).decode("utf-8", "surrogatepass").split("\n")
                   if n else [])
        return cls(keys, txn_ids, event_times, labels, indptr, indices, values, categories, countries, channels,
                   amounts, currencies, accounts, source_watermarks, sources)


# ---------------------------------------------------------------- shard batches
#
# What the preparing operator sends each shard's scoring operator, as bytes in a Flink
# Tuple2(shard, bytes).

# sequence number (-1: none), bytes of the stream's name, bytes of the feature log id (-1: none for both)
_SHARD_BATCH_HEADER = struct.Struct("<qii")


def pack_shard_batch(stream: str | None, seq: int | None, batch: RecordBatch, log_id: str | None = None) -> bytes:
    """A shard's batch with the number of the bundle it came from (see udfs/ordering.py) and, when
    labels come later on their own stream, the id under which its features are logged
    (udfs.feature_log.log_id_of), as bytes: the header (little-endian int64 sequence number, -1
    for none; int32 bytes of the stream's name and of the log id, -1 for none), the name and the
    log id in UTF-8, then `RecordBatch.to_bytes`."""
    name = b"" if stream is None else stream.encode("utf-8")
    log = b"" if log_id is None else log_id.encode("utf-8")
    header = _SHARD_BATCH_HEADER.pack(-1 if seq is None else seq, -1 if stream is None else len(name),
                                      -1 if log_id is None else len(log))
    return header + name + log + batch.to_bytes()


class ShardBatch(NamedTuple):
    """A shard batch, unpacked: stream and seq are None for a bundle without a header."""

    stream: str | None
    seq: int | None
    batch: RecordBatch
    log_id: str | None


def unpack_shard_batch(data: bytes) -> ShardBatch:
    """`pack_shard_batch`'s arguments, from its bytes."""
    seq, name_bytes, log_bytes = _SHARD_BATCH_HEADER.unpack_from(data)
    name_end = _SHARD_BATCH_HEADER.size + max(name_bytes, 0)
    log_end = name_end + max(log_bytes, 0)
    stream = None if name_bytes < 0 else data[_SHARD_BATCH_HEADER.size:name_end].decode("utf-8")
    log_id = None if log_bytes < 0 else data[name_end:log_end].decode("utf-8")
    return ShardBatch(stream, None if seq < 0 else seq, RecordBatch.from_bytes(data[log_end:]), log_id)


# ---------------------------------------------------------------- label lines
#
# In labels.mode stream or both the job joins labels to transactions by txn_id in Java
# (LabelRouter.java, keyed by txn_id) and sends each label to the scoring operator of its
# transaction's shard, which decides its outcome (udfs/label_outcomes.py) and learns from the
# transaction's logged features (udfs/feature_log.py). The preparing operator sends LabelRouter a
# `route_line` per transaction it sends to be scored, the label reader a `label_line` per usable
# label; LabelRouter sends the shard a routed label line (`read_routed_label`), bundled per shard
# by ShardBundler.java. The lines are UTF-8, fields separated by tabs (txn_ids and sources are
# whitespace-normalized, so they hold no tab or newline).

def route_line(txn_id: str, shard: int, event_time: int, inline_label: int, where: str) -> bytes:
    """What LabelRouter learns of a transaction the job will score: its shard, event_time (ms),
    the inline label learned from when it is scored (-1: none) and `where` its features are logged
    (udfs.feature_log.where: "<log id>:<row>")."""
    return f"{txn_id}\t{shard}\t{event_time}\t{inline_label}\t{where}".encode("utf-8")


def label_line(label: Label) -> bytes:
    """A cleaned label as LabelRouter reads it: txn_id, is_fraud, label_time, source ('' for none)."""
    return f"{label.txn_id}\t{label.is_fraud}\t{label.label_time}\t{label.source or ''}".encode("utf-8")


class RoutedLabel(NamedTuple):
    """A label as LabelRouter sends it to its transaction's shard.

    known: False when no transaction with its txn_id was routed within the wait (then event_time
    is -1 and where is ''). history: the labels of this transaction before this one, in the order
    they reached the router, as (is_fraud, label_time), the inline label first (at its event_time)
    when the transaction was learned from at scoring. where: the route's "<log id>:<row>"."""

    shard: int
    known: bool
    label: Label
    event_time: int
    history: tuple[tuple[int, int], ...]
    where: str


def read_routed_label(line: bytes) -> RoutedLabel:
    """The `RoutedLabel` in one of LabelRouter's lines:
    shard, 'label' | 'unknown', txn_id, event_time, is_fraud, label_time, source, history, where."""
    shard, kind, txn_id, event_time, is_fraud, label_time, source, history, where = line.decode("utf-8").split("\t")
    pairs = tuple(tuple(int(part) for part in pair.split(":")) for pair in history.split(",") if pair)
    return RoutedLabel(int(shard), kind == "label", Label(txn_id, int(is_fraud), int(label_time), source or None),
                       int(event_time), pairs, where)


def routed_label_line(routed: RoutedLabel) -> bytes:
    """`routed` as LabelRouter wrote it (the inverse of `read_routed_label`)."""
    label = routed.label
    history = ",".join(f"{is_fraud}:{label_time}" for is_fraud, label_time in routed.history)
    return (f"{routed.shard}\t{'label' if routed.known else 'unknown'}\t{label.txn_id}\t{routed.event_time}\t"
            f"{label.is_fraud}\t{label.label_time}\t{label.source or ''}\t{history}\t{routed.where}").encode("utf-8")


# ---------------------------------------------------------------- analytics header
#
# When windowed analytics are on, the scoring operator's output bundle starts with a header for
# the window operator (WindowAnalytics.java, through ScoredColumns.java).

def analytics_header(late_rows: Sequence[int], watermarks: np.ndarray) -> bytes:
    """What the window operator needs besides a scored batch's score lines, put before them in the
    scoring operator's output bundle (AnalyticsHeader.java documents the layout and removes it for
    the scores sinks): the positions of the records found late (udfs.analytics.late_records) and
    their effective watermarks (`watermarks`: the whole batch's, epoch ms); a record not listed
    was late for none of its windows. Little-endian int32 count, int32 positions, int64 watermarks."""
    rows = np.asarray(late_rows, "<i4")
    return b"".join((np.array([len(rows)], "<i4").tobytes(), rows.tobytes(),
                     np.asarray(watermarks, "<i8")[rows].tobytes()))


# ---------------------------------------------------------------- output bundles
# What every Python operator emits for the sinks: BundleEncoder.java writes one whole to a part
# file; SplitLineBytes.java and KeyedLineBytesSerializer.java make Kafka messages of its lines.


def output_bundle(lines: Sequence[bytes], keys: Sequence[str | None] | None = None) -> bytes:
    """Output lines (JSON, UTF-8) as one newline-separated bundle for the sinks: a file sink writes
    it whole (BundleEncoder.java). With `keys` (for a Kafka sink) each line becomes
    `<key>\t<line>`, which KeyedLineBytesSerializer.java splits into a message's key and value (a
    tab in a key would end it early, so it becomes a space; None is an empty key)."""
    if keys is None:
        return b"\n".join(lines)
    return b"\n".join(b"%s\t%s" % ((key or "").replace("\t", " ").encode("utf-8"), line)
                      for key, line in zip(keys, lines))


def keyed_lines_bundle(lines: Sequence[KeyedLine], keyed: bool) -> bytes:
    """`output_bundle` of JSON lines that carry their own keys (dead letters, snapshots)."""
    return output_bundle([line.encode("utf-8") for line in lines], [line.key for line in lines] if keyed else None)
