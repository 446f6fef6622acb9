"""`riskstream replay`: sends selected dead letters' original (redacted) bytes again, to a file or a
topic, after the cause was fixed (docs/operations.md, "Replaying dead letters"). Which letters are
re-sent or refused, and the accounting: udfs/replay.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

import orjson

from streaming.cli.common import EXIT_FAILED, EXIT_OK, UsageError, fail
from streaming.cli.data import write_lines
from streaming.cli.outputs import moment
from streaming.config import Settings, load_settings
from udfs.replay import REFUSED_UNREADABLE, ReplayAccount, ReplayFilter, replay_decision

# `--from kafka:TOPIC` and `--to kafka:TOPIC` name a topic; anything else is a path.
TOPIC_PREFIX = "kafka:"
DEAD_LETTERS_FOLDER = "dead-letters"  # under a run's output.path


def add_replay_options(replay: argparse.ArgumentParser) -> None:
    replay.add_argument("--from", dest="from_", required=True, metavar="DEAD_LETTERS",
                        help="the dead letters: a run's dead-letters/ folder (its committed part files) or its "
                             "output.path, a file of dead letters (JSON lines), or kafka:TOPIC")
    replay.add_argument("--to", required=True, metavar="FILE|kafka:TOPIC",
                        help="where to send the selected records: a file (one record per line, replaced if it "
                             "exists; a job reads it with source.paths) or kafka:TOPIC (keyed as `produce` keys)")
    replay.add_argument("--stage", default=None, help="only letters of this stage, e.g. clean (default: any)")
    replay.add_argument("--reason", default=None, metavar="TEXT",
                        help="only letters whose reason contains TEXT, case-insensitive (default: any)")
    replay.add_argument("--since", default=None, metavar="TIME",
                        help="only letters dead-lettered (received_at) at or after TIME: ISO-8601 with a zone, "
                             "or epoch ms (default: any)")
    replay.add_argument("--until", default=None, metavar="TIME",
                        help="only letters dead-lettered (received_at) before TIME (default: any)")
    replay.add_argument("--idle-timeout", type=float, default=5.0,
                        help="--from kafka:TOPIC: stop reading after this many seconds without a record")


def replay_command(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from streaming.ops import kafka_tools

    try:
        return _replay(args)
    except (KafkaException, kafka_tools.DeliveryFailed) as error:
        return fail(f"replay: {error}", EXIT_FAILED)


def _replay(args: argparse.Namespace) -> int:
    selection = ReplayFilter(
        stage=args.stage, reason=args.reason,
        since_ms=moment("replay --since", args.since) if args.since is not None else None,
        until_ms=moment("replay --until", args.until) if args.until is not None else None)
    if selection.since_ms is not None and selection.until_ms is not None and selection.since_ms >= selection.until_ms:
        raise UsageError("replay --since: must be before --until")
    settings = load_settings(args.config, args.overrides)
    key = settings.pseudonym_key()
    source_topic = args.from_[len(TOPIC_PREFIX):] if args.from_.startswith(TOPIC_PREFIX) else None
    target_topic = args.to[len(TOPIC_PREFIX):] if args.to.startswith(TOPIC_PREFIX) else None
    source_paths = _letter_files(Path(args.from_)) if source_topic is None else []
    target = Path(args.to) if target_topic is None else None
    if target is not None:
        if target.is_dir():
            raise UsageError(f"replay --to: {target} is a folder; give a file, e.g. {target / 'replay.jsonl'}, "
                             f"or kafka:TOPIC")
        if any(target.resolve() == path.resolve() for path in source_paths):
            raise UsageError(f"replay --to: {target} is also read by --from; give another file")
    if source_topic is not None or target_topic is not None:
        from streaming.ops import kafka_tools

        kafka_tools.show_client_log(args.verbose)
        kafka_tools.check_broker(settings)
        kafka_tools.check_topic(settings, *[topic for topic in (source_topic, target_topic) if topic is not None])

    account = ReplayAccount()
    lines = _topic_lines(settings, source_topic, args.idle_timeout) if source_topic is not None \
        else _file_lines(source_paths)

    def selected_records() -> Iterator[bytes]:
        for line in lines:
            try:
                letter = orjson.loads(line)
            except orjson.JSONDecodeError:
                letter = None
            account.read += 1
            if not isinstance(letter, dict):  # no filter can be read: it is reported, not passed over
                account.selected += 1
                account.refused[REFUSED_UNREADABLE] += 1
                continue
            if not selection.selects(letter):
                continue
            account.selected += 1
            raw, refusal = replay_decision(letter, key, one_record_per_line=target is not None)
            if refusal is not None:
                account.refused[refusal] += 1
            else:
                yield raw

    if target is not None:
        account.resent = write_lines(target, "replay --to", selected_records())
        where = str(target)
    else:
        from streaming.ops import kafka_tools

        account.resent = kafka_tools.produce(settings, selected_records(), key_field=settings.model.key,
                                             topic=target_topic)
        where = f"topic {target_topic}"
    origin = f"topic {source_topic}" if source_topic is not None else args.from_
    for line in account.lines(origin, where):
        print(line)
    if not account.reconciled:  # every selected letter is counted once: a delivery that went missing
        return fail(f"replay: selected {account.selected:,} is not re-sent + refused; see the lines above",
                    EXIT_FAILED)
    return EXIT_OK


def _letter_files(path: Path) -> list[Path]:
    """The files of dead letters `--from PATH` names: the file itself, the committed part files of
    a dead-letters/ folder, or of a run's output.path's dead-letters/; UsageError saying what to
    give otherwise."""
    from streaming.reporting.outputs import committed_parts

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"replay --from: {path} does not exist; give a run's dead-letters/ folder, a file of dead "
                         f"letters or kafka:TOPIC")
    from streaming.reporting.outputs import OUTPUTS, RUN_RECORD

    folder = path / DEAD_LETTERS_FOLDER if (path / DEAD_LETTERS_FOLDER).is_dir() else path
    if folder == path and ((path / RUN_RECORD).is_file() or any((path / name).is_dir() for name in OUTPUTS)):
        # A run's output.path without dead-letters/: its other outputs are no dead letters.
        raise UsageError(f"replay --from: {path} is a run's output folder with no {DEAD_LETTERS_FOLDER}/: that run "
                         f"dead-lettered nothing (or has not committed yet); nothing to replay")
    parts = list(committed_parts(folder))
    if not parts:
        raise UsageError(f"replay --from: {folder} holds no committed part files; give a run's dead-letters/ "
                         f"folder after the run committed (a checkpoint or the end of its input)")
    return parts


def _file_lines(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with path.open("rb") as lines:
            for line in lines:
                if line.strip():
                    yield line


def _topic_lines(settings: Settings, topic: str, idle_timeout_s: float) -> Iterator[bytes]:
    from streaming.ops import kafka_tools

    for _, _, _, value in kafka_tools.tail(settings, topic, idle_timeout_s=idle_timeout_s, until_end=True):
        yield value
