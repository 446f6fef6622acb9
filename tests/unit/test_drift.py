"""The drift detectors (udfs/drift.py) equal River 0.26.1's, keep their state compactly, and behave.

Equality: tests/fixtures/drift/river_0.26.1.json holds the indices at which River's own PageHinkley
and ADWIN detected drift on seeded sequences (and ADWIN's window at each detection), written once by
bench/drift_reference.py in the bench's River environment; the sequences are rebuilt here by the
same module's standard-library code, and their digests show they are the same.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bench.drift_reference import sequence_digest, sequences
from udfs.drift import (
    DRIFT_STATE_VERSION,
    LOSS_CAP,
    Adwin,
    AdwinParameters,
    DriftSettings,
    PageHinkley,
    PageHinkleyParameters,
    drift_loss,
    make_detector,
    restore_detector,
)

PROJECT = Path(__file__).resolve().parents[2]
FIXTURE = PROJECT / "tests" / "fixtures" / "drift" / "river_0.26.1.json"
REFERENCE = json.loads(FIXTURE.read_text(encoding="utf-8"))
SEQUENCES = sequences()


def detector_for(detector: str, parameters: dict) -> PageHinkley | Adwin:
    if detector == "page_hinkley":
        return PageHinkley(PageHinkleyParameters(**parameters))
    return Adwin(AdwinParameters(**parameters))


def case_id(case: dict) -> str:
    return f"{case['sequence']}-{case['detector']}-{json.dumps(case['parameters'], sort_keys=True)}"


def test_the_reference_names_the_independent_script_that_made_it():
    assert REFERENCE["made_by"] == "bench/drift_reference.py" and (PROJECT / REFERENCE["made_by"]).is_file()
    assert REFERENCE["river"] == "0.26.1"
    # Every sequence, each detector with River's defaults and with other parameters.
    assert {(c["sequence"], c["detector"]) for c in REFERENCE["cases"] if not c["parameters"]} == \
        {(name, detector) for name in SEQUENCES for detector in ("page_hinkley", "adwin")}


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=case_id)
def test_detects_drift_at_the_same_indices_as_river(case):
    values = SEQUENCES[case["sequence"]]
    assert (len(values), sequence_digest(values)) == (case["length"], case["sha256"]), "the sequence changed"
    detector = detector_for(case["detector"], case["parameters"])
    detections, windows = [], []
    for i, value in enumerate(values):
        if detector.update(value):
            detections.append(i)
            windows.append(detector.statistics())
    assert detections == case["detections"]
    if case["detector"] == "adwin":
        # The window River kept at each detection and at the end, to the last bit; what the cut
        # dropped is the rest of the values since the previous detection (River resets after each).
        starts = ([0] + [i + 1 for i in detections])[:len(detections)]
        for start, end, statistics, river in zip(starts, detections, windows, case["windows_at_detections"],
                                                 strict=True):
            assert (statistics["window"], statistics["mean"]) == (river["width"], river["total"] / river["width"])
            dropped = end + 1 - start - river["width"]
            assert statistics["values"] == end + 1 - start and statistics["dropped"] == dropped > 0
            assert statistics["dropped_mean"] == pytest.approx(math.fsum(values[start:start + dropped]) / dropped,
                                                               rel=1e-9, abs=1e-12)
        end = case["window_at_end"]
        assert (detector.width, detector.total, detector.variance) == (end["width"], end["total"], end["variance"])


def test_river_docstring_examples_detect_where_river_documents():
    # river.drift.PageHinkley's and ADWIN's docstrings: "Change detected at index 1006" and "... 1023".
    values = SEQUENCES["river_docstring_example"]
    for detector, documented in ((PageHinkley(), 1006), (Adwin(), 1023)):
        assert [i for i, value in enumerate(values) if detector.update(value)] == [documented]


@pytest.mark.parametrize("detector_name", ["page_hinkley", "adwin"])
def test_no_detection_on_short_stationary_input(detector_name):
    for seed in range(30):
        rng = random.Random(seed)
        detector = make_detector(DriftSettings(detector=detector_name))
        assert not any(detector.update(rng.gauss(0.15, 0.05)) for _ in range(500)), seed


@pytest.mark.parametrize("detector_name, within", [("page_hinkley", 150), ("adwin", 100)])
def test_detects_an_abrupt_shift_soon_after_it(detector_name, within):
    for seed in range(30):
        rng = random.Random(seed)
        detector = make_detector(DriftSettings(detector=detector_name))
        before = [detector.update(rng.gauss(0.15, 0.05)) for _ in range(1_000)]
        after = [detector.update(rng.gauss(1.5, 0.05)) for _ in range(within)]
        assert not any(before) and any(after), seed


ROUND_TRIP_CASES = [("page_hinkley", {}), ("page_hinkley", {"mode": "up", "threshold": 10.0, "min_instances": 10}),
                    ("adwin", {}), ("adwin", {"delta": 0.05, "clock": 1, "max_buckets": 2, "min_window_length": 1,
                                              "grace_period": 0})]


@pytest.mark.parametrize("detector_name, parameters", ROUND_TRIP_CASES)
def test_state_round_trip_continues_like_an_uninterrupted_detector(detector_name, parameters):
    values = SEQUENCES["log_loss_stream"]
    uninterrupted = detector_for(detector_name, parameters)
    expected = [uninterrupted.update(value) for value in values]
    assert any(expected)
    rng = random.Random(5)
    for trial in range(5):
        splits = sorted(rng.sample(range(1, len(values)), 25))
        # Also split right after each of the first detections (a reset is pending there).
        splits = sorted(set(splits) | {i + 1 for i, hit in enumerate(expected) if hit})
        settings = DriftSettings(detector=detector_name, **{detector_name: uninterrupted.parameters})
        detector = make_detector(settings)
        seen, start = [], 0
        for split in splits + [len(values)]:
            seen += [detector.update(value) for value in values[start:split]]
            start = split
            detector = restore_detector(settings, detector.to_bytes())
        assert seen == expected, trial
        assert detector.to_bytes() == uninterrupted.to_bytes()
        assert detector.statistics() == uninterrupted.statistics()


@pytest.mark.parametrize("detector_name", ["page_hinkley", "adwin"])
def test_a_value_that_is_not_finite_is_ignored(detector_name):
    values = SEQUENCES["abrupt_mean_shifts"]
    clean = make_detector(DriftSettings(detector=detector_name))
    expected = [i for i, value in enumerate(values) if clean.update(value)]
    assert expected  # so that a detector made useless by a NaN would fail below
    detector = make_detector(DriftSettings(detector=detector_name))
    detections = []
    for i, value in enumerate(values):
        if i % 500 == 7:
            assert detector.update(math.nan) is False and detector.update(-math.inf) is False
        if detector.update(value):
            detections.append(i)
    assert detections == expected and detector.to_bytes() == clean.to_bytes()


def test_state_is_compact():
    page_hinkley, adwin = PageHinkley(), Adwin()
    for value in SEQUENCES["log_loss_stream_no_change"]:
        page_hinkley.update(value)
        adwin.update(value)
    assert len(page_hinkley.to_bytes()) == 60
    # 20,000 values, none dropped by a cut: 15 rows of at most 5 buckets, 16 bytes each.
    assert adwin.width > 10_000 and len(adwin.to_bytes()) <= 56 + 15 * (1 + 5 * 16)
    assert adwin.to_bytes()[:2] == bytes([DRIFT_STATE_VERSION, Adwin.KIND])


def test_restore_starts_afresh_when_the_state_does_not_fit_the_settings():
    page_hinkley = PageHinkley()
    adwin = Adwin()
    for value in SEQUENCES["abrupt_mean_shifts"][:1_000]:
        page_hinkley.update(value)
        adwin.update(value)
    adwin_settings = DriftSettings(detector="adwin")
    assert restore_detector(adwin_settings, adwin.to_bytes()).statistics() == adwin.statistics()
    assert restore_detector(adwin_settings, None).statistics()["values"] == 0
    assert restore_detector(adwin_settings, page_hinkley.to_bytes()).statistics()["values"] == 0
    other_buckets = DriftSettings(detector="adwin", adwin=AdwinParameters(max_buckets=3))
    assert restore_detector(other_buckets, adwin.to_bytes()).statistics()["values"] == 0
    assert restore_detector(DriftSettings(detector="none"), adwin.to_bytes()) is None
    # Other parameters of the same detector continue the statistics.
    stricter = DriftSettings(detector="page_hinkley", page_hinkley=PageHinkleyParameters(threshold=80.0))
    restored = restore_detector(stricter, page_hinkley.to_bytes())
    assert restored.statistics() == {**page_hinkley.statistics(), "threshold": 80.0}
    with pytest.raises(ValueError, match="drift state version 9 is not supported"):
        restore_detector(adwin_settings, bytes([9]) + adwin.to_bytes()[1:])


def test_page_hinkley_statistics():
    detector = PageHinkley(PageHinkleyParameters(min_instances=1, delta=0.0, threshold=1.5, alpha=1.0, mode="up"))
    assert detector.statistics() == {"values": 0, "mean": 0.0, "increase": 0.0, "decrease": 0.0,
                                     "threshold": 1.5, "detections": 0}
    # Means 0, 0, 1: deviations 0, 0, 2 (hand computed); the upward sum rises from its minimum 0 to 2.
    assert [detector.update(v) for v in (0.0, 0.0, 3.0)] == [False, False, True]
    assert detector.statistics() == {"values": 3, "mean": 1.0, "increase": 2.0, "decrease": 0.0,
                                     "threshold": 1.5, "detections": 1}
    detector.update(0.0)  # the reset happens here, on the next value
    assert detector.statistics()["values"] == 1 and detector.statistics()["detections"] == 1


def test_adwin_statistics_describe_the_window():
    detector = Adwin()
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):
        detector.update(value)
    assert detector.statistics() == {"values": 5, "window": 5, "mean": 3.0, "variance": 2.0, "dropped": 0,
                                     "dropped_mean": 0.0, "detections": 0}
    assert Adwin().statistics() == {"values": 0, "window": 0, "mean": 0.0, "variance": 0.0, "dropped": 0,
                                    "dropped_mean": 0.0, "detections": 0}


def test_drift_loss_is_the_log_loss_capped():
    assert drift_loss(0.5, 1) == pytest.approx(math.log(2))
    assert drift_loss(0.9, 0) == pytest.approx(-math.log(0.1))
    assert drift_loss(0.03, 0) == pytest.approx(-math.log(0.97))
    assert drift_loss(1e-4, 1) == pytest.approx(-math.log(1e-4))  # 9.2 nats: under the cap
    assert drift_loss(1e-6, 1) == LOSS_CAP == 10.0
    assert drift_loss(0.0, 1) == drift_loss(1.0, 0) == drift_loss(math.nan, 1) == LOSS_CAP
    assert drift_loss(0.0, 1, cap=3.0) == 3.0


@pytest.mark.parametrize("build, message", [
    (lambda: PageHinkleyParameters(alpha=0.0), "model.drift.page_hinkley.alpha: must be above 0 and at most 1"),
    (lambda: PageHinkleyParameters(threshold=math.inf), "model.drift.page_hinkley.threshold"),
    (lambda: PageHinkleyParameters(min_instances=0), "model.drift.page_hinkley.min_instances"),
    (lambda: PageHinkleyParameters(mode="sideways"), "model.drift.page_hinkley.mode: must be up, down or both"),
    (lambda: AdwinParameters(delta=1.0), "model.drift.adwin.delta: must be above 0 and below 1"),
    (lambda: AdwinParameters(clock=0), "model.drift.adwin.clock"),
    (lambda: AdwinParameters(max_buckets=1), "model.drift.adwin.max_buckets: must be 2 to 100"),
    (lambda: AdwinParameters(min_window_length=0), "model.drift.adwin.min_window_length"),
    (lambda: AdwinParameters(grace_period=-1), "model.drift.adwin.grace_period"),
    (lambda: DriftSettings(detector="kswin"), "model.drift.detector: must be page_hinkley, adwin or none"),
    (lambda: DriftSettings(loss_cap=0.0), "model.drift.loss_cap"),
])
def test_settings_refuse_impossible_values_naming_the_field(build, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build()


def test_make_detector_follows_the_settings():
    assert make_detector(DriftSettings()) is None  # detection is off unless chosen
    adwin = make_detector(DriftSettings(detector="adwin", adwin=AdwinParameters(clock=4)))
    assert isinstance(adwin, Adwin) and adwin.parameters.clock == 4 and adwin.name == "adwin"
    page_hinkley = make_detector(DriftSettings(detector="page_hinkley"))
    assert isinstance(page_hinkley, PageHinkley) and page_hinkley.parameters == PageHinkleyParameters(
        min_instances=30, delta=0.005, threshold=50.0, alpha=1 - 0.0001, mode="both")
    assert AdwinParameters() == AdwinParameters(delta=0.002, clock=32, max_buckets=5, min_window_length=5,
                                                grace_period=10)
