"""A fork server for the Python workers of one JVM: PyFlink and Beam imported once, each worker a
fork of it.

Every Python task of a job starts its own worker process, and each spends about 2 core-seconds
importing PyFlink's Beam harness (apache_beam, pyarrow, pandas, grpc) before it can take a record.
A job at parallelism 2 starts four at once, on every start and every restore: on two cores that was
5 to 6 s of the 13 to 15 s from a TaskManager kill to the job's first score again. Python's own
answer to "many processes, one expensive start-up" is a fork server (multiprocessing's
`forkserver`; PySpark's daemon does the same for its workers): one process per JVM imports the
harness once and forks a worker per request, which starts in milliseconds and shares the imported
pages with its siblings.

How a worker comes to be (streaming/ops/python_worker.py is the `python.executable`):
- the requester (what Flink's script started, `riskstream-python-worker -m MODULE ARGS`) connects to
  the fork server of its JVM, an abstract Unix socket named by the JVM's pid and start time, and
  starts one if none answers (the first request of a JVM waits for the imports);
- it sends its arguments, environment and working folder, with its stdin, stdout and stderr as file
  descriptors; the server forks; the fork takes them over and runs MODULE as `python -m` would;
- the requester stays in the process tree Flink knows, passes on the signals it gets, and exits with
  the fork's exit status, which the server reports when it reaps it.
Who ends whom: the requester ends when its JVM does (python_worker.watch), the fork when its
requester does, the server when its JVM does; so a killed TaskManager leaves nothing behind.

Only third-party modules are imported before the fork (PRELOADED): the project's own (`streaming`,
`udfs`) are imported by each worker from the path its request names, so a job that ships another
version of them gets its own.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import psutil

# What a PyFlink worker imports before its first record (about 2 core-seconds; numba for
# udfs/compiled_model.py).
PRELOADED = ("pyflink.fn_execution.beam.beam_boot", "pyflink.fn_execution.beam.beam_sdk_worker_main", "numba")
# How long a requester waits for a fork server it started to answer (its imports on a busy machine).
SERVER_START_TIMEOUT_S = 60.0
# How often the server checks that its JVM still runs, and reaps ended forks.
POLL_S = 0.2
JVM_CHECK_S = 1.0
# The argument of streaming/ops/python_worker.py that makes it a fork server.
SERVE_FLAG = "--serve-forks"
# The signals a requester passes on to its fork (unless it ignores them, as the fork then does).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The project's own packages, imported by each fork from its own path, never by the server.
OWN_PACKAGES = ("streaming", "udfs")


def address(jvm: psutil.Process) -> str:
    """The fork server's abstract Unix socket for `jvm` (by pid and start time, so a new JVM that
    reuses the pid gets its own)."""
    return f"\0riskstream-python-workers-{jvm.pid}-{int(jvm.create_time() * 1000)}"


def run_forked(jvm: psutil.Process, module_arguments: list[str]) -> int | None:
    """Runs `python -m MODULE ARGS` (`module_arguments`: MODULE, ARGS...) as a fork of `jvm`'s fork
    server, with this process's environment, folder and stdio, and returns its exit code (as
    `os.waitstatus_to_exitcode` gives it: negative for a signal). None when no fork server answers
    (the caller then runs the module itself)."""
    connection = _connect(address(jvm))
    if connection is None:
        # One requester starts the server (the one that gets the name "<address>-starting"), the
        # others wait for it: four servers importing at once would cost what four workers did.
        starting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            starting.bind(address(jvm) + "-starting")
            start_server(jvm)
        except OSError:
            pass
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while connection is None and time.monotonic() < deadline:
            time.sleep(0.05)
            connection = _connect(address(jvm))
        starting.close()
        if connection is None:
            return None
    with connection:
        # A signal this process ignores (SIGINT, as the JVM starts its workers) the fork ignores too;
        # the others are passed on to it.
        ignored = [number for number in FORWARDED_SIGNALS if signal.getsignal(number) == signal.SIG_IGN]
        request = json.dumps({"argv": module_arguments, "env": dict(os.environ), "cwd": os.getcwd(),
                              "sys_path": sys.path, "ignored_signals": ignored}).encode()
        socket.send_fds(connection, [struct.pack("!I", len(request))], [0, 1, 2])
        connection.sendall(request)
        replies = connection.makefile("r")
        started = replies.readline().split()
        if started[:1] != ["pid"]:
            return None
        fork = int(started[1])
        for signal_number in set(FORWARDED_SIGNALS) - set(ignored):
            signal.signal(signal_number, lambda received, _frame: _send_signal(fork, received))
        ended = replies.readline().split()
    if ended[:1] != ["exit"]:  # the server ended before its fork did
        _send_signal(fork, signal.SIGKILL)
        return 1
    return int(ended[1])


def serve(jvm_pid: int, jvm_start_ms: int, watch: Callable[[psutil.Process, str], None],
          run_module: Callable[[list[str]], None]) -> None:
    """The fork server of the JVM `jvm_pid` (started at `jvm_start_ms`): imports PRELOADED, then forks
    a worker for each request on its socket until that JVM has ended. Returns at once if another
    server already holds the socket. In a fork, `watch(requester, what)` ends it once its requester
    has ended (python_worker.watch), and `run_module(module_arguments)` runs the module."""
    try:
        jvm = psutil.Process(jvm_pid)
    except psutil.NoSuchProcess:
        return
    if int(jvm.create_time() * 1000) != jvm_start_ms:
        return
    for module in PRELOADED:
        try:
            __import__(module)
        except ImportError:  # numba is optional for the harness; a worker that needs it imports it
            pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address(jvm))
    except OSError:  # another requester's server won the race
        return
    listener.listen(64)
    requesters: dict[int, socket.socket] = {}  # fork pid -> the requester's connection
    checked_jvm = time.monotonic()
    while True:
        readable, _, _ = select.select([listener], [], [], POLL_S)
        if readable:
            connection, _ = listener.accept()
            fork = _fork_for(connection, listener, requesters, watch, run_module)
            if fork is not None:
                requesters[fork] = connection
            else:
                connection.close()
        _report_ended(requesters)
        if time.monotonic() - checked_jvm >= JVM_CHECK_S:
            checked_jvm = time.monotonic()
            if not still_running(jvm):
                return


def _fork_for(connection: socket.socket, listener: socket.socket, requesters: dict[int, socket.socket],
              watch: Callable[[psutil.Process, str], None], run_module: Callable[[list[str]], None]) -> int | None:
    """Reads one request and forks its worker; the fork's pid (None for a request cut short)."""
    header, fds, _, _ = socket.recv_fds(connection, 4, 3)
    if len(header) < 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return None
    (length,) = struct.unpack("!I", header)
    payload = b""
    while len(payload) < length:
        chunk = connection.recv(length - len(payload))
        if not chunk:
            break
        payload += chunk
    if len(payload) < length:
        for fd in fds:
            os.close(fd)
        return None
    request = json.loads(payload)
    requester_pid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    fork = os.fork()
    if fork == 0:
        listener.close()
        for other in requesters.values():
            other.close()
        connection.close()
        _become_worker(request, fds, requester_pid, watch, run_module)  # does not return
    for fd in fds:
        os.close(fd)
    connection.sendall(f"pid {fork}\n".encode())
    return fork


def _become_worker(request: dict[str, Any], fds: list[int], requester_pid: int,
                   watch: Callable[[psutil.Process, str], None], run_module: Callable[[list[str]], None]) -> None:
    """In the fork: takes over the requester's stdio, environment, folder and path, ends with the
    requester, and runs the module as `python -m` does; exits with its status."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = request["sys_path"]
        for name in [name for name in sys.modules if name.partition(".")[0] in OWN_PACKAGES]:
            del sys.modules[name]
        for signal_number in FORWARDED_SIGNALS:  # as a Python process started by the requester would have them
            if signal_number in request["ignored_signals"]:
                signal.signal(signal_number, signal.SIG_IGN)
            elif signal_number == signal.SIGINT:
                signal.signal(signal_number, signal.default_int_handler)
            else:
                signal.signal(signal_number, signal.SIG_DFL)
        requester = psutil.Process(requester_pid)
        threading.Thread(target=watch, args=(requester, "the requesting process"),
                         name="riskstream-requester-watchdog", daemon=True).start()
        run_module(request["argv"])
        code = 0
    except SystemExit as exit_request:
        code = exit_request.code if isinstance(exit_request.code, int) else (0 if exit_request.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as python -m would, then the fork exits
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _report_ended(requesters: dict[int, socket.socket]) -> None:
    """Reaps the forks that ended and tells each one's requester its exit code."""
    while requesters:
        try:
            fork, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if fork == 0:
            return
        connection = requesters.pop(fork, None)
        if connection is not None:
            try:
                connection.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:  # the requester is gone
                pass
            connection.close()


def _connect(name: str) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(name)
    except OSError:
        connection.close()
        return None
    return connection


def start_server(jvm: psutil.Process, environment: dict[str, str] | None = None) -> None:
    """Starts the fork server of `jvm` (with `environment`, default this process's) in its own
    session, detached from this process's stdio (a server holding Flink's pipe open would keep the
    worker's log reader waiting). It imports PRELOADED, then serves until `jvm` ends; if another
    already serves `jvm`, it ends at once."""
    # The module named last tells the server's processes apart as Python workers (for `cluster
    # down` and the benchmark's CPU per process kind).
    subprocess.Popen([sys.executable, "-m", "streaming.ops.python_worker", SERVE_FLAG, str(jvm.pid),
                      str(int(jvm.create_time() * 1000)), PRELOADED[0]],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True, env=environment)


def _send_signal(pid: int, signal_number: int) -> None:
    try:
        os.kill(pid, signal_number)
    except ProcessLookupError:
        pass


def still_running(process: psutil.Process) -> bool:
    """Whether `process` still runs: is_running also tells a new process that reused its pid by
    its start time, and a killed JVM whose adopter does not reap it stays a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
