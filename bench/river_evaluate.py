"""River's rows of `riskstream evaluate`: River 0.26's `StandardScaler | LogisticRegression`,
prequential (score, then learn) over a stream read with the job's own code, so that River sees
the same records and the same features as the job's models (docs/evaluation.md).

Runs in the bench's River environment (.venv-river: River needs a newer numpy than PyFlink
allows); `riskstream evaluate` starts it as a subprocess. Each row is one configuration of
RIVER_MODELS: `keyed` (one pipeline per model key, as the job keys its models) or `global` (one
pipeline for all, with the model key one-hot among the features: a `key=<value>` entry of 1.0
for the record's key, the other keys left out as a River dict leaves them), plain SGD or AdaGrad
at a rate,
`intercept_lr` equal to that rate. The features are the job's encoded values before its
standardization (River's StandardScaler standardizes them instead), by default without the
features the record lacks (`river_rows`).

Writes one JSON object to --out: `txn_ids` (the scored records, in order) and `models` (row name
-> each record's probability of fraud before learning from it). `--check METRICS_CSV
--reference-set NAME` instead compares the River rows of an evaluation's metrics.csv (its scored
part) with the reference figures of issue 26 (REFERENCE), and fails unless every one matches to
the 4 decimals given.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import NamedTuple

import orjson

from streaming.config import load_settings
from streaming.config.from_settings import transaction_reader
from streaming.reporting.outputs import file_records
from udfs.evaluation import read_stream


class RiverModel(NamedTuple):
    name: str
    scope: str  # keyed | global
    optimizer: str  # sgd | adagrad
    learning_rate: float


RIVER_MODELS = (
    RiverModel("River keyed SGD(0.1)", "keyed", "sgd", 0.1),
    RiverModel("River global SGD(0.1)", "global", "sgd", 0.1),
    RiverModel("River global SGD(0.01)", "global", "sgd", 0.01),
    RiverModel("River keyed AdaGrad(0.1)", "keyed", "adagrad", 0.1),
    RiverModel("River global AdaGrad(0.1)", "global", "adagrad", 0.1),
)


# Issue 26's figures, (log loss, ROC AUC at 1,000 thresholds) on the second half of each real set
# (bench/realdata.py), measured with River 0.26 outside this project.
REFERENCE = {
    "islr-default": {"River keyed SGD(0.1)": (0.0821, 0.9389), "River global SGD(0.1)": (0.0813, 0.9397),
                     "River global SGD(0.01)": (0.0930, 0.9424), "River keyed AdaGrad(0.1)": (0.0921, 0.9408),
                     "River global AdaGrad(0.1)": (0.0870, 0.9420)},
    "credit-data": {"River keyed SGD(0.1)": (0.5446, 0.7295), "River global SGD(0.1)": (0.5500, 0.7258),
                    "River global SGD(0.01)": (0.5093, 0.7568), "River keyed AdaGrad(0.1)": (0.5182, 0.7435),
                    "River global AdaGrad(0.1)": (0.5124, 0.7507)},
}


def check_reference(metrics_csv: Path, reference_set: str) -> tuple[list[str], bool]:
    """The River rows of `metrics_csv` (riskstream evaluate's) on its scored part against
    REFERENCE[reference_set]: one line per row, and whether all match to 4 decimals."""
    with metrics_csv.open(newline="") as metrics:
        rows = {row["model"]: row for row in csv.DictReader(metrics) if row["part"].startswith("from record")}
    lines, matched = [], True
    for name, (loss, auc) in REFERENCE[reference_set].items():
        row = rows.get(name)
        got = None if row is None else (round(float(row["log_loss"]), 4), round(float(row["roc_auc"]), 4))
        ok = got is not None and abs(got[0] - loss) < 5e-5 and abs(got[1] - auc) < 5e-5
        matched &= ok
        shown = "missing" if got is None else f"{got[0]:.4f} / {got[1]:.4f}"
        lines.append(f"{reference_set} {name}: {shown} (issue: {loss:.4f} / {auc:.4f}) {'ok' if ok else 'DIFFERS'}")
    return lines + [f"{reference_set}: River rows {'match' if matched else 'do NOT match'} the issue's figures"], matched


def pipeline(model: RiverModel):
    """A fresh `StandardScaler | LogisticRegression` for `model`."""
    from river import linear_model, optim, preprocessing

    optimizer = optim.SGD(model.learning_rate) if model.optimizer == "sgd" else optim.AdaGrad(model.learning_rate)
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optimizer, intercept_lr=model.learning_rate)


def prequential(model: RiverModel, rows: list[tuple[str, dict[str, float], int]]) -> list[float]:
    """Each row's probability of fraud before learning from it (label -1: scored only)."""
    pipelines: dict[str, object] = {}
    scores = []
    for key, x, label in rows:
        if model.scope == "keyed":
            learner = pipelines.get(key)
            if learner is None:
                learner = pipelines[key] = pipeline(model)
        else:
            learner = pipelines.get("")
            if learner is None:
                learner = pipelines[""] = pipeline(model)
            x = {**x, f"key={key}": 1.0}
        scores.append(learner.predict_proba_one(x).get(True, 0.0))
        if label >= 0:
            learner.learn_one(x, bool(label))
    return scores


def river_rows(settings, path: Path, form: str) -> tuple[list[str], list[tuple[str, dict[str, float], int]]]:
    """The stream's scored records as River sees them: (txn_ids, rows of (model key, features by
    name, label or -1)). `form` `encoded`: the job's encoded features as they are; `record`: the
    same without the numeric features the record lacks (the job imputes them per
    `cleaning.missing`; River leaves a missing feature out, as a River user would)."""
    reader = transaction_reader(settings)
    names = reader.encoder.names
    # Encoded position -> the record's `features` entry it reads (numeric features come first).
    optional = {i: spec.field.removeprefix("features.") for i, spec in enumerate(settings.features.numeric)
                if spec.field.startswith("features.")}
    lines = list(file_records(path))
    chunks, _ = read_stream(reader, lines)
    rows: list[tuple[str, dict[str, float], int]] = []
    txn_ids: list[str] = []
    for chunk in chunks:
        batch = chunk.batch
        indptr, indices, values = batch.indptr.tolist(), batch.indices.tolist(), batch.values.tolist()
        for r, (key, label, position) in enumerate(zip(batch.model_keys, batch.labels.tolist(),
                                                       chunk.positions.tolist())):
            start, end = indptr[r], indptr[r + 1]
            entries = zip(indices[start:end], values[start:end])
            if form == "record" and optional:
                given = orjson.loads(lines[position]).get("features") or {}
                entries = [(i, v) for i, v in entries if i not in optional or given.get(optional[i]) is not None]
            rows.append((key, {names[i]: v for i, v in entries}, label))
        txn_ids += batch.txn_ids
    return txn_ids, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--input", type=Path)
    parser.add_argument("--features", choices=("record", "encoded"), default="record",
                        help="what River sees (see river_rows)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--check", type=Path, metavar="METRICS_CSV", help="check an evaluation's River rows")
    parser.add_argument("--reference-set", choices=sorted(REFERENCE), help="the set --check compares with")
    args = parser.parse_args(argv)
    if args.check is not None:
        if args.reference_set is None:
            parser.error("--check needs --reference-set")
        lines, matched = check_reference(args.check, args.reference_set)
        print("\n".join(lines))
        return 0 if matched else 1
    if args.config is None or args.input is None or args.out is None:
        parser.error("--config, --input and --out are required (or --check)")

    txn_ids, rows = river_rows(load_settings(args.config, args.overrides), args.input, args.features)
    models = {}
    for model in RIVER_MODELS:
        started = time.perf_counter()
        models[model.name] = prequential(model, rows)
        print(f"{model.name}: {len(rows):,} records in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps({"txn_ids": txn_ids, "models": models}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
