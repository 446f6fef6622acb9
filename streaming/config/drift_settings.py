"""The `model.drift` settings section and the `model.on_drift` choice (docs/configuration.md#modeldrift).

The allowed ranges and the defaults are udfs/drift.py's (River 0.26.1's defaults): this section gives
the types, and its validator builds udfs.drift.DriftSettings, whose one-line errors name the field
(`model.drift.adwin.delta: must be above 0 and below 1`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from streaming.config.base import Section
from udfs.drift import LOSS_CAP, AdwinParameters, DetectorName, DriftSettings, PageHinkleyParameters

# What a key's model does when its detector reports drift: only report it (a drift event), reset the
# key's model to a new one, or re-warm it from the global model.
OnDrift = Literal["report", "reset", "rewarm"]

_PAGE_HINKLEY = PageHinkleyParameters()
_ADWIN = AdwinParameters()


class PageHinkleySection(Section):
    min_instances: int = _PAGE_HINKLEY.min_instances
    delta: float = _PAGE_HINKLEY.delta
    threshold: float = _PAGE_HINKLEY.threshold
    alpha: float = _PAGE_HINKLEY.alpha
    mode: Literal["up", "down", "both"] = _PAGE_HINKLEY.mode


class AdwinSection(Section):
    delta: float = _ADWIN.delta
    clock: int = _ADWIN.clock
    max_buckets: int = _ADWIN.max_buckets
    min_window_length: int = _ADWIN.min_window_length
    grace_period: int = _ADWIN.grace_period


class DriftSection(Section):
    """`detector`: `page_hinkley`, `adwin` or `none` (no detection); the parameters of each; and
    `loss_cap`, the most a labelled record's log loss counts for (nats)."""

    detector: DetectorName = "none"
    page_hinkley: PageHinkleySection = PageHinkleySection()
    adwin: AdwinSection = AdwinSection()
    loss_cap: float = LOSS_CAP

    @model_validator(mode="after")
    def _possible(self) -> "DriftSection":
        self.detector_settings()  # raises ValueError naming the field
        return self

    def detector_settings(self) -> DriftSettings:
        """The settings udfs.drift.make_detector and restore_detector take."""
        return DriftSettings(self.detector, PageHinkleyParameters(**self.page_hinkley.model_dump()),
                             AdwinParameters(**self.adwin.model_dump()), self.loss_cap)
