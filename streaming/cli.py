"""The `riskstream` command: generate transactions, run the job locally or on a session cluster,
work with its Kafka topics, and show a model from its snapshot output.

Every failure a user can cause ends in one line on stderr and one of these exit codes (README,
"Exit codes"): 0 success; 1 the job failed, its accounting does not reconcile, or the cluster
refused a request; 2 a bad argument, profile, setting or input (nothing was started or changed);
3 the Kafka broker or Flink cluster the command needs does not answer; 130 stopped with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from importlib.metadata import version
from pathlib import Path

import orjson

from streaming.config import (DEFAULT_PROFILES, PROFILE_ENV, PROJECT_ROOT, ConfigError, ServiceUnreachable,
                              load_settings, profile_from_environment)
from udfs.labels import LabelStreamSettings

EXIT_OK = 0
EXIT_FAILED = 1  # the job failed, its accounting does not reconcile, or the cluster refused a request
EXIT_USAGE = 2  # a bad argument, profile, setting or input; nothing was started or changed
EXIT_UNREACHABLE = 3  # the Kafka broker or the Flink cluster the command needs does not answer
EXIT_INTERRUPTED = 130  # stopped with Ctrl-C (SIGINT)

# Flink's own log (mini-cluster and client) stays in the project, whatever the current folder.
FLINK_LOG_DIR = PROJECT_ROOT / "var" / "log"
# How often `riskstream run` prints its progress, in seconds.
PROGRESS_SECONDS = 10.0


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, [], False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class UsageError(ValueError):
    """A command-line argument that cannot work; the message is one line naming the option."""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError) as error:
        prefix = "configuration error: " if isinstance(error, ConfigError) else ""
        return _fail(f"{prefix}{error}", EXIT_USAGE)
    except ServiceUnreachable as error:
        return _fail(str(error), EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> int:
    print(f"riskstream: {message}", file=sys.stderr)
    return code


def label_stream_options(sub: argparse.ArgumentParser) -> None:
    """The options of a generated label stream (udfs.labels.LabelStreamSettings)."""
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


def parser() -> argparse.ArgumentParser:
    formatter = _HelpWithDefaults
    parser = argparse.ArgumentParser(prog="riskstream", description="Streaming fraud scoring on Apache Flink.",
                                     formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('riskstream')}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, formatter_class=formatter)

    environment_profile = profile_from_environment()

    def profile(sub: argparse.ArgumentParser, default: str | None) -> None:
        if environment_profile is not None:  # e.g. the docker-compose stack's containers
            sub.add_argument("--config", type=Path, default=environment_profile,
                             help=f"the profile (default from {PROFILE_ENV})")
        elif default is None:
            sub.add_argument("--config", required=True, type=Path, help="a profile, e.g. conf/local.yaml")
        else:
            sub.add_argument("--config", type=Path, default=DEFAULT_PROFILES[default], help="the profile")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override one setting, e.g. --set model.learning_rate=0.05 (repeatable)")

    def verbose(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--verbose", action="store_true", help="show the Kafka client's own log on stderr")

    generate = command("generate", "write a seeded stream of transactions as JSON lines")
    generate.add_argument("--out", required=True, type=Path, help="file to write (JSON lines)")
    generate.add_argument("--records", type=int, default=200_000, help="how many transactions")
    generate.add_argument("--seed", type=int, default=7, help="random seed: the same seed gives the same stream")
    generate.add_argument("--accounts", type=int, default=50_000, help="number of distinct accounts")
    generate.add_argument("--malformed-share", type=float, default=0.0, help="share of malformed records, [0, 1)")
    generate.add_argument("--unlabelled-share", type=float, default=0.02, help="share of records without a label, [0, 1]")
    generate.add_argument("--drift-at", type=float, default=None, help="position (0..1) of an abrupt drift")
    generate.add_argument("--labels", type=Path, default=None, metavar="FILE",
                          help="also write the transactions' label stream to FILE (JSON lines, label-time order)")
    label_stream_options(generate)

    run = command("run", "run the scoring job on the embedded Flink mini-cluster")
    profile(run, None)

    topics = command("topics", "create the project's Kafka topics (idempotent)")
    profile(topics, "kafka")
    verbose(topics)

    produce = command("produce", "send transactions to the transactions topic (or labels to the labels topic)")
    profile(produce, "kafka")
    verbose(produce)
    what = produce.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", type=Path, help="a JSON-lines file to send, one message per line")
    what.add_argument("--generate", type=int, metavar="N", help="send N generated transactions")
    produce.add_argument("--seed", type=int, default=7, help="random seed of --generate")
    produce.add_argument("--accounts", type=int, default=50_000, help="distinct accounts of --generate")
    produce.add_argument("--malformed-share", type=float, default=0.0, help="share of malformed records of --generate")
    produce.add_argument("--rate", type=float, default=None, help="records per second (default: as fast as possible)")
    produce.add_argument("--no-key", action="store_true", help="do not key messages by the normalized model key")
    produce.add_argument("--topic", default=None, help="another topic than kafka.transactions_topic")
    produce.add_argument("--labels", action="store_true",
                         help="send labels to kafka.labels_topic, keyed by txn_id: the --file as it is, or the "
                              "label stream of the --generate transactions")
    label_stream_options(produce)

    tail = command("tail", "print a topic's committed records (read_committed)")
    profile(tail, "kafka")
    verbose(tail)
    tail.add_argument("topic", help="a topic, e.g. risk-scores")
    tail.add_argument("--from-latest", action="store_true", help="only records that arrive from now on")
    tail.add_argument("--max", type=int, default=None, help="stop after this many records")
    tail.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without records")

    cluster = command("cluster", "start or stop the local Flink session cluster")
    cluster.add_argument("action", choices=("up", "down", "jobmanager", "taskmanager"),
                         help="start it, or stop it with all it started; jobmanager and taskmanager run one "
                              "of them in the foreground (a container's main process)")
    cluster.add_argument("--overrides", type=Path, default=None,
                         help="a YAML mapping of Flink settings over conf/flink/config.yaml, e.g. conf/flink/test.yaml")
    cluster.add_argument("--taskmanagers", type=int, default=1, help="how many TaskManagers to start")

    submit = command("submit", "submit the job to the session cluster with `flink run`, detached")
    profile(submit, None)
    submit.add_argument("--from", dest="from_path", default=None, metavar="PATH",
                        help="resume from this savepoint or retained checkpoint; `latest`: the newest one "
                             "in the profile's savepoint and checkpoint directories")

    status = command("status", "the job's state and last completed checkpoint")
    status.add_argument("job_id", nargs="?", default=None, help="default: the one running riskstream-scoring job")
    profile(status, "cluster")

    stop = command("stop", "stop the job on the session cluster")
    stop.add_argument("job_id", nargs="?", default=None, help="default: the one running riskstream-scoring job")
    stop.add_argument("--savepoint", action="store_true", help="take a savepoint first (resume with submit --from)")
    stop.add_argument("--drain", action="store_true",
                      help="end the input first, so the final model snapshots are written (needs --savepoint)")
    profile(stop, "cluster")

    model = command("model", "inspect the models in the snapshot output (no Flink needed)")
    model.add_argument("action", choices=("show",), help="show a key's latest model")
    model.add_argument("key", help="a model key, as the job normalizes it (e.g. grocery)")
    profile(model, "local")
    verbose(model)
    model.add_argument("--idle-timeout", type=float, default=5.0,
                       help="Kafka output: stop reading snapshots after this many seconds without one")

    report = command("report", "PNG plots, their data as CSV and an index.html of a run's outputs (no Flink needed)")
    profile(report, "local")
    verbose(report)
    report.add_argument("--from", dest="from_path", type=Path, default=None, metavar="OUTPUT",
                        help="a run's output folder (default: the profile's output.path; a profile with Kafka "
                             "output reads its topics)")
    report.add_argument("--to", type=Path, default=None, metavar="DIR",
                        help="where to write the report (default: OUTPUT/report; out/report for Kafka output)")
    report.add_argument("--idle-timeout", type=float, default=5.0,
                        help="Kafka output: stop reading a topic after this many seconds without a record")
    return parser


def _report(args: argparse.Namespace) -> int:
    from streaming.report import build_report

    settings = load_settings(args.config, args.overrides)
    if args.from_path is None and settings.output.kind == "kafka":
        from streaming import kafka_tools

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
        from streaming.outputs import committed_lines

        output = args.from_path if args.from_path is not None else Path(settings.output.path)
        if not (output / "scores").is_dir():
            raise UsageError(f"report --from: {output} has no scores/ folder; give the output.path of a run")
        scores, letters = list(committed_lines(output / "scores")), list(committed_lines(output / "dead-letters"))
        where, to = str(output), args.to or output / "report"
    if not scores and not letters:
        return _fail(f"report: no committed scores or dead letters in {where}; run the job first", EXIT_FAILED)
    try:
        index = build_report(scores, letters, to)
    except OSError as error:
        raise UsageError(f"report --to: cannot write {to}: {error.strerror or error}") from None
    print(f"report of {len(scores):,} scores and {len(letters):,} dead letters: {index.resolve()}")
    return EXIT_OK


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from udfs.generator import GeneratorSettings, generate
    from udfs.labels import generate_labels

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
    if label_settings is not None:
        written = _write_lines(args.labels, "--labels", generate_labels(generate(settings), label_settings))
        print(f"wrote {written:,} labels to {args.labels}")
    return EXIT_OK


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


def _kafka_command(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from streaming import kafka_tools

    try:
        return _kafka_tool(args)
    except (KafkaException, kafka_tools.DeliveryFailed) as error:
        return _fail(f"{args.command}: {error}", EXIT_FAILED)


def _kafka_tool(args: argparse.Namespace) -> int:
    from streaming import kafka_tools

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
        from streaming.outputs import file_records

        lines, total = file_records(args.file), None
    else:
        from udfs.generator import GeneratorSettings, generate

        lines = generate(GeneratorSettings(records=args.generate, seed=args.seed, accounts=args.accounts,
                                           malformed_share=args.malformed_share))
        total = args.generate
        if label_settings is not None:
            from udfs.labels import generate_labels

            lines, total = generate_labels(lines, label_settings), None
    # Labels are keyed by txn_id, so that a transaction's labels share a partition and keep their order.
    key_field = None if args.no_key else "txn_id" if args.labels else settings.model.key
    topic = args.topic or (settings.kafka.labels_topic if args.labels else settings.kafka.transactions_topic)
    sent = kafka_tools.produce(settings, lines, total=total, rate=args.rate, key_field=key_field, topic=topic)
    print(f"produced {sent:,} {'labels' if args.labels else 'records'} to {topic}")
    return EXIT_OK


def _cluster_command(args: argparse.Namespace) -> int:
    from streaming import cluster

    if args.command == "cluster":
        return _cluster_up_down(cluster.LocalCluster(), args)
    if args.command == "stop" and args.drain and not args.savepoint:
        raise UsageError("stop --drain: needs --savepoint (draining ends the input, which only a savepoint can resume)")
    settings = load_settings(args.config, args.overrides)  # a bad profile fails here, in one line
    rest_url = settings.flink.rest_url
    cluster.rest(rest_url, "GET", "/overview", timeout=3)  # a cluster that is down: one line, exit 3
    try:
        if args.command == "submit":
            from_path = _resume_path(args.from_path, settings) if args.from_path is not None else None
            _check_kafka_topics(settings)
            running = cluster.scoring_jobs(rest_url)
            if running:  # a second job would share the first one's consumer group and transactional ids
                if from_path is not None:
                    return _fail(f"submit --from: job {running[0]} is running on {rest_url}; stop it first "
                                 "(riskstream stop --savepoint)", EXIT_FAILED)
                print(f"job {running[0]} ({cluster.JOB_NAME}) is already running on {rest_url}; not submitting another")
                return EXIT_OK
            command = cluster.submit_command(args.config, settings.flink.rest_address, args.overrides, from_path)
            print(cluster.command_line(command), flush=True)
            print(f"submitted job {cluster.submit(cluster.LocalCluster(), command)}")
            return EXIT_OK
        job_id = args.job_id or cluster.running_job(rest_url)
        if args.command == "status":
            print(json.dumps(cluster.job_status(rest_url, job_id), indent=2))
            return EXIT_OK
        if args.savepoint:
            directory = Path(settings.checkpointing.savepoint_directory).as_uri()
            savepoint = cluster.stop_with_savepoint(rest_url, job_id, directory, args.drain)
            print(f"stopped job {job_id} with savepoint {savepoint}")
        else:
            cluster.cancel(rest_url, job_id)
            print(f"cancelled job {job_id}")
        return EXIT_OK
    except cluster.ClusterUnreachable:
        raise
    except cluster.ClusterError as error:
        return _fail(str(error), EXIT_FAILED)


def _check_kafka_topics(settings) -> None:
    """In Kafka mode, that the broker answers and every topic of the profile exists, so that a job
    submitted to a cluster does not restart forever against a broker or topic that is not there."""
    if "kafka" not in (settings.source.kind, settings.output.kind):
        return
    from streaming import kafka_tools

    kafka_tools.show_client_log(False)
    kafka_tools.check_broker(settings)
    try:
        kafka_tools.check_topic(settings, *settings.kafka.topics())
    except ConfigError as error:
        raise ConfigError(f"{error}; create the profile's topics with `riskstream topics`") from None


def _resume_path(path: str, settings) -> str:
    """`submit --from PATH` as the JobManager needs it: a local path (plain or file:) checked and
    made absolute; a path on a remote file system (s3://...) as given; `latest`: the newest
    savepoint or retained checkpoint in the profile's directories."""
    if path == "latest":
        from streaming.cluster import latest_restore_point

        checkpointing = settings.checkpointing
        latest = latest_restore_point(checkpointing.directory, checkpointing.savepoint_directory)
        if latest is None:
            raise UsageError(f"submit --from latest: no savepoint or retained checkpoint in "
                             f"{checkpointing.savepoint_directory} or {checkpointing.directory}")
        print(f"resuming from {latest}", flush=True)
        return str(latest)
    local = path.removeprefix("file://").removeprefix("file:")
    if "://" in local:
        return path
    if not Path(local).exists():
        raise UsageError(f"submit --from: {path} does not exist")
    return str(Path(local).resolve())


def _cluster_up_down(local, args: argparse.Namespace) -> int:
    from streaming import cluster

    try:
        if args.action == "down":
            local.down()
            print("cluster stopped; no JobManager or TaskManager left")
            return EXIT_OK
        overrides = cluster.flink_overrides(args.overrides) if args.overrides is not None else {}
        if args.action in ("jobmanager", "taskmanager"):
            local.run_in_foreground(args.action, overrides)
        started = local.up(overrides, args.taskmanagers)
    except cluster.ClusterError as error:
        return _fail(str(error), EXIT_FAILED)
    print(f"cluster {'started' if started else 'already running'}: web UI and REST API at {local.rest_url}")
    return EXIT_OK


def _model_show(args: argparse.Namespace) -> int:
    from streaming.outputs import latest_snapshots

    settings = load_settings(args.config, args.overrides)
    if settings.output.kind == "kafka":
        from streaming import kafka_tools

        kafka_tools.show_client_log(args.verbose)
        kafka_tools.check_broker(settings)
        where = f"topic {settings.kafka.snapshots_topic} at {settings.kafka.bootstrap_servers}"
        snapshots = (orjson.loads(value) for _, _, _, value in kafka_tools.tail(
            settings, settings.kafka.snapshots_topic, idle_timeout_s=args.idle_timeout))
    else:
        from streaming.outputs import committed_lines

        folder = Path(settings.output.path) / "model-snapshots"
        where = str(folder)
        snapshots = committed_lines(folder)
    from udfs.cleaning import normalize_categorical

    key = normalize_categorical(settings.model.key, args.key)  # as the job stores it: " Grocery" is "grocery"
    latest = latest_snapshots(snapshots)
    if key not in latest:
        if not latest:
            return _fail(f"no model snapshots in {where}; run the job with this profile first", EXIT_FAILED)
        keys = sorted(latest)
        shown = ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
        return _fail(f"no snapshot of model key {key!r} in {where}; keys there: {shown}", EXIT_FAILED)
    print(json.dumps(latest[key], indent=2))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.overrides)
    records_in_files = _check_inputs(settings)
    from streaming.flink_options import job_jars

    job_jars(settings)  # a missing jar: one line naming it, before Flink starts
    os.environ.setdefault("FLINK_LOG_DIR", str(FLINK_LOG_DIR))
    from streaming.job import run_job
    from streaming.outputs import RunOutputs, summarize

    outputs = RunOutputs(Path(settings.output.path)) if settings.output.kind == "files" else None
    if outputs is not None:
        outputs.set_previous_aside()
    progress = _Progress(outputs.folder) if outputs is not None else None
    try:
        job_run = run_job(settings)
    except KeyboardInterrupt:  # Ctrl-C before the job was running: nothing of this run to keep
        if outputs is not None:
            outputs.restore_previous()
        return _fail("interrupted before the job started; nothing changed", EXIT_INTERRUPTED)
    except Exception as error:  # the job failed: the user gets one line, the log gets the rest
        if outputs is not None:
            outputs.restore_previous()
        kept = f"; previous outputs kept in {outputs.folder}" if outputs is not None else ""
        return _fail(f"the job failed: {_cause(error)}{kept}; details in {_write_failure_log(error)}", EXIT_FAILED)
    finally:
        if progress is not None:
            progress.stop()
    if outputs is None:  # Kafka output: read it with `riskstream tail`
        if job_run.savepoint is not None:
            print(f"stopped with savepoint {job_run.savepoint} after {job_run.records_read:,} records")
        return EXIT_INTERRUPTED if job_run.interrupted else EXIT_OK
    outputs.drop_previous()
    if job_run.ending == "cancelled":  # a second Ctrl-C: no savepoint, so nothing to reconcile
        return _fail(f"cancelled; {outputs.folder} holds what the last completed checkpoint committed, "
                     "not what was read after it", EXIT_INTERRUPTED)
    # Records read: counted in the input files when the job read them all, else by the job's source.
    finished_files = job_run.ending == "finished" and records_in_files is not None
    records_read = records_in_files if finished_files else job_run.records_read
    summary = summarize(outputs.folder, records_read, job_run.wall_seconds, settings.labels.streamed, job_run.labels_read)
    print("\n".join(summary.lines()))
    if job_run.savepoint is not None:
        print(f"stopped with savepoint {job_run.savepoint}")
    print(f"outputs in {outputs.folder}")
    if not summary.reconciled:
        return EXIT_FAILED
    return EXIT_INTERRUPTED if job_run.interrupted else EXIT_OK


class _Progress:
    """While a file-output job runs, prints every PROGRESS_SECONDS what it has committed so far:
    scores, dead letters and their rate since the last line (outputs are committed at each
    checkpoint, so the figures move in steps)."""

    def __init__(self, folder: Path):
        from streaming.outputs import CommittedCounts

        self.counts = CommittedCounts(folder)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._print_progress, name="progress", daemon=True)
        self.thread.start()

    def _print_progress(self) -> None:
        last_total, last_at = 0, time.monotonic()
        while not self.done.wait(PROGRESS_SECONDS):
            counts = self.counts.counts()
            total, now = counts["scores"] + counts["dead-letters"], time.monotonic()
            rate = (total - last_total) / (now - last_at)
            print(f"committed so far: {counts['scores']:,} scored, {counts['dead-letters']:,} dead-lettered "
                  f"({rate:,.0f} records/s)", flush=True)
            last_total, last_at = total, now

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def _check_inputs(settings) -> int | None:
    """Checks that the job's input exists (and the broker answers, in Kafka mode) before anything
    starts; returns how many records the input files hold (None for other sources). Raises
    ConfigError naming the setting, or ServiceUnreachable."""
    source = settings.source
    _check_label_inputs(settings)
    if "kafka" in (source.kind, settings.output.kind) or (settings.labels.streamed and settings.labels.source.kind == "kafka"):
        from streaming import kafka_tools

        kafka_tools.show_client_log(False)
        kafka_tools.check_broker(settings)
    if source.kind == "directory":
        folder = Path(source.directory)
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ConfigError(f"source.directory: {folder} {what}")
        return None
    if source.kind == "kafka":
        return None
    from streaming.outputs import count_file_records

    for path in map(Path, source.paths):
        if path.is_dir():
            raise ConfigError(f"source.paths: {path} is a folder; to watch a folder set source.kind=directory "
                              f"and source.directory={path}")
        if not path.is_file():
            raise ConfigError(f"source.paths: {path} does not exist")
        if "\\" in str(path):  # Flink reads every backslash in a path as a folder separator
            raise ConfigError(f"source.paths: {path}: Flink cannot read a file whose path holds a backslash; rename it")
    records = count_file_records(source.paths)
    if records == 0:
        raise ConfigError(f"source.paths: no records in {', '.join(source.paths)}")
    return records


def _check_label_inputs(settings) -> None:
    """In labels.mode stream or both, that the label files or folder exist (a label file may be
    empty: no label has come yet); the broker is checked with the transactions'."""
    labels = settings.labels
    if not labels.streamed or labels.source.kind == "kafka":
        return
    if labels.source.kind == "directory":
        folder = Path(labels.source.directory)
        if not folder.is_dir():
            raise ConfigError(f"labels.source.directory: {folder} {'is a file, not a folder' if folder.exists() else 'does not exist'}")
        return
    for path in map(Path, labels.source.paths):
        if path.is_dir():
            raise ConfigError(f"labels.source.paths: {path} is a folder; to watch a folder set labels.source.kind=directory")
        if not path.is_file():
            raise ConfigError(f"labels.source.paths: {path} does not exist")


def _cause(error: BaseException) -> str:
    """The one line that says why a job failed: the innermost cause Flink or Python reported."""
    from streaming.cluster import innermost_cause

    text = str(error).strip()
    return innermost_cause(text, text.splitlines()[0] if text else type(error).__name__)


def _write_failure_log(error: BaseException) -> Path:
    """Writes the whole failure (Python and Java stack traces) to a log file; returns its path."""
    FLINK_LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = FLINK_LOG_DIR / f"riskstream-run-failed-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    return log


COMMANDS = {"generate": _generate, "run": _run, "topics": _kafka_command, "produce": _kafka_command,
            "tail": _kafka_command, "cluster": _cluster_command, "submit": _cluster_command,
            "status": _cluster_command, "stop": _cluster_command, "model": _model_show,
            "report": _report}


if __name__ == "__main__":
    sys.exit(main())
