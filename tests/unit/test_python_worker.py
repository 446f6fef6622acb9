"""The Python workers' interpreter (streaming/ops/python_worker.py) and the cluster's sweep of workers
left behind (LocalCluster.python_workers / down), on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from streaming.config.flink_options import python_worker_executable
from streaming.ops.local_cluster import LocalCluster

BEAM_BOOT = "pyflink.fn_execution.beam.beam_boot"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_a_worker_ends_soon_after_the_jvm_that_started_it_is_killed(tmp_path):
    # As Flink starts one: a "java" process runs a shell script, which runs the worker.
    java = tmp_path / "java"
    java.symlink_to("/bin/bash")
    worker = [str(python_worker_executable()), "-m", "timeit", "-n", "1", "import time; time.sleep(120)"]
    jvm = subprocess.Popen([str(java), "-c", f"bash -c {subprocess.list2cmdline(worker)!r} & wait"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: any("timeit" in child.cmdline() for child in psutil.Process(jvm.pid).children(True)), 20)
        [worker_pid] = [child.pid for child in psutil.Process(jvm.pid).children(True) if "timeit" in child.cmdline()]
        time.sleep(1.5)  # a worker that would not end on its own is still there
        assert not gone(worker_pid)
        os.kill(jvm.pid, signal.SIGKILL)
        jvm.wait()
        assert wait_until(lambda: gone(worker_pid), 5), "the worker outlived its JVM"
    finally:
        for child in psutil.Process().children(recursive=True):
            child.kill()


def test_the_worker_interpreter_runs_anything_but_a_module_as_python_does():
    done = subprocess.run([str(python_worker_executable()), "-c", "import sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(sys.version_info[:2])


def test_cluster_down_kills_the_workers_of_this_cluster_left_behind_and_no_others(tmp_path):
    local = LocalCluster(tmp_path / "conf", tmp_path / "state")
    local.conf_dir.mkdir()

    def orphan_like(conf_dir: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", BEAM_BOOT],
                                env={**os.environ, "FLINK_CONF_DIR": str(conf_dir.resolve())})

    ours, theirs = orphan_like(local.conf_dir), orphan_like(tmp_path)
    try:
        assert wait_until(lambda: ours.pid in local.python_workers(), 10)
        assert theirs.pid not in local.python_workers()
        local.down()
        assert ours.wait(timeout=10) == -signal.SIGKILL
        assert theirs.poll() is None
    finally:
        ours.kill()
        theirs.kill()


PROBE = '''
import os, signal, sys, time
print(os.getpid(), os.getppid(), os.getcwd(), os.environ.get("PROBE"), signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
      flush=True)
if sys.argv[1] == "sleep":
    time.sleep(120)
sys.exit(int(sys.argv[1]))
'''


def run_under_a_jvm(tmp_path: Path, script: str, ignore_sigint: bool = False) -> subprocess.Popen:
    """`script` (bash) run by a process named "java", as Flink runs a worker through its shell script;
    `riskstream-python-worker` is $WORKER and the probe module (PROBE) is importable as `probe`."""
    java = tmp_path / "java"
    java.symlink_to("/bin/bash")
    (tmp_path / "probe.py").write_text(PROBE)
    env = {**os.environ, "WORKER": str(python_worker_executable()), "PYTHONPATH": str(tmp_path), "PROBE": "set"}
    return subprocess.Popen([str(java), "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None)


def fork_servers(jvm_pid: int) -> list[psutil.Process]:
    return [process for process in psutil.process_iter(["cmdline"])
            if "--serve-forks" in (process.info["cmdline"] or ()) and str(jvm_pid) in process.info["cmdline"]]


def test_workers_of_one_jvm_are_forks_of_one_server_with_the_requesters_stdio_folder_environment_and_exit_code(tmp_path):
    jvm = run_under_a_jvm(tmp_path, '$WORKER -m probe 3; echo "exit $?"; $WORKER -m probe 0; echo "exit $?"')
    try:
        out, err = jvm.communicate(timeout=120)
        lines = out.splitlines()
        assert [line for line in lines if line.startswith("exit")] == ["exit 3", "exit 0"], (out, err)
        probes = [line.split() for line in lines if not line.startswith("exit")]
        assert len(probes) == 2, (out, err)
        (first_pid, first_parent, *first_rest), (second_pid, second_parent, *second_rest) = probes
        assert first_parent == second_parent, "both workers are forks of one server"
        assert first_pid != second_pid
        assert psutil.Process(int(first_parent)).cmdline()[1:3] != ["-m", "probe"]
        assert first_rest == second_rest == [str(tmp_path), "set", "False"]
        assert "fork server" not in err  # no fallback to importing in the requester
    finally:
        for child in psutil.Process().children(recursive=True):
            child.kill()


def test_a_killed_jvm_takes_its_fork_server_and_every_fork_with_it(tmp_path):
    jvm = run_under_a_jvm(tmp_path, "$WORKER -m probe sleep & $WORKER -m probe sleep & wait")
    try:
        assert wait_until(lambda: len(fork_servers(jvm.pid)) == 1, 60)
        [server] = fork_servers(jvm.pid)
        assert wait_until(lambda: len(server.children()) == 2, 60)
        forks = server.children()
        os.kill(jvm.pid, signal.SIGKILL)
        jvm.wait()
        assert wait_until(lambda: all(gone(process.pid) for process in [server, *forks]), 10), "outlived the JVM"
    finally:
        for child in psutil.Process().children(recursive=True):
            child.kill()


def test_a_requester_passes_sigterm_on_to_its_fork_and_a_fork_ignores_what_the_requester_ignores(tmp_path):
    jvm = run_under_a_jvm(tmp_path, '$WORKER -m probe sleep; echo "exit $?"', ignore_sigint=True)
    try:
        assert wait_until(lambda: len(fork_servers(jvm.pid)) == 1, 60)
        [server] = fork_servers(jvm.pid)
        assert wait_until(lambda: len(server.children()) == 1, 60)
        [fork] = server.children()
        [requester] = [child for child in psutil.Process(jvm.pid).children() if "probe" in child.cmdline()]
        os.kill(requester.pid, signal.SIGINT)
        time.sleep(1)
        assert not gone(fork.pid), "the fork ignores SIGINT as its requester does"
        os.kill(requester.pid, signal.SIGTERM)
        out, err = jvm.communicate(timeout=20)
        assert out.splitlines()[-1] == f"exit {128 + signal.SIGTERM}", (out, err)
        assert out.split()[4] == "True"  # the probe saw SIGINT ignored
        assert wait_until(lambda: gone(fork.pid), 5)
    finally:
        for child in psutil.Process().children(recursive=True):
            child.kill()
