"""A watched directory: files that appear while the job runs are scored, each line once, also
when the job is restored from a checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

from streaming.config import load_settings
from streaming.reporting.outputs import committed_lines
from tests.integration.conftest import LOCAL_PROFILE
from udfs.generator import GeneratorSettings, generate, generate_with_kinds


def committed_scores(folder: Path) -> list[dict]:
    return list(committed_lines(folder / "scores"))


def drop(directory: Path, name: str, lines: list[bytes]) -> None:
    """Puts a file into a watched directory whole: written under a hidden name, which the source
    skips, then renamed."""
    hidden = directory / f".{name}"
    hidden.write_bytes(b"\n".join(lines) + b"\n")
    hidden.rename(directory / name)


def committed_count(output: Path) -> int:
    """Records committed so far: scored or dead-lettered."""
    return len(committed_scores(output)) + len(list(committed_lines(output / "dead-letters")))


def wait_for_committed(output: Path, count: int, timeout_s: float = 90) -> None:
    """Returns once at least `count` records are committed, or after `timeout_s` (the test's
    assertions then say what is missing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and committed_count(output) < count:
        time.sleep(0.2)


def cancel(client) -> None:
    """Cancels the job and returns once it has ended, so it reads nothing more."""
    ended = client.get_job_execution_result()
    client.cancel().result()
    while not ended.done():
        time.sleep(0.2)


def latest_checkpoint(directory: Path) -> Path:
    """The completed checkpoint with the highest number under `checkpointing.directory` (which holds
    a folder per job id, each with its chk-<number> folders)."""
    completed = [metadata.parent for metadata in directory.glob("*/chk-*/_metadata")]
    return max(completed, key=lambda checkpoint: int(checkpoint.name.removeprefix("chk-")))


def test_files_dropped_into_a_watched_directory_are_scored(tmp_path):
    from streaming.job.run import start_job

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
            drop(incoming, f"batch-{batch}.jsonl", lines)
            time.sleep(1)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(committed_scores(Path(settings.output.path))) < len(expected):
            time.sleep(0.5)
        scores = committed_scores(Path(settings.output.path))
    finally:
        client.cancel().result()
    assert sorted(s["txn_id"] for s in scores) == sorted(expected)


def test_a_job_restored_from_a_checkpoint_reads_no_file_again_and_outputs_every_line_once(tmp_path):
    """The first run is cancelled with one file read and the next half read; the second resumes
    from its last checkpoint with both files still in the directory and a third dropped later."""
    from streaming.job.run import start_job

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    settings = load_settings(LOCAL_PROFILE, [
        "source.kind=directory", f"source.directory={incoming}", "source.discovery_interval_ms=200",
        f"output.path={tmp_path / 'out'}", f"checkpointing.directory={tmp_path / 'checkpoints'}",
        "checkpointing.interval_ms=500", "checkpointing.retain_on_cancel=true",
        "source.max_records_per_second=400",  # second.jsonl takes 5 s or more: cancelled in the middle
    ])
    sizes = {"first.jsonl": 300, "second.jsonl": 2400, "third.jsonl": 300}
    files = {name: list(generate_with_kinds(GeneratorSettings(records=size, seed=201 + n, malformed_share=0.05)))
             for n, (name, size) in enumerate(sizes.items())}
    first_two = sizes["first.jsonl"] + sizes["second.jsonl"]
    output = Path(settings.output.path)

    def drop_generated(name: str) -> None:
        drop(incoming, name, [line for _, line in files[name]])

    first_run = start_job(settings)
    try:
        drop_generated("first.jsonl")
        wait_for_committed(output, sizes["first.jsonl"])
        drop_generated("second.jsonl")
        wait_for_committed(output, sizes["first.jsonl"] + 1)
    finally:
        cancel(first_run)
    committed_by_first_run = committed_count(output)
    assert sizes["first.jsonl"] < committed_by_first_run < first_two, "second.jsonl should be half read"

    second_run = start_job(settings, restore_from=str(latest_checkpoint(tmp_path / "checkpoints")))
    try:
        wait_for_committed(output, first_two)
        drop_generated("third.jsonl")
        wait_for_committed(output, sum(sizes.values()))
        time.sleep(1)  # two more checkpoints: a file read again would be committed by now
    finally:
        cancel(second_run)

    scored = sorted(score["txn_id"] for score in committed_scores(output))
    assert scored == sorted(json.loads(line)["txn_id"] for lines in files.values() for kind, line in lines
                            if kind is None)
    dead_lettered = sorted((letter["source"]["file"], letter["source"]["line"])
                           for letter in committed_lines(output / "dead-letters"))
    assert dead_lettered == sorted((str(incoming / name), number) for name, lines in files.items()
                                   for number, (kind, _) in enumerate(lines, 1) if kind is not None)
