"""Per-key drift detectors on the prequential loss of labelled records (pure Python, no Flink).

Two detectors, each reproducing River 0.26.1 exactly (the same parameters, defaults, arithmetic in
the same order, hence the same detection indices; tests/unit/test_drift.py checks this against
indices River itself produced):

- `PageHinkley`: River's two-sided Page-Hinkley test (`river.drift.PageHinkley`).
- `Adwin`: River's ADWIN2 with exponential buckets (`river.drift.ADWIN`, the Rust
  `AdaptiveWindowing` of river/rust_src/adwin.rs).

`update(value)` returns True when drift is detected at that value. As in River, the detector resets
lazily: it keeps its statistics until the next `update`, which starts from a fresh detector, so a
drift event can read `statistics()` after the detection. `to_bytes()` / `from_bytes()` convert a
detector to compact versioned bytes for Flink keyed state (see DRIFT_STATE_VERSION below).

The job feeds each labelled record's log loss, capped by `drift_loss`: the loss of a confident
mistake is unbounded (infinite at a score of exactly 0 or 1), and a single such value would dominate
Page-Hinkley's cumulative sums and ADWIN's window variance for thousands of records; capping it at
10 nats (a score of about 4.5e-5 for the true class) keeps every loss finite and every record's
influence bounded, while any loss a calibrated model gives (3% fraud: about 3.5 nats at worst) is
left unchanged.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal, Protocol

DetectorName = Literal["page_hinkley", "adwin", "none"]

# The cap of `drift_loss`, in nats (see the module's docstring).
LOSS_CAP = 10.0
# Scores are kept this far from 0 and 1 before the logarithm, as udfs/metrics.py does.
_SCORE_CLIP = 1e-15


def drift_loss(score: float, label: int, cap: float = LOSS_CAP) -> float:
    """The log loss (nats) of `score` in [0, 1] for `label` 0 or 1, at most `cap` (> 0): the value
    a detector is fed for one labelled record. Finite for any score, NaN included (it gives `cap`)."""
    p = score if label == 1 else 1.0 - score
    if not p > _SCORE_CLIP:  # also NaN
        return cap
    return min(-math.log(p), cap)


@dataclass(frozen=True)
class PageHinkleyParameters:
    """River's PageHinkley parameters and defaults: no detection before `min_instances` values;
    `delta` is the tolerated deviation; drift when the cumulative deviation exceeds `threshold`;
    `alpha` in (0, 1] fades the cumulative sums; `mode`: `up` (the mean rises: for a loss, the
    model got worse), `down` (it falls) or `both`."""

    min_instances: int = 30
    delta: float = 0.005
    threshold: float = 50.0
    alpha: float = 1 - 0.0001
    mode: Literal["up", "down", "both"] = "both"

    def __post_init__(self) -> None:
        where = "model.drift.page_hinkley"
        _check(1 <= self.min_instances <= 10**9, f"{where}.min_instances: must be 1 to 10^9")
        _check(0 <= self.delta < math.inf, f"{where}.delta: must be at least 0 and finite")
        _check(0 < self.threshold < math.inf, f"{where}.threshold: must be above 0 and finite")
        _check(0 < self.alpha <= 1, f"{where}.alpha: must be above 0 and at most 1")
        _check(self.mode in ("up", "down", "both"), f"{where}.mode: must be up, down or both")


@dataclass(frozen=True)
class AdwinParameters:
    """River's ADWIN parameters and defaults: `delta` in (0, 1) is the significance of a cut; the
    window is checked every `clock` values once it holds more than `grace_period`; each bucket
    size keeps at most `max_buckets` summaries; both sub-windows of a cut hold at least
    `min_window_length` values."""

    delta: float = 0.002
    clock: int = 32
    max_buckets: int = 5
    min_window_length: int = 5
    grace_period: int = 10

    def __post_init__(self) -> None:
        where = "model.drift.adwin"
        _check(0 < self.delta < 1, f"{where}.delta: must be above 0 and below 1")
        _check(1 <= self.clock <= 10**6, f"{where}.clock: must be 1 to 10^6")
        # Merging takes two summaries at a time; the state stores a row's count in one byte.
        _check(2 <= self.max_buckets <= 100, f"{where}.max_buckets: must be 2 to 100")
        _check(1 <= self.min_window_length <= 10**6, f"{where}.min_window_length: must be 1 to 10^6")
        _check(0 <= self.grace_period <= 10**9, f"{where}.grace_period: must be 0 to 10^9")


@dataclass(frozen=True)
class DriftSettings:
    """Which detector each key runs (`none`: no detection) with its parameters, and the cap of the
    log loss it is fed (nats, above 0)."""

    detector: DetectorName = "none"
    page_hinkley: PageHinkleyParameters = field(default_factory=PageHinkleyParameters)
    adwin: AdwinParameters = field(default_factory=AdwinParameters)
    loss_cap: float = LOSS_CAP

    def __post_init__(self) -> None:
        _check(self.detector in ("page_hinkley", "adwin", "none"),
               "model.drift.detector: must be page_hinkley, adwin or none")
        _check(0 < self.loss_cap < math.inf, "model.drift.loss_cap: must be above 0 and finite")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class DriftDetector(Protocol):
    name: str

    def update(self, value: float) -> bool: ...

    def statistics(self) -> dict[str, float | int]: ...

    def to_bytes(self) -> bytes: ...


def make_detector(settings: DriftSettings) -> PageHinkley | Adwin | None:
    """A fresh detector as `settings` says; None for `none`."""
    if settings.detector == "page_hinkley":
        return PageHinkley(settings.page_hinkley)
    if settings.detector == "adwin":
        return Adwin(settings.adwin)
    return None


def restore_detector(settings: DriftSettings, data: bytes | None) -> PageHinkley | Adwin | None:
    """The detector stored in `data` (from `to_bytes`), run with `settings`' parameters; a fresh one
    when there is no state or the state does not fit the configured detector (another detector, or
    ADWIN with another `max_buckets`); None for `none`. ValueError for an unknown state version."""
    detector = make_detector(settings)
    if detector is None or not data:
        return detector
    try:
        return type(detector).from_bytes(data, detector.parameters)
    except _StateMismatch:
        return detector


class _StateMismatch(ValueError):
    """A stored state that cannot continue under the configured parameters."""


# The state's bytes, little-endian. Version 1: a 4-byte common header (version, kind: 1 Page-Hinkley
# or 2 ADWIN, pending_reset: 1 when the last update detected drift, so the next update starts afresh,
# as River's detectors do; one detector-specific byte), then:
#   Page-Hinkley (60 bytes in all): u64 values since the reset, u64 detections over the detector's
#     life, f64 mean, sum_increase, sum_decrease, min_increase, max_decrease.
#   ADWIN (56 bytes + 1 per bucket row + 16 per bucket): the 4th header byte is the number of bucket
#     rows; u8 max_buckets, 3 pad bytes, u64 values since the reset (River's tick), u64 detections,
#     f64 total, f64 variance (the window's sum of squared deviations), u64 values dropped by the
#     pending detection's cuts, f64 their sum; then one u8 count per row
#     (row i holds summaries of 2^i values), then every row's totals, then every row's variances,
#     as f64, row 0 first, each row oldest first.
DRIFT_STATE_VERSION = 1
_HEADER = struct.Struct("<BBBB")  # version, kind, pending_reset, the detector's byte (_header, _read_header)
_PAGE_HINKLEY_STATE = struct.Struct("<QQddddd")  # after the header
_ADWIN_STATE = struct.Struct("<B3xQQddQd")  # after the header


class PageHinkley:
    """River 0.26.1's `drift.PageHinkley`: a running mean of the values, and two faded cumulative
    sums of their deviations from it (minus and plus `delta`); drift when, after `min_instances`
    values, a sum has moved more than `threshold` from its extreme."""

    __slots__ = ("parameters", "n", "mean", "sum_increase", "sum_decrease", "min_increase", "max_decrease",
                 "detections", "drift_detected")
    name = "page_hinkley"
    KIND = 1

    def __init__(self, parameters: PageHinkleyParameters = PageHinkleyParameters()):
        self.parameters = parameters
        self.detections = 0
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.sum_increase = 0.0
        self.sum_decrease = 0.0
        self.min_increase = math.inf
        self.max_decrease = -1.0  # River starts it at -1
        self.drift_detected = False

    def update(self, value: float) -> bool:
        """Adds one value; True when drift is detected at it (the next update resets). A value that
        is not finite is ignored (False, nothing changes): River's would make every later statistic
        NaN, a detector that never fires again."""
        if not math.isfinite(value):
            return False
        if self.drift_detected:
            self._reset()
        p = self.parameters
        self.n += 1
        # River's stats.Mean with weight 1, in its order of operations.
        self.mean += (1.0 / self.n) * (value - self.mean)
        deviation = value - self.mean
        self.sum_increase = p.alpha * self.sum_increase + deviation - p.delta
        self.sum_decrease = p.alpha * self.sum_decrease + deviation + p.delta
        if self.sum_increase < self.min_increase:
            self.min_increase = self.sum_increase
        if self.sum_decrease > self.max_decrease:
            self.max_decrease = self.sum_decrease
        if self.n >= p.min_instances:
            increase, decrease = self._tests()
            if p.mode == "up":
                self.drift_detected = increase > p.threshold
            elif p.mode == "down":
                self.drift_detected = decrease > p.threshold
            else:
                self.drift_detected = increase > p.threshold or decrease > p.threshold
            if self.drift_detected:
                self.detections += 1
        return self.drift_detected

    def _tests(self) -> tuple[float, float]:
        return self.sum_increase - self.min_increase, self.max_decrease - self.sum_decrease

    def statistics(self) -> dict[str, float | int]:
        """`values`: values since the last reset (this one included); `mean`: their mean;
        `increase` / `decrease`: the upward and downward Page-Hinkley statistics (drift when one the
        mode watches exceeds `threshold`; 0 before any value); `threshold`; `detections`: drifts
        detected over the detector's life."""
        increase, decrease = self._tests() if self.n else (0.0, 0.0)
        return {"values": self.n, "mean": self.mean, "increase": increase, "decrease": decrease,
                "threshold": self.parameters.threshold, "detections": self.detections}

    def to_bytes(self) -> bytes:
        return _header(self.KIND, self.drift_detected) + _PAGE_HINKLEY_STATE.pack(
            self.n, self.detections, self.mean, self.sum_increase, self.sum_decrease, self.min_increase,
            self.max_decrease)

    @classmethod
    def from_bytes(cls, data: bytes, parameters: PageHinkleyParameters = PageHinkleyParameters()) -> PageHinkley:
        """The detector `to_bytes` wrote, continued with `parameters`."""
        pending, _ = _read_header(data, cls.KIND)
        values = _PAGE_HINKLEY_STATE.unpack_from(data, _HEADER.size)
        detector = cls.__new__(cls)
        detector.parameters = parameters
        detector.drift_detected = pending
        (detector.n, detector.detections, detector.mean, detector.sum_increase, detector.sum_decrease,
         detector.min_increase, detector.max_decrease) = values
        return detector


class Adwin:
    """River 0.26.1's `drift.ADWIN` (ADWIN2, Bifet and Gavaldà 2007): a window of recent values kept
    as rows of bucket summaries (total, sum of squared deviations), row i summarizing 2^i values
    each; every `clock` values, every cut of the window into an older and a newer part is tested,
    and while one's means differ by more than the Hoeffding-style bound the oldest bucket is
    dropped. A detection then resets the whole detector on the next update, as River does."""

    __slots__ = ("parameters", "totals", "variances", "total", "variance", "width", "tick", "dropped",
                 "dropped_total", "detections", "drift_detected")
    name = "adwin"
    KIND = 2

    def __init__(self, parameters: AdwinParameters = AdwinParameters()):
        self.parameters = parameters
        self.detections = 0
        self._reset()

    def _reset(self) -> None:
        # totals[i][k], variances[i][k]: the k-th oldest summary of row i (2^i values each).
        self.totals: list[list[float]] = [[]]
        self.variances: list[list[float]] = [[]]
        self.total = 0.0
        self.variance = 0.0  # sum of squared deviations from the window's mean
        self.width = 0  # values in the window
        self.tick = 0  # values since the reset
        # The values the cuts of a detection dropped from the window (the older part), and their sum:
        # beside the window's mean, they say whether the mean rose or fell.
        self.dropped = 0
        self.dropped_total = 0.0
        self.drift_detected = False

    def update(self, value: float) -> bool:
        """Adds one value; True when drift is detected at it (the next update resets). A value that
        is not finite is ignored, as by `PageHinkley.update`."""
        if not math.isfinite(value):
            return False
        if self.drift_detected:
            self._reset()
        self._insert(value)
        self.tick += 1
        p = self.parameters
        detected = False
        if self.tick % p.clock == 0 and self.width > p.grace_period:
            while self._cut_oldest_bucket():
                detected = True
        self.drift_detected = detected
        if detected:
            self.detections += 1
        return detected

    def _insert(self, value: float) -> None:
        self.totals[0].append(value)
        self.variances[0].append(0.0)
        self.width += 1
        width = float(self.width)
        if width > 1.0:
            deviation = value - self.total / (width - 1.0)
            self.variance += (width - 1.0) * deviation * deviation / width
        self.total += value
        self._compress()

    def _compress(self) -> None:
        """Merges the two oldest summaries of each full row into the next row, as far as needed."""
        full = self.parameters.max_buckets + 1
        totals, variances = self.totals, self.variances
        row = 0
        while len(totals[row]) == full:
            size = float(1 << row)
            t0, t1 = totals[row][0], totals[row][1]
            mean0, mean1 = t0 / size, t1 / size
            merged_variance = variances[row][0] + variances[row][1] + size * 0.5 * (mean0 - mean1) * (mean0 - mean1)
            if row + 1 == len(totals):
                totals.append([])
                variances.append([])
            totals[row + 1].append(t0 + t1)
            variances[row + 1].append(merged_variance)
            del totals[row][:2], variances[row][:2]
            if len(totals[row + 1]) < full:
                break
            row += 1

    def _cut_oldest_bucket(self) -> bool:
        """Tests the cuts from the oldest end; at the first significant one, drops the oldest bucket
        and returns True; False when no cut is significant."""
        min_length = float(self.parameters.min_window_length)
        n0, n1 = 0.0, float(self.width)
        u0, u1 = 0.0, self.total
        for row in range(len(self.totals) - 1, -1, -1):
            size = float(1 << row)
            row_totals = self.totals[row]
            last = len(row_totals) - 1
            for k, bucket_total in enumerate(row_totals):
                n0 += size
                n1 -= size
                u0 += bucket_total
                u1 -= bucket_total
                if row == 0 and k == last:
                    return False
                if n1 >= min_length and n0 >= min_length and self._significant(n0, n1, u0 / n0 - u1 / n1):
                    self._delete_oldest_bucket()
                    return True
        return False

    def _significant(self, n0: float, n1: float, mean_difference: float) -> bool:
        p = self.parameters
        width = float(self.width)
        min_length = float(p.min_window_length)
        delta_prime = math.log(2.0 * math.log(width) / p.delta)
        m_recip = 1.0 / (n0 - min_length + 1.0) + 1.0 / (n1 - min_length + 1.0)
        radicand = 2.0 * m_recip * (self.variance / width) * delta_prime
        if not radicand >= 0.0:  # a variance rounded below 0: River's sqrt gives NaN, no cut
            return False
        epsilon = math.sqrt(radicand) + 2.0 / 3.0 * delta_prime * m_recip
        return abs(mean_difference) > epsilon

    def _delete_oldest_bucket(self) -> None:
        last = len(self.totals) - 1
        size = float(1 << last)
        bucket_total, bucket_variance = self.totals[last][0], self.variances[last][0]
        bucket_mean = bucket_total / size
        self.width -= 1 << last
        self.dropped += 1 << last
        self.dropped_total += bucket_total
        width = float(self.width)
        self.total -= bucket_total
        window_mean = self.total / width
        self.variance -= (bucket_variance + size * width * (bucket_mean - window_mean) * (bucket_mean - window_mean)
                          / (size + width))
        del self.totals[last][0], self.variances[last][0]
        if not self.totals[last]:
            self.totals.pop()
            self.variances.pop()

    def statistics(self) -> dict[str, float | int]:
        """`values`: values since the last reset (this one included); `window`: values in the
        window (at a detection: after the cut, so the newer part); `mean` and `variance`: the
        window's (0 when empty); `dropped` and `dropped_mean`: how many values the detection cut
        from the window (the older part) and their mean (0 and 0.0 outside a detection);
        `detections`: drifts detected over the detector's life."""
        width, dropped = self.width, self.dropped
        return {"values": self.tick, "window": width, "mean": self.total / width if width else 0.0,
                "variance": self.variance / width if width else 0.0, "dropped": dropped,
                "dropped_mean": self.dropped_total / dropped if dropped else 0.0, "detections": self.detections}

    def to_bytes(self) -> bytes:
        rows = len(self.totals)
        header = _header(self.KIND, self.drift_detected, rows) + _ADWIN_STATE.pack(
            self.parameters.max_buckets, self.tick, self.detections, self.total, self.variance, self.dropped,
            self.dropped_total)
        counts = bytes(map(len, self.totals))
        floats = struct.pack(f"<{2 * sum(counts)}d", *chain.from_iterable(self.totals),
                             *chain.from_iterable(self.variances))
        return header + counts + floats

    @classmethod
    def from_bytes(cls, data: bytes, parameters: AdwinParameters = AdwinParameters()) -> Adwin:
        """The detector `to_bytes` wrote, continued with `parameters`; ValueError when the state was
        written with another `max_buckets` (its rows would never merge again)."""
        pending, rows = _read_header(data, cls.KIND)
        (max_buckets, tick, detections, total, variance, dropped,
         dropped_total) = _ADWIN_STATE.unpack_from(data, _HEADER.size)
        if max_buckets != parameters.max_buckets:
            raise _StateMismatch(f"ADWIN state kept {max_buckets} buckets per row, the settings {parameters.max_buckets}")
        offset = _HEADER.size + _ADWIN_STATE.size + rows
        flat = struct.unpack_from(f"<{(len(data) - offset) // 8}d", data, offset)
        detector = cls.__new__(cls)
        detector.parameters = parameters
        totals: list[list[float]] = []
        variances: list[list[float]] = []
        start, n, width = 0, len(flat) // 2, 0
        for row, count in enumerate(data[offset - rows:offset]):
            end = start + count
            totals.append(list(flat[start:end]))
            variances.append(list(flat[n + start:n + end]))
            width += count << row
            start = end
        detector.totals, detector.variances, detector.width = totals, variances, width
        detector.total, detector.variance = total, variance
        detector.dropped, detector.dropped_total = dropped, dropped_total
        detector.tick, detector.detections, detector.drift_detected = tick, detections, pending
        return detector


def _header(kind: int, pending_reset: bool, detector_byte: int = 0) -> bytes:
    """The state's 4-byte common header (see DRIFT_STATE_VERSION): the current version, `kind`,
    `pending_reset` as 0 or 1, and `detector_byte` (0..255; ADWIN's bucket rows, 0 for Page-Hinkley)."""
    return _HEADER.pack(DRIFT_STATE_VERSION, kind, pending_reset, detector_byte)


def _read_header(data: bytes, kind: int) -> tuple[bool, int]:
    """(pending_reset, the detector's byte) of `data`'s header when it names the current version and
    `kind`; ValueError otherwise (_StateMismatch for another kind)."""
    if len(data) < _HEADER.size:
        raise ValueError(f"drift state of {len(data)} bytes is too short")
    version, stored_kind, pending, detector_byte = _HEADER.unpack_from(data)
    if version != DRIFT_STATE_VERSION:
        raise ValueError(f"drift state version {version} is not supported (this release reads {DRIFT_STATE_VERSION})")
    if stored_kind != kind:
        raise _StateMismatch(f"drift state of detector kind {stored_kind}, expected {kind}")
    return bool(pending), detector_byte
