"""A model export (`riskstream model export`) applied by hand, as docs/operations.md ("Using a model
outside the job") tells a user to: plain arithmetic over the exported lists, none of the job's code."""

from __future__ import annotations

import math
from typing import Any


def score_by_hand(export: dict[str, Any], features: dict[str, float]) -> float:
    """The probability the export gives a record whose encoded features are `features` (name ->
    value; a name left out is 0): the record joins the standardization statistics (Welford), each
    standardized feature becomes (x - mean') / std', and the score is sigmoid(bias + w . x)."""
    standardization = export["standardization"]
    x = {name: features.get(name, 0.0) for name in export["features"]}
    count = standardization["count"] + 1
    for name, mean, m2 in zip(standardization["features"], standardization["mean"], standardization["m2"]):
        value = x[name]
        new_mean = mean + (value - mean) / count
        new_m2 = m2 + (value - mean) * (value - new_mean)
        variance = new_m2 / count
        std = math.sqrt(variance) if count > 1 and variance > 0 else 1.0
        x[name] = (value - new_mean) / std
    margin = export["bias"] + sum(weight * x[name] for name, weight in zip(export["features"], export["weights"]))
    return 1.0 / (1.0 + math.exp(-margin))
