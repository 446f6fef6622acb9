"""`riskstream topics`, `produce` and `tail`: the project's Kafka topics."""

from __future__ import annotations

import argparse
from typing import Iterator

from streaming.cli.common import EXIT_FAILED, EXIT_OK, UsageError, fail
from streaming.cli.data import generator_settings, label_stream_settings, refuse_unused_label_options
from streaming.config import load_settings


def kafka_command(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from streaming.ops import kafka_tools

    try:
        return _kafka_tool(args)
    except (KafkaException, kafka_tools.DeliveryFailed) as error:
        return fail(f"{args.command}: {error}", EXIT_FAILED)


def _kafka_tool(args: argparse.Namespace) -> int:
    from streaming.ops import kafka_tools

    settings = load_settings(args.config, args.overrides)
    if args.command == "produce":
        lines, total = _produce_input(args)  # every argument checked before the broker is
    kafka_tools.show_client_log(args.verbose)
    kafka_tools.check_broker(settings)
    if args.command == "topics":
        created = kafka_tools.create_topics(settings)
        print(f"topics: created {', '.join(created) or 'none'}; all of {', '.join(settings.kafka.topics())} exist")
        return EXIT_OK
    if args.command == "tail":
        kafka_tools.check_topic(settings, args.topic)
        for partition, offset, key, value in kafka_tools.tail(
                settings, args.topic, from_beginning=not args.from_latest, max_records=args.max,
                idle_timeout_s=args.idle_timeout):
            shown_key = key.decode("utf-8", "backslashreplace") if key is not None else ""
            print(f"{partition}:{offset}\t{shown_key}\t{value.decode('utf-8', 'backslashreplace')}", flush=True)
        return EXIT_OK
    # Labels are keyed by txn_id, so that a transaction's labels share a partition and keep their order.
    key_field = None if args.no_key else "txn_id" if args.labels else settings.model.key
    topic = args.topic or (settings.kafka.labels_topic if args.labels else settings.kafka.transactions_topic)
    sent = kafka_tools.produce(settings, lines, total=total, rate=args.rate, key_field=key_field, topic=topic)
    print(f"produced {sent:,} {'labels' if args.labels else 'records'} to {topic}")
    return EXIT_OK


def _produce_input(args: argparse.Namespace) -> tuple[Iterator[bytes], int | None]:
    """The lines `produce` sends (read or generated lazily) and how many when known; UsageError
    naming a bad argument."""
    if args.rate is not None and not args.rate > 0:
        raise UsageError(f"produce --rate: must be > 0 records per second (got {args.rate})")
    refuse_unused_label_options(args, args.labels and args.generate is not None, "--labels and --generate")
    if args.file is not None:
        if not args.file.is_file():
            raise UsageError(f"produce --file: {args.file} is not a file")
        from streaming.reporting.outputs import file_records

        return file_records(args.file), None
    from udfs.generator import generate

    settings = generator_settings(args, records=args.generate, seed=args.seed, accounts=args.accounts,
                                  malformed_share=args.malformed_share)
    if not args.labels:
        return generate(settings), args.generate
    from udfs.label_generator import generate_labels

    return generate_labels(generate(settings), label_stream_settings(args)), None
