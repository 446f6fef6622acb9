"""The `model.drift` section (streaming/config/drift_settings.py): River's defaults, the udfs settings
it builds, and one-line errors naming the field, as `load_settings` reports them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streaming.config.base import Section
from streaming.config.drift_settings import DriftSection, OnDrift
from streaming.config.loading import _one_line
from udfs.drift import AdwinParameters, DriftSettings, PageHinkleyParameters


class ModelLike(Section):
    """Where the lead wires it: `model.drift` and `model.on_drift`."""

    drift: DriftSection = DriftSection()
    on_drift: OnDrift = "report"


class ProfileLike(Section):
    model: ModelLike = ModelLike()


def one_line_error(raw: dict) -> str:
    with pytest.raises(ValidationError) as info:
        ProfileLike.model_validate(raw)
    return _one_line(info.value)


def test_defaults_are_rivers_and_detection_is_off():
    settings = ProfileLike().model.drift.detector_settings()
    assert settings == DriftSettings(detector="none")
    assert (settings.page_hinkley.min_instances, settings.page_hinkley.delta, settings.page_hinkley.threshold,
            settings.page_hinkley.alpha, settings.page_hinkley.mode) == (30, 0.005, 50.0, 1 - 0.0001, "both")
    assert (settings.adwin.delta, settings.adwin.clock, settings.adwin.max_buckets, settings.adwin.min_window_length,
            settings.adwin.grace_period) == (0.002, 32, 5, 5, 10)
    assert settings.loss_cap == 10.0 and ProfileLike().model.on_drift == "report"


def test_a_profile_section_becomes_the_detector_settings():
    raw = {"model": {"drift": {"detector": "adwin", "adwin": {"delta": 0.01, "clock": 8},
                               "page_hinkley": {"mode": "up"}, "loss_cap": 5},
                     "on_drift": "rewarm"}}
    model = ProfileLike.model_validate(raw).model
    assert model.drift.detector_settings() == DriftSettings(
        "adwin", PageHinkleyParameters(mode="up"), AdwinParameters(delta=0.01, clock=8), 5.0)
    assert model.on_drift == "rewarm"


@pytest.mark.parametrize("drift, expected", [
    ({"adwin": {"delta": 2}}, "model.drift.adwin.delta: must be above 0 and below 1"),
    ({"page_hinkley": {"alpha": 1.5}}, "model.drift.page_hinkley.alpha: must be above 0 and at most 1"),
    ({"page_hinkley": {"min_instances": 0}}, "model.drift.page_hinkley.min_instances: must be 1 to 10^9"),
    ({"loss_cap": -1}, "model.drift.loss_cap: must be above 0 and finite"),
    ({"adwin": {"clock": "often"}}, "model.drift.adwin.clock: Input should be a valid integer, unable to parse "
                                    "string as an integer (got 'often')"),
    ({"detector": "kswin"}, "model.drift.detector: Input should be 'page_hinkley', 'adwin' or 'none' (got 'kswin')"),
])
def test_a_bad_drift_setting_fails_with_one_line_naming_the_field(drift, expected):
    assert one_line_error({"model": {"drift": drift}}) == expected


def test_on_drift_allows_report_reset_or_rewarm():
    assert one_line_error({"model": {"on_drift": "retrain"}}) == \
        "model.on_drift: Input should be 'report', 'reset' or 'rewarm' (got 'retrain')"


def test_an_unknown_drift_setting_is_refused():
    with pytest.raises(ValidationError) as info:
        ProfileLike.model_validate({"model": {"drift": {"adwin": {"window": 5}}}})
    assert [(error["type"], error["loc"]) for error in info.value.errors()] == \
        [("extra_forbidden", ("model", "drift", "adwin", "window"))]
