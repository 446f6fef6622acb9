"""A watched directory: files that appear while the job runs are scored, each line once."""

from __future__ import annotations

import time
from pathlib import Path

from streaming.config import load_settings
from streaming.outputs import committed_lines
from tests.integration.conftest import LOCAL_PROFILE
from udfs.generator import GeneratorSettings, generate


def committed_scores(folder: Path) -> list[dict]:
    return list(committed_lines(folder / "scores"))


def test_files_dropped_into_a_watched_directory_are_scored(tmp_path):
    from streaming.job import start_job

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    settings = load_settings(LOCAL_PROFILE, [
        "source.kind=directory", f"source.directory={incoming}", "source.discovery_interval_ms=200",
        f"output.path={tmp_path / 'out'}", f"checkpointing.directory={tmp_path / 'checkpoints'}",
        "checkpointing.interval_ms=500",
    ])
    client = start_job(settings)
    try:
        expected = set()
        for batch in range(2):
            lines = list(generate(GeneratorSettings(records=300, seed=100 + batch)))
            expected |= {line.split(b'"txn_id":"')[1].split(b'"')[0].decode() for line in lines}
            hidden = incoming / f".batch-{batch}.jsonl"  # the source skips hidden files, so rename when whole
            hidden.write_bytes(b"\n".join(lines) + b"\n")
            hidden.rename(incoming / f"batch-{batch}.jsonl")
            time.sleep(1)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(committed_scores(Path(settings.output.path))) < len(expected):
            time.sleep(0.5)
        scores = committed_scores(Path(settings.output.path))
    finally:
        client.cancel().result()
    assert sorted(s["txn_id"] for s in scores) == sorted(expected)
