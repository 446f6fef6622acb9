"""The side outputs of the job's Python operators, and the output bundles they emit.

Every output bundle is UTF-8 bytes of newline-separated JSON lines (docs/formats.md): a file sink
writes it whole (BundleEncoder.java), a Kafka sink gets it split into one message per line.
"""

from __future__ import annotations

import time
from typing import Sequence

from pyflink.common import Types
from pyflink.datastream import OutputTag

from udfs.pipeline import KeyedLine

DEAD_LETTERS = OutputTag("dead-letters", Types.PRIMITIVE_ARRAY(Types.BYTE()))
SNAPSHOTS = OutputTag("model-snapshots", Types.PRIMITIVE_ARRAY(Types.BYTE()))
LATE = OutputTag("late", Types.PRIMITIVE_ARRAY(Types.BYTE()))
LABEL_DEAD_LETTERS = OutputTag("label-dead-letters", Types.PRIMITIVE_ARRAY(Types.BYTE()))
# labels.mode stream or both: what LabelRouter.java learns of each transaction the job will score
# (udfs.labels.route_line), and the scoring operator's log of the labels it learned from.
ROUTES = OutputTag("routes", Types.PRIMITIVE_ARRAY(Types.BYTE()))
LEARNING = OutputTag("learning", Types.PRIMITIVE_ARRAY(Types.BYTE()))


def now_ms() -> int:
    """Processing time, epoch milliseconds (received_at, scored_at)."""
    return time.time_ns() // 1_000_000


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
