"""What every command shares: exit codes, the one-line failure, and the help formatter.

Every failure a user can cause ends in one line on stderr and one of these exit codes
(docs/operations.md, "Exit codes").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streaming.config import PROJECT_ROOT

EXIT_OK = 0
EXIT_FAILED = 1  # the job failed, its accounting does not reconcile, or the cluster refused a request
EXIT_USAGE = 2  # a bad argument, profile, setting or input; nothing was started or changed
EXIT_UNREACHABLE = 3  # the Kafka broker or the Flink cluster the command needs does not answer
EXIT_DEAD_LETTERED = 4  # `score`: the job would dead-letter the record (the line gives the stage and reason)
EXIT_INTERRUPTED = 130  # stopped with Ctrl-C (SIGINT)

# Flink's own log (mini-cluster and client) stays in the project, whatever the current folder.
FLINK_LOG_DIR = PROJECT_ROOT / "var" / "log"

class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, zero included, except where there is none to show:
    a required option, a flag (--verbose), no value (None), or an empty repeatable option (--set)."""

    def _get_help_string(self, action):
        # Compared by identity and type, not with `in (None, False, ...)`: 0 and 0.0 equal False.
        no_default = action.default is None or action.default is argparse.SUPPRESS or action.default == []
        if action.required or action.nargs == 0 or no_default:
            return action.help
        return super()._get_help_string(action)


class UsageError(ValueError):
    """A command-line argument that cannot work; the message is one line naming the option."""


def fail(message: str, code: int) -> int:
    print(f"riskstream: {message}", file=sys.stderr)
    return code


def resume_path(path: str, settings, option: str) -> str:
    """`--from PATH` of `run` or `submit` (named by `option`, e.g. "run --from") as Flink needs it:
    a local path (plain or file:) checked and made absolute; a path on a remote file system
    (s3://...) as given; `latest`: the newest savepoint or retained checkpoint in the profile's
    directories. Raises UsageError naming the option when there is none."""
    if path == "latest":
        from streaming.ops.local_cluster import latest_restore_point

        checkpointing = settings.checkpointing
        latest = latest_restore_point(checkpointing.directory, checkpointing.savepoint_directory)
        if latest is None:
            raise UsageError(f"{option} latest: no savepoint or retained checkpoint in "
                             f"{checkpointing.savepoint_directory} or {checkpointing.directory}")
        print(f"resuming from {latest}", flush=True)
        return str(latest)
    local = path.removeprefix("file://").removeprefix("file:")
    if "://" in local:
        return path
    if not Path(local).exists():
        raise UsageError(f"{option}: {path} does not exist")
    return str(Path(local).resolve())
