"""`riskstream report`: what a run wrote, drawn without Flink (the models: models.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from streaming.cli.common import EXIT_FAILED, EXIT_OK, UsageError, fail
from streaming.config import PROJECT_ROOT, load_settings


def report_command(args: argparse.Namespace) -> int:
    from streaming.reporting.report import build_report

    settings = load_settings(args.config, args.overrides)
    if args.from_path is None and settings.output.kind == "kafka":
        from streaming.ops import kafka_tools

        kafka_tools.show_client_log(args.verbose)
        kafka_tools.check_broker(settings)
        kafka = settings.kafka

        def read(topic: str) -> list[dict]:
            return [orjson.loads(value) for _, _, _, value in kafka_tools.tail(
                settings, topic, idle_timeout_s=args.idle_timeout)]

        scores, letters = read(kafka.scores_topic), read(kafka.dead_letters_topic)
        where = f"topics {kafka.scores_topic} and {kafka.dead_letters_topic}"
        to = args.to or PROJECT_ROOT / "out" / "report"
    else:
        from streaming.reporting.outputs import committed_lines

        output = args.from_path if args.from_path is not None else Path(settings.output.path)
        if not (output / "scores").is_dir():
            raise UsageError(f"report --from: {output} has no scores/ folder; give the output.path of a run")
        scores, letters = list(committed_lines(output / "scores")), list(committed_lines(output / "dead-letters"))
        where, to = str(output), args.to or output / "report"
    if not scores and not letters:
        return fail(f"report: no committed scores or dead letters in {where}; run the job first", EXIT_FAILED)
    try:
        index = build_report(scores, letters, to)
    except OSError as error:
        raise UsageError(f"report --to: cannot write {to}: {error.strerror or error}") from None
    print(f"report of {len(scores):,} scores and {len(letters):,} dead letters: {index.resolve()}")
    return EXIT_OK


