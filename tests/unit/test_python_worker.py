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
