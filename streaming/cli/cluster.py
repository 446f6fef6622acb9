"""`riskstream cluster`, `submit`, `status` and `stop`: the local session cluster and the job on a
cluster, through Flink's REST API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streaming.cli.common import EXIT_FAILED, EXIT_OK, UsageError, fail, resume_path
from streaming.config import ConfigError, load_settings
from streaming.config.global_settings import check_no_earlier_versions


def cluster_command(args: argparse.Namespace) -> int:
    from streaming.job import identity
    from streaming.ops import local_cluster, rest

    if args.command == "cluster":
        return _cluster_up_down(local_cluster.LocalCluster(), args)
    if args.command == "stop" and args.drain and args.cancel:
        raise UsageError("stop --drain: not with --cancel (draining ends the input, which only a savepoint can resume)")
    settings = load_settings(args.config, args.overrides)  # a bad profile fails here, in one line
    rest_url = settings.flink.rest_url
    rest.rest(rest_url, "GET", "/overview", timeout=3)  # a cluster that is down: one line, exit 3
    try:
        if args.command == "submit":
            from_path = resume_path(args.from_path, settings, "submit --from") if args.from_path is not None else None
            if args.from_path == "latest":
                print(f"resuming from {from_path}", flush=True)
            if from_path is None:
                check_no_earlier_versions(settings)
            _check_kafka_topics(settings)
            running = rest.scoring_jobs(rest_url)
            if running:  # a second job would share the first one's consumer group and transactional ids
                if from_path is not None:
                    return fail(f"submit --from: job {running[0]} is running on {rest_url}; stop it first "
                                 "(riskstream stop)", EXIT_FAILED)
                print(f"job {running[0]} ({identity.JOB_NAME}) is already running on {rest_url}; not submitting another")
                return EXIT_OK
            command = local_cluster.submit_command(args.config, settings.flink.rest_address, args.overrides, from_path)
            print(local_cluster.command_line(command), flush=True)
            print(f"submitted job {local_cluster.submit(local_cluster.LocalCluster(), command)}")
            return EXIT_OK
        job_id = args.job_id or rest.running_job(rest_url)
        if args.command == "status":
            print(json.dumps(rest.job_status(rest_url, job_id), indent=2))
            return EXIT_OK
        if args.cancel:
            rest.cancel(rest_url, job_id)
            print(f"cancelled job {job_id}")
        else:  # as `flink stop`: a savepoint, then the job finishes
            directory = Path(settings.checkpointing.savepoint_directory).as_uri()
            savepoint = rest.stop_with_savepoint(rest_url, job_id, directory, args.drain)
            print(f"stopped job {job_id} with savepoint {savepoint}")
        return EXIT_OK
    except rest.ClusterUnreachable:
        raise
    except rest.ClusterError as error:
        return fail(str(error), EXIT_FAILED)


def _check_kafka_topics(settings) -> None:
    """In Kafka mode, that the broker answers and every topic of the profile exists, so that a job
    submitted to a cluster does not restart forever against a broker or topic that is not there."""
    if "kafka" not in (settings.source.kind, settings.output.kind):
        return
    from streaming.ops import kafka_tools

    kafka_tools.show_client_log(False)
    kafka_tools.check_broker(settings)
    try:
        kafka_tools.check_topic(settings, *settings.kafka.topics())
    except ConfigError as error:
        raise ConfigError(f"{error}; create the profile's topics with `riskstream topics`") from None


def _cluster_up_down(local, args: argparse.Namespace) -> int:
    from streaming.ops import local_cluster, rest

    try:
        if args.action == "down":
            if local.down():
                print("cluster stopped; no JobManager or TaskManager left")
            else:
                print(f"no cluster running (no JobManager or TaskManager of {local.conf_dir}); nothing to stop")
            return EXIT_OK
        overrides = local_cluster.flink_overrides(args.overrides) if args.overrides is not None else {}
        if args.action in ("jobmanager", "taskmanager"):
            local.run_in_foreground(args.action, overrides)
        started = local.up(overrides, args.taskmanagers)
    except rest.ClusterError as error:
        return fail(str(error), EXIT_FAILED)
    print(f"cluster {'started' if started else 'already running'}: web UI and REST API at "
          f"{local.rest_url_with(overrides)}")
    return EXIT_OK


