"""The failover drill: the job on the local session cluster against the real broker, with its
TaskManager killed (SIGKILL, whole process tree) at points chosen by progress and restarted as a
supervisor would, a stop with savepoint and resume, or a broker restart. Used by
tests/integration/test_failover.py and test_label_stream.py (which check the outcome) and by
`make bench` (bench/run_bench.py: 200,000, which reports recovery time and checkpoint durations).
It only drives the job and reports what happened; the tests decide what must hold, so a change made
for the benchmark cannot weaken them.

Progress is read from Flink's REST API: the records the source has emitted in the job's current
attempt, and the checkpoints completed and in progress. Where a kill landed is read from the same
API after the job restored: which checkpoint it restored and how the one in progress ended.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from streaming.config import PROJECT_ROOT, Settings, load_settings
from streaming.ops import kafka_tools, local_cluster, rest

CLUSTER_PROFILE = PROJECT_ROOT / "conf" / "cluster.yaml"
# When each kill happens: right after a checkpoint completed; between checkpoints, while the sinks'
# transactions hold uncommitted records; while a checkpoint is in progress.
KILL_POINTS = ("after-checkpoint", "open-transaction", "during-checkpoint")
# Checkpoints that take longer than the interval (as on a loaded machine) follow one another with
# no moment between them, where two of the kill points are; a pause after each checkpoint keeps
# one. It is longer than the 400 ms that the open-transaction kill waits after a checkpoint.
PAUSE_BETWEEN_CHECKPOINTS = "checkpointing.min_pause_ms=800"

# Pacing. A drill acts on a running job, so its bounded input must outlast every kill, stop or
# restart, however fast the job becomes. The source's ceiling (source.max_records_per_second per
# source subtask, RecordBundler.java) caps how fast any machine reads it, so what the drill uses up
# before it acts is bounded. One attempt of the job (from its start or a restore to the kill) reads
# at most:
#   STARTUP_RECORDS while its tasks start: the source runs before the Python operators do and reads
#     until the network buffers between them are full (seen here: 1,500 to 2,550 records in all at
#     350 or 175 records per second per subtask, the Python workers taking 10 to 15 s to start; a
#     faster machine reads less);
#   + `min_attempt_records`, which the drill waits for before it picks its moment;
#   + ATTEMPT_S at the ceiling: 1 s at once (the ceiling lets a second's worth through in a burst),
#     and up to 3 s waiting for the kill point: checkpoints start every second and at least 800 ms
#     after the previous one ended (checkpointing.interval_ms, PAUSE_BETWEEN_CHECKPOINTS), so a new
#     completed checkpoint, one 400 ms old, or one in progress comes within 2.5 s, and the REST API's
#     figures are up to 200 ms old (conf/flink/test.yaml).
# None of these grows as the job gets faster: checkpoints come no sooner than their interval. An input
# holding that much for every possible kill (every try at every point) cannot run out before the
# last kill, on any machine; run_with_kills refuses a shorter one before it submits anything.
STARTUP_RECORDS = 3_000
ATTEMPT_S = 4.0
# The single-action drills (a stop with savepoint, a broker restart, a kill by a test) act within a
# poll of reaching `min_records`; the input left after that must last this long at the ceiling.
ACT_MARGIN_S = 10.0


def source_records_per_second(settings: Settings) -> float:
    """How many records per second the job's Kafka source reads at most: the ceiling per subtask
    times the subtasks that read (no more than the topic's partitions); infinite without a ceiling."""
    ceiling = settings.source.max_records_per_second
    if ceiling is None:
        return float("inf")
    return ceiling * min(settings.flink.parallelism, settings.kafka.partitions)


def input_seconds(settings: Settings, records: int) -> float:
    """How long the job's source takes at least to read `records` (0 without a ceiling)."""
    return records / source_records_per_second(settings)


def kills_need_records(settings: Settings, min_attempt_records: int, kills: int) -> float:
    """The input that `kills` kills can use up at most (see STARTUP_RECORDS and ATTEMPT_S)."""
    return kills * (STARTUP_RECORDS + min_attempt_records + ATTEMPT_S * source_records_per_second(settings))


def check_pacing(settings: Settings, input_records: int, need_records: float, what: str) -> None:
    """Raises DrillError unless there are `need_records` in `input_records`."""
    if input_records < need_records:
        raise DrillError(f"{input_records} records (at source.max_records_per_second="
                         f"{settings.source.max_records_per_second}: {input_seconds(settings, input_records):.1f} s) "
                         f"are fewer than the {need_records:.0f} that {what} can use up: the job could finish "
                         f"first. Lower the ceiling or add records.")


def action_need_records(settings: Settings) -> float:
    """The input a single action needs left once it is due: ACT_MARGIN_S at the ceiling."""
    return ACT_MARGIN_S * source_records_per_second(settings)


class DrillError(RuntimeError):
    """The drill could not do what it was asked: a kill point never confirmed, a timeout, a job that
    ended early."""


@dataclass
class Kill:
    point: str
    at_ms: int  # wall clock of the kill, comparable with a score's scored_at and Flink's checkpoint timestamps
    attempt_records: int  # records the source had emitted in the attempt that was killed
    # What the REST API showed in the poll that chose the moment:
    completed_before: int | None  # id of the latest completed checkpoint
    in_progress_before: int | None  # id of the checkpoint in progress, if one was
    # What it showed once the job had restored:
    restored: int | None = None  # id of the checkpoint the job restored
    # The checkpoints from completed_before on, as (id, status, trigger time minus kill time in ms):
    # what the confirmation saw, to tell what happened when it failed.
    checkpoints_around: list[tuple[int, str, int]] = field(default_factory=list)
    confirmed: bool = False  # the checkpoint statistics agree that it landed at its point (landed_at_its_point)


@dataclass
class DrillRun:
    job_id: str
    kills: list[Kill] = field(default_factory=list)  # every kill, in order, confirmed or not
    savepoint: str | None = None
    broker_restarted_at_ms: int | None = None
    checkpoint_durations_ms: dict[int, int] = field(default_factory=dict)  # id -> end-to-end duration
    restores: int = 0
    wall_s: float = 0.0

    def confirmed_kill(self, point: str) -> Kill:
        """The kill that Flink's report confirms landed at `point` (run_with_kills fails without one)."""
        return next(kill for kill in self.kills if kill.point == point and kill.confirmed)


@dataclass
class Committed:
    """What a read_committed consumer finds in the job's output topics, as (key, JSON value)."""
    scores: list[tuple[bytes | None, dict[str, Any]]]
    dead_letters: list[tuple[bytes | None, dict[str, Any]]]
    snapshots: list[dict[str, Any]]
    score_positions: set[tuple[int, int]]  # (partition, offset) of each score, to tell aborted ones (aborted_scores)


class Watch:
    """Polls one job's progress through the REST API and keeps every completed checkpoint's duration."""

    def __init__(self, local: local_cluster.LocalCluster, run: DrillRun):
        self.url = local.rest_url
        self.run = run
        self.last_checkpoints: dict[str, Any] = {}  # the latest answers, to describe a kill as it happened
        self.last_attempt_records = 0

    def job(self) -> dict[str, Any]:
        return rest.rest(self.url, "GET", f"/jobs/{self.run.job_id}")

    def checkpoints(self) -> dict[str, Any]:
        answer = rest.rest(self.url, "GET", f"/jobs/{self.run.job_id}/checkpoints")
        for checkpoint in answer.get("history", []):
            if checkpoint["status"] == "COMPLETED":
                self.run.checkpoint_durations_ms[checkpoint["id"]] = checkpoint["end_to_end_duration"]
        self.run.restores = answer["counts"]["restored"]
        self.last_checkpoints = answer
        return answer

    def attempt_records(self) -> int:
        """Records the source emitted in the current attempt (0 until all tasks run). A task that
        has finished counts as running: a bounded input other than the transactions (the labels
        topic) may be read to its end long before them, and is finished again at once after a
        restore, so waiting for it to run would wait until the job ends."""
        job = self.job()
        source = next(v for v in job["vertices"] if "transactions-source" in v["name"])
        if job["state"] != "RUNNING" or source["status"] != "RUNNING" or any(
                v["status"] not in ("RUNNING", "FINISHED") for v in job["vertices"]):
            return 0
        self.last_attempt_records = source["metrics"]["read-records"]  # the Kafka records it consumed
        return self.last_attempt_records

    def until(self, what: str, condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            state = self.job()["state"]
            if state in rest.ENDED:
                raise DrillError(f"the job was {state} before {what}")
            time.sleep(poll_s)
        raise DrillError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    def until_finished(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.job()["state"]
            self.checkpoints()
            if state == "FINISHED":
                return
            if state in ("FAILED", "CANCELED"):
                raise DrillError(f"the job ended {state}")
            time.sleep(0.5)
        raise DrillError(f"the job did not finish in {timeout_s:.0f} s")


def drill_overrides(state_dir: Path, records_per_second: int = 1000) -> list[str]:
    """--set overrides for the drill on top of the cluster profile: a bounded source, exactly-once
    delivery, checkpoints every second under `state_dir`, and each source subtask reading at most
    `records_per_second`, so that there is time to act while the job works through its input."""
    return ["kafka.bounded=true", "kafka.delivery=exactly-once",
            f"source.max_records_per_second={records_per_second}",
            f"checkpointing.directory={state_dir / 'checkpoints'}",
            f"checkpointing.savepoint_directory={state_dir / 'savepoints'}",
            "checkpointing.interval_ms=1000",
            # Each kill or broker restart costs one restart, and so does every second without the
            # slots: until a killed TaskManager's replacement has registered (5 to 20 s on this
            # 2-core machine under load), each attempt fails at once. 20 attempts ran out once.
            "checkpointing.restart={strategy: fixed-delay, attempts: 120, delay_ms: 1000}"]


def submit(local: local_cluster.LocalCluster, overrides: list[str], from_path: str | None = None) -> str:
    """Submits the job of the cluster profile with `overrides`; returns the job id."""
    command = local_cluster.submit_command(CLUSTER_PROFILE, local.rest_url.removeprefix("http://"), overrides, from_path)
    return local_cluster.submit(local, command)


def run_with_kills(local: local_cluster.LocalCluster, overrides: list[str], min_attempt_records: int,
                   taskmanager_overrides: dict[str, str] | None = None, timeout_s: float = 600,
                   retries: int = 2, input_records: int | None = None,
                   points: tuple[str, ...] = KILL_POINTS) -> DrillRun:
    """Submits the job and, for each kill point (KILL_POINTS) in turn, SIGKILLs the TaskManager
    process tree once the current attempt has emitted `min_attempt_records` and the point is
    reached, starts a new TaskManager and waits for the job to restore a checkpoint. A kill counts
    for its point only when Flink's checkpoint statistics after the restore confirm where it landed
    (landed_at_its_point): the moment chosen from a poll can be missed (the checkpoint seen in
    progress completes, or the next one starts, before the kill lands), so a point is tried again,
    and the drill fails once the kills that missed exceed `retries` (a budget shared by all points:
    the input must last every kill it allows, so a budget per point would make every drill read
    input that only the unluckiest run needs). Returns when the job finished its bounded input;
    `kills` holds every kill, confirmed or not.

    With `input_records` (the records in the transactions topic), it first checks that they last
    every possible kill (see STARTUP_RECORDS), and fails at once if not. `points`: the kill points
    to try, in order (KILL_POINTS' names)."""
    if input_records is not None:
        settings = load_settings(CLUSTER_PROFILE, overrides)
        kills = len(points) + retries
        check_pacing(settings, input_records, kills_need_records(settings, min_attempt_records, kills),
                     f"{kills} kills ({len(points)} points and {retries} retries)")
    started = time.monotonic()
    run = DrillRun(job_id=submit(local, [*overrides, PAUSE_BETWEEN_CHECKPOINTS]))
    watch = Watch(local, run)
    for point in points:
        while not _kill_and_restore(local, watch, point, min_attempt_records, taskmanager_overrides,
                                    timeout_s).confirmed:
            missed = [earlier for earlier in run.kills if not earlier.confirmed]
            if len(missed) > retries:
                raise DrillError(f"{len(missed)} kills missed their point, more than the {retries} retries "
                                 f"allowed (Flink's checkpoint statistics confirm none of them): {missed}")
    watch.until_finished(timeout_s)
    run.wall_s = time.monotonic() - started
    return run


def _kill_and_restore(local: local_cluster.LocalCluster, watch: Watch, point: str, min_attempt_records: int,
                      taskmanager_overrides: dict[str, str] | None, timeout_s: float) -> Kill:
    run = watch.run
    watch.until(f"{min_attempt_records} records in an attempt (kills so far: {run.kills})",
                lambda: watch.attempt_records() >= min_attempt_records, timeout_s)
    # Which TaskManagers run the job (not a standby one) is asked now: the moment of the kill
    # comes within a window of a few hundred milliseconds, too short for the REST round trip.
    taskmanagers = local.busy_taskmanager_pids() or local.taskmanager_pids()
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
    kill = _kill_taskmanagers(taskmanagers, point, watch)
    run.kills.append(kill)
    local.start_taskmanager(taskmanager_overrides)  # as a supervisor would
    # The next kill must hit the restored job, not a TaskManager the job has not reached yet.
    watch.until("the job to restore a checkpoint",
                lambda: watch.checkpoints()["counts"]["restored"] > restores, timeout_s, poll_s=0.2)
    # Restores are counted and reported together, and any checkpoint still in progress at the kill
    # was aborted before the job restored, so this answer tells how it ended.
    kill.restored = watch.last_checkpoints["latest"]["restored"]["id"]
    checkpoints = checkpoints_by_id(watch.last_checkpoints)
    kill.checkpoints_around = [(checkpoint_id, checkpoint["status"], checkpoint["trigger_timestamp"] - kill.at_ms)
                               for checkpoint_id, checkpoint in sorted(checkpoints.items())
                               if checkpoint_id >= (kill.completed_before or 0)]
    kill.confirmed = landed_at_its_point(kill, checkpoints)
    return kill


def landed_at_its_point(kill: Kill, checkpoints: dict[int, dict[str, Any]]) -> bool:
    """Whether Flink's checkpoint statistics after the restore (`checkpoints` by id) agree that the
    kill landed at its point. During a checkpoint: the one in progress failed, and the job restored
    an earlier one. Otherwise between checkpoints: the job restored the one that had completed, and
    no later one had been triggered when the kill happened."""
    if kill.restored is None:
        return False
    if kill.point == "during-checkpoint":
        in_progress = checkpoints.get(kill.in_progress_before) or {}
        return in_progress.get("status") == "FAILED" and kill.restored < kill.in_progress_before
    return kill.restored == kill.completed_before and not any(
        checkpoint_id > kill.completed_before and checkpoint["trigger_timestamp"] <= kill.at_ms
        for checkpoint_id, checkpoint in checkpoints.items())


def checkpoint_history(local: local_cluster.LocalCluster, job_id: str) -> dict[int, dict[str, Any]]:
    """The job's checkpoints as the REST API reports them now, by id: status, trigger_timestamp,
    latest_ack_timestamp, ... It keeps the last `web.checkpoints.history` of them (conf/flink/test.yaml
    keeps a whole drill's), also once the job has ended."""
    return checkpoints_by_id(rest.rest(local.rest_url, "GET", f"/jobs/{job_id}/checkpoints"))


def checkpoints_by_id(answer: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {checkpoint["id"]: checkpoint for checkpoint in answer.get("history", [])}


def run_with_savepoint(local: local_cluster.LocalCluster, settings: Settings, overrides: list[str],
                       resume_overrides: list[str], min_records: int, timeout_s: float = 600,
                       input_records: int | None = None) -> DrillRun:
    """Submits the job, stops it with a savepoint after `min_records`, and resumes from the
    savepoint with `resume_overrides` added (a changed job graph).

    A bounded Kafka source restored from a savepoint reads to its end but never finishes
    (FLINK-31006, open in flink-connector-kafka 5.0.0-2.2), so the resumed job is ended the way a
    user ends one: once the committed scores and dead letters account for every record produced,
    stop with --drain, which passes the end of input through the job (final model snapshots) and
    commits. With `input_records`, it first checks that the input outlasts the stop (ACT_MARGIN_S)."""
    if input_records is not None:
        check_pacing(settings, input_records - min_records, action_need_records(settings),
                     "the stop after the first records")
    started = time.monotonic()
    first = DrillRun(job_id=submit(local, overrides))
    watch = Watch(local, first)
    watch.until(f"{min_records} records", lambda: watch.attempt_records() >= min_records, timeout_s)
    savepoint_dir = Path(settings.checkpointing.savepoint_directory).as_uri()
    savepoint = rest.stop_with_savepoint(local.rest_url, first.job_id, savepoint_dir)
    resumed = DrillRun(job_id=submit(local, [*overrides, *resume_overrides], savepoint), savepoint=savepoint)
    watch = Watch(local, resumed)
    produced = sum(1 for _ in kafka_tools.tail(settings, settings.kafka.transactions_topic, idle_timeout_s=3,
                                               until_end=True))
    watch.until("a committed output for every record", lambda: committed_outputs(settings) >= produced,
                timeout_s, poll_s=1)
    rest.stop_with_savepoint(local.rest_url, resumed.job_id, savepoint_dir, drain=True)
    watch.until_finished(timeout_s)
    resumed.checkpoint_durations_ms.update(first.checkpoint_durations_ms)
    resumed.wall_s = time.monotonic() - started
    return resumed


def run_with_broker_restart(local: local_cluster.LocalCluster, overrides: list[str], min_records: int,
                            timeout_s: float = 600, input_records: int | None = None) -> DrillRun:
    """Submits the job, stops and restarts the broker (kafka/kafka.sh) after `min_records`, and
    returns when the job finished without anyone touching it. With `input_records`, it first checks
    that the input outlasts the moment the broker stops (ACT_MARGIN_S)."""
    if input_records is not None:
        settings = load_settings(CLUSTER_PROFILE, overrides)
        check_pacing(settings, input_records - min_records, action_need_records(settings),
                     "stopping the broker after the first records")
    started = time.monotonic()
    run = DrillRun(job_id=submit(local, overrides))
    watch = Watch(local, run)
    watch.until(f"{min_records} records", lambda: watch.attempt_records() >= min_records, timeout_s)
    run.broker_restarted_at_ms = time.time_ns() // 1_000_000
    subprocess.run([str(PROJECT_ROOT / "kafka" / "kafka.sh"), "down"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(PROJECT_ROOT / "kafka" / "kafka.sh"), "up"], check=True, stdout=subprocess.DEVNULL)
    watch.until_finished(timeout_s)
    run.wall_s = time.monotonic() - started
    return run


def read_committed(settings: Settings, idle_timeout_s: float = 8, until_end: bool = True) -> Committed:
    """What a read_committed consumer finds in the job's output topics. `until_end`: each topic is
    read to its end (kafka_tools.tail), which is all of it once the job has ended (when this is
    called from a drill or a test); without it, until nothing came for `idle_timeout_s`, for a job
    that may still be writing."""
    def topic(name: str) -> list[tuple[int, int, bytes | None, bytes]]:
        return list(kafka_tools.tail(settings, name, idle_timeout_s=idle_timeout_s, until_end=until_end))

    def decoded(records: list[tuple[int, int, bytes | None, bytes]]) -> list[tuple[bytes | None, dict[str, Any]]]:
        return [(key, json.loads(value)) for _, _, key, value in records]

    kafka = settings.kafka
    scores = topic(kafka.scores_topic)
    return Committed(scores=decoded(scores), dead_letters=decoded(topic(kafka.dead_letters_topic)),
                     snapshots=[snapshot for _, snapshot in decoded(topic(kafka.snapshots_topic))],
                     score_positions={(partition, offset) for partition, offset, _, _ in scores})


def aborted_scores(settings: Settings, committed: Committed, idle_timeout_s: float = 8) -> list[dict[str, Any]]:
    """The scores a read_uncommitted reader finds and the read_committed one that gave `committed`
    did not: the output of transactions that were aborted. Only once the job has ended, when no
    transaction is open any more, is every such record an aborted one."""
    return [json.loads(value) for partition, offset, _, value in kafka_tools.tail(
                settings, settings.kafka.scores_topic, idle_timeout_s=idle_timeout_s, committed_only=False,
                until_end=True)
            if (partition, offset) not in committed.score_positions]


def committed_outputs(settings: Settings) -> int:
    """How many scores and dead letters a read_committed consumer finds now (to each topic's end)."""
    kafka = settings.kafka
    return sum(1 for topic in (kafka.scores_topic, kafka.dead_letters_topic)
               for _ in kafka_tools.tail(settings, topic, idle_timeout_s=1, until_end=True))


def _kill_taskmanagers(pids: list[int], point: str, watch: Watch) -> Kill:
    """Kills the TaskManagers `pids` at once, and describes the job by the poll that chose this moment."""
    if not pids:
        raise DrillError("no TaskManager process to kill")
    at_ms = time.time_ns() // 1_000_000
    for pid in pids:
        local_cluster.kill_tree(pid)
    in_progress = [checkpoint_id for checkpoint_id, checkpoint in checkpoints_by_id(watch.last_checkpoints).items()
                   if checkpoint["status"] == "IN_PROGRESS"]
    return Kill(point=point, at_ms=at_ms, attempt_records=watch.last_attempt_records,
                completed_before=_last_completed_id(watch.last_checkpoints),
                in_progress_before=max(in_progress, default=None))


def _last_completed_id(answer: dict[str, Any]) -> int | None:
    completed = (answer.get("latest") or {}).get("completed")
    return None if completed is None else completed["id"]


def _just_completed(answer: dict[str, Any], previous_id: int | None) -> bool:
    """A checkpoint after `previous_id` completed and no other is in progress yet."""
    return _last_completed_id(answer) != previous_id and answer["counts"]["in_progress"] == 0


def _mid_interval(answer: dict[str, Any], previous_id: int | None) -> bool:
    """A checkpoint after `previous_id` completed at least 400 ms ago and no other is in progress
    (the next starts no sooner than PAUSE_BETWEEN_CHECKPOINTS after it): the sinks' current
    transactions hold records no checkpoint has committed."""
    completed = (answer.get("latest") or {}).get("completed")
    if completed is None or completed["id"] == previous_id or answer["counts"]["in_progress"] > 0:
        return False
    return time.time() * 1000 - completed["latest_ack_timestamp"] >= 400
