"""The `riskstream` command: generate transactions, run the job locally or on a session cluster,
work with its Kafka topics, list, show and export its models, score one transaction with them.

Each command group has its module: data.py (generate), run.py, kafka.py (topics, produce, tail),
cluster.py (cluster, submit, status, stop), models.py (model list, show, export; score), outputs.py
(report), replay.py, evaluate.py, profile.py (config show, run and submit --dry-run); common.py holds the exit
codes. Every failure a user can cause ends in one line on stderr and one of those codes.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path

from streaming.cli.cluster import cluster_command
from streaming.cli.common import EXIT_INTERRUPTED, EXIT_UNREACHABLE, EXIT_USAGE, HelpWithDefaults, UsageError, fail
from streaming.cli.data import events_per_second_option, generate_command, label_stream_options
from streaming.cli.evaluate import add_evaluate_options, evaluate_command
from streaming.cli.kafka import kafka_command
from streaming.cli.models import model_command, score_command
from streaming.cli.outputs import report_command
from streaming.cli.profile import config_command, dry_run_command
from streaming.cli.replay import add_replay_options, replay_command
from streaming.cli.run import run_command
from streaming.config import DEFAULT_PROFILES, PROFILE_ENV, ConfigError, ServiceUnreachable, profile_from_environment


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "parallelism", None) is not None:  # submit --parallelism N is flink.parallelism=N
        args.overrides.append(f"flink.parallelism={args.parallelism}")
    try:
        if getattr(args, "dry_run", False):  # run and submit: check the profile, start nothing
            return dry_run_command(args)
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

    def dry_run(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--dry-run", action="store_true",
                         help="only check the profile, inputs and jars as the command does before the job starts, "
                              "print 'profile OK: ...' and exit; starts nothing")

    generate = command("generate", "write a seeded stream of transactions as JSON lines")
    generate.add_argument("--out", required=True, type=Path, help="file to write (JSON lines)")
    generate.add_argument("--records", type=int, default=200_000, help="how many transactions")
    generate.add_argument("--seed", type=int, default=7, help="random seed: the same seed gives the same stream")
    generate.add_argument("--accounts", type=int, default=50_000, help="number of distinct accounts")
    generate.add_argument("--malformed-share", type=float, default=0.0, help="share of malformed records, [0, 1)")
    generate.add_argument("--unlabelled-share", type=float, default=0.02, help="share of records without a label, [0, 1]")
    generate.add_argument("--drift-at", type=float, default=None, help="position (0..1) of an abrupt drift")
    events_per_second_option(generate)
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
    dry_run(run)

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
    produce.add_argument("--malformed-share", type=float, default=0.0,
                         help="share of malformed records of --generate, [0, 1)")
    events_per_second_option(produce)
    produce.add_argument("--rate", type=float, default=None,
                         help="records sent per second, > 0 (default: as fast as possible)")
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
    submit.add_argument("--parallelism", type=int, default=None, metavar="N",
                        help="the job's parallelism (flink.parallelism), e.g. to rescale with --from; at most "
                             "performance.shards scoring subtasks have work")
    dry_run(submit)

    status = command("status", "the job's state and last completed checkpoint")
    status.add_argument("job_id", nargs="?", default=None, help="default: the one running riskstream-scoring job")
    profile(status, "cluster")

    stop = command("stop", "stop the job on the session cluster with a savepoint, as `flink stop` does "
                           "(resume with submit --from); --cancel cancels it instead")
    stop.add_argument("job_id", nargs="?", default=None, help="default: the one running riskstream-scoring job")
    how = stop.add_mutually_exclusive_group()
    how.add_argument("--cancel", action="store_true",
                     help="cancel the job without a savepoint, as `flink cancel` does (resume from its last "
                          "retained checkpoint with submit --from latest)")
    how.add_argument("--savepoint", action="store_true", help="stop with a savepoint: what stop does without --cancel")
    stop.add_argument("--drain", action="store_true",
                      help="end the input first, so the final model snapshots are written (not with --cancel)")
    profile(stop, "cluster")

    def model_source(sub: argparse.ArgumentParser, option: str, dest: str) -> None:
        sub.add_argument(option, dest=dest, type=Path, default=None, metavar="OUTPUT",
                         help="a run's output folder, whose model-snapshots/ it reads (default: the profile's "
                              "output.path; a profile with Kafka output reads its snapshots topic)")
        sub.add_argument("--idle-timeout", type=float, default=5.0,
                         help="Kafka output: stop reading snapshots after this many seconds without one")

    model = command("model", "list, show or export a run's models, from its snapshot output (no Flink needed)")
    model_actions = model.add_subparsers(dest="action", required=True)

    def model_action(name: str, help: str) -> argparse.ArgumentParser:
        action = model_actions.add_parser(name, help=help, description=help, formatter_class=formatter)
        if name != "list":
            action.add_argument("key", help="a model key, as the job normalizes it (e.g. grocery)")
        profile(action, "local")
        verbose(action)
        model_source(action, "--from", "from_path")
        return action

    model_action("list", "each model key's latest snapshot: updates, rejected updates, last update, optimizer")
    model_action("show", "print a key's latest snapshot as JSON")
    model_action("export", "print a key's latest model as JSON for use outside the job: the features in order, "
                           "weights, bias, standardization, optimizer, updates (docs/operations.md)")

    score = command("score", "score one transaction (one JSON line on stdin) as the job would score it next, "
                             "with a run's latest models; prints its score line, or exits 4 with the reason the "
                             "job would dead-letter it (no Flink needed)")
    profile(score, "local")
    verbose(score)
    model_source(score, "--model-from", "model_from")

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
    report.add_argument("--drift-at", default=None, metavar="TIME",
                        help="where the input's drift starts, if known (ISO-8601 with a zone, or epoch ms; "
                             "`generate --drift-at` prints it): a dotted line on every event-time axis "
                             "(default: none)")

    replay = command("replay", "send selected dead letters' original (redacted) bytes again, to a file or a topic, "
                               "after a fix; prints what was re-sent and what was refused, and why (no Flink needed)")
    profile(replay, "local")
    verbose(replay)
    add_replay_options(replay)

    config = command("config", "show a profile's effective settings, after extends: and --set, as YAML (no Flink "
                               "needed)")
    config.add_argument("action", choices=("show",), help="print every setting the job would use; secrets masked")
    profile(config, "local")

    evaluate = command("evaluate", "prequential evaluation of model configurations on a file, beside the base rate "
                                   "and River (no Flink needed)")
    profile(evaluate, None)
    add_evaluate_options(evaluate)
    return parser


COMMANDS = {"generate": generate_command, "run": run_command, "topics": kafka_command, "produce": kafka_command,
            "tail": kafka_command, "cluster": cluster_command, "submit": cluster_command,
            "status": cluster_command, "stop": cluster_command, "model": model_command,
            "score": score_command, "report": report_command, "evaluate": evaluate_command,
            "config": config_command, "replay": replay_command}
