"""What every command shares: exit codes, the one-line failure, and the help formatter.

Every failure a user can cause ends in one line on stderr and one of these exit codes
(docs/operations.md, "Exit codes").
"""

from __future__ import annotations

import argparse
import sys

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
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, [], False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class UsageError(ValueError):
    """A command-line argument that cannot work; the message is one line naming the option."""


def fail(message: str, code: int) -> int:
    print(f"riskstream: {message}", file=sys.stderr)
    return code


