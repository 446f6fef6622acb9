"""`riskstream evaluate`: several model configurations side by side on the same stream,
prequential (each record scored, then learned from), in one process and without Flink, with the
job's own reading, cleaning, features and model code; beside the hindsight base rate and River's
`StandardScaler | LogisticRegression` rows (bench/river_evaluate.py, in the bench's River
environment). Prints a table of log loss, ROC AUC, PR AUC and expected calibration error over the
whole stream, the scored part and after a drift point, and writes metrics.csv, learning_curve.csv
and learning_curve.png into --out (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import orjson

from streaming.cli.common import EXIT_FAILED, EXIT_OK, UsageError, fail
from streaming.config import PROJECT_ROOT, ConfigError, Settings, load_settings
from udfs.evaluation import (
    ECE_BINS,
    ROC_THRESHOLDS,
    StreamChunk,
    base_rate_part_metrics,
    part_metrics,
    rolling_curve,
)

RIVER_PYTHON = PROJECT_ROOT / ".venv-river" / "bin" / "python"
RIVER_SCRIPT = PROJECT_ROOT / "bench" / "river_evaluate.py"
RIVER_MISSING = ("River rows: no River environment at {python}; `make river-env` creates it "
                 "(River needs a newer numpy than PyFlink allows, so it has its own)")
BASE_RATE = "base rate (hindsight)"
CURVE_POINTS = 200  # points of each learning curve
PLOT_WIDTH_PX, PLOT_HEIGHT_PX, DPI = 960, 720, 96


def add_evaluate_options(sub: argparse.ArgumentParser) -> None:
    """The options of `riskstream evaluate` (the profile's --config and --set are added by the parser)."""
    sub.add_argument("--input", required=True, type=Path, help="a JSON-lines file of transactions")
    sub.add_argument("--model", dest="models", action="append", default=[], metavar="NAME=OVERRIDES",
                     help="a model to evaluate: the profile's model settings with OVERRIDES, comma-separated "
                          "model.* settings without the prefix, e.g. fast=learning_rate=0.1,l2=0.001 "
                          "(repeatable; default: the profile's model, named profile)")
    sub.add_argument("--from-record", type=int, default=None, metavar="N",
                     help="the scored part starts at the file's record N (0-based; default: the second half "
                          "of the records scored)")
    sub.add_argument("--drift-at", type=int, default=None, metavar="N",
                     help="also report the records from the file's record N (0-based), e.g. after a drift")
    sub.add_argument("--window", type=int, default=None, metavar="N",
                     help="labelled records per point of the learning curves (default: 1/20 of them, at least 100)")
    sub.add_argument("--river-features", choices=("record", "encoded"), default="record",
                     help="River sees the job's encoded features without (record) or with (encoded) the values "
                          "the job imputes for features a record lacks")
    sub.add_argument("--river-python", type=Path, default=RIVER_PYTHON,
                     help="the River environment's interpreter")
    sub.add_argument("--out", type=Path, default=PROJECT_ROOT / "out" / "evaluate",
                     help="folder for metrics.csv, learning_curve.csv and learning_curve.png")


class Scored(NamedTuple):
    """The records the models scored, in order: txn_ids, labels (-1: none), file positions."""

    txn_ids: list[str]
    labels: np.ndarray
    positions: np.ndarray


def evaluate_command(args: argparse.Namespace) -> int:
    from streaming.config.from_settings import transaction_reader
    from streaming.reporting.outputs import file_records
    from udfs.evaluation import read_stream

    models = model_settings(args.config, args.overrides, args.models)
    if not args.input.is_file():
        raise UsageError(f"evaluate --input: {args.input} is not a file")
    for option, value in (("--from-record", args.from_record), ("--drift-at", args.drift_at),
                          ("--window", args.window)):
        if value is not None and value < (1 if option == "--window" else 0):
            raise UsageError(f"evaluate {option}: must be >= {1 if option == '--window' else 0} (got {value})")
    first = next(iter(models.values()))
    chunks, summary = read_stream(transaction_reader(first), file_records(args.input))
    scored = Scored([txn for chunk in chunks for txn in chunk.batch.txn_ids],
                    np.concatenate([chunk.batch.labels for chunk in chunks] or [np.empty(0, np.int8)]).astype(np.int64),
                    np.concatenate([chunk.positions for chunk in chunks] or [np.empty(0, np.int64)]))
    labelled = int((scored.labels >= 0).sum())
    if labelled == 0:
        return fail(f"evaluate: no labelled records to evaluate in {args.input} "
                    f"({summary.records_read:,} read, {sum(summary.dead_letters.values()):,} dead-lettered)",
                    EXIT_FAILED)
    learned = {name: prequential_scores(settings, chunks) for name, settings in models.items()}
    scores = {name: p for name, (p, _) in learned.items()}
    drift_events = {name: events for name, (_, events) in learned.items()
                    if models[name].model.drift.detector != "none"}
    try:
        river = river_scores(args, scored.txn_ids)
    except RiverFailed as error:
        return fail(str(error), EXIT_FAILED)
    if isinstance(river, str):
        print(river)
    else:
        scores.update(river)
    starts = parts(args, scored)
    results = {BASE_RATE: base_rate_part_metrics(scored.labels, scored.positions, starts)}
    results.update({name: part_metrics(p, scored.labels, scored.positions, starts) for name, p in scores.items()})
    print(stream_line(args.input, summary, scored, starts))
    print(table(results, starts, scored))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        write_metrics(args.out / "metrics.csv", results, starts, scored)
        window = args.window or max(100, labelled // 20)
        write_curves(args.out, scores, scored, window, starts)
        if drift_events:
            print(write_drift_events(args.out / "drift_events.csv", drift_events, scored))
    except OSError as error:
        raise UsageError(f"evaluate --out: cannot write {args.out}: {error.strerror or error}") from None
    print(f"metrics.csv, learning_curve.csv and learning_curve.png{', drift_events.csv' if drift_events else ''} "
          f"in {args.out}")
    return EXIT_OK


def model_settings(config: Path, overrides: list[str], models: list[str]) -> dict[str, Settings]:
    """Each --model's settings: the profile with --set and then its own `model.*` overrides, loaded
    as `riskstream run --set` loads them (the same one-line errors, prefixed with the model)."""
    if not models:
        return {"profile": load_settings(config, overrides)}
    loaded: dict[str, Settings] = {}
    for model in models:
        name, separator, given = model.partition("=")
        name = name.strip()
        if not separator or not name:
            raise UsageError(f"evaluate --model {model}: expected NAME=OVERRIDES, e.g. fast=learning_rate=0.1")
        if name in loaded or name == BASE_RATE or name.startswith("River "):
            raise UsageError(f"evaluate --model {model}: the name {name!r} is taken; give each model its own")
        settings_given = [item.strip() for item in given.split(",") if item.strip()]
        for item in settings_given:
            if item.partition("=")[0].strip() == "key":
                raise UsageError(f"evaluate --model {model}: model.key is the same for every model, as all "
                                 f"are scored on the same records; use --set model.key=... instead")
        try:
            loaded[name] = load_settings(config, [*overrides, *(f"model.{item}" for item in settings_given)])
        except ConfigError as error:
            raise ConfigError(f"--model {name}: {error}") from None
    return loaded


def learning_settings(settings: Settings):
    """The learning the profile's `model.*` settings ask for, as udfs.prequential takes it: the
    optimizer (`model.optimizer` and its settings), `model.initial_bias`, `model.cold_start`,
    `model.blend`, `model.on_drift` and the global model's training (`model.global`). Every
    combination runs here, also those the job refuses for now."""
    from streaming.config.from_settings import optimizer
    from udfs.prequential import LearningSettings

    model = settings.model
    return LearningSettings(optimizer=optimizer(settings), initial_bias=model.initial_bias,
                            cold_start=model.cold_start, blend=model.blend, on_drift=model.on_drift,
                            global_model=model.global_.global_settings())


class Learner(NamedTuple):
    """One model's prequential step per chunk (each record's probability of fraud before learning
    from it) and the drift events it has raised so far (udfs.prequential.DriftEvent)."""

    step: Callable[[StreamChunk], np.ndarray]
    drift_events: list


def prequential_learner(settings: Settings, compiled: bool | None = None) -> Learner:
    """The job's model code, prequential: each record's probability of fraud before its key's
    model (and the global model) learned from it, learning from each labelled record in order;
    a drift detector per key when `model.drift` has one. udfs.prequential's learner, or, for the
    job's path without drift detection (each key its own model, no global model: `compiled` None
    or True), the job's compiled scorer (udfs/scoring.py), which gives the same scores
    (tests/unit/test_evaluate_cli.py) faster."""
    from streaming.config.from_settings import cleaning_rules, feature_encoder, model_scorer
    from udfs.drift import drift_loss, make_detector
    from udfs.prequential import LearningSettings, PrequentialLearner

    encoder = feature_encoder(settings, cleaning_rules(settings))
    learning = learning_settings(settings)
    drift = settings.model.drift
    detects = drift.detector != "none"
    # The job's path: each key's own model, new keys from zeros and the initial bias, no global model.
    exact_path = not detects and learning == LearningSettings(optimizer=learning.optimizer,
                                                              initial_bias=learning.initial_bias)
    if compiled is None:
        compiled = exact_path
    if compiled:
        if not exact_path:
            raise ValueError("the compiled scorer runs only the job's path (per key, no global model, no drift)")
        scorer = model_scorer(settings, encoder)
        table = scorer.new_table()
        return Learner(lambda chunk: scorer.assess_columns(chunk.batch, table).probability, [])
    detector_settings = drift.detector_settings()
    learner = PrequentialLearner(encoder.names, encoder.standardized, learning,
                                 detector_factory=(lambda: make_detector(detector_settings)) if detects else None,
                                 detector_loss=lambda p, y: drift_loss(p, y, drift.loss_cap))
    return Learner(lambda chunk: np.array([learner.process(record)[0] for record in chunk.batch.records()],
                                          np.float64), learner.drift_events)


def prequential_scores(settings: Settings, chunks: list[StreamChunk]) -> tuple[np.ndarray, list]:
    """Every record's score, and the drift events (see `Learner`)."""
    learner = prequential_learner(settings)
    return np.concatenate([learner.step(chunk) for chunk in chunks]), learner.drift_events


def river_scores(args: argparse.Namespace, txn_ids: list[str]) -> dict[str, np.ndarray] | str:
    """River's rows (bench/river_evaluate.py in the River environment), by row name; or the one
    line saying how to get them when that environment is missing."""
    python = args.river_python
    if not python.exists() or not RIVER_SCRIPT.is_file():
        return RIVER_MISSING.format(python=python)
    with tempfile.TemporaryDirectory(prefix="riskstream-river-") as folder:
        out = Path(folder) / "river.json"
        # In this folder, so that relative paths (of --set too) mean what they mean here.
        command = [str(python), str(RIVER_SCRIPT), "--config", str(args.config.resolve()),
                   "--input", str(args.input.resolve()), "--features", args.river_features, "--out", str(out)]
        for override in args.overrides:
            command += ["--set", override]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise RiverFailed(f"River rows: {RIVER_SCRIPT.name} failed (exit {done.returncode}): {last}")
        result = orjson.loads(out.read_bytes())
    if result["txn_ids"] != txn_ids:
        raise RiverFailed("River rows: River's records differ from the job's; the River environment's "
                          "copy of the project is out of date (`make river-env`)")
    return {name: np.asarray(p, dtype=np.float64) for name, p in result["models"].items()}


class RiverFailed(RuntimeError):
    """River's subprocess failed; the message is one line."""


def parts(args: argparse.Namespace, scored: Scored) -> dict[str, int]:
    """Part name -> the file position it starts at: the whole stream, the scored part (--from-record,
    or the second half of the records scored) and, with --drift-at, the records after the drift."""
    start = args.from_record if args.from_record is not None else int(scored.positions[len(scored.positions) // 2])
    starts = {"whole stream": 0, f"from record {start:,}": start}
    if args.drift_at is not None:
        starts[f"after drift at {args.drift_at:,}"] = args.drift_at
    return starts


def stream_line(path: Path, summary, scored: Scored, starts: dict[str, int]) -> str:
    letters = sum(summary.dead_letters.values())
    stages = ", ".join(f"{stage} {count:,}" for stage, count in sorted(summary.dead_letters.items()))
    labels = scored.labels[scored.labels >= 0]
    return (f"{path}: {summary.records_read:,} records read, {len(scored.txn_ids):,} scored "
            f"({len(labels):,} labelled, {int(labels.sum()):,} fraud), {letters:,} dead-lettered"
            + (f" ({stages})" if stages else "") + "; prequential: each record scored, then learned from")


CELL = 9  # characters per metric in the table
METRIC_COLUMNS = (("log_loss", "log loss"), ("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC"), ("ece", "ECE"))


def table(results: dict[str, dict[str, dict[str, float]]], starts: dict[str, int], scored: Scored) -> str:
    """The results as a text table: one row per model, the four metrics per part."""
    width = max(len(name) for name in results)
    block = CELL * len(METRIC_COLUMNS)
    titles = [f"{part} ({_labelled_in(scored, start):,} labelled)" for part, start in starts.items()]
    lines = [" " * width + "".join(f" | {title:<{block - 1}}" for title in titles),
             f"{'model':<{width}}" + f" | {''.join(f'{title:>{CELL}}' for _, title in METRIC_COLUMNS)[1:]}" * len(starts)]
    for name, by_part in results.items():
        lines.append(f"{name:<{width}}" + "".join(
            f" | {''.join(_cell(by_part[part][key]) for key, _ in METRIC_COLUMNS)[1:]}" for part in starts))
    lines.append(f"log loss in nats; ROC AUC at {ROC_THRESHOLDS:,} thresholds; PR AUC: average precision; "
                 f"ECE: expected calibration error over {ECE_BINS} bins; base rate: each part's own fraud share, "
                 f"known in hindsight")
    return "\n".join(lines)


def _labelled_in(scored: Scored, start: int) -> int:
    return int(((scored.positions >= start) & (scored.labels >= 0)).sum())


def _cell(value: float) -> str:
    return f"{'n/a':>{CELL}}" if math.isnan(value) else f"{value:>{CELL}.4f}"


def write_metrics(path: Path, results, starts: dict[str, int], scored: Scored) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(("model", "part", "from_record", "labelled", "log_loss", "roc_auc", "roc_auc_exact",
                         "pr_auc", "ece"))
        for name, by_part in results.items():
            for part, start in starts.items():
                m = by_part[part]
                writer.writerow((name, part, start, _labelled_in(scored, start), *(
                    "" if math.isnan(m[key]) else m[key]
                    for key in ("log_loss", "roc_auc", "roc_auc_exact", "pr_auc", "ece"))))


def write_drift_events(path: Path, events_by_model: dict[str, list], scored: Scored) -> str:
    """drift_events.csv: per model with a detector, each drift event (the key, the file position
    and txn_id of the record that fired, the global version it was scored with); returns one line
    per model saying how many there were, on how many keys."""
    lines = []
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(("model", "model_key", "record", "txn_id", "global_version"))
        for name, events in events_by_model.items():
            for event in events:
                writer.writerow((name, event.model_key, int(scored.positions[event.record]), event.txn_id,
                                 event.global_version))
            first = f", the first at record {int(scored.positions[events[0].record]):,}" if events else ""
            keys = len({event.model_key for event in events})
            lines.append(f"drift events of {name}: {len(events):,} on {keys:,} keys{first}")
    return "\n".join(lines)


def write_curves(folder: Path, scores: dict[str, np.ndarray], scored: Scored, window: int,
                 starts: dict[str, int]) -> None:
    """learning_curve.csv (model, the file position a window ends at, labelled records up to it,
    records in the window, rolling log loss and ROC AUC) and learning_curve.png drawing it."""
    has_label = scored.labels >= 0
    labels, positions = scored.labels[has_label], scored.positions[has_label]
    curves = {name: rolling_curve(p[has_label], labels, window, CURVE_POINTS) for name, p in scores.items()}
    with (folder / "learning_curve.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(("model", "record", "labelled", "window", "log_loss", "roc_auc"))
        for name, rows in curves.items():
            for end, size, loss, auc in rows:
                writer.writerow((name, int(positions[end - 1]), end, size, *("" if math.isnan(v) else v
                                                                             for v in (loss, auc))))
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (loss_axes, auc_axes) = plt.subplots(2, 1, sharex=True, figsize=(PLOT_WIDTH_PX / DPI, PLOT_HEIGHT_PX / DPI),
                                                 dpi=DPI)
    for name, rows in curves.items():
        style = "--" if name.startswith("River ") else "-"
        x = [int(positions[end - 1]) for end, _, _, _ in rows]
        loss_axes.plot(x, [row[2] for row in rows], style, linewidth=1.0, label=name)
        auc_axes.plot(x, [row[3] for row in rows], style, linewidth=1.0, label=name)
    for part, start in list(starts.items())[1:]:
        for axes in (loss_axes, auc_axes):
            axes.axvline(start, color="grey", linewidth=0.8, linestyle=":")
    loss_axes.set_title(f"Prequential log loss and ROC AUC over the last {window:,} labelled records")
    loss_axes.set_ylabel("log loss (nats)")
    auc_axes.set_ylabel("ROC AUC")
    auc_axes.set_xlabel("record (file position)")
    loss_axes.legend(loc="upper right", fontsize="x-small")
    figure.tight_layout()
    figure.savefig(folder / "learning_curve.png", dpi=DPI)
    plt.close(figure)
