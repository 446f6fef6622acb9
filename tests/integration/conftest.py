"""Integration tier: the real job on a Flink mini-cluster, fed from real files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streaming.config import Settings, load_settings
from streaming.outputs import committed_lines

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_PROFILE = PROJECT / "conf" / "local.yaml"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@dataclass
class JobOutputs:
    settings: Settings
    scores: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    snapshots: list[dict[str, Any]]


def run_scoring_job(workdir: Path, lines: list[bytes], *overrides: str) -> JobOutputs:
    """Writes `lines` to one input file, runs the real job on it with the local profile plus
    `overrides`, and returns everything it committed."""
    from streaming.job import run_job  # imports pyflink: only the integration tier pays for it

    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "transactions.jsonl"
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    settings = load_settings(LOCAL_PROFILE, [
        f"source.paths=['{source}']",
        f"output.path={workdir / 'out'}",
        f"checkpointing.directory={workdir / 'checkpoints'}",
        *overrides,
    ])
    run_job(settings)
    out = Path(settings.output.path)
    return JobOutputs(
        settings=settings,
        scores=list(committed_lines(out / "scores")),
        dead_letters=list(committed_lines(out / "dead-letters")),
        snapshots=list(committed_lines(out / "model-snapshots")),
    )


@pytest.fixture
def scoring_job():
    return run_scoring_job
