"""The feature log (labels.mode stream or both): each scored shard batch's features as its models
saw them, kept in the scoring operator's keyed state (log id -> `FeatureLog` bytes) until the
batch's labels come or its time-to-live passes. Its id and a record's position in it travel with
the record's route to LabelRouter.java and back (udfs/wire.py).

The id is a state key and the bytes are state values: a savepoint holds both, so neither format
changes without a tested migration.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np


def where(log_id: str, row: int) -> str:
    """Where a record's features are logged, as a route carries it."""
    return f"{log_id}:{row}"


def log_position(where_: str) -> tuple[str, int]:
    """(log id, row) of `where`'s text."""
    log_id, _, row = where_.rpartition(":")
    return log_id, int(row)


def log_id_of(expires_at: int, records: int, worker: str, counter: int) -> str:
    """A feature log's id: unique (a worker's random token and its count of logs), starting with
    the event time (ms) at which the log expires and how many records it holds, so that ids alone
    tell what to remove when and how many records are kept."""
    return f"{expires_at}~{records}~{worker}~{counter}"


def expiry_of(log_id: str) -> tuple[int, int]:
    """(event time in ms at which the log `log_id` expires, its records) (see `log_id_of`)."""
    expires_at, records, _ = log_id.split("~", 2)
    return int(expires_at), int(records)


_LOG_HEADER = struct.Struct("<BII")  # version, records, entries
# Version 2 adds the width of a feature index in bytes (2 when every index is below 65,536, else 4).
_LOG_HEADER_2 = struct.Struct("<BIIB")
LOG_VERSION = 2


class FeatureLog(NamedTuple):
    """One scored shard batch's features as its models saw them, kept in keyed state until the
    batch's labels come or its time-to-live passes: record r has model key model_keys[r], event
    time event_times[r] (ms), score scores[r] (0..1) and standardized entries
    indices/values[indptr[r]:indptr[r+1]].

    As bytes (`to_bytes`, version 2), a record costs 20 bytes (event time int64, score float64,
    its end in the entries uint32), 6 per feature entry (index uint16, value float32; 8 when an
    index is 65,536 or more) and its model key's UTF-8 bytes plus one. The values are kept as
    float32: a label's step uses the logged value rounded to float32 (a relative change below
    6e-8), read back the same way whether the log was just written or restored. `from_bytes` also
    reads version 1 (int64 ends and event times, int32 indices, float64 values), which savepoints
    taken before version 2 hold."""

    model_keys: list[str]
    event_times: np.ndarray  # int64
    scores: np.ndarray  # float64
    indptr: np.ndarray  # int64 or uint32
    indices: np.ndarray  # uint16 or int32
    values: np.ndarray  # float32 (float64 in a version-1 log)

    def to_bytes(self) -> bytes:
        keys = "\n".join(self.model_keys).encode("utf-8", "surrogatepass")
        index_type = np.uint16 if not len(self.indices) or int(self.indices.max()) < 2**16 else np.int32
        return b"".join((_LOG_HEADER_2.pack(LOG_VERSION, len(self.model_keys), len(self.indices),
                                            np.dtype(index_type).itemsize),
                         self.event_times.astype(np.int64).tobytes(), self.scores.astype(np.float64).tobytes(),
                         self.indptr.astype(np.uint32).tobytes(), self.indices.astype(index_type).tobytes(),
                         self.values.astype(np.float32).tobytes(), keys))

    @classmethod
    def from_bytes(cls, data: bytes) -> "FeatureLog":
        version = data[0]
        if version == 2:
            _, n, entries, index_width = _LOG_HEADER_2.unpack_from(data)
            offset = _LOG_HEADER_2.size
            layout = ((np.int64, n), (np.float64, n), (np.uint32, n + 1),
                      (np.uint16 if index_width == 2 else np.int32, entries), (np.float32, entries))
        elif version == 1:
            _, n, entries = _LOG_HEADER.unpack_from(data)
            offset = _LOG_HEADER.size
            layout = ((np.int64, n), (np.float64, n), (np.int64, n + 1), (np.int32, entries), (np.float64, entries))
        else:
            raise ValueError(f"feature log version {version} is not supported (this release reads 1 and 2)")
        arrays = []
        for dtype, count in layout:
            array = np.frombuffer(data, dtype, count, offset)
            offset += array.nbytes
            arrays.append(array)
        keys = data[offset:].decode("utf-8", "surrogatepass").split("\n") if n else []
        return cls(keys, *arrays)

    def entries(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, standardized values as float64) of record `row`."""
        begin, end = int(self.indptr[row]), int(self.indptr[row + 1])
        return self.indices[begin:end], self.values[begin:end].astype(np.float64)


def with_dropped_rows(log: FeatureLog, kept: np.ndarray, rows: int, model_keys: list[str]) -> FeatureLog:
    """The log of a shard batch of `rows` records of which only those at positions `kept`
    (ascending) were scored (`log` holds those): every other row is there too, with its model key
    (`model_keys`: all rows'), event time 0, score NaN and no entries, so that the log's rows are
    the rows the batch's routes name (`where`). A label routed to such a row (a redelivery,
    udfs/dedup.py) is applied to its first delivery's row instead."""
    event_times = np.zeros(rows, np.int64)
    event_times[kept] = log.event_times
    scores = np.full(rows, np.nan)
    scores[kept] = log.scores
    lengths = np.zeros(rows, np.int64)
    lengths[kept] = np.diff(np.asarray(log.indptr, np.int64))
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return FeatureLog(list(model_keys), event_times, scores, indptr, log.indices, log.values)


def is_dropped_row(log: FeatureLog, row: int) -> bool:
    """Whether `row` of the log is a record that was not scored (see `with_dropped_rows`)."""
    return bool(np.isnan(log.scores[row]))
