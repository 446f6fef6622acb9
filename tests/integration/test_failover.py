"""Crashes, savepoints and a broker restart on the local session cluster with the real broker
(streaming/ops/drill.py): every produced record appears exactly once in the committed output, and
the final models are bit for bit those of a run without failures."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from streaming.config import load_settings
from streaming.job import identity
from streaming.ops import drill as failover_drill
from streaming.ops import kafka_tools, local_cluster, rest
from streaming.reporting.outputs import latest_snapshots
from tests.analytics_reference import (
    analytics_overrides,
    assert_committed_analytics_as_the_reference,
    committed_analytics,
    delay_event_times,
)
from tests.cli import NOTHING_LISTENS, assert_one_line_failure, riskstream
from udfs.generator import GeneratorSettings, generate_with_kinds

from .conftest import run_scoring_job

RECORDS = 50_000


@pytest.fixture(scope="module")
def stream():
    """50,000 transactions, 5% malformed (some without a usable txn_id), 5% of the others with an
    event time up to 40 s earlier than their place (for the analytics' late records): (kind or None, line)."""
    kinds, lines = zip(*generate_with_kinds(GeneratorSettings(records=RECORDS, seed=53, malformed_share=0.05)))
    return list(zip(kinds, delay_event_times(lines, seed=54, share=0.05, max_delay_ms=40_000)))


@pytest.fixture(scope="module")
def reference(stream, tmp_path_factory):
    """The same stream from a file, on a mini-cluster, without failures."""
    return run_scoring_job(tmp_path_factory.mktemp("reference"), [line for _, line in stream])


@pytest.fixture
def drill(session_cluster, kafka_isolation, stream, tmp_path):
    """The cluster profile on this test's own topics, with the stream produced into them (keyed by
    model key), and the overrides that say so."""
    overrides = [*kafka_isolation, *failover_drill.drill_overrides(tmp_path)]
    settings = load_settings(failover_drill.CLUSTER_PROFILE, overrides)
    kafka_tools.create_topics(settings)
    lines = [line for _, line in stream]
    assert kafka_tools.produce(settings, lines, total=len(lines), key_field=settings.model.key) == RECORDS
    yield settings, overrides
    session_cluster.cancel_jobs()  # a failed test must not leave its job holding the slots


def assert_exactly_once_with_reference_models(settings, stream, reference, committed):
    seen_ids = [score["txn_id"] for _, score in committed.scores]
    assert len(seen_ids) == len(set(seen_ids)), "a score was delivered twice"
    valid = {json.loads(line)["txn_id"] for kind, line in stream if kind is None}
    assert set(seen_ids) == valid, f"{len(valid - set(seen_ids))} records were never scored"
    letters = [(letter["source"]["partition"], letter["source"]["offset"]) for _, letter in committed.dead_letters]
    assert len(letters) == len(set(letters)), "a dead letter was delivered twice"
    assert len(committed.scores) + len(letters) == RECORDS
    assert all(letter["source"]["topic"] == settings.kafka.transactions_topic for _, letter in committed.dead_letters)
    for key, score in committed.scores:
        assert key.decode() == score["model_key"]

    # Bit for bit: each key's records are replayed in the same order from the same restored state.
    reference_scores = {score["txn_id"]: (score["score"], score["model_updates"]) for score in reference.scores}
    assert {s["txn_id"]: (s["score"], s["model_updates"]) for _, s in committed.scores} == reference_scores
    models, reference_models = latest_snapshots(committed.snapshots), latest_snapshots(reference.snapshots)
    assert models.keys() == reference_models.keys()
    for key, model in models.items():
        assert model == reference_models[key], f"model {key} differs from the run without failures"


# The three-point kill's pace: up to 5 kills (the 3 points and the drill's 2 retries), each using up
# to 3,000 records while the tasks start, the 100 the drill waits for, and 4 s at the source's ceiling
# (streaming/ops/drill.py, "Pacing"): at 800 records per second in each of the 2 source subtasks,
# 47,500 of the 50,000 (the drill checks it before it starts). The keys are merchant categories, so
# the partitions are uneven: the subtask reading two of the three holds about 40,000 records, which
# last about 50 s at its ceiling.
KILLS_RECORDS_PER_SECOND = 800
KILLS_MIN_ATTEMPT_RECORDS = 100


def test_taskmanager_killed_at_three_points_changes_nothing(session_cluster, drill, stream, reference):
    settings, overrides = drill
    job_overrides = [*overrides, *analytics_overrides(), f"source.max_records_per_second={KILLS_RECORDS_PER_SECOND}"]
    run = failover_drill.run_with_kills(
        session_cluster.cluster, job_overrides,
        min_attempt_records=KILLS_MIN_ATTEMPT_RECORDS, taskmanager_overrides=session_cluster.overrides,
        input_records=RECORDS)
    checkpoints = failover_drill.checkpoint_history(session_cluster.cluster, run.job_id)  # as Flink reports them now

    # During a checkpoint: the one Flink showed in progress before the kill never completed, and
    # the job restored an earlier one.
    during = run.confirmed_kill("during-checkpoint")
    assert during.in_progress_before is not None, f"{during}: no checkpoint was in progress"
    assert checkpoints[during.in_progress_before]["status"] == "FAILED", checkpoints[during.in_progress_before]
    assert during.restored < during.in_progress_before, during
    # Between checkpoints: the job restored the checkpoint that had completed before the kill, and
    # the next one was triggered only after the kill.
    for point in ("after-checkpoint", "open-transaction"):
        kill = run.confirmed_kill(point)
        assert kill.restored == kill.completed_before, kill
        later_triggers_ms = [checkpoint["trigger_timestamp"] for checkpoint_id, checkpoint in checkpoints.items()
                             if checkpoint_id > kill.completed_before]
        assert min(later_triggers_ms) > kill.at_ms, f"{kill}: the next checkpoint started before it"
    # While transactions were open: scores written after that checkpoint started were aborted, so a
    # read_uncommitted reader finds records that read_committed never returns.
    committed = failover_drill.read_committed(settings)
    open_transaction = run.confirmed_kill("open-transaction")
    since_ms = checkpoints[open_transaction.completed_before]["trigger_timestamp"]
    aborted = [score for score in failover_drill.aborted_scores(settings, committed)
               if since_ms < score["scored_at"] <= open_transaction.at_ms]
    assert aborted, f"no score of the transactions open at {open_transaction} was aborted"

    assert_exactly_once_with_reference_models(settings, stream, reference, committed)
    assert_analytics_as_without_failures(load_settings(failover_drill.CLUSTER_PROFILE, job_overrides), committed)


def assert_analytics_as_without_failures(settings, committed):
    """The committed analytics (`settings`: the job's, with its windows) and late records: those of
    a run without failures, and the delayed records gave late ones."""
    assert_committed_analytics_as_the_reference(settings, [score for _, score in committed.scores])
    assert committed_analytics(settings)[1], "the delayed records should give late ones"


def submitted_and_2000_records_in(local, settings, overrides: list[str]) -> failover_drill.Watch:
    """Submits the drill's job and waits until its source has read 2,000 records: a kill then comes
    within a poll of the 2,000th, and the 48,000 after it last 24 s at the drill's ceiling (1,000 a
    second in each of 2 subtasks) on any machine."""
    failover_drill.check_pacing(settings, RECORDS - 2000, failover_drill.action_need_records(settings), "the kill")
    watch = failover_drill.Watch(local, failover_drill.DrillRun(job_id=failover_drill.submit(local, overrides)))
    watch.until("2000 records in the attempt", lambda: watch.attempt_records() >= 2000, 600)
    return watch


def test_a_taskmanager_jvm_killed_alone_takes_its_python_workers_with_it(session_cluster, drill, stream, reference):
    """Only the TaskManager's JVM SIGKILLed (as the kernel's OOM killer does), mid-run: its Python
    workers are gone within 10 s (streaming/ops/python_worker.py), and with a new TaskManager the job
    still ends with every record exactly once."""
    settings, overrides = drill
    local = session_cluster.cluster
    watch = submitted_and_2000_records_in(local, settings, overrides)
    [taskmanager] = local.taskmanager_pids()
    workers = [pid for pid in local_cluster.descendants(taskmanager) if pid in local.python_workers()]
    assert len(workers) >= 2, "process mode at parallelism 2 runs a worker per Python task"

    os.kill(taskmanager, signal.SIGKILL)
    killed_at = time.monotonic()
    local.start_taskmanager(session_cluster.overrides)  # as a supervisor would
    while any(alive(pid) for pid in workers) and time.monotonic() - killed_at < 10:
        time.sleep(0.2)
    left = [pid for pid in workers if alive(pid)]
    assert left == [], f"Python workers {left} outlived their TaskManager by 10 s"

    watch.until_finished(600)
    committed = failover_drill.read_committed(settings)
    assert_exactly_once_with_reference_models(settings, stream, reference, committed)


def test_one_of_two_taskmanagers_killed_changes_nothing(session_cluster, second_taskmanager, drill, stream,
                                                         reference):
    """Issue 29: on two TaskManagers, one running the job's tasks SIGKILLed (with its Python workers)
    mid-run and a replacement started, as a supervisor would: the job scores again on the survivor
    and the replacement, every record exactly once, every score and final model that of a run
    without failures."""
    settings, overrides = drill
    local = session_cluster.cluster
    watch = submitted_and_2000_records_in(local, settings, overrides)
    taskmanagers = local.taskmanager_pids()
    busy = local.busy_taskmanager_pids()
    assert len(taskmanagers) == 2 and busy, (taskmanagers, busy)
    [survivor] = set(taskmanagers) - {busy[0]}

    local_cluster.kill_tree(busy[0])
    local.start_taskmanager(session_cluster.overrides)  # as a supervisor would
    watch.until_finished(600)
    assert alive(survivor), "the survivor should have run to the end"
    assert len(local.taskmanager_pids()) == 2
    committed = failover_drill.read_committed(settings)
    assert_exactly_once_with_reference_models(settings, stream, reference, committed)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by whoever adopted it, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

def test_stop_with_savepoint_and_resume_after_a_graph_change(session_cluster, drill, stream, reference):
    settings, overrides = drill
    # Before the savepoint each source subtask's bundles stay with its own preparing worker; after
    # it they are numbered and spread over both (a rebalance and a reordering step in front of the
    # stateful operator). Only the operators' uids tie the state to the new graph.
    run = failover_drill.run_with_savepoint(session_cluster.cluster, settings,
                                            [*overrides, "performance.parallel_prepare=false"],
                                            ["performance.parallel_prepare=true"], min_records=15_000,
                                            input_records=RECORDS)  # 17.5 s of input left for the stop

    assert run.savepoint and "savepoint" in run.savepoint
    committed = failover_drill.read_committed(settings)
    assert_exactly_once_with_reference_models(settings, stream, reference, committed)


def test_a_broker_restart_during_a_run_loses_and_duplicates_nothing(session_cluster, drill, stream, reference):
    settings, overrides = drill
    run = failover_drill.run_with_broker_restart(session_cluster.cluster, overrides, min_records=10_000,
                                                 input_records=RECORDS)  # 20 s of input left for the restart

    assert run.broker_restarted_at_ms is not None
    committed = failover_drill.read_committed(settings)
    assert_exactly_once_with_reference_models(settings, stream, reference, committed)


@pytest.fixture
def new_jobs(session_cluster):
    """A function returning the ids of the jobs submitted to the cluster since this test began; the
    ones still running are cancelled afterwards, so a failed test leaves none behind."""
    from streaming.ops import rest

    rest_url = session_cluster.cluster.rest_url
    before = {job["jid"] for job in rest.rest(rest_url, "GET", "/jobs/overview")["jobs"]}

    def submitted() -> set[str]:
        return {job["jid"] for job in rest.rest(rest_url, "GET", "/jobs/overview")["jobs"]} - before

    yield submitted
    for job in rest.unended_jobs(rest_url):
        if job["jid"] not in before:
            rest.cancel(rest_url, job["jid"])


def test_the_cli_submits_reports_stops_with_a_savepoint_and_resumes(session_cluster, kafka_isolation, tmp_path, capsys,
                                                                     monkeypatch, new_jobs):
    from streaming.cli import main
    from streaming.config import PROFILE_ENV

    monkeypatch.chdir(tmp_path)  # as a user would, from a folder other than the project's
    monkeypatch.delenv(PROFILE_ENV, raising=False)  # `status` and `stop` below use their default profile

    overrides = [*kafka_isolation, f"checkpointing.directory={tmp_path / 'checkpoints'}",
                 f"checkpointing.savepoint_directory={tmp_path / 'savepoints'}", "checkpointing.interval_ms=1000"]
    settings = load_settings(failover_drill.CLUSTER_PROFILE, overrides)
    kafka_tools.create_topics(settings)
    options = ["--config", str(failover_drill.CLUSTER_PROFILE), *[arg for o in overrides for arg in ("--set", o)]]

    job_id, command = submit_and_wait_for_a_checkpoint(main, options, session_cluster, capsys)
    assert "flink run --detached" in command and "--pyModule streaming.job.flink_main" in command

    # A second submit while the job runs submits nothing: a second job would share the first one's
    # consumer group and transactional ids.
    assert main(["submit", *options]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == (f"job {job_id} ({identity.JOB_NAME}) is already running on "
                                   f"{session_cluster.cluster.rest_url}; not submitting another"), printed
    assert [job["jid"] for job in rest.unended_jobs(session_cluster.cluster.rest_url)
            if job["name"] == identity.JOB_NAME] == [job_id]
    assert new_jobs() == {job_id}

    assert main(["status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["job_id"] == job_id and status["state"] == "RUNNING"
    assert status["last_checkpoint"]["path"].startswith((tmp_path / "checkpoints").as_uri().replace("file://", "file:"))

    assert main(["stop", *options]) == 0  # with a savepoint, as flink stop
    savepoint = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert (tmp_path / "savepoints").is_dir() and any((tmp_path / "savepoints").iterdir())
    assert savepoint.endswith(next((tmp_path / "savepoints").iterdir()).name)
    # Raises unless the stopped job finishes.
    failover_drill.Watch(session_cluster.cluster, failover_drill.DrillRun(job_id=job_id)).until_finished(60)

    # Resume from the savepoint; then cancel, which keeps the last checkpoint; resume from that.
    resumed, _ = submit_and_wait_for_a_checkpoint(main, options + ["--from", savepoint], session_cluster, capsys)
    # Resuming again while the resumed job runs is an error (exit 1, one line), and submits nothing.
    assert main(["submit", *options, "--from", savepoint]) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and len(printed.err.strip().splitlines()) == 1, printed
    assert f"job {resumed} is running" in printed.err and "stop it first" in printed.err, printed.err
    assert [job["jid"] for job in rest.unended_jobs(session_cluster.cluster.rest_url)
            if job["name"] == identity.JOB_NAME] == [resumed]
    assert new_jobs() == {job_id, resumed}
    assert main(["status", resumed]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["checkpoint_counts"]["restored"] == 1
    retained = status["last_checkpoint"]["path"].removeprefix("file:")
    assert main(["stop", "--cancel", resumed]) == 0 and f"cancelled job {resumed}" in capsys.readouterr().out
    assert Path(retained, "_metadata").is_file(), "the last checkpoint was not kept on cancel"
    # `--from latest`: the newest savepoint or retained checkpoint, which is the cancelled job's last
    # checkpoint (one may have completed after `status` read it), not the older savepoint.
    again, first_line = submit_and_wait_for_a_checkpoint(main, options + ["--from", "latest"], session_cluster, capsys)
    chosen = Path(first_line.removeprefix("resuming from "))
    assert first_line.startswith("resuming from ") and chosen.parent.name == resumed, first_line
    assert int(chosen.name.removeprefix("chk-")) >= int(Path(retained).name.removeprefix("chk-")), (chosen, retained)
    assert main(["status", again]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_counts"]["restored"] == 1
    assert main(["stop", "--cancel", again]) == 0


def test_submit_checks_the_broker_and_every_topic_before_submitting(session_cluster, kafka_isolation, tmp_path,
                                                                    new_jobs):
    """The real command, from another folder: a topic of the profile that does not exist, or no
    broker at all, ends in one line and the documented exit code, and no job reaches the cluster."""
    settings = load_settings(failover_drill.CLUSTER_PROFILE, kafka_isolation)
    kafka_tools.create_topics(settings)  # all of this test's topics but the missing one below exist
    missing = f"{settings.kafka.scores_topic}-missing"
    options = ["--config", str(failover_drill.CLUSTER_PROFILE), *[arg for o in kafka_isolation for arg in ("--set", o)],
               "--set", f"checkpointing.directory={tmp_path / 'checkpoints'}"]
    done = riskstream("submit", *options, "--set", f"kafka.scores_topic={missing}", cwd=tmp_path, timeout_s=120)
    assert_one_line_failure(done, 2, f"topic {missing!r} does not exist", "riskstream topics")
    assert done.stdout == "" and new_jobs() == set()

    done = riskstream("submit", *options, "--set", f"kafka.bootstrap_servers={NOTHING_LISTENS}", cwd=tmp_path,
                      timeout_s=120)
    assert_one_line_failure(done, 3, f"no Kafka broker answers at {NOTHING_LISTENS}")
    assert done.stdout == "" and new_jobs() == set()


def submit_and_wait_for_a_checkpoint(main, arguments, session_cluster, capsys) -> tuple[str, str]:
    """`riskstream submit ARGUMENTS`; returns the job id and the flink run command it printed, once
    the job has completed a checkpoint."""
    assert main(["submit", *arguments]) == 0
    printed = capsys.readouterr().out.splitlines()
    job_id = printed[-1].removeprefix("submitted job ")
    watch = failover_drill.Watch(session_cluster.cluster, failover_drill.DrillRun(job_id=job_id))
    watch.until("a completed checkpoint", lambda: watch.checkpoints()["counts"]["completed"] > 0, 120, poll_s=0.5)
    return job_id, printed[0]

