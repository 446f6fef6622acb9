"""The `riskstream` command: generate transactions, run the job locally or on a session cluster,
work with its Kafka topics, and show a model from its snapshot output."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import orjson

from streaming.config import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="riskstream", description="Streaming fraud scoring on Apache Flink.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write a seeded stream of transactions as JSON lines")
    generate.add_argument("--out", required=True, type=Path, help="file to write (JSON lines)")
    generate.add_argument("--records", type=int, default=200_000)
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--accounts", type=int, default=50_000, help="number of distinct accounts")
    generate.add_argument("--malformed-share", type=float, default=0.0, help="share of malformed records, 0..1")
    generate.add_argument("--unlabelled-share", type=float, default=0.02, help="share of records without a label")
    generate.add_argument("--drift-at", type=float, default=None, help="position (0..1) of an abrupt drift")

    run = commands.add_parser("run", help="run the scoring job on the embedded Flink mini-cluster")
    run.add_argument("--config", required=True, type=Path, help="a profile in conf/, e.g. conf/local.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting, e.g. --set model.learning_rate=0.05 (repeatable)")

    def with_config(command):
        command.add_argument("--config", type=Path, default=Path("conf/kafka.yaml"), help="profile (default conf/kafka.yaml)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        return command

    with_config(commands.add_parser("topics", help="create the project's Kafka topics (idempotent)"))

    produce = with_config(commands.add_parser("produce", help="send transactions to the transactions topic"))
    what = produce.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", type=Path, help="a JSON-lines file to send, one message per line")
    what.add_argument("--generate", type=int, metavar="N", help="send N generated transactions")
    produce.add_argument("--seed", type=int, default=7)
    produce.add_argument("--accounts", type=int, default=50_000)
    produce.add_argument("--malformed-share", type=float, default=0.0)
    produce.add_argument("--rate", type=float, default=None, help="records per second (default: as fast as possible)")
    produce.add_argument("--no-key", action="store_true", help="do not key messages by the normalized model key")
    produce.add_argument("--topic", default=None, help="another topic than kafka.transactions_topic")

    tail = with_config(commands.add_parser("tail", help="print a topic's committed records (read_committed)"))
    tail.add_argument("topic")
    tail.add_argument("--from-latest", action="store_true", help="only records that arrive from now on")
    tail.add_argument("--max", type=int, default=None, help="stop after this many records")
    tail.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without records")

    cluster = commands.add_parser("cluster", help="start or stop the local Flink session cluster")
    cluster.add_argument("action", choices=("up", "down"))
    cluster.add_argument("--overrides", type=Path, default=None,
                         help="a YAML mapping of Flink settings over conf/flink/config.yaml, e.g. conf/flink/test.yaml")
    cluster.add_argument("--taskmanagers", type=int, default=1)

    submit = commands.add_parser("submit", help="submit the job to the session cluster with `flink run`, detached")
    submit.add_argument("--config", required=True, type=Path, help="a profile in conf/, e.g. conf/cluster.yaml")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--from", dest="from_path", default=None, metavar="PATH",
                        help="resume from this savepoint or retained checkpoint")

    status = commands.add_parser("status", help="the job's state and last completed checkpoint")
    status.add_argument("job_id", nargs="?", default=None, help="default: the one running riskstream-scoring job")

    stop = commands.add_parser("stop", help="stop the job on the session cluster")
    stop.add_argument("job_id", nargs="?", default=None, help="default: the one running riskstream-scoring job")
    stop.add_argument("--savepoint", action="store_true", help="take a savepoint first (resume with submit --from)")
    stop.add_argument("--drain", action="store_true",
                      help="end the input first, so the final model snapshots are written (with --savepoint)")
    stop.add_argument("--config", type=Path, default=Path("conf/cluster.yaml"),
                      help="profile whose checkpointing.savepoint_directory receives the savepoint")
    stop.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    model = commands.add_parser("model", help="inspect the models in the snapshot output (no Flink needed)")
    model.add_argument("action", choices=("show",))
    model.add_argument("key", help="a model key, as the job normalizes it (e.g. grocery)")
    with_config(model)
    model.add_argument("--idle-timeout", type=float, default=5.0,
                       help="Kafka output: stop reading snapshots after this many seconds without one")

    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command in ("topics", "produce", "tail"):
            return _kafka_command(args)
        if args.command in ("cluster", "submit", "status", "stop"):
            return _cluster_command(args)
        if args.command == "model":
            return _model_show(args)
        return _run(args)
    except ConfigError as error:
        print(f"riskstream: configuration error: {error}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from udfs.generator import GeneratorSettings, generate

    if args.records < 1 or not 0 <= args.malformed_share < 1 or not 0 <= args.unlabelled_share <= 1:
        raise ConfigError("generate: --records must be >= 1, --malformed-share in [0, 1), --unlabelled-share in [0, 1]")
    if args.drift_at is not None and not 0 < args.drift_at < 1:
        raise ConfigError("generate: --drift-at must be in (0, 1)")
    settings = GeneratorSettings(records=args.records, seed=args.seed, accounts=args.accounts,
                                 malformed_share=args.malformed_share, unlabelled_share=args.unlabelled_share,
                                 drift_at=args.drift_at)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    with partial.open("wb") as out:
        for line in tqdm(generate(settings), total=args.records, unit=" records", mininterval=0.5):
            out.write(line + b"\n")
    partial.replace(args.out)  # a crash never leaves a half-written stream under the real name
    print(f"wrote {args.records:,} transactions to {args.out}")
    return 0


def _kafka_command(args: argparse.Namespace) -> int:
    from streaming import kafka_tools

    settings = load_settings(args.config, args.overrides)
    if args.command == "topics":
        created = kafka_tools.create_topics(settings)
        print(f"topics: created {', '.join(created) or 'none'}; all of {', '.join(settings.kafka.topics())} exist")
        return 0
    if args.command == "tail":
        for partition, offset, key, value in kafka_tools.tail(settings, args.topic, not args.from_latest, args.max,
                                                              args.idle_timeout):
            shown_key = key.decode("utf-8", "backslashreplace") if key is not None else ""
            print(f"{partition}:{offset}\t{shown_key}\t{value.decode('utf-8', 'backslashreplace')}", flush=True)
        return 0
    if args.file is not None:
        from streaming.outputs import file_records

        lines, total = file_records(args.file), None
    else:
        from udfs.generator import GeneratorSettings, generate

        lines = generate(GeneratorSettings(records=args.generate, seed=args.seed, accounts=args.accounts,
                                           malformed_share=args.malformed_share))
        total = args.generate
    key_field = None if args.no_key else settings.model.key
    sent = kafka_tools.produce(settings, lines, total, args.rate, key_field, args.topic)
    print(f"produced {sent:,} records to {args.topic or settings.kafka.transactions_topic}")
    return 0


def _cluster_command(args: argparse.Namespace) -> int:
    from streaming import cluster

    local = cluster.LocalCluster()
    try:
        if args.command == "cluster":
            return _cluster_up_down(local, args)
        if args.command == "submit":
            load_settings(args.config, args.overrides)  # a bad profile fails here, in one line
            command = cluster.submit_command(args.config, args.overrides, args.from_path)
            print(cluster.shown(command), flush=True)
            print(f"submitted job {cluster.submit(local, command)}")
            return 0
        job_id = args.job_id or cluster.running_job(local.rest_url)
        if args.command == "status":
            status = cluster.job_status(local.rest_url, job_id)
            print(json.dumps(status, indent=2))
            return 0
        if args.drain and not args.savepoint:
            raise ConfigError("stop: --drain needs --savepoint")
        if args.savepoint:
            directory = load_settings(args.config, args.overrides).checkpointing.savepoint_directory
            savepoint = cluster.stop_with_savepoint(local.rest_url, job_id, Path(directory).as_uri(), args.drain)
            print(f"stopped job {job_id} with savepoint {savepoint}")
        else:
            cluster.cancel(local.rest_url, job_id)
            print(f"cancelled job {job_id}")
        return 0
    except cluster.ClusterError as error:
        print(f"riskstream: {error}", file=sys.stderr)
        return 1


def _cluster_up_down(local, args: argparse.Namespace) -> int:
    if args.action == "down":
        local.down()
        print("cluster stopped; no JobManager or TaskManager left")
        return 0
    from streaming.cluster import flink_overrides

    overrides = flink_overrides(args.overrides) if args.overrides is not None else {}
    started = local.up(overrides, args.taskmanagers)
    print(f"cluster {'started' if started else 'already running'}: web UI and REST API at {local.rest_url}")
    return 0


def _model_show(args: argparse.Namespace) -> int:
    from streaming.outputs import latest_snapshot

    settings = load_settings(args.config, args.overrides)
    if settings.output.kind == "kafka":
        from streaming import kafka_tools

        snapshots = (orjson.loads(value) for _, _, _, value in kafka_tools.tail(
            settings, settings.kafka.snapshots_topic, True, None, args.idle_timeout))
    else:
        from streaming.outputs import committed_lines

        snapshots = committed_lines(Path(settings.output.path) / "model-snapshots")
    from udfs.cleaning import normalize_categorical

    key = normalize_categorical(settings.model.key, args.key)  # as the job stores it: " Grocery" is "grocery"
    snapshot = latest_snapshot(snapshots, key)
    if snapshot is None:
        print(f"riskstream: no snapshot of model key {key!r} in the output", file=sys.stderr)
        return 1
    print(json.dumps(snapshot, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.overrides)
    os.environ.setdefault("FLINK_LOG_DIR", str(Path("var/log").resolve()))  # Flink's log, kept in the project
    from streaming.job import OUTPUTS, run_job
    from streaming.outputs import count_file_records, summarize

    output = Path(settings.output.path)
    for name in OUTPUTS:  # the output folder belongs to the job: start each run empty
        shutil.rmtree(output / name, ignore_errors=True)
    wall_seconds = run_job(settings)
    if settings.source.kind == "files":
        summary = summarize(output, count_file_records(settings.source.paths), wall_seconds)
        print("\n".join(summary.lines()))
        print(f"outputs in {output}")
        return 0 if summary.reconciled else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
