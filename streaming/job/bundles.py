"""The side outputs of the job's Python operators. Each carries output bundles: UTF-8 bytes of
newline-separated JSON lines (udfs.wire.output_bundle; docs/formats.md)."""

from __future__ import annotations

import time

from pyflink.common import Types
from pyflink.datastream import OutputTag

DEAD_LETTERS = OutputTag("dead-letters", Types.PRIMITIVE_ARRAY(Types.BYTE()))
SNAPSHOTS = OutputTag("model-snapshots", Types.PRIMITIVE_ARRAY(Types.BYTE()))
LATE = OutputTag("late", Types.PRIMITIVE_ARRAY(Types.BYTE()))
LABEL_DEAD_LETTERS = OutputTag("label-dead-letters", Types.PRIMITIVE_ARRAY(Types.BYTE()))
# labels.mode stream or both: what LabelRouter.java learns of each transaction the job will score
# (udfs.wire.route_line), and the scoring operator's log of the labels it learned from.
ROUTES = OutputTag("routes", Types.PRIMITIVE_ARRAY(Types.BYTE()))
LEARNING = OutputTag("learning", Types.PRIMITIVE_ARRAY(Types.BYTE()))
# model.drift.detector other than none: the scoring operator's drift events (udfs.drift_tracking).
DRIFT = OutputTag("drift", Types.PRIMITIVE_ARRAY(Types.BYTE()))
# dedup on: a line per scored record for RepeatedIds.java (udfs.dedup.seen_line).
SEEN_TXN_IDS = OutputTag("seen-txn-ids", Types.PRIMITIVE_ARRAY(Types.BYTE()))


def now_ms() -> int:
    """Processing time, epoch milliseconds (received_at, scored_at)."""
    return time.time_ns() // 1_000_000
