"""`riskstream run` end to end, as a user runs it: a subprocess, from a folder other than the
project's, on the real mini-cluster. Its summary against the committed outputs, its exit codes,
what it does with a previous run's outputs, and the README's "Commands" block as written."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streaming.reporting.outputs import committed_lines, read_run_record, reason_kind
from tests.analytics_reference import analytics_overrides
from tests.cli import PROJECT, assert_one_line_failure, riskstream, shell, tree_bytes
from udfs.generator import GeneratorSettings, generate

LOCAL = str(PROJECT / "conf" / "local.yaml")
FIXTURES = PROJECT / "tests" / "fixtures"


def summary_figures(stdout: str) -> dict[str, str]:
    """The run summary's figures by label, as printed (e.g. {"records read": "3,000", ...})."""
    figures = {}
    for label, pattern in (("records read", r"records read\s+([\d,]+)"), ("scored", r"scored\s+([\d,]+)"),
                           ("keys", r"\((\d+) model keys\)"), ("dead-lettered", r"dead-lettered\s+([\d,]+)"),
                           ("stages", r"by stage: ([^)]*)\)"), ("accounting", r"accounting\s+(.+)"),
                           ("log loss", r"log loss ([\d.]+)"), ("auc", r"ROC AUC ([\d.]+)"),
                           ("labels", r"over ([\d,]+) labels")):
        found = re.search(pattern, stdout)
        assert found is not None, f"no {label!r} in the summary:\n{stdout}"
        figures[label] = found.group(1).strip()
    return figures


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_run_prints_a_summary_that_matches_its_outputs_and_replaces_the_previous_ones(tmp_path):
    lines = list(generate(GeneratorSettings(records=2500, seed=31, malformed_share=0.06)))
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    stale = tmp_path / "out" / "scores" / "scores-stale.jsonl"  # a previous run's output
    stale.parent.mkdir(parents=True)
    stale.write_text('{"txn_id": "old", "score": 0.5, "label": 1, "model_key": "x"}\n')
    stale_report = tmp_path / "out" / "report" / "index.html"  # drawn from the previous run's outputs
    stale_report.parent.mkdir()
    stale_report.write_text("the previous run's report")

    done = riskstream("run", "--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", "output.path=out",
                      "--set", "checkpointing.directory=checkpoints", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    figures = summary_figures(done.stdout)

    out = tmp_path / "out"
    assert not stale.exists() and not (out / ".previous").exists() and not stale_report.exists()
    record = read_run_record(out)
    assert record["profile"] == LOCAL and record["settings"]["source"]["paths"] == [str(tmp_path / "tx.jsonl")]
    scores = list(committed_lines(out / "scores"))
    letters = list(committed_lines(out / "dead-letters"))
    assert number(figures["records read"]) == len(lines)
    assert number(figures["scored"]) == len(scores) and number(figures["dead-lettered"]) == len(letters)
    assert len(scores) + len(letters) == len(lines)
    assert figures["accounting"] == "read = scored + dead-lettered"
    assert number(figures["keys"]) == len({score["model_key"] for score in scores})
    stages = Counter(letter["stage"] for letter in letters)
    assert figures["stages"] == ", ".join(f"{stage} {count}" for stage, count in sorted(stages.items()))
    labelled = [(score["score"], score["label"]) for score in scores if score["label"] is not None]
    assert number(figures["labels"]) == len(labelled)
    loss = -sum(math.log(p if y == 1 else 1 - p) for p, y in labelled) / len(labelled)
    assert abs(float(figures["log loss"]) - loss) < 5e-5
    positives = [p for p, y in labelled if y == 1]
    negatives = [p for p, y in labelled if y == 0]
    auc = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives) / (len(positives) * len(negatives))
    assert abs(float(figures["auc"]) - auc) < 5e-5


def test_a_run_whose_job_fails_keeps_the_previous_outputs_byte_for_byte(tmp_path):
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(generate(GeneratorSettings(records=200, seed=5))) + b"\n")
    previous = tmp_path / "out" / "model-snapshots" / "model-snapshots-0-0.jsonl"
    previous.parent.mkdir(parents=True)
    # A snapshot an earlier run wrote (tests/fixtures/outputs-v1: a valid version-1 line).
    previous.write_bytes((FIXTURES / "outputs-v1" / "model-snapshots.jsonl").read_bytes().splitlines(keepends=True)[0])
    before = tree_bytes(tmp_path / "out")
    (tmp_path / "a-file").write_text("")  # checkpoints cannot go below a file: the job fails as it starts

    done = riskstream("run", "--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", "output.path=out",
                      "--set", "checkpointing.directory=a-file/checkpoints", cwd=tmp_path)
    line = assert_one_line_failure(done, 1, "the job failed", "a-file", "previous outputs kept")
    assert tree_bytes(tmp_path / "out") == before
    log = Path(line.rsplit("details in ", 1)[1])
    assert "a-file" in log.read_text()


def test_a_failed_job_on_a_fresh_output_folder_does_not_speak_of_previous_outputs(tmp_path):
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(generate(GeneratorSettings(records=200, seed=5))) + b"\n")
    (tmp_path / "a-file").write_text("")  # checkpoints cannot go below a file: the job fails as it starts

    done = riskstream("run", "--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", "output.path=out",
                      "--set", "checkpointing.directory=a-file/checkpoints", cwd=tmp_path)
    line = assert_one_line_failure(done, 1, "the job failed", "a-file")
    assert "previous outputs" not in line


def readme_commands() -> list[str]:
    """The commands of the README's "Commands" section, as written."""
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Commands\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_commands_run_as_written(tmp_path):
    """In a folder laid out like the project (its own copy of conf/, so outputs stay in the
    folder; the project's .venv), the README's commands run one after another, as a shell runs them."""
    shutil.copytree(PROJECT / "conf", tmp_path / "conf")
    (tmp_path / ".venv").symlink_to(PROJECT / ".venv")
    commands = readme_commands()
    assert [command.split()[:2] for command in commands] == [
        [".venv/bin/riskstream", "generate"], [".venv/bin/riskstream", "run"], [".venv/bin/riskstream", "model"],
        [".venv/bin/riskstream", "report"]]
    printed = []
    for command in commands:
        done = shell(command, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr[-3000:])
        printed.append(done.stdout)
    generated = number(re.search(r"wrote ([\d,]+) transactions", printed[0]).group(1))
    figures = summary_figures(printed[1])
    assert number(figures["records read"]) == generated
    assert figures["accounting"] == "read = scored + dead-lettered"
    shown = orjson.loads(printed[2])
    latest = max((s for s in committed_lines(tmp_path / "out" / "local" / "model-snapshots")
                  if s["model_key"] == "grocery"), key=lambda s: s["model_updates"])
    assert shown == latest
    index = tmp_path / "out" / "local" / "report" / "index.html"
    assert printed[3].strip().endswith(str(index.resolve())) and index.is_file()
    # The local profile's windowed analytics: the summary counts the committed window lines, and
    # the report draws them.
    windows = sum(1 for _ in committed_lines(tmp_path / "out" / "local" / "analytics"))
    found = re.search(r"analytics\s+([\d,]+) window lines", printed[1])
    assert found is not None and number(found.group(1)) == windows > 0, printed[1]
    assert (index.parent / "analytics_by_group.png").stat().st_size > 10_000


def test_run_prints_its_committed_progress_while_the_job_runs(tmp_path):
    lines = list(generate(GeneratorSettings(records=4000, seed=32, malformed_share=0.05)))
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    done = riskstream("run", "--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", "output.path=out",
                      "--set", "checkpointing.directory=checkpoints", "--set", "source.max_records_per_second=200",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    progress = [(number(scored), number(dead)) for scored, dead in re.findall(
        r"committed so far: ([\d,]+) scored, ([\d,]+) dead-lettered \([\d,]+ records/s\)", done.stdout)]
    assert len(progress) >= 2, done.stdout
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(progress, progress[1:])) and progress[-1][0] > 0
    scores = list(committed_lines(tmp_path / "out" / "scores"))
    letters = list(committed_lines(tmp_path / "out" / "dead-letters"))
    assert progress[-1][0] <= len(scores) and progress[-1][1] <= len(letters)
    assert len(scores) + len(letters) == len(lines)


def test_a_run_shorter_than_its_first_checkpoint_shows_what_it_read_and_writes_its_summary_as_json(tmp_path):
    """Before the first checkpoint nothing is committed: the progress line still says what the
    source has read and what the job has written. With analytics on and no late record, the summary points to no late/ folder.
    --summary-json holds the printed figures, dead letters by reason too, and the throughput is
    over the time the job was reading (the source is held to 120 records/s: about 25 s, so that a
    progress line, every 10 s, comes while it scores and still reads, however long its Python
    workers take to start: the source reads at its ceiling meanwhile)."""
    lines = list(generate(GeneratorSettings(records=3000, seed=34, malformed_share=0.05, mean_gap_ms=50)))
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    analytics = [option for setting in analytics_overrides() for option in ("--set", setting)]
    done = riskstream("run", "--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", "output.path=out",
                      "--set", "checkpointing.directory=checkpoints", "--set", "checkpointing.interval_ms=600000",
                      "--set", "source.max_records_per_second=120", *analytics, "--summary-json", "summary.json",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.strip() == "", done.stderr[-3000:]
    progress = [tuple(map(number, figures)) for figures in re.findall(
        r"read so far: ([\d,]+); written: ([\d,]+) scored, [\d,]+ dead-lettered; committed so far: ([\d,]+) scored",
        done.stdout)]
    assert any(read > 0 and written > 0 and committed == 0 for read, written, committed in progress), done.stdout

    out = tmp_path / "out"
    scores, letters = list(committed_lines(out / "scores")), list(committed_lines(out / "dead-letters"))
    assert not (out / "late").exists()
    assert re.search(r"analytics .* 0 late-record lines \(no late/ written\)", done.stdout), done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    figures = summary_figures(done.stdout)
    assert summary["records_read"] == number(figures["records read"]) == len(lines) == summary["records_in_input"]
    assert (summary["scored"], summary["dead_lettered"]) == (len(scores), len(letters))
    assert summary["reconciled"] and summary["ending"] == "finished" and summary["savepoint"] is None
    assert summary["dead_letters_by_stage"] == dict(sorted(Counter(letter["stage"] for letter in letters).items()))
    assert summary["dead_letters_by_reason"] == dict(Counter(reason_kind(letter["reason"]) for letter in letters))
    assert summary["late_lines"] == 0 and summary["window_lines"] > 0
    # Reading took most of the 25 s the ceiling needs (the source reads ahead at its ceiling while the
    # Python workers start: 1,100 records in one CI run), and start-up (a mini-cluster and its Python
    # workers) is left out.
    assert len(lines) / 120 / 2 <= summary["reading_seconds"] <= summary["wall_seconds"] - 5
    assert summary["records_per_second"] == pytest.approx(len(lines) / summary["reading_seconds"])
    assert re.search(r"throughput .* records/s over [\d.]+ s of reading \([\d.]+ s in all, with start-up\)",
                     done.stdout), done.stdout
