"""River's own drift detectors over seeded sequences: the reference udfs/drift.py must equal.

Runs `river.drift.PageHinkley` and `river.drift.ADWIN` (River 0.26.1, in the bench's River
environment: `make .venv-river/.installed`) over the sequences of `sequences()`, with River's
defaults and a few other parameter sets, and prints, or with --write records as JSON, the indices at
which River detected drift (plus ADWIN's public window statistics at each detection and at the end).
tests/fixtures/drift/river_0.26.1.json was written by

    .venv-river/bin/python bench/drift_reference.py --write tests/fixtures/drift/river_0.26.1.json

and tests/unit/test_drift.py checks udfs/drift.py against it, rebuilding the same sequences from
this module's `sequences()` (which needs only the standard library, so the project's own
environment imports it without River). Nothing here uses the code under test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import struct
import sys
from pathlib import Path

RIVER_VERSION = "0.26.1"
COMMAND = ".venv-river/bin/python bench/drift_reference.py --write tests/fixtures/drift/river_0.26.1.json"

# Parameter sets run on every sequence: River's defaults first, then ones that exercise the other
# branches (a one-sided test, no fading, checks on every value, small buckets, short sub-windows).
PAGE_HINKLEY_PARAMETERS = [
    {},
    {"mode": "up", "threshold": 10.0, "min_instances": 10},
    {"mode": "down", "threshold": 5.0, "alpha": 1.0, "delta": 0.0},
]
ADWIN_PARAMETERS = [
    {},
    {"delta": 0.05, "clock": 1, "max_buckets": 2, "min_window_length": 1, "grace_period": 0},
    {"delta": 0.0001, "clock": 7, "max_buckets": 3, "min_window_length": 20, "grace_period": 100},
]


def _capped_log_loss(p: float, y: int) -> float:
    """-log of the probability given to the true class, at most 10 nats (as the job feeds detectors)."""
    q = p if y == 1 else 1.0 - p
    return 10.0 if q <= 1e-15 else min(-math.log(q), 10.0)


def _logistic_stream_losses(seed: int, n: int, change_at: int) -> list[float]:
    """Prequential log losses of a one-feature logistic regression learning by SGD (rate 0.05) on a
    stream with 3% positives, whose feature is N(2, 1) for positives and N(0, 1) for negatives
    before `change_at` and the reverse (N(-1, 1) for positives) from it on: a fraud pattern change."""
    rng = random.Random(seed)
    weight, bias, losses = 0.0, math.log(0.03 / 0.97), []
    for t in range(n):
        y = 1 if rng.random() < 0.03 else 0
        x = rng.gauss(2.0 if t < change_at else -1.0, 1.0) if y else rng.gauss(0.0, 1.0)
        z = weight * x + bias
        p = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        losses.append(_capped_log_loss(p, y))
        weight -= 0.05 * (p - y) * x
        bias -= 0.05 * (p - y)
    return losses


def sequences() -> dict[str, list[float]]:
    """The seeded input sequences, by name (standard library only: identical in every environment)."""
    rng = random.Random(7)
    stationary = [rng.gauss(0.2, 0.1) for _ in range(5_000)]
    rng = random.Random(11)
    abrupt = ([rng.gauss(0.0, 1.0) for _ in range(2_000)] + [rng.gauss(1.0, 1.0) for _ in range(2_000)]
              + [rng.gauss(0.3, 1.0) for _ in range(2_000)])
    rng = random.Random(13)
    # The mean ramps from 0 to 2 over records 2,000 to 4,000, then stays.
    gradual = [rng.gauss(min(max((t - 2_000) / 2_000, 0.0), 1.0) * 2.0, 1.0) for t in range(6_000)]
    rng = random.Random(12345)  # River's own docstring example: PageHinkley 1006, ADWIN 1023
    river_example = [float(v) for v in rng.choices([0, 1], k=1_000) + rng.choices(range(4, 8), k=1_000)]
    rng = random.Random(17)
    short_stationary = [rng.random() for _ in range(300)]
    return {
        "stationary_noise": stationary,
        "abrupt_mean_shifts": abrupt,
        "gradual_shift": gradual,
        "river_docstring_example": river_example,
        "short_stationary_uniform": short_stationary,
        "log_loss_stream": _logistic_stream_losses(seed=19, n=20_000, change_at=10_000),
        "log_loss_stream_no_change": _logistic_stream_losses(seed=23, n=20_000, change_at=20_000),
    }


def sequence_digest(values: list[float]) -> str:
    """sha256 of the values as little-endian float64: shows that a test rebuilt the same sequence."""
    return hashlib.sha256(struct.pack(f"<{len(values)}d", *values)).hexdigest()


def run_river(values: list[float], detector: str, parameters: dict) -> dict:
    from river import drift

    if detector == "page_hinkley":
        model = drift.PageHinkley(**parameters)
    else:
        model = drift.ADWIN(**parameters)
    detections, windows = [], []
    for i, value in enumerate(values):
        model.update(value)
        if model.drift_detected:
            detections.append(i)
            if detector == "adwin":
                windows.append(_adwin_window(model))
    result = {"detections": detections}
    if detector == "adwin":
        result["windows_at_detections"] = windows
        result["window_at_end"] = _adwin_window(model)
    return result


def _adwin_window(model) -> dict:
    return {"width": int(model.width), "total": model.total, "variance": model.variance}


def reference() -> dict:
    import river

    if river.__version__ != RIVER_VERSION:
        sys.exit(f"River {river.__version__} is installed; this reference is for River {RIVER_VERSION}")
    cases = []
    for name, values in sequences().items():
        for detector, parameter_sets in (("page_hinkley", PAGE_HINKLEY_PARAMETERS), ("adwin", ADWIN_PARAMETERS)):
            for parameters in parameter_sets:
                cases.append({"sequence": name, "length": len(values), "sha256": sequence_digest(values),
                              "detector": detector, "parameters": parameters,
                              **run_river(values, detector, parameters)})
    return {"made_by": "bench/drift_reference.py", "command": COMMAND, "river": RIVER_VERSION,
            "python": sys.version.split()[0], "cases": cases}


def _one_case_a_line(result: dict) -> str:
    """The JSON of `result`, with each case on a line of its own (short, and diffs by case)."""
    head = json.dumps({key: value for key, value in result.items() if key != "cases"})[:-1]
    cases = ",\n".join(json.dumps(case) for case in result["cases"])
    return f'{head}, "cases": [\n{cases}\n]}}\n'


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, help="write the JSON here instead of printing the indices")
    args = parser.parse_args(argv)
    result = reference()
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(_one_case_a_line(result), encoding="utf-8")
    for case in result["cases"]:
        print(f"{case['sequence']:28} {case['detector']:13} {json.dumps(case['parameters']):90} {case['detections']}")


if __name__ == "__main__":
    main()
