"""`riskstream topics`, `produce` and `tail`: the project's Kafka topics."""

from __future__ import annotations

import argparse

from streaming.cli.common import EXIT_FAILED, EXIT_OK, UsageError, fail
from streaming.cli.data import label_stream_settings
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
    if args.command == "produce" and args.file is not None and not args.file.is_file():
        raise UsageError(f"produce --file: {args.file} is not a file")
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
    label_settings = label_stream_settings(args) if args.labels and args.generate is not None else None
    if args.file is not None:
        from streaming.reporting.outputs import file_records

        lines, total = file_records(args.file), None
    else:
        from udfs.generator import GeneratorSettings, generate

        lines = generate(GeneratorSettings(records=args.generate, seed=args.seed, accounts=args.accounts,
                                           malformed_share=args.malformed_share))
        total = args.generate
        if label_settings is not None:
            from udfs.label_generator import generate_labels

            lines, total = generate_labels(lines, label_settings), None
    # Labels are keyed by txn_id, so that a transaction's labels share a partition and keep their order.
    key_field = None if args.no_key else "txn_id" if args.labels else settings.model.key
    topic = args.topic or (settings.kafka.labels_topic if args.labels else settings.kafka.transactions_topic)
    sent = kafka_tools.produce(settings, lines, total=total, rate=args.rate, key_field=key_field, topic=topic)
    print(f"produced {sent:,} {'labels' if args.labels else 'records'} to {topic}")
    return EXIT_OK


