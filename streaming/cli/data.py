"""`riskstream generate`: a seeded stream of transactions (and its labels) as JSON lines."""

from __future__ import annotations

import argparse
from pathlib import Path

from streaming.cli.common import EXIT_OK, UsageError
from udfs.label_generator import LabelStreamSettings


def label_stream_options(sub: argparse.ArgumentParser) -> None:
    """The options of a generated label stream (udfs.label_generator.LabelStreamSettings)."""
    defaults = LabelStreamSettings()
    group = sub.add_argument_group("label stream (with --labels)")
    group.add_argument("--label-seed", type=int, default=defaults.seed, help="random seed of the labels")
    group.add_argument("--label-min-delay-ms", type=int, default=defaults.min_delay_ms,
                       help="shortest delay from a transaction's event_time to its label_time")
    group.add_argument("--label-max-delay-ms", type=int, default=defaults.max_delay_ms,
                       help="longest such delay (delays are log-uniform in between)")
    for name, help in (("never", "share of labelled transactions whose label never comes"),
                       ("duplicate", "share labelled a second time, the same way"),
                       ("contradicting", "share labelled a second time, the other way"),
                       ("unknown", "share that also gets a label for a txn_id no transaction has"),
                       ("malformed", "share of labels replaced by an unreadable one")):
        group.add_argument(f"--label-{name}-share", type=float, default=getattr(defaults, f"{name}_share"),
                           help=f"{help}, [0, 1]")


def label_stream_settings(args: argparse.Namespace) -> LabelStreamSettings:
    """The label stream the options of `label_stream_options` ask for; UsageError naming the problem."""
    settings = LabelStreamSettings(
        seed=args.label_seed, min_delay_ms=args.label_min_delay_ms, max_delay_ms=args.label_max_delay_ms,
        never_share=args.label_never_share, duplicate_share=args.label_duplicate_share,
        contradicting_share=args.label_contradicting_share, unknown_share=args.label_unknown_share,
        malformed_share=args.label_malformed_share)
    for option, valid, allowed in (
            ("--label-min-delay-ms", 0 < settings.min_delay_ms, "> 0"),
            ("--label-max-delay-ms", settings.min_delay_ms <= settings.max_delay_ms, ">= --label-min-delay-ms"),
            *((f"--label-{name}-share", 0 <= getattr(settings, f"{name}_share") <= 1, "in [0, 1]")
              for name in ("never", "duplicate", "contradicting", "unknown", "malformed"))):
        if not valid:
            raise UsageError(f"{args.command} {option}: must be {allowed} "
                             f"(got {getattr(args, option[2:].replace('-', '_'))})")
    return settings


def generate_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from udfs.generator import GeneratorSettings, generate
    from udfs.label_generator import generate_labels

    for option, valid, allowed in (("--records", args.records >= 1, ">= 1"),
                                   ("--accounts", args.accounts >= 1, ">= 1"),
                                   ("--malformed-share", 0 <= args.malformed_share < 1, "in [0, 1)"),
                                   ("--unlabelled-share", 0 <= args.unlabelled_share <= 1, "in [0, 1]"),
                                   ("--drift-at", args.drift_at is None or 0 < args.drift_at < 1, "in (0, 1)")):
        if not valid:
            raise UsageError(f"generate {option}: must be {allowed} (got {getattr(args, option[2:].replace('-', '_'))})")
    for option, path in (("--out", args.out), ("--labels", args.labels)):
        if path is not None and path.is_dir():
            raise UsageError(f"generate {option}: {path} is a folder; give a file, e.g. {path / 'tx.jsonl'}")
    if args.labels is not None and args.labels.resolve() == args.out.resolve():
        raise UsageError(f"generate --labels: {args.labels} is also --out; give the labels their own file")
    settings = GeneratorSettings(records=args.records, seed=args.seed, accounts=args.accounts,
                                 malformed_share=args.malformed_share, unlabelled_share=args.unlabelled_share,
                                 drift_at=args.drift_at)
    label_settings = label_stream_settings(args) if args.labels is not None else None
    _write_lines(args.out, "--out", tqdm(generate(settings), total=args.records, unit=" records", mininterval=0.5))
    print(f"wrote {args.records:,} transactions to {args.out}")
    _print_drift_start(settings, args.out)
    if label_settings is not None:
        written = _write_lines(args.labels, "--labels", generate_labels(generate(settings), label_settings))
        print(f"wrote {written:,} labels to {args.labels}")
    return EXIT_OK


def _print_drift_start(settings, out: Path) -> None:
    """With a drift in `settings` (the GeneratorSettings that wrote `out`), prints where it starts
    in `out` for `report --drift-at`: the line and event time of the first readable record from the
    generator's first drifted one on (a malformed record there is one the job never sees)."""
    from datetime import datetime, timezone

    import orjson

    from udfs.cleaning import Rejected, epoch_millis
    from udfs.generator import drift_index

    first = drift_index(settings)
    if first is None:
        return
    with out.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if number <= first:
                continue
            try:
                event_time = epoch_millis("event_time", orjson.loads(line)["event_time"])
            except (orjson.JSONDecodeError, KeyError, TypeError, Rejected):
                continue
            moment = datetime.fromtimestamp(event_time / 1000, timezone.utc).isoformat(timespec="milliseconds")
            moment = moment.replace("+00:00", "Z")
            print(f"the drift starts at line {number:,}, event time {moment} (riskstream report --drift-at {moment})")
            return


def _write_lines(path: Path, option: str, lines) -> int:
    """Writes `lines` (bytes, no newline) to `path` as JSON lines; returns how many. Written under a
    temporary name first, so a crash never leaves a half-written stream under the real name."""
    partial = path.with_name(path.name + ".partial")
    written = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as out:
            for written, line in enumerate(lines, 1):
                out.write(line + b"\n")
        partial.replace(path)
    except OSError as error:
        raise UsageError(f"generate {option}: cannot write {path}: {error.strerror or error}") from None
    finally:
        partial.unlink(missing_ok=True)
    return written


