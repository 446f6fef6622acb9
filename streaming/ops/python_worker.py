"""The interpreter Flink starts the job's Python workers with (`python.executable`, installed as
`riskstream-python-worker`): this environment's Python, plus a watchdog that ends the worker when
the JVM that started it is gone.

Flink starts a worker through a shell script (pyflink-udf-runner.sh: `$python -m
pyflink.fn_execution.beam.beam_boot ...`), so the worker is the JVM's grandchild. When the
TaskManager's JVM dies without stopping its workers (SIGKILL, the kernel's OOM killer), the script
and the worker are re-parented and the worker lives on, holding its memory (7 minutes and more when
measured, with no sign of ending): nothing in Beam's harness notices. The kernel's parent-death signal
(PR_SET_PDEATHSIG) would not help: the worker's parent is the script, which outlives the JVM.
So the watchdog checks once a second that the nearest `java` ancestor found at start (the
TaskManager, or a mini-cluster's JVM) still runs, the same process by its start time, and ends the
worker within about a second of its death.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time

import psutil

CHECK_EVERY_S = 1.0


def main() -> None:
    """`riskstream-python-worker -m MODULE ARGS...` runs MODULE as `python -m` does, watched;
    anything else (`-c`, a script, `--version`) goes to this environment's Python unchanged."""
    arguments = sys.argv[1:]
    if len(arguments) < 2 or arguments[0] != "-m":
        os.execv(sys.executable, [sys.executable, *arguments])
    jvm = starting_jvm()
    if jvm is not None:
        threading.Thread(target=watch, args=(jvm,), name="riskstream-jvm-watchdog", daemon=True).start()
    sys.argv = [arguments[1], *arguments[2:]]
    runpy.run_module(arguments[1], run_name="__main__", alter_sys=True)


def starting_jvm() -> psutil.Process | None:
    """The nearest ancestor of this process that is a JVM; None when there is none."""
    for ancestor in psutil.Process().parents():
        try:
            if ancestor.name() == "java":
                return ancestor
        except psutil.Error:  # ended meanwhile
            continue
    return None


def watch(jvm: psutil.Process) -> None:
    """Ends this process once `jvm` has ended (is_running also tells a new process that reused
    its pid by its start time; a killed JVM whose adopter does not reap it stays a zombie)."""
    try:
        while jvm.is_running() and jvm.status() != psutil.STATUS_ZOMBIE:
            time.sleep(CHECK_EVERY_S)
    except psutil.NoSuchProcess:  # reaped between the two checks
        pass
    # One line for the boot log, written straight to the file descriptor without waiting: a print
    # to sys.stderr at this point kept workers alive here (the thread never reached the exit once
    # the JVM was gone), so nothing may wait or raise before the exit.
    try:
        os.set_blocking(2, False)
        os.write(2, f"riskstream: the JVM that started this Python worker (pid {jvm.pid}) has ended; "
                    "the worker ends too\n".encode())
    except OSError:
        pass
    os._exit(1)
