"""`make bench`: the scoring job against single-process Python baselines, on one generated file.

Runs, in one invocation and on the same file (1,000,000 transactions; 100,000 with --quick):
  job, 20 keys      the Riskstream job as `riskstream run` runs it (conf/bench.yaml), keyed by
                    merchant_category;
  job, 100k+ keys   the same, keyed by the pseudonymized account_id;
  River loop        River's LogisticRegression (plain SGD, same rate), one model per key, in one Python
                    process using Riskstream's decode, clean and feature code (own virtual environment);
  Python loop       the same loop with Riskstream's exact sequential SGD;
  low latency       the job with `performance.mode=low_latency`, 20 keys, on a 100,000-record slice.
Prints a table and writes out/bench.json. Job records/s count from the first score written to the last
(scored_at); job_wall_s is the whole run, start-up included. checkpoint_ms is the median checkpoint
duration and state_bytes_per_key the last checkpoint's size divided by the number of keys (both from
Flink's log); peak_rss_mb is the largest summed RSS of the job's whole process tree.
Then Kafka-mode latency (bench/kafka_latency.py) and the failover drill on the session cluster at
200,000 transactions (the failover tests' drill, tests/failover_drill.py): recovery time from each
TaskManager kill to the first new score, and checkpoint durations.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))  # bench.kafka_latency, when run as a script
from streaming.outputs import committed_lines

PROFILE = PROJECT / "conf" / "bench.yaml"
OUT = PROJECT / "out"
CHECKPOINT_LINE = re.compile(r"Completed checkpoint \d+ for job \w+ \((\d+) bytes, checkpointDuration=(\d+) ms")


def ensure_input(records: int) -> Path:
    path = PROJECT / "data" / f"bench-{records}.jsonl"
    if not path.exists():
        subprocess.run([str(PROJECT / ".venv/bin/riskstream"), "generate", "--out", str(path), "--records",
                        str(records), "--accounts", "200000", "--seed", "3"], check=True)
    return path


def tree_rss_bytes(root: int) -> int:
    """Summed resident memory of `root` and all its descendants (0 once `root` has ended)."""
    try:
        process = psutil.Process(root)
        tree = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in tree:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:  # ended meanwhile
            pass
    return total


def run_job(name: str, data: Path, key: str, *overrides: str) -> dict:
    work = OUT / "bench" / name
    log_dir = work / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    command = [str(PROJECT / ".venv/bin/riskstream"), "run", "--config", str(PROFILE),
               "--set", f"source.paths=['{data}']", "--set", f"output.path={work}", "--set", f"model.key={key}"]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "FLINK_LOG_DIR": str(log_dir)}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"job {name} failed:\n{output[-3000:]}")
    first, last, scored, keys = None, None, 0, set()
    for score in committed_lines(work / "scores"):
        scored += 1
        keys.add(score["model_key"])
        at = score["scored_at"]
        first = at if first is None else min(first, at)
        last = at if last is None else max(last, at)
    checkpoints = [(int(size), int(ms)) for log in log_dir.glob("*.log")
                   for size, ms in CHECKPOINT_LINE.findall(log.read_text(errors="replace"))]
    return {
        "records_per_second": scored / ((last - first) / 1000),
        "wall_s": wall,
        "scored": scored,
        "keys": len(keys),
        "checkpoints": len(checkpoints),
        "checkpoint_ms": statistics.median(ms for _, ms in checkpoints) if checkpoints else None,
        "state_bytes_per_key": checkpoints[-1][0] / len(keys) if checkpoints else None,
        "peak_rss_mb": peak / 2**20,
    }


def run_loop(python: Path, learner: str, data: Path, key: str) -> dict:
    out = OUT / "bench" / f"loop-{learner}-{key}.jsonl"
    result = subprocess.run([str(python), str(PROJECT / "bench/loops.py"), "--learner", learner, "--config",
                             str(PROFILE), "--input", str(data), "--key", key, "--out", str(out)],
                            check=True, capture_output=True, text=True, cwd=PROJECT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def failover_bench(records: int = 200_000, records_per_second: int = 5000) -> dict:
    """The failover tests' kill drill on `records` generated transactions (fresh topics, deleted
    afterwards), on the session cluster with the test overrides (started here if none is up, and
    then stopped). Returns recovery seconds per kill point (from the kill that Flink confirmed
    landed there to the first new score), checkpoint durations, the wall time, the number of kills
    (a missed moment is tried again), and whether the committed output held each record exactly once."""
    import tempfile

    from streaming import cluster, kafka_tools
    from streaming.config import load_settings
    from tests import failover_drill
    from udfs.generator import GeneratorSettings, generate

    overrides_of_cluster = cluster.flink_overrides(PROJECT / "conf" / "flink" / "test.yaml")
    local = cluster.LocalCluster.of_project(PROJECT)
    started_cluster = local.up(overrides_of_cluster)
    with tempfile.TemporaryDirectory(dir=PROJECT / "var") as state_dir:
        overrides = [*kafka_tools.isolated_overrides("bench-failover"),
                     *failover_drill.drill_overrides(Path(state_dir), records_per_second)]
        settings = load_settings(failover_drill.CLUSTER_PROFILE, overrides)
        try:
            kafka_tools.create_topics(settings)
            lines = list(generate(GeneratorSettings(records=records, seed=61, malformed_share=0.02)))
            kafka_tools.produce(settings, lines, total=len(lines), key_field=settings.model.key)
            run = failover_drill.run_with_kills(local, overrides, min_attempt_records=records // 40,
                                                taskmanager_overrides=overrides_of_cluster, timeout_s=1200)
            committed = failover_drill.read_committed(settings)
            confirmed = [kill for kill in run.kills if kill.confirmed]
            recovery = recovery_times_s(confirmed, settings)
        finally:
            kafka_tools.delete_topics(settings)
            if started_cluster:
                local.down()
    scores = [score for _, score in committed.scores]
    durations = sorted(run.checkpoint_durations_ms.values())
    return {
        "records": records,
        "source_ceiling_per_subtask": records_per_second,
        "recovery_s": {kill.point: seconds for kill, seconds in zip(confirmed, recovery)},
        "kills": len(run.kills),
        "checkpoint_ms": {"count": len(durations), "median": statistics.median(durations),
                          "max": durations[-1]} if durations else None,
        "wall_s": run.wall_s,
        "restores": run.restores,
        "exactly_once": len({s["txn_id"] for s in scores}) == len(scores)
                        and len(scores) + len(committed.dead_letters) == records,
    }


def recovery_times_s(kills: list, settings) -> list[float]:
    """For each of `kills` (failover_drill.Kill, on the topics of `settings`): seconds from the kill
    to the first score computed after it (scored_at), among all the scores the job wrote, committed
    or not (a later kill may abort the first ones)."""
    from streaming import kafka_tools

    scored_at = sorted(json.loads(value)["scored_at"] for _, _, _, value in kafka_tools.tail(
        settings, settings.kafka.scores_topic, idle_timeout_s=5, committed_only=False))
    times = []
    for kill in kills:
        after = next((t for t in scored_at if t > kill.at_ms), None)
        times.append(float("nan") if after is None else (after - kill.at_ms) / 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description="Riskstream benchmark")
    parser.add_argument("--quick", action="store_true", help="100,000 transactions instead of 1,000,000")
    args = parser.parse_args()
    data = ensure_input(100_000 if args.quick else 1_000_000)
    river_python = PROJECT / ".venv-river/bin/python"
    exact_python = PROJECT / ".venv/bin/python"

    print(f"benchmark on {data.name}", flush=True)
    job20 = run_job("job-20-keys", data, "merchant_category")
    print(f"  job, merchant_category keys: {job20['records_per_second']:,.0f} records/s", flush=True)
    job100k = run_job("job-account-keys", data, "account_id")
    print(f"  job, account_id keys: {job100k['records_per_second']:,.0f} records/s", flush=True)
    # The low-latency setting scores bundles of a few records: its throughput on a 100,000 slice.
    low_latency = run_job("job-20-keys-low-latency", ensure_input(100_000), "merchant_category",
                          "performance.mode=low_latency")
    print(f"  job, low-latency setting: {low_latency['records_per_second']:,.0f} records/s", flush=True)
    river20 = run_loop(river_python, "river", data, "merchant_category")
    river100k = run_loop(river_python, "river", data, "account_id")
    loop20 = run_loop(exact_python, "exact", data, "merchant_category")
    loop100k = run_loop(exact_python, "exact", data, "account_id")

    results = {
        "records": job20["scored"],
        "job_rps_20_keys": job20["records_per_second"],
        "job_rps_100k_keys": job100k["records_per_second"],
        "job_rps_low_latency": low_latency["records_per_second"],
        "keys_20": job20["keys"],
        "keys_100k": job100k["keys"],
        "river_rps": river20["records_per_second"],
        "river_rps_100k_keys": river100k["records_per_second"],
        "python_loop_rps": loop20["records_per_second"],
        "python_loop_rps_100k_keys": loop100k["records_per_second"],
        "ratio_vs_river": job20["records_per_second"] / river20["records_per_second"],
        "ratio_vs_river_100k_keys": job100k["records_per_second"] / river100k["records_per_second"],
        "ratio_vs_python_loop": job20["records_per_second"] / loop20["records_per_second"],
        "job_wall_s": job20["wall_s"],
        "job_wall_s_100k_keys": job100k["wall_s"],
        "state_bytes_per_key": job100k["state_bytes_per_key"],
        "checkpoint_ms": job20["checkpoint_ms"],
        "checkpoint_ms_100k_keys": job100k["checkpoint_ms"],
        "peak_rss_mb": job20["peak_rss_mb"],
        "peak_rss_mb_100k_keys": job100k["peak_rss_mb"],
    }
    from bench.kafka_latency import RATE, kafka_latency

    print(f"kafka latency at {RATE:,} records/s (produce to readable score, read_committed):", flush=True)
    results["kafka_latency_ms"] = kafka_latency()
    print("failover on the session cluster (TaskManager killed three times, exactly-once):", flush=True)
    results["failover"] = failover = failover_bench(200_000 if not args.quick else 50_000)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        ("Riskstream job", job20["records_per_second"], job100k["records_per_second"]),
        ("River loop (one process)", river20["records_per_second"], river100k["records_per_second"]),
        ("Python loop, exact SGD (one process)", loop20["records_per_second"], loop100k["records_per_second"]),
    ]
    print(f"\n{'records/s':<38}{str(job20['keys']) + ' keys':>14}{format(job100k['keys'], ',') + ' keys':>16}")
    for name, small, large in rows:
        print(f"{name:<38}{small:>14,.0f}{large:>16,.0f}")
    print(f"{'job / River':<38}{results['ratio_vs_river']:>14.2f}{results['ratio_vs_river_100k_keys']:>16.2f}")
    print(f"{'job / Python loop':<38}{results['ratio_vs_python_loop']:>14.2f}"
          f"{job100k['records_per_second'] / loop100k['records_per_second']:>16.2f}")
    print(f"{'job wall time, start-up included (s)':<38}{job20['wall_s']:>14.1f}{job100k['wall_s']:>16.1f}")
    print(f"{'median checkpoint (ms)':<38}{job20['checkpoint_ms'] or 0:>14.0f}{job100k['checkpoint_ms'] or 0:>16.0f}")
    print(f"{'state bytes per key (last checkpoint)':<38}{job20['state_bytes_per_key'] or 0:>14,.0f}"
          f"{job100k['state_bytes_per_key'] or 0:>16,.0f}")
    print(f"{'peak RSS, whole process tree (MB)':<38}{job20['peak_rss_mb']:>14,.0f}{job100k['peak_rss_mb']:>16,.0f}")
    print(f"{'job, low-latency setting (records/s)':<38}{low_latency['records_per_second']:>14,.0f}"
          f"{'(100k slice)':>16}")
    print(f"\n{'Kafka latency, ms (2,000 records/s)':<38}{'p50':>14}{'p99':>16}")
    for setting, deliveries in results["kafka_latency_ms"].items():
        for delivery, latency in deliveries.items():
            print(f"{f'{setting}, {delivery}':<38}{latency['p50']:>14,.0f}{latency['p99']:>16,.0f}")
    print(f"\n{'Failover, ' + format(failover['records'], ',') + ' transactions':<38}{'recovery (s)':>14}")
    for point, seconds in failover["recovery_s"].items():
        print(f"{'TaskManager killed ' + point:<38}{seconds:>14.1f}")
    checkpoints = failover["checkpoint_ms"] or {"median": 0, "max": 0, "count": 0}
    print(f"{'checkpoint ms, median / max':<38}{checkpoints['median']:>14,.0f}{checkpoints['max']:>16,.0f}")
    print(f"{'each record exactly once':<38}{str(failover['exactly_once']):>14}")
    print(f"\nwritten to {OUT / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
