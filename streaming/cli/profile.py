"""`riskstream config show`: a profile's effective settings; `run --dry-run` and `submit --dry-run`:
every check the command makes before it starts the job, without starting it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from streaming.cli.common import EXIT_OK
from streaming.config import PSEUDONYM_KEY_ENV, SECRET_MASK, load_settings, settings_as_profile
from streaming.config.endpoints import KAFKA_PROPERTY_ENV_PREFIX


def config_command(args: argparse.Namespace) -> int:
    """Prints the settings a job of the profile would use, after `extends:` and `--set`, as a YAML
    profile (see `settings_as_profile`), under comments that say where the secrets come from."""
    settings = load_settings(args.config, args.overrides)
    overrides = "".join(f" --set {override}" for override in args.overrides)
    notes = [f"The settings of {Path(args.config).resolve()}{overrides}, as a job would use them: every",
             "setting, defaults included, paths absolute. Secrets are not shown: privacy.pseudonym_key is",
             f"null and kafka.properties values are {SECRET_MASK}; give them again to use this as a profile."]
    if os.environ.get(PSEUDONYM_KEY_ENV):
        notes.append(f"{PSEUDONYM_KEY_ENV} is set: the job pseudonymizes account_id with it.")
    elif settings.privacy.pseudonym_key is not None:
        notes.append("privacy.pseudonym_key is set in the profile.")
    from_environment = sorted(name[len(KAFKA_PROPERTY_ENV_PREFIX):].lower().replace("_", ".")
                              for name in os.environ if name.startswith(KAFKA_PROPERTY_ENV_PREFIX))
    if from_environment:
        notes.append(f"Kafka client properties from {KAFKA_PROPERTY_ENV_PREFIX}* variables, over kafka.properties: "
                     f"{', '.join(from_environment)}.")
    print("".join(f"# {note}\n" for note in notes), end="")
    print(yaml.safe_dump(settings_as_profile(settings), sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK


def dry_run_command(args: argparse.Namespace) -> int:
    """`run --dry-run` and `submit --dry-run`: loads the profile and makes the checks the command
    makes before the job starts (every input file exists and holds records, a watched folder
    exists, the broker answers in Kafka mode, the jars are there, --from names a restore point; for
    run also that output.path can be a folder, for submit an earlier run's global model versions
    and the profile's Kafka topics), then prints one line
    "profile OK: ..." and returns EXIT_OK. A failed check raises as the command would (ConfigError,
    UsageError: exit 2; ServiceUnreachable: exit 3). Starts nothing, changes no output, and does
    not contact the session cluster."""
    from streaming.cli.common import resume_path
    from streaming.cli.run import _check_inputs, _check_output
    from streaming.config.flink_options import job_jars

    settings = load_settings(args.config, args.overrides)
    records = _check_inputs(settings)
    job_jars(settings)
    resume = ""
    if args.from_path is not None:
        resume = f", resuming from {resume_path(args.from_path, settings, f'{args.command} --from')}"
    if args.command == "run":
        _check_output(settings)
    else:
        from streaming.cli.cluster import _check_kafka_topics
        from streaming.config.global_settings import check_no_earlier_versions

        if args.from_path is None:
            check_no_earlier_versions(settings)
        _check_kafka_topics(settings)
    source, output, kafka = settings.source, settings.output, settings.kafka
    if source.kind == "files":
        reads = f"{len(source.paths)} input file{'s' if len(source.paths) > 1 else ''} with {records:,} records"
    elif source.kind == "directory":
        reads = f"watches {source.directory}"
    else:
        reads = f"reads topic {kafka.transactions_topic} at {kafka.bootstrap_servers}"
    writes = f"writes to {output.path}" if output.kind == "files" else f"writes to topics at {kafka.bootstrap_servers}"
    print(f"profile OK: {args.config}: {reads}, {writes}{resume}; nothing started")
    return EXIT_OK
