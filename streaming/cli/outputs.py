"""`riskstream report`: what a run wrote, drawn without Flink (the models: models.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from streaming.cli.common import EXIT_FAILED, EXIT_OK, UsageError, fail
from streaming.config import PROJECT_ROOT, load_settings


def report_command(args: argparse.Namespace) -> int:
    from streaming.reporting.report import RunData, build_report, read_output_folder

    drift_at = moment("report --drift-at", args.drift_at) if args.drift_at is not None else None
    settings = load_settings(args.config, args.overrides)
    if args.from_path is None and settings.output.kind == "kafka":
        from streaming.ops import kafka_tools

        kafka_tools.show_client_log(args.verbose)
        kafka_tools.check_broker(settings)
        kafka = settings.kafka

        def read(topic: str, written: bool = True) -> list[dict] | None:
            if not written:
                return None
            return [orjson.loads(value) for _, _, _, value in kafka_tools.tail(
                settings, topic, idle_timeout_s=args.idle_timeout)]

        analytics, streamed = settings.analytics.enabled, settings.labels.streamed
        # A Kafka run records no settings: the profile given here is the one whose topics are read.
        record = {"profile": f"{Path(args.config).resolve()} (given to report: Kafka output records no run)",
                  "overrides": args.overrides,
                  "settings": settings.model_dump(mode="json", by_alias=True, exclude={"privacy"})}
        run = RunData(scores=read(kafka.scores_topic), letters=read(kafka.dead_letters_topic),
                      analytics=read(kafka.analytics_topic, analytics), late=read(kafka.late_topic, analytics),
                      learning=read(kafka.learning_topic, streamed),
                      label_letters=read(kafka.label_dead_letters_topic, streamed),
                      drift_events=read(kafka.drift_topic, settings.model.drift.detector != "none"), run_record=record)
        where = f"topics {kafka.scores_topic} and {kafka.dead_letters_topic}"
        to = args.to or PROJECT_ROOT / "out" / "report"
    else:
        output = args.from_path if args.from_path is not None else Path(settings.output.path)
        named = "report --from" if args.from_path is not None else f"report: output.path of {args.config}"
        if not output.is_dir():
            what = "is a file, not a folder" if output.exists() else "does not exist"
            raise UsageError(f"{named}: {output} {what}; give the output.path of a run")
        if not (output / "scores").is_dir():
            raise UsageError(f"{named}: {output} has no scores/ folder; give the output.path of a run")
        run = read_output_folder(output)
        where, to = str(output), args.to or output / "report"
    if not run.scores and not run.letters:
        return fail(f"report: no committed scores or dead letters in {where}; run the job first", EXIT_FAILED)
    try:
        index = build_report(run, to, drift_at)
    except OSError as error:
        raise UsageError(f"report --to: cannot write {to}: {error.strerror or error}") from None
    print(f"report of {len(run.scores):,} scores and {len(run.letters):,} dead letters: {index.resolve()}")
    return EXIT_OK


def moment(option: str, text: str) -> int:
    """`text` (epoch ms, or ISO-8601 with a time zone) as epoch ms; UsageError naming `option` otherwise."""
    from udfs.cleaning import Rejected, epoch_millis

    try:
        return epoch_millis(option, int(text) if text.strip().isdigit() else text)
    except Rejected as error:
        raise UsageError(f"{error.reason}; give e.g. 2026-01-01T03:20:00Z or epoch milliseconds") from None
