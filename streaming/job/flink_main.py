"""The program `flink run` runs (see `riskstream submit` and `streaming.ops.local_cluster.submit_command`),
and on Kubernetes Flink's PythonDriver in the JobManager (k8s/flink-deployment.yaml): builds the
scoring job from a profile and hands it to the cluster it runs for, without waiting for it to finish.

    flink run --detached --pyModule streaming.job.flink_main --config conf/cluster.yaml [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streaming.config import ConfigError, load_settings


def parser() -> argparse.ArgumentParser:
    """The program's own arguments, after those of `flink run` or of Flink's PythonDriver (the
    Kubernetes operator's way, k8s/flink-deployment.yaml)."""
    arguments = argparse.ArgumentParser(prog="streaming.job.flink_main")
    arguments.add_argument("--config", required=True, type=Path)
    arguments.add_argument("--set", dest="overrides", action="append", default=[])
    return arguments


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config, args.overrides)
    except ConfigError as error:
        print(f"riskstream: configuration error: {error}", file=sys.stderr)
        return 2
    from streaming.job.run import start_job

    start_job(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
