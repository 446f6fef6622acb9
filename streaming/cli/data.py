"""`riskstream generate`: a seeded stream of transactions (and its labels) as JSON lines."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path
from typing import Callable, TypeVar

from streaming.cli.common import EXIT_OK, UsageError
from udfs.generator import GeneratorSettings
from udfs.label_generator import LabelStreamSettings

# The default spacing of generated event times (udfs.generator.GeneratorSettings.mean_gap_ms).
DEFAULT_EVENTS_PER_SECOND = 1000 / GeneratorSettings.mean_gap_ms


def events_per_second_option(sub: argparse.ArgumentParser) -> None:
    """The event-time rate of generated transactions (GeneratorSettings.mean_gap_ms = 1000 / rate)."""
    sub.add_argument("--events-per-second", type=float, default=DEFAULT_EVENTS_PER_SECOND, metavar="RATE",
                     help="generated transactions per second of event time, in [0.001, 1000000]: N records "
                          "span about N / RATE seconds (0.5 spreads 200,000 over 4.6 days)")


def generator_settings(args: argparse.Namespace, **given) -> GeneratorSettings:
    """The GeneratorSettings of `given` (fields) and --events-per-second; UsageError naming the option
    of a value out of range (`produce` gives records as --generate)."""
    if not 0.001 <= args.events_per_second <= 1_000_000:  # mean gaps of 1000 s to 1 µs
        raise UsageError(f"{args.command} --events-per-second: must be in [0.001, 1000000] "
                         f"(got {args.events_per_second})")
    records_option = "--generate" if args.command == "produce" else "--records"
    return _settings_or_usage_error(
        lambda: GeneratorSettings(**given, mean_gap_ms=1000 / args.events_per_second), GeneratorSettings,
        lambda field: records_option if field == "records" else "--" + field.replace("_", "-"), args.command)


class _LabelOption(argparse.Action):
    """Stores a label stream option's value and notes that it was given: they need --labels."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.label_options_given = (*namespace.label_options_given, option_string)


def label_stream_options(sub: argparse.ArgumentParser) -> None:
    """The options of a generated label stream (udfs.label_generator.LabelStreamSettings)."""
    defaults = LabelStreamSettings()
    sub.set_defaults(label_options_given=())
    group = sub.add_argument_group("label stream (with --labels)")
    group.add_argument("--label-seed", type=int, default=defaults.seed, action=_LabelOption,
                       help="random seed of the labels")
    group.add_argument("--label-min-delay-ms", type=int, default=defaults.min_delay_ms, action=_LabelOption,
                       help="shortest delay from a transaction's event_time to its label_time, > 0")
    group.add_argument("--label-max-delay-ms", type=int, default=defaults.max_delay_ms, action=_LabelOption,
                       help="longest such delay, >= --label-min-delay-ms (delays are log-uniform in between)")
    for name, help in (("never", "share of labelled transactions whose label never comes"),
                       ("duplicate", "share labelled a second time, the same way"),
                       ("contradicting", "share labelled a second time, the other way"),
                       ("unknown", "share that also gets a label for a txn_id no transaction has"),
                       ("malformed", "share of labels replaced by an unreadable one")):
        group.add_argument(f"--label-{name}-share", type=float, default=getattr(defaults, f"{name}_share"),
                           action=_LabelOption, help=f"{help}, [0, 1]")


def label_stream_settings(args: argparse.Namespace) -> LabelStreamSettings:
    """The label stream the options of `label_stream_options` ask for; UsageError naming the problem."""
    return _settings_or_usage_error(
        lambda: LabelStreamSettings(
            seed=args.label_seed, min_delay_ms=args.label_min_delay_ms, max_delay_ms=args.label_max_delay_ms,
            never_share=args.label_never_share, duplicate_share=args.label_duplicate_share,
            contradicting_share=args.label_contradicting_share, unknown_share=args.label_unknown_share,
            malformed_share=args.label_malformed_share),
        LabelStreamSettings, lambda field: "--label-" + field.replace("_", "-"), args.command)


def refuse_unused_label_options(args: argparse.Namespace, used: bool, needs: str) -> None:
    """UsageError naming the first label stream option given when there is no label stream to
    generate (`used` False); `needs` says what makes one."""
    if args.label_options_given and not used:
        raise UsageError(f"{args.command} {args.label_options_given[0]}: only applies with {needs}")


_Settings = TypeVar("_Settings")


def _settings_or_usage_error(make: Callable[[], _Settings], kind: type, option_of: Callable[[str], str],
                             command: str) -> _Settings:
    """What `make()` returns; its ValueError ("field: must be ...", udfs' settings classes) as a
    UsageError in the command's words, every field of `kind` named by its option."""
    try:
        return make()
    except ValueError as error:
        names = "|".join(field.name for field in fields(kind))
        raise UsageError(re.sub(rf"\b({names})\b", lambda match: option_of(match.group(1)),
                                f"{command} {error}")) from None


def generate_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from udfs.generator import generate
    from udfs.label_generator import generate_labels

    settings = generator_settings(args, records=args.records, seed=args.seed, accounts=args.accounts,
                                  malformed_share=args.malformed_share, unlabelled_share=args.unlabelled_share,
                                  drift_at=args.drift_at)
    refuse_unused_label_options(args, args.labels is not None, "--labels FILE")
    label_settings = label_stream_settings(args) if args.labels is not None else None
    for option, path in (("--out", args.out), ("--labels", args.labels)):
        if path is not None and path.is_dir():
            raise UsageError(f"generate {option}: {path} is a folder; give a file, e.g. {path / 'tx.jsonl'}")
    if args.labels is not None and args.labels.resolve() == args.out.resolve():
        raise UsageError(f"generate --labels: {args.labels} is also --out; give the labels their own file")
    write_lines(args.out, "generate --out", tqdm(generate(settings), total=args.records, unit=" records", mininterval=0.5))
    print(f"wrote {args.records:,} transactions to {args.out}")
    _print_drift_start(settings, args.out)
    if label_settings is not None:
        written = write_lines(args.labels, "generate --labels", generate_labels(generate(settings), label_settings))
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


def write_lines(path: Path, option: str, lines) -> int:
    """Writes `lines` (bytes, no newline) to `path`, one per line; returns how many. Written under a
    temporary name first, so a crash never leaves a half-written stream under the real name; a
    failure to write is a UsageError naming `option` (e.g. "generate --out")."""
    partial = path.with_name(path.name + ".partial")
    written = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as out:
            for written, line in enumerate(lines, 1):
                out.write(line + b"\n")
        partial.replace(path)
    except OSError as error:
        raise UsageError(f"{option}: cannot write {path}: {error.strerror or error}") from None
    finally:
        partial.unlink(missing_ok=True)
    return written


