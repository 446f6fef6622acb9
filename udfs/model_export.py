"""A key's model as a plain JSON document for use outside Riskstream (`riskstream model export`):
lists in the features' order, as scikit-learn's `coef_` or a River model's weights would be read
(pure Python, no Flink).

How the job scores a record x with it (docs/operations.md, "Using a model outside the job"): first
the record joins the standardization statistics (Welford: count' = count + 1,
mean' = mean + (x - mean) / count', m2' = m2 + (x - mean) (x - mean')), then each standardized
feature is replaced by (x - mean') / std', std' = `standard_deviation(m2', count')`, and the score
is sigmoid(bias + sum(weights[i] * x[i])). `std` in the export is the standard deviation of the
statistics as they are, for a reader who standardizes without adding the record (the scores then
differ by about 1 / count).
"""

from __future__ import annotations

from typing import Any

from udfs.features import standard_deviation
from udfs.model import ACCUMULATOR_NAMES, STATE_VERSION, KeyModel

EXPORT_VERSION = 1


def exported_model(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The export of a model snapshot (docs/contracts.md, "Model snapshots"): every list is in the
    order of `features`, the model's feature order. Raises ValueError for a snapshot this release
    cannot read (`KeyModel.from_snapshot`)."""
    names = list(snapshot["weights"])
    key_model = KeyModel.from_snapshot(snapshot, names)  # checks the version, features and optimizer
    model, statistics = key_model.model, key_model.standardizer
    count = statistics.count
    return {
        "export_version": EXPORT_VERSION,
        "model": "logistic_regression",
        "model_key": snapshot["model_key"],
        "features": names,
        "weights": list(model.weights),
        "bias": model.bias,
        "standardization": {
            "count": count,
            "features": [names[i] for i in statistics.positions],
            "mean": list(statistics.mean),
            "std": [standard_deviation(m2, count) for m2 in statistics.m2],
            "m2": list(statistics.m2),
        },
        "optimizer": {
            "kind": model.optimizer_kind,
            "accumulators": {name: {"weights": list(values[:-1]), "bias": values[-1]}
                             for name, values in zip(ACCUMULATOR_NAMES[model.optimizer_kind], model.accumulators)},
        },
        "model_updates": model.updates,
        "rejected_updates": model.rejected_updates,
        "event_time": snapshot["event_time"],
        "snapshot_schema_version": snapshot["schema_version"],
        "state_version": STATE_VERSION,
    }
