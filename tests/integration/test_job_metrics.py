"""The job's own Flink metrics on the session cluster: once everything read is committed, the
counters `riskstream status` reads from the REST API equal the committed outputs, the gauges equal
figures computed from those outputs, and the Prometheus reporter serves the same counters."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import yaml

from streaming.cli import main
from streaming.ops import local_cluster, rest
from streaming.reporting.outputs import committed_lines, committed_parts
from tests.analytics_reference import analytics_overrides, delay_event_times
from tests.integration.conftest import LOCAL_PROFILE, PROJECT
from udfs.generator import GeneratorSettings, generate
from udfs.live_metrics import RECENT_LABELLED
from udfs.metrics import log_loss


def prometheus_ports() -> range:
    """The ports the cluster's Prometheus reporters may take (conf/flink/config.yaml)."""
    conf = yaml.safe_load((PROJECT / "conf" / "flink" / "config.yaml").read_text(encoding="utf-8"))
    first, _, last = str(conf["metrics"]["reporter"]["prom"]["port"]).partition("-")
    return range(int(first), int(last or first) + 1)


def drop(directory: Path, name: str, lines: list[bytes]) -> None:
    """Puts a file into a watched directory whole: written under a hidden name, which the source
    skips, then renamed."""
    hidden = directory / f".{name}"
    hidden.write_bytes(b"\n".join(lines) + b"\n")
    hidden.rename(directory / name)


def status(rest_address: str, job_id: str, capsys) -> dict:
    """What `riskstream status <job_id>` prints, parsed."""
    assert main(["status", job_id, "--set", f"flink.rest_address={rest_address}"]) == 0
    return json.loads(capsys.readouterr().out)


def scores_by_subtask(folder: Path) -> list[list[dict]]:
    """Each scoring subtask's committed scores in the order it wrote them. The scores sink is chained
    to the scoring operator (one task), and each sink subtask names its part files
    `scores-<its own id>-<part number>.jsonl`."""
    parts: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for part in committed_parts(folder):
        writer, number = re.fullmatch(r"scores-(.+)-(\d+)\.jsonl", part.name).groups()
        parts[writer].append((int(number), part))
    return [[orjson.loads(line) for _, part in sorted(numbered) for line in part.read_bytes().splitlines() if line]
            for numbered in parts.values()]


def prometheus_sum(job_id: str, metric: str) -> float | None:
    """The sum over subtasks of `metric` for this job, as the cluster's Prometheus reporters serve
    it (each JobManager and TaskManager takes a port of the configured range); None if none serves it."""
    total, found = 0.0, False
    for port in prometheus_ports():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                text = answer.read().decode("utf-8")
        except OSError:  # nothing listens there
            continue
        for line in text.splitlines():
            if line.startswith(metric + "{") and f'job_id="{job_id}"' in line:
                total += float(line.rsplit(" ", 1)[1])
                found = True
    return total if found else None


def test_the_metrics_equal_the_committed_outputs(session_cluster, tmp_path, capsys):
    # Some event times delayed, so that windowed analytics (on here) find late records.
    lines = delay_event_times(generate(GeneratorSettings(records=3000, seed=61, malformed_share=0.06,
                                                         unlabelled_share=0.1)), seed=62, share=0.05, max_delay_ms=60_000)
    incoming, output = tmp_path / "incoming", tmp_path / "out"
    incoming.mkdir()
    drop(incoming, "transactions.jsonl", lines)
    rest_url = session_cluster.cluster.rest_url
    rest_address = rest_url.removeprefix("http://")
    # A watched directory: the job keeps running once it has read the file, so its tasks, and the
    # metrics they report, are still there when the test reads them.
    overrides = ["source.kind=directory", f"source.directory={incoming}", "source.discovery_interval_ms=200",
                 f"output.path={output}", f"checkpointing.directory={tmp_path / 'checkpoints'}",
                 "checkpointing.interval_ms=500", "source.max_records_per_second=600",
                 f"flink.rest_address={rest_address}", *analytics_overrides(),
                 # One file: the source subtask without it holds the watermark back until it counts as idle.
                 "event_time.transactions.idleness_ms=2000"]
    job_id = local_cluster.submit(session_cluster.cluster, local_cluster.submit_command(LOCAL_PROFILE, rest_address, overrides))
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            committed = (len(list(committed_lines(output / "scores")))
                         + len(list(committed_lines(output / "dead-letters"))))
            figures = status(rest_address, job_id, capsys)["metrics"]
            if committed == len(lines) and figures.get("records_read") == len(lines) and \
                    figures.get("scored", 0) + figures.get("dead_lettered", {}).get("total", 0) == len(lines):
                break
            time.sleep(0.5)
        printed = status(rest_address, job_id, capsys)
        prometheus = {name: prometheus_sum(job_id, f"flink_taskmanager_job_task_operator_riskstream_{name}")
                      for name in ("records_read", "scored", "stage_dead_lettered")}
    finally:
        rest.cancel(rest_url, job_id)

    assert printed["state"] == "RUNNING"
    figures = printed["metrics"]
    scores = list(committed_lines(output / "scores"))
    letters = list(committed_lines(output / "dead-letters"))
    assert len(scores) + len(letters) == len(lines), "not everything was committed in time"
    stages = Counter(letter["stage"] for letter in letters)
    assert figures["records_read"] == len(lines)
    assert figures["scored"] == len(scores)
    assert figures["dead_lettered"] == {**stages, "total": len(letters)}
    assert len(stages) == 4  # decode, parse, clean and features: each stage's counter is checked
    assert figures["model_keys"] == len({score["model_key"] for score in scores})
    assert figures["late"] == len(list(committed_lines(output / "late"))) > 0

    # The gauges of the recent log loss: each subtask's last RECENT_LABELLED labelled scores,
    # pooled; micro-units lose at most 0.5e-6 per subtask.
    subtasks = scores_by_subtask(output / "scores")
    assert len(subtasks) == 2 and sum(map(len, subtasks)) == len(scores)
    recent = [[(s["score"], s["label"]) for s in written if s["label"] is not None][-RECENT_LABELLED:]
              for written in subtasks]
    assert figures["recent_labelled"] == sum(map(len, recent))
    pooled = sum(len(pairs) * log_loss(*map(list, zip(*pairs))) for pairs in recent if pairs) / sum(map(len, recent))
    assert math.isclose(figures["recent_log_loss"], pooled, abs_tol=1e-6), (figures["recent_log_loss"], pooled)

    # The Prometheus reporters serve the same counters (the dead letters as one metric with a stage label).
    assert prometheus == {"records_read": len(lines), "scored": len(scores), "stage_dead_lettered": len(letters)}
