"""The `riskstream` command: generate transactions, run the job locally or on a session cluster,
work with its Kafka topics, and show a model from its snapshot output.

Each command group has its module: data.py (generate), run.py, kafka.py (topics, produce, tail),
cluster.py (cluster, submit, status, stop), outputs.py (model show, report), evaluate.py; common.py holds the
exit codes. Every failure a user can cause ends in one line on stderr and one of those codes.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path

from streaming.cli.cluster import cluster_command
from streaming.cli.common import EXIT_INTERRUPTED, EXIT_UNREACHABLE, EXIT_USAGE, HelpWithDefaults, UsageError, fail
from streaming.cli.data import generate_command, label_stream_options
from streaming.cli.evaluate import add_evaluate_options, evaluate_command
from streaming.cli.kafka import kafka_command
from streaming.cli.outputs import model_show, report_command
from streaming.cli.run import run_command
from streaming.config import DEFAULT_PROFILES, PROFILE_ENV, ConfigError, ServiceUnreachable, profile_from_environment


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError) as error:
        prefix = "configuration error: " if isinstance(error, ConfigError) else ""
        return fail(f"{prefix}{error}", EXIT_USAGE)
    except ServiceUnreachable as error:
        return fail(str(error), EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)


def parser() -> argparse.ArgumentParser:
    formatter = HelpWithDefaults
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
    run.add_argument("--from", dest="from_path", default=None, metavar="PATH",
                     help="resume from this savepoint (the one Ctrl-C wrote) or retained checkpoint, as "
                          "`flink run -s` does, continuing the outputs in output.path; `latest`: the newest one "
                          "in the profile's savepoint and checkpoint directories (default: start afresh)")
    run.add_argument("--summary-json", type=Path, default=None, metavar="FILE",
                     help="also write the run summary to FILE as JSON (file output only; default: not written)")

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
    evaluate = command("evaluate", "prequential evaluation of model configurations on a file, beside the base rate "
                                   "and River (no Flink needed)")
    profile(evaluate, None)
    add_evaluate_options(evaluate)
    return parser


COMMANDS = {"generate": generate_command, "run": run_command, "topics": kafka_command, "produce": kafka_command,
            "tail": kafka_command, "cluster": cluster_command, "submit": cluster_command,
            "status": cluster_command, "stop": cluster_command, "model": model_show,
            "report": report_command, "evaluate": evaluate_command}
