"""`riskstream run`: the job on the embedded mini-cluster, with progress, Ctrl-C and a summary."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import traceback
from pathlib import Path

from streaming.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, FLINK_LOG_DIR, UsageError, fail, resume_path
from streaming.config import ConfigError, load_settings

# How often `riskstream run` prints its progress, in seconds.
PROGRESS_SECONDS = 10.0


def run_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.overrides)
    records_in_files = _check_inputs(settings)
    _check_output(settings)
    summary_json = _check_summary_json(args.summary_json)
    restore_from = resume_path(args.from_path, settings, "run --from") if args.from_path is not None else None
    from streaming.config.flink_options import job_jars

    job_jars(settings)  # a missing jar: one line naming it, before Flink starts
    os.environ.setdefault("FLINK_LOG_DIR", str(FLINK_LOG_DIR))
    from streaming.job.run import CtrlCPresses
    from streaming.reporting.outputs import RunOutputs, write_run_record

    outputs = RunOutputs(Path(settings.output.path)) if settings.output.kind == "files" else None
    if outputs is not None and restore_from is None:  # a resumed run continues the outputs it finds
        outputs.set_previous_aside()  # with the previous run's report, which would no longer match
        write_run_record(outputs.folder, settings, args.config, args.overrides)  # for the report
    try:
        # run_job handles Ctrl-C while the job starts and runs. Once it has ended, a Ctrl-C would
        # only cut the summary short and leave the previous outputs in .previous: it is ignored.
        with CtrlCPresses():
            return _run_and_report(settings, outputs, records_in_files, restore_from, summary_json)
    finally:
        _ignore_ctrl_c_until_exit()


def _run_and_report(settings, outputs, records_in_files: int | None, restore_from: str | None,
                    summary_json: Path | None) -> int:
    from streaming.job.run import run_job

    progress = _Progress(outputs.folder) if outputs is not None else None
    try:
        job_run = run_job(settings, restore_from, progress.watch if progress is not None else None)
    except KeyboardInterrupt:  # Ctrl-C before the job was running: nothing of this run to keep
        if outputs is not None and restore_from is None:
            outputs.restore_previous()
        return fail("interrupted before the job started; nothing changed", EXIT_INTERRUPTED)
    except Exception as error:  # the job failed: the user gets one line, the log gets the rest
        kept = ""
        if outputs is not None and restore_from is None:
            outputs.restore_previous()
            kept = f"; previous outputs kept in {outputs.folder}" if outputs.had_previous else ""
        return fail(f"the job failed: {_cause(error)}{kept}; details in {_write_failure_log(error)}", EXIT_FAILED)
    finally:
        if progress is not None:
            progress.stop()
    return _report(settings, job_run, outputs, records_in_files, restore_from, summary_json)


def _ignore_ctrl_c_until_exit() -> None:
    """After a run, Ctrl-C is ignored until the process ends: as the interpreter exits it releases
    PyFlink's Java objects, each with a call into the JVM, and a KeyboardInterrupt in one of those
    makes py4j print its tracebacks (with nothing left to stop). Only the main thread can do this."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _report(settings, job_run, outputs, records_in_files: int | None, restore_from: str | None,
            summary_json: Path | None) -> int:
    """After the job ended: the summary (file output), the savepoint to resume from, the exit code."""
    from streaming.reporting.outputs import summarize

    earlier = _read_counts(restore_from) if restore_from is not None else {"records_read": 0, "labels_read": 0}
    stopped = savepoint = None
    if job_run.savepoint is not None:
        _write_read_counts(job_run.savepoint, _plus(earlier, "records_read", job_run.records_read),
                           _plus(earlier, "labels_read", job_run.labels_read))
        savepoint = str(_local_path(job_run.savepoint) or job_run.savepoint)
        stopped = f"stopped with savepoint {savepoint}; resume with `riskstream run --from {savepoint}`"
    if outputs is None:  # Kafka output: read it with `riskstream tail`
        if stopped is not None:
            return fail(f"{stopped} (after {job_run.records_read:,} records)", EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED if job_run.interrupted else EXIT_OK
    outputs.drop_previous()
    if job_run.ending == "cancelled":  # a second Ctrl-C: no savepoint, so nothing to reconcile
        return fail(f"cancelled; {outputs.folder} holds what the last completed checkpoint committed, "
                     "not what was read after it", EXIT_INTERRUPTED)
    # Records read: counted in the input files when the job read them all, else by the job's source
    # (plus, for a resumed run, what the runs before it read, as its restore point says).
    finished_files = job_run.ending == "finished" and records_in_files is not None
    records_read = records_in_files if finished_files else _plus(earlier, "records_read", job_run.records_read)
    summary = summarize(outputs.folder, records_read, job_run.wall_seconds, settings.labels.streamed,
                        _plus(earlier, "labels_read", job_run.labels_read), settings.model.drift.detector != "none",
                        records_in_files)
    print("\n".join(summary.lines()))
    print(f"outputs in {outputs.folder}")
    if summary_json is not None:
        figures = {"ending": job_run.ending, "savepoint": savepoint, "resumed_from": restore_from,
                   "output": str(outputs.folder), **summary.as_json()}
        summary_json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if not summary.reconciled:
        return fail("the accounting does not reconcile: records read != scored + dead-lettered", EXIT_FAILED)
    if stopped is not None:
        return fail(stopped, EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED if job_run.interrupted else EXIT_OK


# The file `riskstream run` writes into a savepoint its Ctrl-C took: the records (and labels) read
# up to the savepoint, over every run that led to it. Flink's accumulators start from 0 in a
# resumed job, so a run resumed from the savepoint adds these to its own counts.
READ_COUNTS_FILE = "riskstream-read-counts.json"


def _local_path(uri: str) -> Path | None:
    """The local path of a savepoint's path or file: URI; None on a remote file system."""
    local = uri.removeprefix("file://").removeprefix("file:")
    return None if "://" in local else Path(local)


def _write_read_counts(savepoint: str, records_read: int | None, labels_read: int | None) -> None:
    folder = _local_path(savepoint)
    if folder is not None and folder.is_dir():
        counts = {"records_read": records_read, "labels_read": labels_read}
        (folder / READ_COUNTS_FILE).write_text(json.dumps(counts) + "\n", encoding="utf-8")


def _read_counts(restore_from: str) -> dict[str, int | None]:
    """What the runs before a restore point read; None for each count it does not hold (a retained
    checkpoint, a savepoint taken otherwise)."""
    folder = _local_path(restore_from)
    counts_file = folder / READ_COUNTS_FILE if folder is not None else None
    if counts_file is None or not counts_file.is_file():
        return {"records_read": None, "labels_read": None}
    return json.loads(counts_file.read_text(encoding="utf-8"))


def _plus(earlier: dict[str, int | None], name: str, this_run: int | None) -> int | None:
    """This run's count plus the earlier runs' (None when either is not known)."""
    return None if earlier.get(name) is None or this_run is None else earlier[name] + this_run


def _check_output(settings) -> None:
    """That the job can write under output.path: no file where it, or a folder above it, would be.
    Raises ConfigError naming the setting."""
    if settings.output.kind != "files":
        return
    folder = Path(settings.output.path)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if existing == folder and not folder.is_dir():
        raise ConfigError(f"output.path: {folder} is a file, not a folder; give a folder (created if missing)")
    if not existing.is_dir():
        raise ConfigError(f"output.path: cannot create {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output.path: cannot write in {existing} (permission denied)")


def _check_summary_json(path: Path | None) -> Path | None:
    """`--summary-json FILE` checked before the job starts: its folder exists, and it is not a folder."""
    if path is None:
        return None
    if path.is_dir():
        raise UsageError(f"run --summary-json: {path} is a folder; give a file to write")
    if not path.parent.is_dir():
        raise UsageError(f"run --summary-json: the folder {path.parent} does not exist")
    return path


class _Progress:
    """While a file-output job runs, prints every PROGRESS_SECONDS what its source has read so far
    (as the job last reported it, every few seconds), the scores and dead letters it has written
    (committed, or in part files a checkpoint will commit), and those it has committed, with their
    rate since the last line (outputs are committed at each checkpoint, so those figures move in
    steps, and stay at 0 until the first checkpoint)."""

    def __init__(self, folder: Path):
        from streaming.reporting.outputs import CommittedCounts

        self.folder = folder
        self.counts = CommittedCounts(folder)
        self.client = None  # the job's client, once it is submitted
        self.done = threading.Event()
        self.printing = threading.Lock()  # held while a line is made and printed, so none comes after stop()
        self.thread = threading.Thread(target=self._print_progress, name="progress", daemon=True)
        self.thread.start()

    def watch(self, client) -> None:
        """From now on, also report what the job `client` runs has read."""
        self.client = client

    def _read_so_far(self) -> str:
        from streaming.job.run import records_read_so_far

        try:
            read = records_read_so_far(self.client) if self.client is not None else None
        except Exception:  # the job ended meanwhile: the summary comes next
            read = None
        return "not reported yet" if read is None else f"{read:,}"

    def _print_progress(self) -> None:
        from streaming.reporting.outputs import uncommitted_line_count

        last_total, last_at = 0, time.monotonic()
        while not self.done.wait(PROGRESS_SECONDS):
            read = self._read_so_far()
            with self.printing:
                if self.done.is_set():  # the job ended while it answered: the summary says the rest
                    return
                counts = self.counts.counts()
                written = {name: counts[name] + uncommitted_line_count(self.folder / name) for name in counts}
                total, now = counts["scores"] + counts["dead-letters"], time.monotonic()
                rate = (total - last_total) / (now - last_at)
                print(f"read so far: {read}; written: {written['scores']:,} scored, {written['dead-letters']:,} "
                      f"dead-lettered; committed so far: {counts['scores']:,} scored, "
                      f"{counts['dead-letters']:,} dead-lettered ({rate:,.0f} records/s)", flush=True)
            last_total, last_at = total, now

    def stop(self) -> None:
        """No line after this returns. Does not wait for the thread, which may be waiting for an
        answer from a job that has just ended (it is a daemon, and ends with the command)."""
        with self.printing:
            self.done.set()


def _check_inputs(settings) -> int | None:
    """Checks that the job's input exists (and the broker answers, in Kafka mode) before anything
    starts; returns how many records the input files hold (None for other sources). Raises
    ConfigError naming the setting, or ServiceUnreachable."""
    source = settings.source
    _check_label_inputs(settings)
    if "kafka" in (source.kind, settings.output.kind) or (settings.labels.streamed and settings.labels.source.kind == "kafka"):
        from streaming.ops import kafka_tools

        kafka_tools.show_client_log(False)
        kafka_tools.check_broker(settings)
    if source.kind == "directory":
        folder = Path(source.directory)
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ConfigError(f"source.directory: {folder} {what}")
        return None
    if source.kind == "kafka":
        return None
    from streaming.reporting.outputs import count_file_records

    for path in map(Path, source.paths):
        if path.is_dir():
            raise ConfigError(f"source.paths: {path} is a folder; to watch a folder set source.kind=directory "
                              f"and source.directory={path}")
        if not path.is_file():
            raise ConfigError(f"source.paths: {path} does not exist")
        if "\\" in str(path):  # Flink reads every backslash in a path as a folder separator
            raise ConfigError(f"source.paths: {path}: Flink cannot read a file whose path holds a backslash; rename it")
    records = count_file_records(source.paths)
    if records == 0:
        raise ConfigError(f"source.paths: no records in {', '.join(source.paths)}")
    return records


def _check_label_inputs(settings) -> None:
    """In labels.mode stream or both, that the label files or folder exist (a label file may be
    empty: no label has come yet); the broker is checked with the transactions'."""
    labels = settings.labels
    if not labels.streamed or labels.source.kind == "kafka":
        return
    if labels.source.kind == "directory":
        folder = Path(labels.source.directory)
        if not folder.is_dir():
            raise ConfigError(f"labels.source.directory: {folder} {'is a file, not a folder' if folder.exists() else 'does not exist'}")
        return
    for path in map(Path, labels.source.paths):
        if path.is_dir():
            raise ConfigError(f"labels.source.paths: {path} is a folder; to watch a folder set labels.source.kind=directory")
        if not path.is_file():
            raise ConfigError(f"labels.source.paths: {path} does not exist")


def _cause(error: BaseException) -> str:
    """The one line that says why a job failed: the innermost cause Flink or Python reported."""
    from streaming.ops.local_cluster import innermost_cause

    text = str(error).strip()
    return innermost_cause(text, text.splitlines()[0] if text else type(error).__name__)


def _write_failure_log(error: BaseException) -> Path:
    """Writes the whole failure (Python and Java stack traces) to a log file; returns its path."""
    FLINK_LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = FLINK_LOG_DIR / f"riskstream-run-failed-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    return log


