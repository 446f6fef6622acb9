"""The failover drill: the job on the local session cluster against the real broker, with its
TaskManager killed (SIGKILL, whole process tree) at points chosen by progress and restarted as a
supervisor would, a stop with savepoint and resume, or a broker restart. Used by
tests/integration/test_failover.py (50,000 transactions, which checks the outcome) and by
`make bench` (200,000, which reports recovery time and checkpoint durations).

Progress is read from Flink's REST API: the records the source has emitted in the job's current
attempt, and the checkpoints completed and in progress.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from streaming import cluster, kafka_tools
from streaming.config import Settings

PROJECT = Path(__file__).resolve().parents[1]
CLUSTER_PROFILE = PROJECT / "conf" / "cluster.yaml"
# When each kill happens: right after a checkpoint completed; between checkpoints, while the sinks'
# transactions hold uncommitted records; while a checkpoint is in progress.
KILL_POINTS = ("after-checkpoint", "open-transaction", "during-checkpoint")


@dataclass
class Kill:
    point: str
    at_ms: int  # wall clock of the kill, comparable with a score's scored_at
    attempt_records: int  # records the source had emitted in the attempt that was killed
    checkpoint_in_progress: bool


@dataclass
class DrillRun:
    job_id: str
    kills: list[Kill] = field(default_factory=list)
    savepoint: str | None = None
    broker_restarted_at_ms: int | None = None
    checkpoint_durations_ms: dict[int, int] = field(default_factory=dict)  # id -> end-to-end duration
    restores: int = 0
    wall_s: float = 0.0


@dataclass
class Committed:
    """What a read_committed consumer finds in the job's output topics, as (key, JSON value)."""
    scores: list[tuple[bytes | None, dict[str, Any]]]
    dead_letters: list[tuple[bytes | None, dict[str, Any]]]
    snapshots: list[dict[str, Any]]


class Watch:
    """Polls one job's progress through the REST API and keeps every completed checkpoint's duration."""

    def __init__(self, local: cluster.LocalCluster, run: DrillRun):
        self.url = local.rest_url
        self.run = run
        self.last_checkpoints: dict[str, Any] = {}  # the latest answers, to describe a kill as it happened
        self.last_attempt_records = 0

    def job(self) -> dict[str, Any]:
        return cluster.rest(self.url, "GET", f"/jobs/{self.run.job_id}")

    def checkpoints(self) -> dict[str, Any]:
        answer = cluster.rest(self.url, "GET", f"/jobs/{self.run.job_id}/checkpoints")
        for checkpoint in answer.get("history", []):
            if checkpoint["status"] == "COMPLETED":
                self.run.checkpoint_durations_ms[checkpoint["id"]] = checkpoint["end_to_end_duration"]
        self.run.restores = answer["counts"]["restored"]
        self.last_checkpoints = answer
        return answer

    def attempt_records(self) -> int:
        """Records the source emitted in the current attempt (0 until all tasks run)."""
        job = self.job()
        if job["state"] != "RUNNING" or any(v["status"] != "RUNNING" for v in job["vertices"]):
            return 0
        source = next(v for v in job["vertices"] if "transactions-source" in v["name"])
        self.last_attempt_records = source["metrics"]["read-records"]  # the Kafka records it consumed
        return self.last_attempt_records

    def until(self, what: str, condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            state = self.job()["state"]
            if state in cluster.ENDED:
                raise RuntimeError(f"the job was {state} before {what}")
            time.sleep(poll_s)
        raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    def until_finished(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.job()["state"]
            self.checkpoints()
            if state == "FINISHED":
                return
            if state in ("FAILED", "CANCELED"):
                raise RuntimeError(f"the job ended {state}")
            time.sleep(0.5)
        raise RuntimeError(f"the job did not finish in {timeout_s:.0f} s")


def drill_overrides(state_dir: Path, records_per_second: int = 1000) -> list[str]:
    """--set overrides for the drill on top of the cluster profile: a bounded source, exactly-once
    delivery, checkpoints every second under `state_dir`, and each source subtask reading at most
    `records_per_second`, so that there is time to act while the job works through its input."""
    return ["kafka.bounded=true", "kafka.delivery=exactly-once",
            f"source.max_records_per_second={records_per_second}",
            f"checkpointing.directory={state_dir / 'checkpoints'}",
            f"checkpointing.savepoint_directory={state_dir / 'savepoints'}",
            "checkpointing.interval_ms=1000",
            # Each kill or broker restart costs one restart; leave room for a few more.
            "checkpointing.restart={strategy: fixed-delay, attempts: 20, delay_ms: 1000}"]


def submit(local: cluster.LocalCluster, overrides: list[str], from_path: str | None = None) -> str:
    return cluster.submit(local, cluster.submit_command(CLUSTER_PROFILE, local.rest_url.removeprefix("http://"), overrides, from_path))


def run_with_kills(local: cluster.LocalCluster, overrides: list[str], min_attempt_records: int,
                   taskmanager_overrides: dict[str, str] | None = None, timeout_s: float = 600) -> DrillRun:
    """Submits the job and, in each of its first three attempts, SIGKILLs the TaskManager process
    tree once the attempt has emitted `min_attempt_records` and its kill point (KILL_POINTS) is
    reached, then starts a new TaskManager. Returns when the job finished its bounded input."""
    started = time.monotonic()
    run = DrillRun(job_id=submit(local, overrides))
    watch = Watch(local, run)
    for point in KILL_POINTS:
        watch.until(f"{min_attempt_records} records in an attempt (kills so far: {run.kills})",
                    lambda: watch.attempt_records() >= min_attempt_records, timeout_s)
        if point == "after-checkpoint":
            seen = _last_completed_id(watch.checkpoints())
            watch.until("a new completed checkpoint", lambda: _just_completed(watch.checkpoints(), seen),
                        timeout_s, poll_s=0.005)
        elif point == "open-transaction":
            seen = _last_completed_id(watch.checkpoints())
            watch.until("records written since a new checkpoint", lambda: _mid_interval(watch.checkpoints(), seen),
                        timeout_s)
        else:
            watch.until("a checkpoint in progress", lambda: watch.checkpoints()["counts"]["in_progress"] > 0,
                        timeout_s, poll_s=0.005)
        restores = watch.last_checkpoints["counts"]["restored"]  # from the poll that chose this moment
        run.kills.append(_kill_taskmanagers(local, point, watch))
        local.start_taskmanager(taskmanager_overrides)  # as a supervisor would
        # The next kill must hit the restored job, not a TaskManager the job has not reached yet.
        watch.until("the job to restore its last checkpoint",
                    lambda: watch.checkpoints()["counts"]["restored"] > restores, timeout_s, poll_s=0.2)
    watch.until_finished(timeout_s)
    run.wall_s = time.monotonic() - started
    return run


def run_with_savepoint(local: cluster.LocalCluster, settings: Settings, overrides: list[str],
                       resume_overrides: list[str], min_records: int, timeout_s: float = 600) -> DrillRun:
    """Submits the job, stops it with a savepoint after `min_records`, and resumes from the
    savepoint with `resume_overrides` added (a changed job graph).

    A bounded Kafka source restored from a savepoint reads to its end but never finishes
    (FLINK-31006, open in flink-connector-kafka 5.0.0-2.2), so the resumed job is ended the way a
    user ends one: once the committed scores and dead letters account for every record produced,
    stop with --drain, which passes the end of input through the job (final model snapshots) and
    commits."""
    started = time.monotonic()
    first = DrillRun(job_id=submit(local, overrides))
    watch = Watch(local, first)
    watch.until(f"{min_records} records", lambda: watch.attempt_records() >= min_records, timeout_s)
    savepoint_dir = Path(settings.checkpointing.savepoint_directory).as_uri()
    savepoint = cluster.stop_with_savepoint(local.rest_url, first.job_id, savepoint_dir)
    resumed = DrillRun(job_id=submit(local, [*overrides, *resume_overrides], savepoint), savepoint=savepoint)
    watch = Watch(local, resumed)
    produced = sum(1 for _ in kafka_tools.tail(settings, settings.kafka.transactions_topic, True, None, 3))
    watch.until("a committed output for every record", lambda: committed_outputs(settings) >= produced,
                timeout_s, poll_s=1)
    cluster.stop_with_savepoint(local.rest_url, resumed.job_id, savepoint_dir, drain=True)
    watch.until_finished(timeout_s)
    resumed.checkpoint_durations_ms.update(first.checkpoint_durations_ms)
    resumed.wall_s = time.monotonic() - started
    return resumed


def run_with_broker_restart(local: cluster.LocalCluster, overrides: list[str], min_records: int,
                            timeout_s: float = 600) -> DrillRun:
    """Submits the job, stops and restarts the broker (kafka/kafka.sh) after `min_records`, and
    returns when the job finished without anyone touching it."""
    started = time.monotonic()
    run = DrillRun(job_id=submit(local, overrides))
    watch = Watch(local, run)
    watch.until(f"{min_records} records", lambda: watch.attempt_records() >= min_records, timeout_s)
    run.broker_restarted_at_ms = time.time_ns() // 1_000_000
    subprocess.run([str(PROJECT / "kafka" / "kafka.sh"), "down"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(PROJECT / "kafka" / "kafka.sh"), "up"], check=True, stdout=subprocess.DEVNULL)
    watch.until_finished(timeout_s)
    run.wall_s = time.monotonic() - started
    return run


def read_committed(settings: Settings, idle_timeout_s: float = 8) -> Committed:
    def topic(name: str) -> list[tuple[bytes | None, dict[str, Any]]]:
        return [(key, json.loads(value)) for _, _, key, value in
                kafka_tools.tail(settings, name, True, None, idle_timeout_s=idle_timeout_s)]

    kafka = settings.kafka
    return Committed(scores=topic(kafka.scores_topic), dead_letters=topic(kafka.dead_letters_topic),
                     snapshots=[snapshot for _, snapshot in topic(kafka.snapshots_topic)])


def committed_outputs(settings: Settings) -> int:
    """How many scores and dead letters a read_committed consumer finds now."""
    kafka = settings.kafka
    return sum(1 for topic in (kafka.scores_topic, kafka.dead_letters_topic)
               for _ in kafka_tools.tail(settings, topic, True, None, idle_timeout_s=1))


def recovery_times_s(run: DrillRun, settings: Settings) -> list[float]:
    """For each kill: seconds from the kill to the first score computed after it (scored_at), among
    all the scores the job wrote, committed or not (a later kill may abort the first ones)."""
    scored_at = sorted(json.loads(value)["scored_at"] for _, _, _, value in kafka_tools.tail(
        settings, settings.kafka.scores_topic, True, None, idle_timeout_s=5, committed_only=False))
    times = []
    for kill in run.kills:
        after = next((t for t in scored_at if t > kill.at_ms), None)
        times.append(float("nan") if after is None else (after - kill.at_ms) / 1000)
    return times


def _kill_taskmanagers(local: cluster.LocalCluster, point: str, watch: Watch) -> Kill:
    """Kills at once, and describes the job by the poll that chose this moment."""
    pids = local.taskmanager_pids()
    if not pids:
        raise RuntimeError("no TaskManager process to kill")
    at_ms = time.time_ns() // 1_000_000
    for pid in pids:
        cluster.kill_tree(pid)
    return Kill(point=point, at_ms=at_ms, attempt_records=watch.last_attempt_records,
                checkpoint_in_progress=watch.last_checkpoints["counts"]["in_progress"] > 0)


def _last_completed_id(answer: dict[str, Any]) -> int | None:
    completed = (answer.get("latest") or {}).get("completed")
    return None if completed is None else completed["id"]


def _just_completed(answer: dict[str, Any], previous_id: int | None) -> bool:
    """A checkpoint after `previous_id` completed and no other is in progress yet."""
    return _last_completed_id(answer) != previous_id and answer["counts"]["in_progress"] == 0


def _mid_interval(answer: dict[str, Any], previous_id: int | None) -> bool:
    """A checkpoint after `previous_id` completed at least 400 ms ago (of a 1 s interval) and no
    other is in progress: the sinks' current transactions hold records no checkpoint has committed."""
    completed = (answer.get("latest") or {}).get("completed")
    if completed is None or completed["id"] == previous_id or answer["counts"]["in_progress"] > 0:
        return False
    return time.time() * 1000 - completed["latest_ack_timestamp"] >= 400


def failover_bench(records: int = 200_000, records_per_second: int = 5000) -> dict[str, Any]:
    """`make bench`: the kill drill on `records` generated transactions (fresh topics, deleted
    afterwards), on the session cluster with the test overrides (started here if none is up, and
    then stopped). Returns recovery seconds per kill point (kill to the first new score), checkpoint
    durations, the wall time, and whether the committed output held each record exactly once."""
    import statistics
    import tempfile

    from streaming.config import load_settings
    from udfs.generator import GeneratorSettings, generate

    overrides_of_cluster = cluster.flink_overrides(PROJECT / "conf" / "flink" / "test.yaml")
    local = cluster.LocalCluster.of_project(PROJECT)
    started_cluster = local.up(overrides_of_cluster)
    with tempfile.TemporaryDirectory(dir=PROJECT / "var") as state_dir:
        overrides = [*kafka_tools.isolated_overrides("bench-failover"),
                     *drill_overrides(Path(state_dir), records_per_second)]
        settings = load_settings(CLUSTER_PROFILE, overrides)
        try:
            kafka_tools.create_topics(settings)
            lines = list(generate(GeneratorSettings(records=records, seed=61, malformed_share=0.02)))
            kafka_tools.produce(settings, lines, len(lines), None, settings.model.key)
            run = run_with_kills(local, overrides, min_attempt_records=records // 40,
                                 taskmanager_overrides=overrides_of_cluster, timeout_s=1200)
            committed = read_committed(settings)
            recovery = recovery_times_s(run, settings)
        finally:
            kafka_tools.delete_topics(settings)
            if started_cluster:
                local.down()
    scores = [score for _, score in committed.scores]
    durations = sorted(run.checkpoint_durations_ms.values())
    return {
        "records": records,
        "source_ceiling_per_subtask": records_per_second,
        "recovery_s": dict(zip(KILL_POINTS, recovery)),
        "checkpoint_ms": {"count": len(durations), "median": statistics.median(durations),
                          "max": durations[-1]} if durations else None,
        "wall_s": run.wall_s,
        "restores": run.restores,
        "exactly_once": len({s["txn_id"] for s in scores}) == len(scores)
                        and len(scores) + len(committed.dead_letters) == records,
    }


if __name__ == "__main__":
    print(json.dumps(failover_bench(), indent=2))
