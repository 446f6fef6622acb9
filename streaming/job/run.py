"""Running the job from this process: on the embedded mini-cluster (`riskstream run`) or as the
client `flink run` starts on a session cluster; Ctrl-C stops it with a savepoint."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Callable, Literal, NamedTuple

from pyflink.common import CompletableFuture, JobClient, JobExecutionResult
from pyflink.datastream import StreamExecutionEnvironment

from streaming.config import Settings
from streaming.config.flink_options import local_cluster_options
from streaming.config.global_settings import check_no_earlier_versions
from streaming.job import pyflink_internals as internals
from streaming.job.graph import build_job, flink_configuration
from streaming.job.identity import JOB_NAME
from udfs.scoring import compile_model_code

# The accumulator in which RecordBundler.java counts every record the source emits (its RECORDS_READ).
RECORDS_READ_ACCUMULATOR = "records-read"


# ... and the labels a label stream's bundler counts (RecordBundler.LABELS_READ).
LABELS_READ_ACCUMULATOR = "labels-read"


# How often a waiting client looks at the job and at Ctrl-C, in seconds.
POLL_SECONDS = 0.2


# How long to wait before asking again for a savepoint that failed, in seconds.
SAVEPOINT_RETRY_SECONDS = 1.0



class JobRun(NamedTuple):
    """How a run of the job ended.

    wall_seconds: from the call to run_job to its return, start-up included.
    records_read: the records the source emitted into the job (RecordBundler's accumulator, counted
        apart from the outputs): all of them when the input ended, those before the savepoint when
        stopped; None when cancelled.
    ending: "finished" (the input ended); "stopped" (Ctrl-C: stopped with a savepoint, so every
        record read is in the committed outputs); "cancelled" (a second Ctrl-C: what was read since
        the last completed checkpoint is not in the committed outputs).
    savepoint: the savepoint's path when stopped, else None.
    """

    wall_seconds: float
    records_read: int | None
    ending: Literal["finished", "stopped", "cancelled"]
    savepoint: str | None = None
    labels_read: int | None = None  # as records_read, for a label stream (None without one)

    @property
    def interrupted(self) -> bool:
        return self.ending != "finished"


def run_job(settings: Settings, restore_from: str | None = None,
            on_started: Callable[[JobClient], None] | None = None) -> JobRun:
    """Builds and runs the job until its input ends (never, for a watched directory) or Ctrl-C.

    Ctrl-C (SIGINT) stops the job with a savepoint in `checkpointing.savepoint_directory`, so the
    sinks commit every record read before it; a second Ctrl-C cancels the job instead. Ctrl-C
    before the job is running raises KeyboardInterrupt, and whatever was being started ends with
    this process (PyFlink's gateway JVM exits when its Python process does). Call from the main
    thread, which gets SIGINT: elsewhere Ctrl-C is not handled here. A failed job raises, as before.
    With `restore_from` (a savepoint or retained checkpoint) the job resumes from it, as `flink run -s`
    does; without, it starts afresh: a global model versions folder of an earlier run raises
    ConfigError. `on_started` is called with the job's client once the job is submitted (on this
    thread). Returns how the run ended (JobRun); records_read counts this run's reading only.
    """
    if restore_from is None:
        check_no_earlier_versions(settings)
    started = time.perf_counter()
    # The calls into the JVM, the accumulator reads at the end included, happen inside this block:
    # a Ctrl-C during one would otherwise break py4j's connection and make it print tracebacks.
    with CtrlCPresses() as ctrl_c:
        client = _start_unless_interrupted(settings, ctrl_c, restore_from)
        if on_started is not None:
            on_started(client)
        result = client.get_job_execution_result()
        while not result.done() and not ctrl_c.count:
            time.sleep(POLL_SECONDS)
        if result.done():
            ending, savepoint = "finished", None
        else:
            ending, savepoint = _stop(client, result, settings.checkpointing.savepoint_directory, ctrl_c)
        counts = None if ending == "cancelled" else result.result()
        records_read, labels_read = (_accumulated(counts, RECORDS_READ_ACCUMULATOR),
                                     _accumulated(counts, LABELS_READ_ACCUMULATOR))
    return JobRun(time.perf_counter() - started, records_read, ending, savepoint, labels_read)


def records_read_so_far(client: JobClient) -> int | None:
    """What the job's source has read so far, as the TaskManagers last reported it to the job
    (with their heartbeats, every few seconds); None before their first report."""
    count = client.get_accumulators().result().get(RECORDS_READ_ACCUMULATOR)
    return None if count is None else int(count)


class CtrlCPresses:
    """Inside a `with` block, counts Ctrl-C presses (SIGINT) instead of raising KeyboardInterrupt.

    A KeyboardInterrupt raised inside a call into the JVM breaks py4j's connection mid-call and
    makes py4j log a traceback, so the job's client never lets one happen: it waits in Python and
    looks at `count`. Python handles signals in the main thread only, so elsewhere, or when SIGINT
    is ignored (a background job of a shell), this changes nothing.
    """

    def __init__(self) -> None:
        self.count = 0
        self._previous = None
        self._installed = False

    def __enter__(self) -> "CtrlCPresses":
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._pressed)
            self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)

    def _pressed(self, signum, frame) -> None:
        self.count += 1


def _start_unless_interrupted(settings: Settings, ctrl_c: CtrlCPresses, restore_from: str | None) -> JobClient:
    """start_job, unless Ctrl-C comes first: then raises KeyboardInterrupt.

    PyFlink's gateway JVM is launched first, on this thread (about 2 s): once connected, it exits
    as soon as this process does (its watchdog calls into this process), whereas one left before
    that lingers for 10 s and prints to our stdout. Building and submitting the job then runs on a
    helper thread, watched from this one, so that a Ctrl-C ends the command at once.
    """
    internals.jvm()  # launches PyFlink's gateway JVM
    if ctrl_c.count:
        raise KeyboardInterrupt
    outcome: list = []  # the started job's client, or what start_job raised

    def start() -> None:
        try:
            outcome.append(start_job(settings, restore_from))
        except BaseException as error:  # handed to the waiting thread, which raises it
            outcome.append(error)

    starter = threading.Thread(target=start, name="start-job", daemon=True)
    starter.start()
    while starter.is_alive() and not ctrl_c.count:
        starter.join(POLL_SECONDS)
    if not outcome:
        raise KeyboardInterrupt
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _stop(client: JobClient, result: CompletableFuture, savepoint_directory: str,
          ctrl_c: CtrlCPresses) -> tuple[Literal["finished", "stopped", "cancelled"], str | None]:
    """After a Ctrl-C: stops the job with a savepoint in `savepoint_directory`, or cancels it on a
    second Ctrl-C; `result` is the job's execution result. Returns ("stopped", the savepoint's
    path), ("cancelled", None), or ("finished", None) when the input ended before the savepoint."""
    _tell_user("stopping the job with a savepoint, so that every record read so far is committed; "
               "Ctrl-C again cancels it, and then what was read since the last checkpoint is not committed")
    savepoint_uri = Path(savepoint_directory).as_uri()
    stopping = internals.stop_with_savepoint(client, savepoint_uri)
    reasons_told = set()
    while not (result.done() and stopping.done()):
        if ctrl_c.count >= 2:
            _cancel(client, result, ctrl_c)
            return "cancelled", None
        failure = stopping.exception() if stopping.done() and not result.done() else None
        if failure is not None:  # the job runs on; mostly its tasks were still being deployed
            reason = _java_reason(failure)
            if reason not in reasons_told:
                reasons_told.add(reason)
                _tell_user(f"no savepoint yet ({reason}); trying again")
            time.sleep(SAVEPOINT_RETRY_SECONDS)
            stopping = internals.stop_with_savepoint(client, savepoint_uri)
        time.sleep(POLL_SECONDS)
    if stopping.exception() is not None:  # the input ended first
        return "finished", None
    return "stopped", stopping.result()


def _cancel(client: JobClient, result: CompletableFuture, ctrl_c: CtrlCPresses) -> None:
    """Cancels the job and waits until it has ended; a third Ctrl-C stops waiting (the job then
    ends with this process)."""
    _tell_user("cancelling the job")
    client.cancel()
    while not result.done() and ctrl_c.count < 3:
        time.sleep(POLL_SECONDS)


def _accumulated(result: JobExecutionResult | None, accumulator: str) -> int | None:
    count = None if result is None else result.get_accumulator_result(accumulator)
    return None if count is None else int(count)


def _java_reason(error: Exception) -> str:
    """The gist of a Java exception from py4j: its message's first line, without the exception
    class names (or Flink's "Failure reason" when it gives one)."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if "Failure reason: " in first_line:
        return first_line.rpartition("Failure reason: ")[2]
    return first_line.rpartition("Exception: ")[2]


def _tell_user(message: str) -> None:
    """What the run is doing, on stdout: stderr is for the one line that says how a run failed or ended."""
    print(f"riskstream: {message}", flush=True)


def start_job(settings: Settings, restore_from: str | None = None) -> JobClient:
    """Builds the job and starts it without waiting; the client can wait for it or cancel it.
    With `restore_from` (the path of a savepoint or retained checkpoint) the job resumes from it."""
    if settings.flink.python_execution_mode == "process":
        internals.run_python_workers_as_processes()
    compile_model_code()  # here, once, rather than in each Python worker as it starts
    configuration = flink_configuration(settings)
    for key, value in local_cluster_options(settings).items():
        configuration.set_string(key, value)
    if restore_from is not None:
        configuration.set_string("execution.state-recovery.path", restore_from)
    env = StreamExecutionEnvironment.get_execution_environment(configuration)
    build_job(env, settings)
    return env.execute_async(JOB_NAME)

