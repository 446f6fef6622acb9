"""Issue 26's tuning study: the recommended learning configuration and the drift detector's settings,
chosen by measurement on generated streams and on the FIRST HALF (file order) of each real set only.

Each configuration runs udfs/prequential.py's learner (what `riskstream evaluate` runs for anything
but the job's exact per-key path) over a stream read with the job's own reading, cleaning and
features (udfs.evaluation.read_stream with the profile's TransactionReader), prequentially: every
record scored, then learned from. The metrics are udfs/evaluation.py's.

    .venv/bin/python bench/tune.py learning   # the learning grid (LEARNING_GRID) on the search streams
    .venv/bin/python bench/tune.py drift      # the detector grids (DRIFT_GRID; --grid fine: DRIFT_FINE_GRID)
    .venv/bin/python bench/tune.py signal     # per key, how large the change is (offline two-sample z)
    .venv/bin/python bench/tune.py final      # the chosen settings once: real second halves, 1M per account,
                                              # the 200k generated streams with and without drift

The search streams (SEARCH_STREAMS): `riskstream generate --records 40000` with and without
`--drift-at 0.5` (seed 7), scored on their second half; ISLR Default's first 5,000 rows and
credit_data's first 2,227 rows (`make realdata`), prequential over those rows and scored on their
second half (rows 2,500+ and 1,113+). `final` is the only mode that reads the real sets' second
halves; it was run once, after the choice (docs/evaluation.md#the-recommended-configuration).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streaming.config import load_settings  # noqa: E402
from streaming.config.from_settings import cleaning_rules, feature_encoder, transaction_reader  # noqa: E402
from streaming.reporting.outputs import file_records  # noqa: E402
from udfs.drift import AdwinParameters, DriftSettings, PageHinkleyParameters, drift_loss, make_detector  # noqa: E402
from udfs.evaluation import base_rate_part_metrics, part_metrics, read_stream  # noqa: E402
from udfs.global_model import GlobalSettings  # noqa: E402
from udfs.model import AdaGrad, Ftrl, Sgd  # noqa: E402
from udfs.prequential import LearningSettings, PrequentialLearner  # noqa: E402


class Stream(NamedTuple):
    """A stream read once: its chunks, encoder names, labels and file positions of scored records."""

    name: str
    chunks: list
    names: tuple
    standardized: tuple
    labels: np.ndarray
    positions: np.ndarray
    keys: list[str]
    starts: dict[str, int]


@dataclass(frozen=True)
class StreamSpec:
    name: str
    profile: str
    path: str
    lines: int | None  # read only the file's first `lines` records (None: all)
    scored_from: int | None  # the scored part starts at this file record (None: as evaluate's default)
    drift_at: int | None = None
    overrides: tuple[str, ...] = ()


SEARCH_STREAMS = (
    StreamSpec("gen", "conf/local.yaml", "data/gen/search-nodrift.jsonl", None, 20_000),
    StreamSpec("gen-drift", "conf/local.yaml", "data/gen/search-drift.jsonl", None, 20_000, drift_at=20_000),
    StreamSpec("islr-1st", "data/realdata/islr-default.yaml", "data/realdata/islr-default.jsonl", 5_000, 2_500),
    StreamSpec("credit-1st", "data/realdata/credit-data.yaml", "data/realdata/credit-data.jsonl", 2_227, 1_113),
)
FINAL_STREAMS = (
    StreamSpec("islr", "data/realdata/islr-default.yaml", "data/realdata/islr-default.jsonl", None, None),
    StreamSpec("credit", "data/realdata/credit-data.yaml", "data/realdata/credit-data.jsonl", None, None),
    StreamSpec("gen200k", "conf/local.yaml", "data/gen/final-nodrift.jsonl", None, 100_000),
    StreamSpec("gen200k-drift", "conf/local.yaml", "data/gen/final-drift.jsonl", None, 100_000, drift_at=120_000),
)
BENCH_STREAM = StreamSpec("bench-1m-account", "conf/bench.yaml", "data/bench-1000000.jsonl", None, 500_000,
                          overrides=("model.key=account_id",))


def read(spec: StreamSpec) -> Stream:
    settings = load_settings(ROOT / spec.profile, list(spec.overrides))
    records: Iterable[bytes] = file_records(ROOT / spec.path)
    if spec.lines is not None:
        records = itertools.islice(records, spec.lines)
    chunks, _ = read_stream(transaction_reader(settings), records)
    encoder = feature_encoder(settings, cleaning_rules(settings))
    labels = np.concatenate([c.batch.labels for c in chunks]).astype(np.int64)
    positions = np.concatenate([c.positions for c in chunks])
    keys = [r.model_key for c in chunks for r in c.batch.records()]
    # scored_from None: the second half of the records scored, as `riskstream evaluate` takes it.
    starts = {"whole": 0, "scored": int(positions[len(positions) // 2]) if spec.scored_from is None else spec.scored_from}
    if spec.drift_at is not None:
        starts["after drift"] = spec.drift_at
    return Stream(spec.name, chunks, tuple(encoder.names), tuple(encoder.standardized), labels, positions, keys,
                  starts)


class Run(NamedTuple):
    metrics: dict[str, dict[str, float]]
    events: list  # udfs.prequential.DriftEvent
    seconds: float


def run(stream: Stream, learning: LearningSettings, drift: DriftSettings | None = None, limit: int | None = None
        ) -> Run:
    """Prequential scores of `learning` (and its drift detectors) over `stream`; metrics per part."""
    factory = None
    if drift is not None and drift.detector != "none":
        factory = lambda: make_detector(drift)  # noqa: E731
    cap = LOSS_CAP if drift is None else drift.loss_cap
    learner = PrequentialLearner(stream.names, stream.standardized, learning, detector_factory=factory,
                                 detector_loss=lambda p, y: drift_loss(p, y, cap))
    started = time.perf_counter()
    scores = []
    for chunk in stream.chunks:
        for record in chunk.batch.records():
            scores.append(learner.process(record)[0])
            if limit is not None and len(scores) >= limit:
                break
        if limit is not None and len(scores) >= limit:
            break
    n = len(scores)
    p = np.asarray(scores, np.float64)
    return Run(part_metrics(p, stream.labels[:n], stream.positions[:n], stream.starts), learner.drift_events,
               time.perf_counter() - started)


LOSS_CAP = 10.0
GLOBAL = GlobalSettings()


def learning(optimizer, blend="key", cold_start="zeros", initial_bias=0.0, cadence=1000, global_rate=None,
             on_drift="report", drift_input="loss") -> LearningSettings:
    return LearningSettings(optimizer=optimizer, initial_bias=initial_bias, cold_start=cold_start, blend=blend,
                            on_drift=on_drift, drift_input=drift_input,
                            global_model=GlobalSettings(cadence_records=cadence, learning_rate=global_rate))


# The learning grid: the key models' optimizer x how keys and the global model combine x the global
# model's cadence (labelled records per version; its rate is the key optimizer's unless named).
OPTIMIZERS = {
    "sgd0.01": Sgd(0.01), "sgd0.1": Sgd(0.1),
    "ada0.1": AdaGrad(0.1), "ada0.2": AdaGrad(0.2),
    "ftrl0.1": Ftrl(0.1), "ftrl0.3": Ftrl(0.3),
}
COMBINATIONS = {
    "key": dict(blend="key"),
    "key+cold": dict(blend="key", cold_start="global"),
    "global": dict(blend="global"),
    "sum": dict(blend="sum"),
}
CADENCES = (10, 100)


def learning_grid() -> dict[str, LearningSettings]:
    grid = {}
    for (opt_name, optimizer), (comb_name, comb) in itertools.product(OPTIMIZERS.items(), COMBINATIONS.items()):
        if comb_name == "key":
            grid[f"{opt_name} key"] = learning(optimizer, **comb)
            continue
        for cadence in CADENCES:
            grid[f"{opt_name} {comb_name} c{cadence}"] = learning(optimizer, cadence=cadence, **comb)
    return grid


# The second grid: the best optimizers of the first grid, blend global or sum, with the global
# model's rate scaled up for its cadence (a version steps once on the MEAN gradient of `cadence`
# records: plain SGD needs about `cadence` times the per-record rate to move as far, AdaGrad and FTRL,
# whose steps do not depend on the gradient's scale, about its square root).
SCALED_OPTIMIZERS = {"sgd0.1": Sgd(0.1), "ada0.2": AdaGrad(0.2), "ftrl0.3": Ftrl(0.3)}
SCALED_CADENCES = (100, 1000)


def scaled_grid() -> dict[str, LearningSettings]:
    grid = {}
    for (opt_name, optimizer), blend, cadence in itertools.product(SCALED_OPTIMIZERS.items(), ("global", "sum"),
                                                                   SCALED_CADENCES):
        rate = getattr(optimizer, "alpha", None) or optimizer.learning_rate
        for scale_name, scale in (("sqrt", math.sqrt(cadence)), ("x3", 3.0)):
            global_rate = min(10.0, rate * scale)
            grid[f"{opt_name} {blend} c{cadence} g{global_rate:g}"] = learning(
                optimizer, blend=blend, cadence=cadence, global_rate=global_rate)
    return grid


# The third grid, around the best of the second (AdaGrad 0.2 and FTRL 0.3, blend sum, cadence 100):
# the global rate between the two scales tried there, and a cadence of 50.
def fine_grid() -> dict[str, LearningSettings]:
    grid = {}
    for (opt_name, optimizer), cadence, factor in itertools.product(
            (("ada0.2", AdaGrad(0.2)), ("ftrl0.3", Ftrl(0.3))), (50, 100), (2.0, 3.0, 5.0)):
        rate = getattr(optimizer, "alpha", None) or optimizer.learning_rate
        grid[f"{opt_name} sum c{cadence} g{rate * factor:g}"] = learning(
            optimizer, blend="sum", cadence=cadence, global_rate=rate * factor)
    return grid


def fmt(m: dict[str, float]) -> str:
    return f"{m['log_loss']:.4f}/{m['roc_auc']:.4f}"


def learning_command(args) -> None:
    streams = [read(spec) for spec in SEARCH_STREAMS]
    base = {s.name: base_rate_part_metrics(s.labels, s.positions, s.starts) for s in streams}
    print("base rate (hindsight): " + "  ".join(f"{s.name} {fmt(base[s.name]['scored'])}" for s in streams))
    grid = {"first": learning_grid, "scaled": scaled_grid, "fine": fine_grid}[args.grid]()
    if args.only:
        grid = {k: v for k, v in grid.items() if any(o in k for o in args.only)}
    print(f"{'configuration':<24}" + "".join(f"{s.name:>16}" for s in streams) + f"{'drift after':>16}"
          + f"{'mean ratio':>11}{'secs':>6}")
    for name, settings in grid.items():
        row, ratios, secs = [], [], 0.0
        drift_after = ""
        for s in streams:
            r = run(s, settings)
            secs += r.seconds
            m = r.metrics["scored"]
            row.append(fmt(m))
            ratios.append(m["log_loss"] / base[s.name]["scored"]["log_loss"])
            if "after drift" in r.metrics:
                drift_after = fmt(r.metrics["after drift"])
        print(f"{name:<24}" + "".join(f"{c:>16}" for c in row) + f"{drift_after:>16}"
              + f"{sum(ratios) / len(ratios):>11.4f}{secs:>6.0f}", flush=True)


def drift_report(stream: Stream, events: list, drift_at: int | None, window: int = 5_000) -> dict[str, Any]:
    """Per key: events, and (with a drift) whether one came within `window` records of the change,
    for the keys with at least 100 labels after it."""
    per_key: dict[str, int] = {}
    for e in events:
        per_key[e.model_key] = per_key.get(e.model_key, 0) + 1
    result: dict[str, Any] = {"events": len(events), "max_per_key": max(per_key.values(), default=0),
                              "keys_over_one": sum(1 for v in per_key.values() if v > 1)}
    if drift_at is not None:
        positions = stream.positions
        # file position of each event's record: events carry the learner's 0-based record index
        after = [(stream.keys[i], stream.labels[i]) for i in range(len(stream.keys)) if positions[i] >= drift_at]
        labelled_after: dict[str, int] = {}
        for key, label in after:
            if label >= 0:
                labelled_after[key] = labelled_after.get(key, 0) + 1
        eligible = {k for k, v in labelled_after.items() if v >= 100}
        in_window: dict[str, int] = {}
        for i in range(len(stream.keys)):
            if drift_at <= positions[i] < drift_at + window and stream.labels[i] >= 0:
                in_window[stream.keys[i]] = in_window.get(stream.keys[i], 0) + 1
        eligible_window = {k for k, v in in_window.items() if v >= 100}
        caught = {e.model_key for e in events if drift_at <= positions[e.record] < drift_at + window}
        result.update(eligible=len(eligible), caught=len(caught & eligible), eligible_window=len(eligible_window),
                      caught_window=len(caught & eligible_window))
    return result


def detector(kind: str, **parameters) -> DriftSettings:
    if kind == "page_hinkley":
        return DriftSettings("page_hinkley", page_hinkley=PageHinkleyParameters(**parameters))
    return DriftSettings("adwin", adwin=AdwinParameters(**parameters))


# The detector grid: River's defaults, then a one-sided Page-Hinkley with a warm-up and lower
# thresholds, and ADWIN with a looser delta; each on the loss and on the key's excess over global.
DRIFT_GRID = {
    "ph river defaults": detector("page_hinkley"),
    "ph up t50 m100": detector("page_hinkley", mode="up", min_instances=100),
    "ph up t20 m100": detector("page_hinkley", mode="up", threshold=20.0, min_instances=100),
    "ph up t15 m100": detector("page_hinkley", mode="up", threshold=15.0, min_instances=100),
    "ph up t10 m100": detector("page_hinkley", mode="up", threshold=10.0, min_instances=100),
    "ph up t5 m100": detector("page_hinkley", mode="up", threshold=5.0, min_instances=100),
    "ph up t2 m100": detector("page_hinkley", mode="up", threshold=2.0, min_instances=100),
    "ph both t5 m300": detector("page_hinkley", threshold=5.0, min_instances=300),
    "ph both t3 m300": detector("page_hinkley", threshold=3.0, min_instances=300),
    "ph both t2 m300 d.01": detector("page_hinkley", threshold=2.0, delta=0.01, min_instances=300),
    "ph down t20 m500": detector("page_hinkley", mode="down", threshold=20.0, min_instances=500),
    "ph down t30 m500": detector("page_hinkley", mode="down", threshold=30.0, min_instances=500),
    "adwin river defaults": detector("adwin"),
    "adwin d0.05 g100": detector("adwin", delta=0.05, grace_period=100),
}
DRIFT_INPUTS = ("loss", "excess_over_global", "residual")
# The second detector grid, on the excess over global only: Page-Hinkley up with a faster fading
# (alpha) and a longer warm-up, and ADWIN with looser deltas checked more often.
DRIFT_FINE_GRID = {
    **{f"ph up t{t:g} m{m} a{a:g}": detector("page_hinkley", mode="up", threshold=t, min_instances=m, alpha=a)
       for t, m, a in itertools.product((10.0, 15.0, 20.0), (100, 500), (0.999, 0.9999))},
    **{f"adwin d{d:g} c8 g100": detector("adwin", delta=d, clock=8, grace_period=100) for d in (0.05, 0.2, 0.5)},
}


def drift_command(args) -> None:
    streams = {spec.name: read(spec) for spec in SEARCH_STREAMS[:2]}
    # `--learning key-cold`: full per-key models started from the global one (blend key, cold start
    # global) instead of the recommended sum, so that a key's model can go stale against the global.
    base_settings = RECOMMENDED if args.learning == "recommended" else replace(
        RECOMMENDED, blend="key", cold_start="global")
    grid, inputs = (DRIFT_FINE_GRID, ("excess_over_global",)) if args.grid == "fine" else (DRIFT_GRID, DRIFT_INPUTS)
    for (det_name, det), drift_input in itertools.product(grid.items(), inputs):
        if args.only and not any(o in f"{det_name} {drift_input}" for o in args.only):
            continue
        for on_drift in args.reactions:
            settings = replace(base_settings, drift_input=drift_input, on_drift=on_drift)
            nodrift = run(streams["gen"], settings, det)
            drifted = run(streams["gen-drift"], settings, det)
            a = drift_report(streams["gen"], nodrift.events, None)
            b = drift_report(streams["gen-drift"], drifted.events, 20_000)
            print(f"{det_name:<22} {drift_input:<19} {on_drift:<7} no drift: {a['events']:>4} events, "
                  f"max/key {a['max_per_key']:>3}, keys>1 {a['keys_over_one']:>2} | drift: caught "
                  f"{b['caught']:>2}/{b['eligible']:>2} ({b['caught_window']}/{b['eligible_window']}) within 5k, {b['events']:>4} events | after drift "
                  f"{fmt(drifted.metrics['after drift'])} | no-drift 2nd half {fmt(nodrift.metrics['scored'])}",
                  flush=True)


def signal_command(args) -> None:
    """How large the change is per key on the search drift stream, offline: for each key with 100
    labels in the 5,000 records after the change, its mean capped loss, excess over global,
    fraud rate and the global model's own loss in the 5,000 records before and after, with the two-sample z of the difference (the
    best any detector could do with all of the window at once)."""
    stream = read(SEARCH_STREAMS[1])
    learner = PrequentialLearner(stream.names, stream.standardized, RECOMMENDED)
    windows: dict[str, dict[str, list]] = {}
    position = 0
    for chunk in stream.chunks:
        for record in chunk.batch.records():
            global_p = learner.global_model.predict_proba(record.indices, record.values)
            p, _ = learner.process(record)
            where = stream.positions[position]
            position += 1
            if record.label is None or not 15_000 <= where < 25_000:
                continue
            loss = drift_loss(p, record.label)
            side = windows.setdefault(record.model_key, {"before": [], "after": []})
            side["before" if where < 20_000 else "after"].append(
                (loss, loss - drift_loss(global_p, record.label), record.label))
    print(f"{'key':<18}{'labels after':>13}  loss before -> after (z)  excess (z)  fraud rate (z)  global loss (z)")
    for key, side in sorted(windows.items(), key=lambda item: -len(item[1]["after"])):
        before, after = np.array(side["before"]), np.array(side["after"])
        if len(after) < 100:
            continue
        cells = []
        # the columns: loss, excess, fraud rate, and the global model's own loss (loss - excess)
        before = np.column_stack([before, before[:, 0] - before[:, 1]])
        after = np.column_stack([after, after[:, 0] - after[:, 1]])
        for column in range(4):
            b, a = before[:, column], after[:, column]
            z = (a.mean() - b.mean()) / math.sqrt(a.var() / len(a) + b.var() / len(b) or 1e-300)
            cells.append(f"{b.mean():+.3f} -> {a.mean():+.3f} ({z:+.1f})")
        print(f"{key:<18}{len(after):>13}  " + "  ".join(cells))


# The chosen configuration (docs/evaluation.md#the-recommended-configuration), filled in by the study.
RECOMMENDED = learning(AdaGrad(0.2), blend="sum", cadence=50, global_rate=0.6)
RECOMMENDED_DRIFT = detector("page_hinkley", mode="up", threshold=20.0, min_instances=100)


def final_command(args) -> None:
    specs = {"real": FINAL_STREAMS[:2], "gen": FINAL_STREAMS[2:], "bench": (BENCH_STREAM,)}
    baseline = learning(Sgd(0.01))
    for part in args.parts:
        for spec in specs[part]:
            stream = read(spec)
            base = base_rate_part_metrics(stream.labels, stream.positions, stream.starts)
            print(f"{spec.name}: base rate " + "  ".join(f"{k} {fmt(v)}" for k, v in base.items()), flush=True)
            rows = {"recommended": (RECOMMENDED, None)}
            if spec.drift_at is not None or spec.name == "gen200k":
                rows["recommended + drift"] = (RECOMMENDED_DRIFT_LEARNING, RECOMMENDED_DRIFT)
                rows["per-key sgd0.01 (conf/local.yaml today)"] = (baseline, None)
            for name, (settings, det) in rows.items():
                r = run(stream, settings, det, args.limit)
                print(f"  {name:<42} " + "  ".join(f"{k} {fmt(v)}" for k, v in r.metrics.items())
                      + f"  ({r.seconds:.0f} s)", flush=True)
                if det is not None:
                    print("    drift:", drift_report(stream, r.events, spec.drift_at), flush=True)


RECOMMENDED_DRIFT_LEARNING = replace(RECOMMENDED, drift_input="excess_over_global", on_drift="report")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("learning")
    p.add_argument("--grid", choices=("first", "scaled", "fine"), default="first")
    p.add_argument("--only", nargs="*", default=[], help="configurations whose name contains one of these")
    p = sub.add_parser("drift")
    p.add_argument("--only", nargs="*", default=[])
    p.add_argument("--reactions", nargs="*", default=["report"])
    p.add_argument("--grid", choices=("first", "fine"), default="first")
    p.add_argument("--learning", choices=("recommended", "key-cold"), default="recommended")
    sub.add_parser("signal")
    p = sub.add_parser("final")
    p.add_argument("--parts", nargs="*", default=["real", "gen"], choices=("real", "gen", "bench"))
    p.add_argument("--limit", type=int, default=None, help="score only the first N records")
    args = parser.parse_args(argv)
    {"learning": learning_command, "drift": drift_command, "signal": signal_command,
     "final": final_command}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
