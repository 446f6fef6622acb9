"""`riskstream cluster up|down` and `riskstream stop`, the real command run from a temporary folder,
against a fake of Flink's REST API (tests/fake_flink.py). `cluster` runs from a copy of the project
(tests.cli.project_copy), so it sees only the copy's cluster, never one the developer runs. No
Flink starts."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.cli import PROJECT, assert_one_line_failure, project_copy, riskstream
from tests.fake_flink import FakeFlinkRest

CLUSTER = str(PROJECT / "conf" / "cluster.yaml")


def with_rest_port(project, port: int) -> None:
    """Sets rest.port in the copy's conf/flink/config.yaml, where `cluster up` looks by default."""
    config = project / "conf" / "flink" / "config.yaml"
    text, replaced = re.subn(r"(?m)^  port: 18081$", f"  port: {port}", config.read_text())
    assert replaced == 1
    config.write_text(text)


def test_cluster_up_refuses_a_port_that_another_programs_rest_api_answers_on(tmp_path):
    project = project_copy(tmp_path / "project")
    with FakeFlinkRest() as fake:
        with_rest_port(project, fake.port)
        done = riskstream("cluster", "up", cwd=tmp_path, project=project, timeout_s=60)
    assert_one_line_failure(done, 1, f"127.0.0.1:{fake.port} is taken by another program",
                            "not this project's cluster", "rest.port: PORT", "--overrides")
    assert done.stdout == ""
    assert not (project / "var" / "flink" / "pid").exists()  # nothing was started


def test_cluster_up_finds_the_rest_port_in_its_overrides(tmp_path):
    project = project_copy(tmp_path / "project")
    overrides = tmp_path / "port.yaml"
    with FakeFlinkRest() as fake:
        overrides.write_text(f"rest.port: {fake.port}\n")
        done = riskstream("cluster", "up", "--overrides", str(overrides), cwd=tmp_path, project=project, timeout_s=60)
    assert_one_line_failure(done, 1, f"127.0.0.1:{fake.port} is taken by another program")


def test_cluster_up_recognises_its_own_cluster_listening_on_the_port(tmp_path):
    """A process of this cluster (its command line names the copy's conf/flink, as the JVMs' do)
    that listens on the REST port: the cluster is already running."""
    project = project_copy(tmp_path / "project")
    conf_dir = project / "conf" / "flink"
    own = subprocess.Popen([sys.executable, "-m", "tests.fake_flink", "--configDir", str(conf_dir)],
                           cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    try:
        port = int(own.stdout.readline())
        with_rest_port(project, port)
        done = riskstream("cluster", "up", cwd=tmp_path, project=project, timeout_s=60)
    finally:
        own.kill()
        own.wait()
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip() == f"cluster already running: web UI and REST API at http://127.0.0.1:{port}"


def test_cluster_down_with_nothing_running_says_so(tmp_path):
    project = project_copy(tmp_path / "project")
    stale = project / "var" / "flink" / "pid" / "flink-user-standalonesession.pid"
    stale.parent.mkdir(parents=True)
    stale.write_text("4194303\n")  # a pid of a JobManager gone long ago
    done = riskstream("cluster", "down", cwd=tmp_path, project=project, timeout_s=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip() == (f"no cluster running (no JobManager or TaskManager of {project / 'conf' / 'flink'}); "
                                   "nothing to stop")
    assert not stale.exists()


# ---------------------------------------------------------------- stop


JOB = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def a_running_job() -> dict:
    """Answers of a cluster running one scoring job that can be stopped with a savepoint or cancelled."""
    return {"GET /jobs/overview": {"jobs": [{"jid": JOB, "name": "riskstream-scoring", "state": "RUNNING"}]},
            f"POST /jobs/{JOB}/stop": {"request-id": "trigger-1"},
            f"GET /jobs/{JOB}/savepoints/trigger-1": {"status": {"id": "COMPLETED"},
                                                      "operation": {"location": "file:/savepoints/savepoint-a1b2c3"}},
            f"PATCH /jobs/{JOB}?mode=cancel": None,
            f"GET /jobs/{JOB}": {"state": "CANCELED"}}


def test_stop_takes_a_savepoint_as_flink_stop_does(tmp_path):
    with FakeFlinkRest(a_running_job()) as fake:
        done = riskstream("stop", "--set", f"flink.rest_address={fake.address}", cwd=tmp_path, timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"stopped job {JOB} with savepoint file:/savepoints/savepoint-a1b2c3"
    assert fake.called("POST", f"/jobs/{JOB}/stop") and not fake.called("PATCH", f"/jobs/{JOB}?mode=cancel")
    body = next(body for method, path, body in fake.requests if method == "POST")
    assert body == {"targetDirectory": (PROJECT / "var" / "cluster" / "savepoints").as_uri(), "drain": False}


def test_stop_cancel_cancels_without_a_savepoint(tmp_path):
    with FakeFlinkRest(a_running_job()) as fake:
        done = riskstream("stop", "--cancel", "--set", f"flink.rest_address={fake.address}", cwd=tmp_path,
                          timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cancelled job {JOB}"
    assert fake.called("PATCH", f"/jobs/{JOB}?mode=cancel") and not fake.called("POST", f"/jobs/{JOB}/stop")


def test_stop_help_says_it_takes_a_savepoint_unless_cancel(tmp_path):
    helped = riskstream("stop", "--help", cwd=tmp_path)
    text = " ".join(helped.stdout.split())
    assert "with a savepoint, as `flink stop` does" in text and "--cancel cancels it instead" in text, text
    assert "--cancel cancel the job without a savepoint, as `flink cancel` does" in text, text
