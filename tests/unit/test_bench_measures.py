"""The benchmark's measures (bench/run_bench.py, bench/stages.py): CPU per record from /proc samples
of the job's process tree, and the per-stage profile, on made-up samples and a small generated file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.run_bench import TreeSample, cpu_per_record, process_kind, sample_tree
from bench.stages import stage_profile
from udfs.generator import GeneratorSettings, generate

PROJECT = Path(__file__).resolve().parents[2]


def test_cpu_per_record_counts_from_the_sample_before_the_first_score_to_the_one_before_the_last():
    samples = [TreeSample(1_000, 5.0, 0), TreeSample(2_000, 6.0, 0), TreeSample(3_000, 8.0, 0),
               TreeSample(4_000, 9.5, 0)]
    # Scores at 1.5 s (the first), 2.5 s (x3) and 3.5 s (the last): measured from the 1 s sample to
    # the 3 s one, which saw the first score and the three at 2.5 s, so 4 records for 3 CPU seconds.
    measured = cpu_per_record(samples, [2_500, 1_500, 2_500, 3_500, 2_500])
    assert (measured["core_us_per_record"], measured["startup_cpu_s"], measured["measured_records"]) == \
        (3.0 / 4 * 1e6, 5.0, 4)
    # To the end of the job (labels keep coming after the last score): to the 4 s sample, over all 5.
    assert measured["core_us_per_record_to_end"] == 4.5 / 5 * 1e6
    # ... the sample that saw the most CPU: as the job's processes exit, the tree's sum drops.
    ended = cpu_per_record([*samples, TreeSample(5_000, 2.0, 0)], [2_500, 1_500, 2_500, 3_500, 2_500])
    assert ended["core_us_per_record_to_end"] == 4.5 / 5 * 1e6


def test_cpu_per_record_is_split_by_the_kind_of_process_that_spent_it():
    samples = [TreeSample(1_000, 5.0, 0, {"jvm": 3.0, "python workers": 1.5, "client": 0.5}),
               TreeSample(3_000, 9.0, 0, {"jvm": 5.0, "python workers": 3.5, "client": 0.5})]
    measured = cpu_per_record(samples, [1_500, 2_000, 2_500, 3_000])
    assert measured["core_us_per_record_by_kind"] == {"jvm": 0.5e6, "python workers": 0.5e6, "client": 0.0}
    assert sum(measured["core_us_per_record_by_kind"].values()) == measured["core_us_per_record"]


@pytest.mark.parametrize("command_line, kind", [
    (["/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "-Xmx1g", "org.apache.flink.Main"], "jvm"),
    (["/work/.venv/bin/python", "-m", "pyflink.fn_execution.beam.beam_boot", "--id=1-1"], "python workers"),
    (["/work/.venv/bin/python", "/work/.venv/bin/riskstream", "run", "--config", "conf/bench.yaml"], "client"),
])
def test_each_process_of_the_jobs_tree_is_told_apart_by_its_command_line(command_line, kind):
    assert process_kind(command_line) == kind


def test_cpu_per_record_of_a_run_too_short_to_sample_says_so_instead_of_dividing_by_zero():
    measured = cpu_per_record([TreeSample(1_000, 5.0, 0)], [1_500, 1_600])
    assert measured["core_us_per_record"] is None and measured["measured_records"] == 0


def test_a_process_tree_sample_sees_the_cpu_its_children_spend():
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        before = sample_tree(os.getpid())
        deadline_cpu = before.cpu_s + 0.4  # the child spins for 0.5 s of CPU
        for _ in range(100):
            now = sample_tree(os.getpid())
            if now.cpu_s >= deadline_cpu:
                break
            time.sleep(0.05)
        assert now.cpu_s >= deadline_cpu, (before, now)
        assert now.rss_bytes > 0
    finally:
        child.kill()
        child.wait()


def test_the_stage_profile_times_every_stage_of_a_stream_with_malformed_records(tmp_path):
    data = tmp_path / "tx.jsonl"
    data.write_bytes(b"\n".join(generate(GeneratorSettings(records=2_000, seed=5, malformed_share=0.3))) + b"\n")
    stages = stage_profile(PROJECT / "conf" / "bench.yaml", data, "merchant_category")
    assert list(stages) == ["decode_parse_clean", "features", "model", "output"]
    assert all(microseconds > 0 for microseconds in stages.values()), stages


def test_sample_tree_of_an_ended_process_is_none():
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert sample_tree(ended.pid) is None


def test_a_sample_counts_the_processes_named_beside_the_tree_as_the_broker():
    # The parent is not in this process's tree: its CPU and memory count only when named.
    alone = sample_tree(os.getpid())
    taken = sample_tree(os.getpid(), also=[os.getppid()])
    assert "broker" not in alone.cpu_s_by_kind
    assert taken.rss_bytes_by_kind["broker"] > 0 and taken.rss_bytes > alone.rss_bytes
    assert taken.cpu_s == pytest.approx(sum(taken.cpu_s_by_kind.values()))


def test_the_global_models_stage_profile_times_its_share_of_the_scoring_operator(tmp_path):
    from bench.global_bench import GLOBAL_ON, global_stage_profile

    data = tmp_path / "tx.jsonl"
    data.write_bytes(b"\n".join(generate(GeneratorSettings(records=3_000, seed=5, malformed_share=0.1))) + b"\n")
    # Keyed by account every shard gets records, so synchronous rounds complete and versions come back.
    stages = global_stage_profile(PROJECT / "conf" / "bench.yaml", data, "account_id", GLOBAL_ON)
    versions = stages.pop("versions")
    assert list(stages) == ["key_model", "blend", "keep", "partials", "aggregate"]
    assert all(microseconds > 0 for microseconds in stages.values()), stages
    assert versions >= 2  # version 0 and at least one round's


def test_the_profile_counts_samples_in_the_projects_code_and_names_the_busiest_functions(tmp_path):
    """py-spy for real on a process that spends its time in a function of a `udfs/` file (as the
    project's are named) and a little in one elsewhere."""
    from bench.profile_summary import PY_SPY, _collapsed_stacks, _summarize

    (tmp_path / "udfs").mkdir()
    (tmp_path / "udfs" / "work.py").write_text(
        "import time\n"
        "def busy(seconds):\n"
        "    end = time.perf_counter() + seconds\n"
        "    while time.perf_counter() < end:\n"
        "        sum(range(1000))\n")
    (tmp_path / "main.py").write_text(
        "import time\n"
        "from udfs.work import busy\n"
        "def framework(seconds):\n"
        "    end = time.perf_counter() + seconds\n"
        "    while time.perf_counter() < end:\n"
        "        sum(range(1000))\n"
        "while True:\n"
        "    busy(0.09)\n"
        "    framework(0.01)\n")
    worker = subprocess.Popen([sys.executable, "main.py"], cwd=tmp_path)
    try:
        time.sleep(0.5)
        recorded = tmp_path / "py.txt"
        subprocess.run([str(PY_SPY), "record", "--pid", str(worker.pid), "--duration", "2", "--rate", "200",
                        "--format", "raw", "--full-filenames", "--nonblocking", "--output", str(recorded)],
                       check=True, capture_output=True, timeout=60)
    finally:
        worker.kill()
        worker.wait()
    summary = _summarize(_collapsed_stacks(recorded.read_text()), lambda frame: "/udfs/" in frame, top=3)
    assert summary["samples"] >= 100
    assert 0.75 < summary["riskstream_share"] < 0.97
    leaf, share = summary["top"][0]
    assert leaf.startswith("busy (") and leaf.endswith("udfs/work.py)") and share > 0.75
    assert any(leaf.startswith("framework (") for leaf, _ in summary["top"])
