"""`riskstream run` end to end, as a user runs it: a subprocess, from a folder other than the
project's, on the real mini-cluster. Its summary against the committed outputs, its exit codes,
what it does with a previous run's outputs, and the README's "Commands" block as written."""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from pathlib import Path

import orjson

from streaming.reporting.outputs import committed_lines, read_run_record
from tests.cli import PROJECT, assert_one_line_failure, riskstream, shell, tree_bytes
from udfs.generator import GeneratorSettings, generate

LOCAL = str(PROJECT / "conf" / "local.yaml")


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
    previous.write_text('{"model_key": "grocery", "model_updates": 3, "bias": 0.1, "weights": {}}\n')
    before = tree_bytes(tmp_path / "out")
    (tmp_path / "a-file").write_text("")  # checkpoints cannot go below a file: the job fails as it starts

    done = riskstream("run", "--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", "output.path=out",
                      "--set", "checkpointing.directory=a-file/checkpoints", cwd=tmp_path)
    line = assert_one_line_failure(done, 1, "the job failed", "a-file", "previous outputs kept")
    assert tree_bytes(tmp_path / "out") == before
    log = Path(line.rsplit("details in ", 1)[1])
    assert "a-file" in log.read_text()


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
