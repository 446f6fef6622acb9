"""The failover drill's own logic (streaming/ops/drill.py) without a cluster: how it paces its input
against the kills, and how it reads a job's progress from the REST API's answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming.config import load_settings
from streaming.ops import drill


def drill_settings(*overrides: str):
    return load_settings(drill.CLUSTER_PROFILE, [*drill.drill_overrides(Path("/tmp/drill")), *overrides])


def test_the_input_lasts_its_records_at_the_ceiling_of_every_source_subtask():
    settings = drill_settings("source.max_records_per_second=250")
    assert (settings.flink.parallelism, settings.kafka.partitions) == (2, 3)  # 2 subtasks read
    assert drill.source_records_per_second(settings) == 500
    assert drill.input_seconds(settings, 20_000) == 40
    assert drill.input_seconds(drill_settings("flink.parallelism=4"), 3000) == 1  # 3 partitions: 3 subtasks read


def test_each_kill_can_use_the_start_up_reads_the_records_waited_for_and_seconds_at_the_ceiling():
    settings = drill_settings("source.max_records_per_second=250")  # 500 per second
    assert drill.kills_need_records(settings, min_attempt_records=300, kills=9) == \
        9 * (drill.STARTUP_RECORDS + 300 + drill.ATTEMPT_S * 500)
    assert drill.action_need_records(settings) == drill.ACT_MARGIN_S * 500


def test_an_input_the_kills_could_outrun_is_refused_before_anything_runs():
    settings = drill_settings()  # 1,000 per second in each of 2 subtasks
    drill.check_pacing(settings, 60_000, 30_000, "the kills")
    with pytest.raises(drill.DrillError, match=r"20000 records \(.*: 10.0 s\) are fewer than the 30000 that the kills"):
        drill.check_pacing(settings, 20_000, 30_000, "the kills")
    unpaced = drill_settings("source.max_records_per_second=null")
    with pytest.raises(drill.DrillError, match="fewer than the inf"):
        drill.check_pacing(unpaced, 10**9, drill.kills_need_records(unpaced, 100, 3), "three kills")


def test_run_with_kills_refuses_an_input_too_short_for_every_try():
    overrides = drill.drill_overrides(Path("/tmp/drill"), 1000)
    with pytest.raises(drill.DrillError, match=r"5 kills \(3 points and 2 retries\)"):
        drill.run_with_kills(None, overrides, min_attempt_records=2000, input_records=20_000)  # never reaches a cluster


@pytest.mark.parametrize("landed, outcome", [
    ("cXcc", "ok"),  # one miss at the second point: retried
    ("XXccc", "ok"),  # both retries spent on the first point
    ("cXXX", "DrillError"),  # a third miss exceeds the 2 retries
])
def test_the_retries_are_one_budget_for_every_point(monkeypatch, landed, outcome):
    """Each kill that misses its point is tried again until the misses exceed `retries`, wherever
    they happen; `landed` says, kill by kill, whether Flink confirms it (c) or not (X)."""
    verdicts = iter(landed)
    tried = []

    def kill_and_restore(local, watch, point, *_):
        kill = drill.Kill(point=point, at_ms=0, attempt_records=0, completed_before=None, in_progress_before=None,
                          confirmed=next(verdicts) == "c")
        watch.run.kills.append(kill)
        tried.append(point)
        return kill

    monkeypatch.setattr(drill, "submit", lambda local, overrides: "job")
    monkeypatch.setattr(drill, "_kill_and_restore", kill_and_restore)
    monkeypatch.setattr(drill.Watch, "__init__", lambda self, local, run: setattr(self, "run", run))
    monkeypatch.setattr(drill.Watch, "until_finished", lambda self, timeout_s: None)
    if outcome == "DrillError":
        with pytest.raises(drill.DrillError, match="3 kills missed their point, more than the 2 retries"):
            drill.run_with_kills(None, [], min_attempt_records=100)
        assert tried == ["after-checkpoint", "open-transaction", "open-transaction", "open-transaction"]
        return
    run = drill.run_with_kills(None, [], min_attempt_records=100)
    assert [kill.point for kill in run.kills] == tried and len(tried) == len(landed)
    assert [kill.point for kill in run.kills if kill.confirmed] == list(drill.KILL_POINTS)


def vertex(name: str, status: str, read: int = 0) -> dict:
    return {"name": name, "status": status, "metrics": {"read-records": read}}


class AnsweringWatch(drill.Watch):
    def __init__(self, job: dict):
        self.answer = job
        self.last_attempt_records = 0

    def job(self) -> dict:
        return self.answer


@pytest.mark.parametrize("job, records", [
    ({"state": "RUNNING", "vertices": [vertex("Source: transactions-source -> bundle-records", "RUNNING", 2500),
                                       vertex("score", "RUNNING")]}, 2500),
    # The labels topic read to its end (and finished again at once after a restore) hides nothing.
    ({"state": "RUNNING", "vertices": [vertex("Source: transactions-source -> bundle-records", "RUNNING", 2500),
                                       vertex("Source: labels-source -> bundle-labels", "FINISHED"),
                                       vertex("score", "RUNNING")]}, 2500),
    # Until every task runs, the attempt has not started.
    ({"state": "RUNNING", "vertices": [vertex("Source: transactions-source -> bundle-records", "RUNNING", 900),
                                       vertex("score", "INITIALIZING")]}, 0),
    ({"state": "RUNNING", "vertices": [vertex("Source: transactions-source -> bundle-records", "FINISHED", 20_000),
                                       vertex("score", "RUNNING")]}, 0),
    ({"state": "RESTARTING", "vertices": [vertex("Source: transactions-source -> bundle-records", "CANCELING", 5)]}, 0),
])
def test_attempt_records_counts_the_transactions_read_once_every_task_runs_or_finished(job, records):
    assert AnsweringWatch(job).attempt_records() == records
