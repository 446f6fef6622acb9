"""Single-process baselines for `make bench`: what a user would write instead of a Flink job.

One Python process reads the file and scores and learns with one model per key. `--learner river`:
a loop over the lines runs Riskstream's per-record decode, parse, clean, feature and per-key
standardization code on each (as a user writing a River script would), then River's
LogisticRegression with the profile's optimizer, plain SGD or AdaGrad (run in its own virtual
environment). `--learner exact`: the
fastest record code the job uses, on batches of 1,000 lines (TransactionReader.read_columns,
ModelScorer.score_columns: columnar cleaning and features, the compiled model). Scores are written as JSON lines, as the job
writes them. Prints one JSON object: learner, records, seconds, records_per_second, and
core_us_per_record (this process's user + system CPU over the loop, per record), and the
profile's model.optimizer; `--set dotted.key=value` overrides the profile (as the CLI's does).
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import islice
from pathlib import Path

import orjson

from streaming.config import load_settings
from streaming.config.from_settings import model_scorer, transaction_reader
from streaming.reporting.outputs import file_records
from udfs.cleaning import SCHEMA_VERSION

BATCH = 1_000


def exact_loop(preparer, scorer, path: Path, out) -> int:
    """Scores the file's records in batches; returns how many records it read."""
    table = scorer.new_table()
    lines = file_records(path)
    start = 0
    while chunk := list(islice(lines, BATCH)):
        now_ms = time.time_ns() // 1_000_000
        by_shard, dead_letters = preparer.read_columns(chunk, lambda i: {"file": str(path), "line": start + i + 1},
                                                       1, now_ms)
        start += len(chunk)
        for letter in dead_letters:
            out.write(f"{letter}\n".encode("utf-8"))
        if by_shard:
            for line in scorer.score_columns(by_shard[0], table, now_ms)[0]:
                out.write(line)
                out.write(b"\n")
    return start


def river_optimizer(settings):
    """River's optimizer for the profile's model.optimizer and rate (sgd or adagrad; River has no
    FTRL-Proximal), with its intercept learning at the same rate."""
    from river import optim

    model = settings.model
    if model.optimizer == "ftrl":
        raise SystemExit("bench/loops.py: --learner river has no FTRL-Proximal; use model.optimizer sgd or adagrad")
    if model.optimizer == "adagrad":
        return lambda: optim.AdaGrad(model.learning_rate)
    return lambda: optim.SGD(model.learning_rate)


def river_learner(scorer, settings):
    from river import linear_model

    names = scorer.feature_names
    models: dict[str, tuple] = {}
    new_optimizer = river_optimizer(settings)
    learning_rate = settings.model.learning_rate

    def score(record, now_ms):
        entry = models.get(record.model_key)
        if entry is None:
            entry = models[record.model_key] = (
                scorer.new_model().standardizer,
                linear_model.LogisticRegression(optimizer=new_optimizer(), l2=0.0, intercept_lr=learning_rate),
            )
        standardizer, model = entry
        values = standardizer.transform(record.values)
        x = {names[i]: v for i, v in zip(record.indices, values)}
        p = model.predict_proba_one(x).get(True, 0.0)
        if record.label is not None:
            model.learn_one(x, bool(record.label))
        return orjson.dumps({
            "schema_version": SCHEMA_VERSION, "txn_id": record.txn_id, "model_key": record.model_key, "score": p,
            "label": record.label, "event_time": record.event_time, "scored_at": now_ms,
        }).decode("utf-8")

    return score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learner", choices=("exact", "river"), required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True, type=Path, help="where to write the scores (JSON lines)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the profile, e.g. model.optimizer=adagrad (repeatable)")
    args = parser.parse_args(argv)

    settings = load_settings(args.config, [f"model.key={args.key}", *args.set])
    preparer = transaction_reader(settings)
    scorer = model_scorer(settings, preparer.encoder)
    source = {"file": str(args.input)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = 0
    started = time.perf_counter()
    cpu_at_first = time.process_time()  # user + system of this process, as the job's is measured
    if args.learner == "exact":
        with args.out.open("wb") as out:
            records = exact_loop(preparer, scorer, args.input, out)
    else:
        score = river_learner(scorer, settings)
        with args.out.open("w", encoding="utf-8") as out:
            for line in file_records(args.input):
                records += 1
                now_ms = time.time_ns() // 1_000_000
                result = preparer.read(line, {**source, "line": records}, now_ms)
                if not isinstance(result, str):
                    result = score(result, now_ms)
                out.write(result)
                out.write("\n")
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_at_first
    print(orjson.dumps({"learner": args.learner, "key": args.key, "optimizer": settings.model.optimizer,
                        "records": records, "seconds": seconds,
                        "records_per_second": records / seconds,
                        "core_us_per_record": cpu_seconds / records * 1e6}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
