"""Integration tier: the real job on a Flink mini-cluster, fed from real files."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from streaming.config import Settings, load_settings
from streaming.ops import local_cluster, rest
from streaming.reporting.outputs import committed_lines
from tests.output_schemas import assert_lines_valid, assert_output_dir_valid, output_of_topic

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_PROFILE = PROJECT / "conf" / "local.yaml"


# The fixtures through which a test reaches a shared service, and the marker each gives it: a test
# that needs the broker or the session cluster gets it from these fixtures (never by its own
# address), so `pytest -m "not kafka and not session_cluster"` leaves both services alone.
SERVICE_MARKERS = {"kafka_isolation": "kafka", "session_cluster": "session_cluster"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            for fixture, marker in SERVICE_MARKERS.items():
                if fixture in item.fixturenames:  # every fixture it uses, also through other fixtures
                    item.add_marker(marker)


# Output folders already checked against their schemas (by the test that made them), so that the
# session's last check does not read them again.
SCHEMA_CHECKED: set[str] = set()


@pytest.fixture(autouse=True)
def outputs_match_their_schemas(request, monkeypatch):
    """Every output line a test produces is valid against its published schema (schemas/,
    tests/output_schemas.py): the messages it reads from an output topic as it reads them, and
    after the test every committed line under its tmp_path."""
    from streaming.ops import kafka_tools

    real_tail = kafka_tools.tail

    def checked_tail(settings, topic, *args, **kwargs):
        name = output_of_topic(settings, topic)
        for message in real_tail(settings, topic, *args, **kwargs):
            if name is not None and message[3] is not None:
                assert_lines_valid(name, [message[3]], f" (topic {topic}, offset {message[1]})")
            yield message

    monkeypatch.setattr(kafka_tools, "tail", checked_tail)
    # Asked for before the test runs: after it, tmp_path may already be torn down.
    tmp_path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp_path is not None:
        SCHEMA_CHECKED.update(assert_output_dir_valid(tmp_path))


@pytest.fixture(scope="session", autouse=True)
def session_outputs_match_their_schemas(tmp_path_factory):
    """The outputs of module and session fixtures (in folders of their own), checked at the end."""
    yield
    assert_output_dir_valid(tmp_path_factory.getbasetemp(), skip=SCHEMA_CHECKED)


@dataclass
class JobOutputs:
    settings: Settings
    scores: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    snapshots: list[dict[str, Any]]
    job_run: Any = None  # streaming.job.run.JobRun: how the run ended, the records its source read


def run_scoring_job(workdir: Path, lines: list[bytes], *overrides: str,
                    file_name: str = "transactions.jsonl") -> JobOutputs:
    """Writes `lines` to one input file, `workdir / file_name`, runs the real job on it with the
    local profile plus `overrides`, and returns everything it committed."""
    return run_scoring_job_on_files(workdir, {file_name: lines}, *overrides)


def run_scoring_job_on_files(workdir: Path, files: dict[str, list[bytes]], *overrides: str,
                             unterminated: frozenset[str] = frozenset()) -> JobOutputs:
    """`run_scoring_job` on several input files at once: each name's lines written to `workdir / name`,
    each ended by a newline but in the files named in `unterminated`, whose last line has none."""
    from streaming.job.run import run_job  # imports pyflink: only the integration tier pays for it

    workdir.mkdir(parents=True, exist_ok=True)
    sources = []
    for file_name, lines in files.items():
        sources.append(workdir / file_name)
        ending = b"" if file_name in unterminated else b"\n"
        sources[-1].write_bytes(b"\n".join(lines) + ending)
    # A JSON string is YAML: any character of a path survives.
    settings = load_settings(LOCAL_PROFILE, [
        f"source.paths=[{', '.join(json.dumps(str(source)) for source in sources)}]",
        f"output.path={workdir / 'out'}",
        f"checkpointing.directory={workdir / 'checkpoints'}",
        *overrides,
    ])
    job_run = run_job(settings)
    out = Path(settings.output.path)
    return JobOutputs(
        settings=settings,
        scores=list(committed_lines(out / "scores")),
        dead_letters=list(committed_lines(out / "dead-letters")),
        snapshots=list(committed_lines(out / "model-snapshots")),
        job_run=job_run,
    )


@pytest.fixture
def scoring_job():
    return run_scoring_job


@dataclass
class SharedRun:
    """One run of the job (the local profile, model.snapshot_every=1) on the inputs of several
    tests that only read what it committed, each in a file of its own: the accounting test's
    generated stream, the privacy test's spellings of an account id, the source-tag test's file
    with an awkward name, the records-read test's file whose last line has no newline. Saves a job
    start per test (a mini-cluster and its Python workers)."""
    folder: Path  # where the input files and `out/` are
    inputs: dict[str, list[bytes]]  # file name -> its lines
    outputs: JobOutputs  # everything the run committed

    def path(self, file_name: str) -> str:
        return str(self.folder / file_name)

    def dead_letters_of(self, file_name: str) -> list[dict[str, Any]]:
        return [letter for letter in self.outputs.dead_letters if letter["source"]["file"] == self.path(file_name)]


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> SharedRun:
    from tests.integration import test_accounting, test_dead_letter_privacy, test_interrupt, test_source_tags

    folder = tmp_path_factory.mktemp("shared-run")
    inputs = {test_accounting.INPUT_FILE: [line for _, line in test_accounting.generated_stream()],
              test_dead_letter_privacy.INPUT_FILE: test_dead_letter_privacy.privacy_records()[0],
              test_source_tags.AWKWARD_NAME: test_source_tags.LINES,
              test_interrupt.UNTERMINATED_FILE: test_interrupt.records_read_lines()}
    return SharedRun(folder, inputs, run_scoring_job_on_files(folder, inputs, "model.snapshot_every=1",
                                                              unterminated=frozenset({test_interrupt.UNTERMINATED_FILE})))


@pytest.fixture
def kafka_isolation():
    """Overrides giving this test topics, a consumer group and transactional ids of its own; the
    topics are deleted afterwards so the broker does not accumulate them."""
    from streaming.ops import kafka_tools

    overrides = kafka_tools.isolated_overrides("test")
    yield overrides
    kafka_tools.delete_topics(load_settings(PROJECT / "conf" / "kafka.yaml", overrides))


@pytest.fixture
def kafka_settings(kafka_isolation):
    """The Kafka profile on this test's own topics."""
    return load_settings(PROJECT / "conf" / "kafka.yaml", kafka_isolation)


@dataclass
class SessionCluster:
    cluster: Any  # streaming.ops.local_cluster.LocalCluster
    overrides: dict[str, str]  # conf/flink/test.yaml: also given to TaskManagers started later

    def cancel_jobs(self) -> None:
        """Cancels every job on the cluster that has not ended."""
        from streaming.ops import rest

        for job in rest.unended_jobs(self.cluster.rest_url):
            rest.cancel(self.cluster.rest_url, job["jid"])


@pytest.fixture(scope="session")
def session_cluster():
    """The local session cluster with the test overrides (short heartbeats); started here unless
    one is already up, and then stopped here."""
    from streaming.ops.local_cluster import LocalCluster, flink_overrides

    overrides = flink_overrides(PROJECT / "conf" / "flink" / "test.yaml")
    local = LocalCluster.of_project(PROJECT)
    started = local.up(overrides)
    yield SessionCluster(local, overrides)
    if started:
        local.down()


@pytest.fixture
def second_taskmanager(session_cluster):
    """A second TaskManager for this test: a job at parallelism 4 needs 8 slots (its two slot
    sharing groups) and the test cluster's TaskManager has 4. Afterwards the cluster has as many
    TaskManagers as before: the ones started since (this one, or a replacement of a TaskManager the
    test killed) are stopped, the newest kept, with SIGTERM and then any Python worker they leave."""
    local = session_cluster.cluster
    before = set(local.taskmanager_pids())
    count = rest.rest(local.rest_url, "GET", "/overview")["taskmanagers"]
    local.start_taskmanager(session_cluster.overrides)
    local.wait_for_taskmanagers(count + 1)
    [started] = set(local.taskmanager_pids()) - before
    yield started
    session_cluster.cancel_jobs()
    running = local.taskmanager_pids()
    extra = sorted(set(running) - before, key=lambda pid: psutil.Process(pid).create_time())
    for pid in extra[:max(0, len(running) - count)]:
        workers = local_cluster.descendants(pid)
        try:
            os.kill(pid, signal.SIGTERM)
            psutil.Process(pid).wait(30)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
        except psutil.TimeoutExpired:
            local_cluster.kill_tree(pid)
        for worker in workers:
            local_cluster.kill_tree(worker)  # none should be left; ends any that is
    deadline = time.monotonic() + 30
    while rest.rest(local.rest_url, "GET", "/overview")["taskmanagers"] > count and time.monotonic() < deadline:
        time.sleep(0.5)
