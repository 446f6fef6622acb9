"""`riskstream model list|show|export` and `score`: a run's models, read back from its snapshots
without Flink, and one transaction scored with them as the job would score it next."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from streaming.cli.common import EXIT_DEAD_LETTERED, EXIT_OK, UsageError, fail
from streaming.config import Settings, load_settings


class RunModels(NamedTuple):
    """Each model key's latest snapshot in a run's outputs, and where they were read."""

    latest: dict[str, dict[str, Any]]
    where: str  # the folder or topic, for messages
    folder: Path | None  # the run's output folder; None for a Kafka output


def model_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.overrides)
    models = run_models(settings, args.from_path, "--from", args)
    if args.action == "list":
        print_model_list(models.latest)
        return EXIT_OK
    snapshot = snapshot_of(models, settings, args.key)
    if args.action == "export":
        from udfs.model_export import exported_model

        check_key_models_alone(settings, models.folder, "model export",
                               "its key models read features standardized by the global model, which an export "
                               "does not hold; model show prints the snapshot as it is")
        check_no_resets(settings, models.folder, "model export")
        try:
            snapshot = exported_model(snapshot)
        except ValueError as error:
            raise UsageError(f"model export: the snapshot of {args.key!r} in {models.where}: {error}") from None
    print(json.dumps(snapshot, indent=2))
    return EXIT_OK


def score_command(args: argparse.Namespace) -> int:
    from streaming.config.from_settings import model_scorer, transaction_reader
    from udfs.model import KeyModel

    settings = load_settings(args.config, args.overrides)
    models = run_models(settings, args.model_from, "--model-from", args)
    check_key_models_alone(settings, models.folder, "score", "score reproduces the key models alone")
    check_no_resets(settings, models.folder, "score")
    raw = record_on_stdin()
    reader = transaction_reader(settings)
    now_ms = time.time_ns() // 1_000_000
    batches, dead_letters = reader.read_columns([raw], lambda _: {}, 1, now_ms)
    if dead_letters:
        letter = json.loads(dead_letters[0])  # a str subclass, which orjson does not take
        return fail(f"score: the job would dead-letter this record at stage {letter['stage']}: {letter['reason']}",
                    EXIT_DEAD_LETTERED)
    batch = batches[0]
    scorer = model_scorer(settings, reader.encoder)
    key = batch.model_keys[0]
    snapshot = models.latest.get(key)
    key_model = None
    if snapshot is None:
        print(f"riskstream: score: model key {key!r} has no snapshot in {models.where}; scored by a new key's "
              f"model, as the job would", file=sys.stderr)
    else:
        trained_on, configured = list(snapshot["weights"]), list(scorer.feature_names)
        if trained_on != configured:
            raise UsageError(f"score: the model of {key!r} in {models.where} learned from other features than "
                             f"the profile's features.* ({len(trained_on)} against {len(configured)}; "
                             f"{different_feature(trained_on, configured)}); give the run's profile with --config "
                             f"(and its --set)")
        try:
            key_model = KeyModel.from_snapshot(snapshot, configured)
        except ValueError as error:
            raise UsageError(f"score: the snapshot of {key!r} in {models.where}: {error}") from None
    print(scorer.score_next(batch, key_model, now_ms).decode("utf-8"))
    return EXIT_OK


def run_models(settings: Settings, from_path: Path | None, option: str, args: argparse.Namespace) -> RunModels:
    """The latest snapshots in the run's output folder `from_path` (given with `option`), else in
    the profile's output (its folder, or its snapshots topic for a Kafka output). UsageError when
    there are none, saying what to do."""
    from streaming.reporting.outputs import committed_lines, latest_snapshots

    folder = None
    if from_path is None and settings.output.kind == "kafka":
        from streaming.ops import kafka_tools

        kafka_tools.show_client_log(args.verbose)
        kafka_tools.check_broker(settings)
        where = f"topic {settings.kafka.snapshots_topic} at {settings.kafka.bootstrap_servers}"
        snapshots = (orjson.loads(value) for _, _, _, value in kafka_tools.tail(
            settings, settings.kafka.snapshots_topic, idle_timeout_s=args.idle_timeout))
    else:
        folder = from_path if from_path is not None else Path(settings.output.path)
        if from_path is not None and not (folder / "model-snapshots").is_dir():
            raise UsageError(f"{args.command} {option}: {folder} has no model-snapshots/ folder; "
                             f"give the output.path of a run")
        where = str(folder / "model-snapshots")
        snapshots = committed_lines(folder / "model-snapshots")
    latest = latest_snapshots(snapshots)
    if not latest:
        raise UsageError(f"no model snapshots in {where}; run the job with this profile first, "
                         f"or give {option} a run's output folder")
    return RunModels(latest, where, folder)


def snapshot_of(models: RunModels, settings: Settings, key: str) -> dict[str, Any]:
    """The latest snapshot of the model key `key` (normalized as the job stores it: " Grocery" is
    "grocery"); UsageError listing the keys there are when it has none."""
    from udfs.cleaning import normalize_categorical

    key = normalize_categorical(settings.model.key, key)
    if key not in models.latest:
        keys = sorted(models.latest)
        shown = ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
        raise UsageError(f"no snapshot of model key {key!r} in {models.where}; keys there: {shown}")
    return models.latest[key]


def check_key_models_alone(settings: Settings, folder: Path | None, command: str, consequence: str) -> None:
    """UsageError when the run used the global model (the profile says so, or the output folder
    holds the global model's versions): its scores depend on the global versions the shards held."""
    from streaming.config.global_settings import VERSIONS_OUTPUT
    from streaming.reporting.outputs import committed_parts

    model = settings.model
    if model.uses_global:
        evidence = (f"the profile trains the global model (model.blend {model.blend}, model.cold_start "
                    f"{model.cold_start}, model.on_drift {model.on_drift})")
    elif folder is not None and any(committed_parts(folder / VERSIONS_OUTPUT)):
        evidence = f"the run trained the global model ({folder / VERSIONS_OUTPUT} holds its versions)"
    else:
        return
    raise UsageError(f"{command}: {evidence}; {consequence} (model.blend key, model.cold_start zeros, "
                     f"model.on_drift other than rewarm)")


def check_no_resets(settings: Settings, folder: Path | None, command: str) -> None:
    """UsageError when the run reset a key's model on drift (a drift event with action reset in the
    output folder; for a Kafka output, the profile's model.on_drift reset): the reset model's
    updates start again at 0, so its snapshots cannot be told from the older model's."""
    from streaming.reporting.outputs import committed_lines

    if folder is None:
        if settings.model.on_drift != "reset":
            return
        evidence = "the profile resets a key's model on drift (model.on_drift reset)"
    else:
        reset = next((event for event in committed_lines(folder / "drift") if event.get("action") == "reset"), None)
        if reset is None:
            return
        evidence = f"the run reset the model of {reset['model_key']!r} on drift ({folder / 'drift'})"
    raise UsageError(f"{command}: {evidence}, and a reset model's snapshots cannot be told from the older "
                     f"model's (its updates start again at 0); {command} needs a run without resets")


def different_feature(trained_on: list[str], configured: list[str]) -> str:
    """The first position where two feature lists differ, as a phrase."""
    for position, (theirs, ours) in enumerate(zip(trained_on, configured)):
        if theirs != ours:
            return f"feature {position} is {theirs!r}, the profile's {ours!r}"
    if len(trained_on) > len(configured):
        return f"feature {len(configured)} is {trained_on[len(configured)]!r}, which the profile has not"
    return f"the profile's feature {len(trained_on)} {configured[len(trained_on)]!r} is not among them"


def record_on_stdin() -> bytes:
    """The one record on stdin, as the file source reads a line (a final newline is not part of
    it); UsageError when stdin is a terminal, empty, or holds more than one line."""
    how = "give one transaction on stdin: riskstream score --model-from OUTPUT < record.json"
    if sys.stdin.isatty():
        raise UsageError(f"score: {how}")
    raw = sys.stdin.buffer.read()
    if not raw:
        raise UsageError(f"score: stdin is empty; {how}")
    record = raw[:-1] if raw.endswith(b"\n") else raw
    lines = record.count(b"\n") + 1
    if lines > 1:
        raise UsageError(f"score: stdin holds {lines} lines, and the job reads each line as a record; "
                         f"give one JSON object on one line (jq -c . record.json)")
    return record


def print_model_list(latest: dict[str, dict[str, Any]]) -> None:
    """One line per model key, by key: its latest snapshot's updates, rejected updates, the event
    time of its last update (UTC) and optimizer."""
    rows = [("model key", "updates", "rejected", "last update (event time, UTC)", "optimizer")]
    for key in sorted(latest):
        snapshot = latest[key]
        event_time = snapshot.get("event_time")
        when = "-" if event_time is None else datetime.fromtimestamp(event_time / 1000, timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S.%f")[:-3]
        rows.append((key, f"{snapshot['model_updates']:,}", f"{snapshot.get('rejected_updates', 0):,}", when,
                     snapshot.get("optimizer", "sgd")))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:<{widths[3]}}  "
              f"{row[4]}")
