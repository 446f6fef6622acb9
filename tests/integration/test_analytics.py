"""Windowed analytics through the real job (a Flink mini-cluster at parallelism 1, 2 and 4, two input
files, one split each) against a plain-Python reference over the same records (tests/analytics_reference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streaming.reporting.outputs import committed_lines, summarize
from tests.analytics_reference import (
    SPECS,
    analytics_overrides,
    delay_event_times,
    emitted_windows,
    expected,
    late_records,
    mismatches,
)
from udfs.generator import GeneratorSettings, generate

from .conftest import run_scoring_job


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda parallelism: f"parallelism-{parallelism}")
def analytics_run(request, tmp_path_factory):
    """An in-order file and one with 8% of its records delayed by up to 40 s (2% malformed), read
    at parallelism 1, 2 and 4: the windows, partitioned by group over the subtasks, and the late
    records are the reference's (so the same) at each."""
    workdir = tmp_path_factory.mktemp(f"analytics-{request.param}")
    in_order = list(generate(GeneratorSettings(records=2_500, seed=11, mean_gap_ms=50)))
    out_of_order = delay_event_times(generate(GeneratorSettings(records=2_500, seed=12, mean_gap_ms=50,
                                                                malformed_share=0.02)),
                                     seed=13, share=0.08, max_delay_ms=40_000)
    late_file = workdir / "out-of-order.jsonl"
    late_file.write_bytes(b"".join(line + b"\n" for line in out_of_order))
    job = run_scoring_job(
        workdir, in_order, f"source.paths=[{json.dumps(str(workdir / 'in-order.jsonl'))}, {json.dumps(str(late_file))}]",
        *analytics_overrides(), f"flink.parallelism={request.param}", file_name="in-order.jsonl")
    out = Path(job.settings.output.path)
    return {"splits": [("in-order", in_order), ("out-of-order", out_of_order)], "scores": job.scores,
            "analytics": list(committed_lines(out / "analytics")), "late": list(committed_lines(out / "late")),
            "summary": summarize(out, 0, 1.0)}


def test_every_window_matches_the_reference_and_the_late_set_is_exact(analytics_run):
    windows, late = expected(analytics_run["splits"], analytics_run["scores"])
    emitted = emitted_windows(analytics_run["analytics"])
    assert emitted.keys() == windows.keys()
    wrong = mismatches(emitted, windows)
    assert not wrong, [(key, emitted[key], windows[key]) for key in wrong[:2]]
    assert late_records(analytics_run["late"]) == late
    assert len(late) > 20 and len(emitted) > 100  # the delayed file does have late records
    for line in analytics_run["analytics"]:
        assert line["window_end"] - line["window_start"] == {spec.name: spec.size_ms for spec in SPECS}[line["window"]]


def test_an_in_order_stream_has_no_late_record(analytics_run):
    in_order = {json.loads(line)["txn_id"] for line in analytics_run["splits"][0][1]}
    assert in_order <= {score["txn_id"] for score in analytics_run["scores"]}
    assert not [line for line in analytics_run["late"] if line["txn_id"] in in_order]


def test_the_run_summary_counts_windows_and_late_records(analytics_run):
    summary = analytics_run["summary"]
    assert (summary.windows, summary.late) == (len(analytics_run["analytics"]), len(analytics_run["late"]))
    assert any(line.startswith("analytics") and f"{summary.late:,} late" in line for line in summary.lines())
