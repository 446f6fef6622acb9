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

from streaming.ops import worker_forks

CHECK_EVERY_S = 1.0


def main() -> None:
    """`riskstream-python-worker -m MODULE ARGS...` runs MODULE as `python -m` does, watched: started
    by a JVM, as a fork of that JVM's fork server (streaming/ops/worker_forks.py), or in this process
    when none answers; anything else (`-c`, a script, `--version`) goes to this environment's Python
    unchanged."""
    arguments = sys.argv[1:]
    if arguments[:1] == [worker_forks.SERVE_FLAG]:  # JVM_PID JVM_START_MS (streaming/ops/worker_forks.py)
        worker_forks.serve(int(arguments[1]), int(arguments[2]), watch, run_module)
        return
    if len(arguments) < 2 or arguments[0] != "-m":
        os.execv(sys.executable, [sys.executable, *arguments])
    jvm = starting_jvm()
    if jvm is None:
        run_module(arguments[1:])
        return
    threading.Thread(target=watch, args=(jvm,), name="riskstream-jvm-watchdog", daemon=True).start()
    code = worker_forks.run_forked(jvm, arguments[1:])
    if code is None:
        os.write(2, b"riskstream: no Python worker fork server answered; this worker imports its own modules\n")
        run_module(arguments[1:])
        return
    sys.exit(code if code >= 0 else 128 - code)


def run_module(module_arguments: list[str]) -> None:
    """Runs `python -m MODULE ARGS` in this process (`module_arguments`: MODULE, ARGS...)."""
    sys.argv = list(module_arguments)
    runpy.run_module(module_arguments[0], run_name="__main__", alter_sys=True)


def starting_jvm() -> psutil.Process | None:
    """The nearest ancestor of this process that is a JVM; None when there is none."""
    for ancestor in psutil.Process().parents():
        try:
            if ancestor.name() == "java":
                return ancestor
        except psutil.Error:  # ended meanwhile
            continue
    return None


def watch(starter: psutil.Process, what: str = "the JVM") -> None:
    """Ends this process once `starter` (`what` it is, for the log line) has ended
    (worker_forks.still_running)."""
    while worker_forks.still_running(starter):
        time.sleep(CHECK_EVERY_S)
    # One line for the boot log, written straight to the file descriptor without waiting: a print
    # to sys.stderr at this point kept workers alive here (the thread never reached the exit once
    # the JVM was gone), so nothing may wait or raise before the exit.
    try:
        os.set_blocking(2, False)
        os.write(2, f"riskstream: {what} that started this Python worker (pid {starter.pid}) has ended; "
                    "the worker ends too\n".encode())
    except OSError:
        pass
    os._exit(1)


if __name__ == "__main__":  # the fork server's command (worker_forks.start_server)
    main()
