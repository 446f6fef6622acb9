"""`make bench`: the scoring job against single-process Python baselines, on one generated file.

Runs, in one invocation and on the same file (1,000,000 transactions; 100,000 with --quick):
  job, 20 keys      the Riskstream job as `riskstream run` runs it (conf/bench.yaml), keyed by
                    merchant_category;
  job, 100k+ keys   the same, keyed by the pseudonymized account_id;
  River loop        River's LogisticRegression (plain SGD, same rate), one model per key, in one Python
                    process using Riskstream's decode, clean and feature code (own virtual environment);
  Python loop       the same loop with Riskstream's exact sequential SGD;
  low latency       the job with `performance.mode=low_latency`, 20 keys;
  thread mode       the 20-key job with `flink.python_execution_mode=thread` (in every round).
Prints a table and writes out/bench.json. Job records/s count from the first score written to the last
(scored_at); job_wall_s is the whole run, start-up included. CPU per record (core-µs) is user + system
time of the job's whole process tree (the JVM and every Python worker), from /proc snapshots taken
every 0.1 s: the last before the first score and the last before the last score, divided by the
records scored between them; the CPU spent before the first score is start-up, reported apart. The
loops report their own process's CPU over the loop. The per-stage profile (bench/stages.py) times
each stage of the record code in one process on the same file; the framework's share is the job's
CPU per record minus the sum of the stages. `--repeat N` runs the 20-key job and loops N times,
interleaved, and reports medians; `--only PART` runs one part (jobs, loops, stages, analytics, global,
kafka, failover, labels); `--records N` generates and uses a file of N transactions. `global`
(bench/global_bench.py) runs the job with the global model off and on (`--global-on` replaces the
overrides that turn it on), alternating in every round, Kafka output on both sides and the broker's
CPU counted, for issue 26's target (on / off records/s at least 0.8), on 200,000 transactions unless
--records or --quick says. `analytics` runs the 20-key job with windowed analytics on (its default windows and
groups) beside the same job with them off, in every round, for what analytics add per record.
`labels` likewise runs the 20-key job learning from the file's label stream (labels.mode stream;
generated once beside it, labels one minute to a week after their transactions; state in RocksDB,
checkpointed incrementally, as conf/labels.yaml keeps it) beside the inline
job; as labels keep coming after the last score, both are measured from the first score to the
end of the job (core_us_per_record_to_end), and a logged transaction's state is the difference of
the two jobs' largest checkpoints divided by the records. checkpoint_ms is the median checkpoint
duration and state_bytes_per_key the last checkpoint's size divided by the number of keys (both from
Flink's log); peak_rss_mb is the largest summed RSS of the job's whole process tree.
`profile` runs the 20-key job once more with py-spy on its Python workers and JFR in its JVM for
10 s of its scoring (bench/profile_summary.py): the share of samples in Riskstream's own code and the
top leaf functions on each side, for where the framework's time goes.
Then Kafka-mode latency (bench/kafka_latency.py) and the failover drill on the session cluster at
200,000 transactions (the failover tests' drill, streaming/ops/drill.py): recovery time from each
TaskManager kill to the first new score, and checkpoint durations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Sequence

import psutil

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))  # bench.kafka_latency, when run as a script
from streaming.reporting.outputs import committed_lines  # noqa: E402 (after the path is set)

if TYPE_CHECKING:
    from bench.profile_summary import JobProfiler

PROFILE = PROJECT / "conf" / "bench.yaml"
OUT = PROJECT / "out"
CHECKPOINT_LINE = re.compile(r"Completed checkpoint \d+ for job \w+ \((\d+) bytes, checkpointDuration=(\d+) ms")


def ensure_labels(data: Path) -> Path:
    """The label stream of the transactions in `data`, generated once beside it."""
    from udfs.label_generator import LabelStreamSettings, generate_labels

    path = data.with_name(data.stem + "-labels.jsonl")
    if not path.exists():
        settings = LabelStreamSettings(seed=3, min_delay_ms=60_000, max_delay_ms=7 * 86_400_000)
        with open(data, "rb") as transactions, open(path.with_suffix(".partial"), "wb") as out:
            for line in generate_labels((line.rstrip(b"\n") for line in transactions), settings):
                out.write(line + b"\n")
        path.with_suffix(".partial").replace(path)
    return path


def ensure_input(records: int) -> Path:
    path = PROJECT / "data" / f"bench-{records}.jsonl"
    if not path.exists():
        subprocess.run([str(PROJECT / ".venv/bin/riskstream"), "generate", "--out", str(path), "--records",
                        str(records), "--accounts", "200000", "--seed", "3"], check=True)
    return path


class TreeSample(NamedTuple):
    at_ms: int  # wall clock, epoch ms, comparable with the scores' scored_at
    cpu_s: float  # user + system seconds of every process of the tree, from /proc
    rss_bytes: int  # summed resident memory of the tree
    cpu_s_by_kind: dict[str, float] = {}  # cpu_s split into "jvm", "python workers" and "client"
    rss_bytes_by_kind: dict[str, int] = {}  # rss_bytes split the same way


def process_kind(command_line: list[str]) -> str:
    """What a process of the job's tree is: the JVM, a Python worker (Beam's boot process and the
    worker it starts), or the client (`riskstream run` and anything else). In thread mode the
    Python code runs inside the JVM, so its CPU counts as the JVM's."""
    if command_line and command_line[0].endswith("java"):
        return "jvm"
    if any("pyflink.fn_execution" in argument for argument in command_line):
        return "python workers"
    return "client"


def sample_tree(root: int, also: Sequence[int] = ()) -> TreeSample | None:
    """CPU and memory of `root` and all its descendants (the JVM and every Python worker), read
    from /proc by psutil, and of the processes `also` (e.g. the Kafka broker the job writes to),
    counted as kind "broker"; None once `root` has ended."""
    try:
        process = psutil.Process(root)
        tree = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    others = set()
    for pid in also:
        try:
            others.add(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    cpu, rss, by_kind = 0.0, 0, {"jvm": 0.0, "python workers": 0.0, "client": 0.0, **({"broker": 0.0} if also else {})}
    rss_by_kind = dict.fromkeys(by_kind, 0)
    for member in [*tree, *others]:
        try:
            with member.oneshot():
                times = member.cpu_times()
                resident = member.memory_info().rss
                kind = "broker" if member in others else process_kind(member.cmdline())
        except psutil.NoSuchProcess:  # ended meanwhile
            continue
        rss += resident
        rss_by_kind[kind] += resident
        cpu += times.user + times.system
        by_kind[kind] += times.user + times.system
    return TreeSample(time.time_ns() // 1_000_000, cpu, rss, by_kind, rss_by_kind)


def cpu_per_record(samples: list[TreeSample], scored_at: list[int]) -> dict:
    """Core-µs per record between the first and the last score: the tree's CPU at the last sample
    taken before the first score and at the last sample taken before the last score, divided by the
    records scored between those two samples. Start-up CPU (to the first sample) is reported apart."""
    scored_at = sorted(scored_at)
    before_first = [s for s in samples if s.at_ms <= scored_at[0]] or samples[:1]
    before_last = [s for s in samples if s.at_ms <= scored_at[-1]]
    start, end = before_first[-1], before_last[-1]
    records = sum(1 for at in scored_at if start.at_ms < at <= end.at_ms)
    if not records:
        return {"core_us_per_record": None, "core_us_per_record_by_kind": {}, "startup_cpu_s": start.cpu_s,
                "measured_records": 0, "core_us_per_record_to_end": None}
    # To the end: from the same first sample to the one that saw the most CPU (as the job ends its
    # processes exit, and their CPU leaves the tree's sum), over every record scored after it.
    to_end = sum(1 for at in scored_at if start.at_ms < at)
    most = max(samples, key=lambda taken: taken.cpu_s)
    return {"core_us_per_record": (end.cpu_s - start.cpu_s) / records * 1e6,
            "core_us_per_record_to_end": (most.cpu_s - start.cpu_s) / to_end * 1e6,
            "core_us_per_record_by_kind": {kind: (end.cpu_s_by_kind[kind] - start.cpu_s_by_kind.get(kind, 0.0))
                                           / records * 1e6 for kind in end.cpu_s_by_kind},
            "startup_cpu_s": start.cpu_s, "measured_records": records}


def run_job(name: str, data: Path, key: str, *overrides: str, checkout: Path = PROJECT,
            scores: Callable[[], Iterable[dict]] | None = None, also: Sequence[int] = (),
            profiler: "JobProfiler | None" = None) -> dict:
    """The job on `data` keyed by `key`, measured. `checkout`: another checkout of the project (a
    baseline commit, its jars built) whose code runs instead, with this project's environment.
    `scores`: reads the run's committed scores once it ended (None: the file sink's folder; a
    Kafka-output run reads its topic); `also`: processes measured with the job's tree (sample_tree);
    `profiler`: attached to the job's tree while it runs (bench/profile_summary.py)."""
    work = OUT / "bench" / name
    log_dir = work / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    command = [str(PROJECT / ".venv/bin/python"), "-m", "streaming.cli", "run",
               "--config", str(checkout / PROFILE.relative_to(PROJECT)),
               "--set", f"source.paths=['{data}']", "--set", f"output.path={work}", "--set", f"model.key={key}"]
    for override in overrides:
        command += ["--set", override]
    # PYTHONPATH puts the checkout's code before the installed project's, in the client and in the
    # Python workers, which inherit it.
    env = {**os.environ, "FLINK_LOG_DIR": str(log_dir), "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=checkout)
    samples: list[TreeSample] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            taken = sample_tree(process.pid, also)
            if taken is not None:
                samples.append(taken)
                if profiler is not None:
                    profiler.attach(process.pid)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"job {name} failed:\n{output[-3000:]}")
    scored_at, keys = [], set()
    for score in committed_lines(work / "scores") if scores is None else scores():
        keys.add(score["model_key"])
        scored_at.append(score["scored_at"])
    first, last, scored = min(scored_at), max(scored_at), len(scored_at)
    windows = sum(1 for _ in committed_lines(work / "analytics"))
    late = sum(1 for _ in committed_lines(work / "late"))
    checkpoints = [(int(size), int(ms)) for log in log_dir.glob("*.log")
                   for size, ms in CHECKPOINT_LINE.findall(log.read_text(errors="replace"))]
    return {
        "records_per_second": scored / ((last - first) / 1000),
        "wall_s": wall,
        "scored": scored,
        "keys": len(keys),
        "windows": windows,
        "late": late,
        "checkpoints": len(checkpoints),
        "checkpoint_ms": statistics.median(ms for _, ms in checkpoints) if checkpoints else None,
        "state_bytes_per_key": checkpoints[-1][0] / len(keys) if checkpoints else None,
        "max_checkpoint_bytes": max(size for size, _ in checkpoints) if checkpoints else None,
        "labels_applied": sum(1 for _ in committed_lines(work / "learning")),
        "labels_dead_lettered": sum(1 for _ in committed_lines(work / "label-dead-letters")),
        "peak_rss_mb": max(taken.rss_bytes for taken in samples) / 2**20,
        "peak_rss_mb_by_kind": {kind: max(taken.rss_bytes_by_kind.get(kind, 0) for taken in samples) / 2**20
                                for kind in samples[-1].rss_bytes_by_kind},
        **cpu_per_record(samples, scored_at),
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

    from streaming.config import load_settings
    from streaming.ops import drill as failover_drill
    from streaming.ops import kafka_tools, local_cluster
    from udfs.generator import GeneratorSettings, generate

    overrides_of_cluster = local_cluster.flink_overrides(PROJECT / "conf" / "flink" / "test.yaml")
    local = local_cluster.LocalCluster.of_project(PROJECT)
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
    from streaming.ops import kafka_tools

    scored_at = sorted(json.loads(value)["scored_at"] for _, _, _, value in kafka_tools.tail(
        settings, settings.kafka.scores_topic, idle_timeout_s=5, committed_only=False))
    times = []
    for kill in kills:
        after = next((t for t in scored_at if t > kill.at_ms), None)
        times.append(float("nan") if after is None else (after - kill.at_ms) / 1000)
    return times


PARTS = ("jobs", "loops", "stages", "analytics", "dedup", "global", "kafka", "failover", "labels", "profile")


def main() -> int:
    parser = argparse.ArgumentParser(description="Riskstream benchmark")
    parser.add_argument("--quick", action="store_true", help="100,000 transactions instead of 1,000,000")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the 20-key job and both 20-key loops (and the global part's rounds) this many times, "
                             "interleaved, and report medians")
    parser.add_argument("--only", choices=PARTS, action="append",
                        help="run only this part (repeatable): jobs, loops, stages, analytics, dedup, global, kafka, "
                             "failover, labels or profile")
    parser.add_argument("--records", type=int,
                        help="transactions in the generated file (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--global-on", action="append", metavar="KEY=VALUE",
                        help="the overrides that turn the global model on in the global part (repeatable; default: "
                             "bench/global_bench.py's GLOBAL_ON, model.blend=global)")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of an earlier commit with its jars built (docs/benchmark.md): its 20-key "
                             "job (and, with the labels part, its label-stream job) runs in every round too, "
                             "interleaved with this one's")
    args = parser.parse_args()
    parts = set(args.only or PARTS)
    records = args.records or (100_000 if args.quick else 1_000_000)
    data = ensure_input(records)
    river_python = PROJECT / ".venv-river/bin/python"
    exact_python = PROJECT / ".venv/bin/python"
    results: dict = {"records_in_file": records, "repeat": args.repeat}

    print(f"benchmark on {data.name}", flush=True)
    # The 20-key job and loops, interleaved when repeated, so that a noisy machine affects all alike.
    rounds = []
    for round_number in range(args.repeat):
        measured = {}
        if parts & {"jobs", "analytics", "dedup", "labels"}:
            measured["job"] = run_job("job-20-keys", data, "merchant_category")
        if "dedup" in parts:  # the job above de-duplicates by txn_id (dedup.horizon_ms, on by default)
            measured["dedup-off"] = run_job("job-20-keys-dedup-off", data, "merchant_category", "dedup.horizon_ms=0")
            # De-duplication needs the transactions' watermarks, which turn event time on; with
            # analytics on both jobs have them, so this pair shows the de-duplication itself.
            measured["dedup-with-analytics"] = run_job("job-20-keys-dedup-analytics", data, "merchant_category",
                                                       "analytics.enabled=true")
            measured["dedup-off-with-analytics"] = run_job("job-20-keys-dedup-off-analytics", data, "merchant_category",
                                                           "analytics.enabled=true", "dedup.horizon_ms=0")
        if "analytics" in parts:
            measured["analytics"] = run_job("job-20-keys-analytics", data, "merchant_category", "analytics.enabled=true")
        if "labels" in parts:
            # State in RocksDB, checkpointed incrementally, as conf/labels.yaml keeps it.
            label_stream = ("labels.mode=stream", f"labels.source={{kind: files, paths: ['{ensure_labels(data)}']}}",
                            "checkpointing.state_backend=rocksdb", "checkpointing.incremental=true")
            measured["labels"] = run_job("job-20-keys-labels", data, "merchant_category", *label_stream)
            if args.baseline:
                measured["baseline-labels"] = run_job("baseline-20-keys-labels", data, "merchant_category",
                                                      *label_stream, checkout=args.baseline.resolve())
        if "jobs" in parts:
            # Thread mode (PEMJA): the Python functions run in the TaskManager's JVM, one interpreter
            # for all of them, instead of in worker processes over gRPC.
            measured["thread"] = run_job("job-20-keys-thread", data, "merchant_category",
                                         "flink.python_execution_mode=thread")
            if args.baseline:
                measured["baseline"] = run_job("baseline-20-keys", data, "merchant_category",
                                               checkout=args.baseline.resolve())
        if "loops" in parts:
            measured["river"] = run_loop(river_python, "river", data, "merchant_category")
            measured["exact"] = run_loop(exact_python, "exact", data, "merchant_category")
        if measured:
            print(f"  round {round_number + 1}: " + ", ".join(
                f"{name} {m['records_per_second']:,.0f} records/s, {m['core_us_per_record']:.1f} core-µs/record"
                for name, m in measured.items()), flush=True)
        rounds.append(measured)
    median = {name: {field: statistics.median(r[name][field] for r in rounds)
                     for field in ("records_per_second", "core_us_per_record")} for name in rounds[0]}
    large = {}
    if "jobs" in parts:
        job100k = run_job("job-account-keys", data, "account_id")
        # The low-latency setting's throughput, on the same file as the throughput setting's.
        low_latency = run_job("job-20-keys-low-latency", data, "merchant_category", "performance.mode=low_latency")
        large["job"] = job100k
        job20 = rounds[-1]["job"]
        results.update({
            "records": job20["scored"], "keys_20": job20["keys"], "keys_100k": job100k["keys"],
            "job_rps_20_keys": median["job"]["records_per_second"],
            "job_rps_100k_keys": job100k["records_per_second"],
            "job_rps_low_latency": low_latency["records_per_second"],
            "job_rps_thread_mode": median["thread"]["records_per_second"],
            "job_core_us_per_record_thread_mode": median["thread"]["core_us_per_record"],
            "job_core_us_per_record": median["job"]["core_us_per_record"],
            "job_core_us_per_record_100k_keys": job100k["core_us_per_record"],
            "job_core_us_per_record_low_latency": low_latency["core_us_per_record"],
            # From the last round, not a median.
            "job_core_us_per_record_by_kind": job20["core_us_per_record_by_kind"],
            "job_core_us_per_record_by_kind_100k_keys": job100k["core_us_per_record_by_kind"],
            "job_startup_cpu_s": job20["startup_cpu_s"],
            "job_wall_s": job20["wall_s"], "job_wall_s_100k_keys": job100k["wall_s"],
            "state_bytes_per_key": job100k["state_bytes_per_key"],
            "checkpoint_ms": job20["checkpoint_ms"], "checkpoint_ms_100k_keys": job100k["checkpoint_ms"],
            "peak_rss_mb": job20["peak_rss_mb"], "peak_rss_mb_100k_keys": job100k["peak_rss_mb"],
            "peak_rss_mb_by_kind": job20["peak_rss_mb_by_kind"],
            "peak_rss_mb_by_kind_100k_keys": job100k["peak_rss_mb_by_kind"],
        })
    if "loops" in parts:
        large["river"] = run_loop(river_python, "river", data, "account_id")
        large["exact"] = run_loop(exact_python, "exact", data, "account_id")
        results.update({
            "river_rps": median["river"]["records_per_second"],
            "river_rps_100k_keys": large["river"]["records_per_second"],
            "python_loop_rps": median["exact"]["records_per_second"],
            "python_loop_rps_100k_keys": large["exact"]["records_per_second"],
            "river_core_us_per_record": median["river"]["core_us_per_record"],
            "python_loop_core_us_per_record": median["exact"]["core_us_per_record"],
        })
    if "analytics" in parts:
        results.update({
            "analytics_rps": median["analytics"]["records_per_second"],
            "analytics_core_us_per_record": median["analytics"]["core_us_per_record"],
            "analytics_off_core_us_per_record": median["job"]["core_us_per_record"],
            "analytics_added_core_us_per_record": (median["analytics"]["core_us_per_record"]
                                                   - median["job"]["core_us_per_record"]),
            "analytics_windows": rounds[-1]["analytics"]["windows"],
            "analytics_late": rounds[-1]["analytics"]["late"],
        })
    if "dedup" in parts:
        results.update({
            "dedup_core_us_per_record": median["job"]["core_us_per_record"],
            "dedup_off_core_us_per_record": median["dedup-off"]["core_us_per_record"],
            "dedup_added_core_us_per_record": (median["job"]["core_us_per_record"]
                                               - median["dedup-off"]["core_us_per_record"]),
            "dedup_added_core_us_per_record_with_analytics": (
                median["dedup-with-analytics"]["core_us_per_record"]
                - median["dedup-off-with-analytics"]["core_us_per_record"]),
        })
    if "labels" in parts:
        to_end = {name: statistics.median(r[name]["core_us_per_record_to_end"] for r in rounds)
                  for name in ("job", "labels")}
        last = rounds[-1]
        results.update({
            "labels_rps": median["labels"]["records_per_second"],
            "labels_core_us_per_record_to_end": to_end["labels"],
            "labels_off_core_us_per_record_to_end": to_end["job"],
            "labels_added_core_us_per_record": to_end["labels"] - to_end["job"],
            "labels_applied": last["labels"]["labels_applied"],
            "labels_dead_lettered": last["labels"]["labels_dead_lettered"],
            "labels_state_bytes_per_transaction": (last["labels"]["max_checkpoint_bytes"]
                                                   - last["job"]["max_checkpoint_bytes"]) / last["labels"]["scored"],
            "labels_checkpoint_ms": statistics.median(r["labels"]["checkpoint_ms"] for r in rounds),
            "labels_core_us_per_record_by_kind": {
                kind: statistics.median(r["labels"]["core_us_per_record_by_kind"].get(kind, 0.0) for r in rounds)
                for kind in last["labels"]["core_us_per_record_by_kind"]},
            "labels_peak_rss_mb": statistics.median(r["labels"]["peak_rss_mb"] for r in rounds),
        })
    if "stages" in parts:
        from bench.stages import stage_profile

        results["stage_us"] = {"merchant_category": stage_profile(PROFILE, data, "merchant_category"),
                               "account_id": stage_profile(PROFILE, data, "account_id")}
    if "profile" in parts:
        from bench.profile_summary import JobProfiler

        # Apart from the measured runs: the samplers take CPU of their own.
        profiler = JobProfiler(OUT / "bench" / "profile", process_kind)
        run_job("job-20-keys-profiled", data, "merchant_category", profiler=profiler)
        results["profile"] = profiler.summary()
    if "global" in parts:
        from bench.global_bench import GLOBAL_ON, GLOBAL_RECORDS, global_model_cost, print_global_table

        print("the global model on and off, same file, alternating (broker CPU counted):", flush=True)
        # At most GLOBAL_RECORDS unless --records says: keyed by merchant_category at the default
        # cadence the shards keep every record to the end (bench/global_bench.py), which on the full
        # file would take most of the benchmark's time.
        global_data = data if args.records or args.quick else ensure_input(GLOBAL_RECORDS)
        results["global_model"] = global_model_cost(run_job, PROFILE, global_data, args.repeat,
                                                    args.global_on or GLOBAL_ON)
    if "kafka" in parts:
        from bench.kafka_latency import RATE, kafka_latency

        print(f"kafka latency at {RATE:,} records/s (produce to readable score, read_committed):", flush=True)
        results["kafka_latency_ms"] = kafka_latency(args.repeat)
    if "failover" in parts:
        print("failover on the session cluster (TaskManager killed three times, exactly-once):", flush=True)
        results["failover"] = failover_bench(200_000 if not args.quick else 50_000)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, median, large, args.repeat)
    if "profile" in results:
        from bench.profile_summary import print_profile

        print_profile(results["profile"])
    if "global_model" in results:
        print_global_table(results["global_model"])
    print(f"\nwritten to {OUT / 'bench.json'}")
    return 0


def print_table(results: dict, median: dict, large: dict, repeat: int) -> None:
    """The benchmark's table: what was measured, 20 keys beside ~100k+ keys."""
    keys_20 = f"{results.get('keys_20', 20)} keys"
    keys_large = f"{results.get('keys_100k', 0):,} keys" if "keys_100k" in results else "account keys"
    names = {"job": "Riskstream job", "baseline": "baseline commit's job", "river": "River loop (one process)",
             "exact": "Python loop, exact SGD (one process)", "analytics": "job with windowed analytics on",
             "labels": "job learning from a label stream", "thread": "job in thread mode (PEMJA)",
             "baseline-labels": "baseline commit's job, label stream", "dedup-off": "job with de-duplication off",
             "dedup-with-analytics": "job with analytics, de-duplication on",
             "dedup-off-with-analytics": "job with analytics, de-duplication off"}
    note = f" (20 keys: median of {repeat})" if repeat > 1 else ""
    if median:  # not with only the global, Kafka or failover parts
        print(f"\n{'records/s' + note:<44}{keys_20:>12}{keys_large:>16}")
    for name in median:
        print(f"{names[name]:<44}{median[name]['records_per_second']:>12,.0f}"
              f"{large[name]['records_per_second'] if name in large else math.nan:>16,.0f}")
    if median:
        print(f"\n{'CPU per record, core-µs (user + system)':<44}{keys_20:>12}{keys_large:>16}")
    for name in median:
        print(f"{names[name]:<44}{median[name]['core_us_per_record']:>12.1f}"
              f"{large[name]['core_us_per_record'] if name in large else math.nan:>16.1f}")
        if name == "job":
            for kind, small in results.get("job_core_us_per_record_by_kind", {}).items():
                print(f"{'  of which ' + kind:<44}{small:>12.1f}"
                      f"{results['job_core_us_per_record_by_kind_100k_keys'].get(kind, 0.0):>16.1f}")
    if "baseline" in median:
        print(f"{'job / baseline job (records/s)':<44}"
              f"{median['job']['records_per_second'] / median['baseline']['records_per_second']:>12.2f}")
    if "baseline-labels" in median:
        print(f"{'label stream: job / baseline (core-µs/record)':<44}"
              f"{median['labels']['core_us_per_record'] / median['baseline-labels']['core_us_per_record']:>12.2f}")
    if "thread" in median:
        print(f"{'thread / process mode (core-µs/record)':<44}"
              f"{median['thread']['core_us_per_record'] / median['job']['core_us_per_record']:>12.2f}")
    if "analytics" in median:
        print(f"{'analytics on - off (core-µs/record)':<44}{results['analytics_added_core_us_per_record']:>12.1f}")
        print(f"{'analytics: window lines, late lines':<44}{results['analytics_windows']:>12,}{results['analytics_late']:>16,}")
    if "dedup-off" in median:
        print(f"{'dedup on - off (core-µs/record)':<44}{results['dedup_added_core_us_per_record']:>12.1f}"
              f"   ({results['dedup_core_us_per_record']:.1f} vs {results['dedup_off_core_us_per_record']:.1f})")
        print(f"{'dedup on - off, both with analytics':<44}"
              f"{results['dedup_added_core_us_per_record_with_analytics']:>12.1f}   (event time on in both)")
    if "labels" in median:
        print(f"{'labels stream - inline, to the job end (core-µs)':<44}{results['labels_added_core_us_per_record']:>12.1f}"
              f"   ({results['labels_core_us_per_record_to_end']:.1f} vs {results['labels_off_core_us_per_record_to_end']:.1f})")
        print(f"{'labels: applied, dead-lettered':<44}{results['labels_applied']:>12,}{results['labels_dead_lettered']:>16,}")
        print(f"{'state per logged transaction (bytes)':<44}{results['labels_state_bytes_per_transaction']:>12,.0f}")
        print(f"{'labels stream / inline, to the job end':<44}"
              f"{results['labels_core_us_per_record_to_end'] / results['labels_off_core_us_per_record_to_end']:>12.2f}")
        by_kind = ", ".join(f"{kind} {us:.1f}" for kind, us in results["labels_core_us_per_record_by_kind"].items())
        print(f"{'labels: core-µs by process kind':<44}{by_kind:>12}")
        print(f"{'labels: median checkpoint (ms), peak RSS (MB)':<44}{results['labels_checkpoint_ms']:>12,.0f}"
              f"{results['labels_peak_rss_mb']:>16,.0f}")
    if "job" in median and "river" in median:
        print(f"{'job / River (records/s)':<44}{median['job']['records_per_second'] / median['river']['records_per_second']:>12.2f}"
              f"{large['job']['records_per_second'] / large['river']['records_per_second']:>16.2f}")
    if "stage_us" in results:
        stages = results["stage_us"]
        print(f"\n{'per stage, µs per record (one process)':<44}{keys_20:>12}{keys_large:>16}")
        for stage in stages["merchant_category"]:
            print(f"{stage:<44}{stages['merchant_category'][stage]:>12.1f}{stages['account_id'][stage]:>16.1f}")
        sums = {key: sum(values.values()) for key, values in stages.items()}
        print(f"{'sum of the stages':<44}{sums['merchant_category']:>12.1f}{sums['account_id']:>16.1f}")
        if "job" in median:
            print(f"{'framework share (job CPU - stages)':<44}"
                  f"{median['job']['core_us_per_record'] - sums['merchant_category']:>12.1f}"
                  f"{large['job']['core_us_per_record'] - sums['account_id']:>16.1f}")
    if "job_rps_100k_keys" in results:
        print(f"\n{'job start-up CPU to the first score (s)':<44}{results['job_startup_cpu_s']:>12.1f}")
        print(f"{'job wall time, start-up included (s)':<44}{results['job_wall_s']:>12.1f}{results['job_wall_s_100k_keys']:>16.1f}")
        print(f"{'median checkpoint (ms)':<44}{results['checkpoint_ms'] or 0:>12.0f}{results['checkpoint_ms_100k_keys'] or 0:>16.0f}")
        print(f"{'state bytes per key (last checkpoint)':<44}{'':>12}{results['state_bytes_per_key'] or 0:>16,.0f}")
        print(f"{'peak RSS, whole process tree (MB)':<44}{results['peak_rss_mb']:>12,.0f}{results['peak_rss_mb_100k_keys']:>16,.0f}")
        for kind in ("jvm", "python workers"):
            print(f"{'  of which ' + kind + ' (its own peak)':<44}{results['peak_rss_mb_by_kind'][kind]:>12,.0f}"
                  f"{results['peak_rss_mb_by_kind_100k_keys'][kind]:>16,.0f}")
        print(f"{'job, low-latency setting (records/s)':<44}{results['job_rps_low_latency']:>12,.0f}")
        print(f"{'job, low-latency setting (core-µs/record)':<44}{results['job_core_us_per_record_low_latency']:>12.1f}")
    if "kafka_latency_ms" in results:
        print(f"\n{'Kafka latency, ms (2,000 records/s)':<44}{'p50':>12}{'p99':>16}")
        for setting, deliveries in results["kafka_latency_ms"].items():
            for delivery, latency in deliveries.items():
                print(f"{f'{setting}, {delivery}':<44}{latency['p50']:>12,.0f}{latency['p99']:>16,.0f}")
    if "failover" in results:
        failover = results["failover"]
        print(f"\n{'Failover, ' + format(failover['records'], ',') + ' transactions':<44}{'recovery (s)':>12}")
        for point, seconds in failover["recovery_s"].items():
            print(f"{'TaskManager killed ' + point:<44}{seconds:>12.1f}")
        checkpoints = failover["checkpoint_ms"] or {"median": 0, "max": 0, "count": 0}
        print(f"{'checkpoint ms, median / max':<44}{checkpoints['median']:>12,.0f}{checkpoints['max']:>16,.0f}")
        print(f"{'each record exactly once':<44}{str(failover['exactly_once']):>12}")


if __name__ == "__main__":
    sys.exit(main())
