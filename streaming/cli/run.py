"""`riskstream run`: the job on the embedded mini-cluster, with progress, Ctrl-C and a summary."""

from __future__ import annotations

import argparse
import os
import threading
import time
import traceback
from pathlib import Path

from streaming.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, FLINK_LOG_DIR, fail
from streaming.config import ConfigError, load_settings

# How often `riskstream run` prints its progress, in seconds.
PROGRESS_SECONDS = 10.0

def run_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.overrides)
    records_in_files = _check_inputs(settings)
    from streaming.config.flink_options import job_jars

    job_jars(settings)  # a missing jar: one line naming it, before Flink starts
    os.environ.setdefault("FLINK_LOG_DIR", str(FLINK_LOG_DIR))
    from streaming.job.run import run_job
    from streaming.reporting.outputs import RunOutputs, summarize, write_run_record

    outputs = RunOutputs(Path(settings.output.path)) if settings.output.kind == "files" else None
    if outputs is not None:
        outputs.set_previous_aside()  # with the previous run's report, which would no longer match
        write_run_record(outputs.folder, settings, args.config, args.overrides)  # for the report
    progress = _Progress(outputs.folder) if outputs is not None else None
    try:
        job_run = run_job(settings)
    except KeyboardInterrupt:  # Ctrl-C before the job was running: nothing of this run to keep
        if outputs is not None:
            outputs.restore_previous()
        return fail("interrupted before the job started; nothing changed", EXIT_INTERRUPTED)
    except Exception as error:  # the job failed: the user gets one line, the log gets the rest
        if outputs is not None:
            outputs.restore_previous()
        kept = f"; previous outputs kept in {outputs.folder}" if outputs is not None else ""
        return fail(f"the job failed: {_cause(error)}{kept}; details in {_write_failure_log(error)}", EXIT_FAILED)
    finally:
        if progress is not None:
            progress.stop()
    if outputs is None:  # Kafka output: read it with `riskstream tail`
        if job_run.savepoint is not None:
            print(f"stopped with savepoint {job_run.savepoint} after {job_run.records_read:,} records")
        return EXIT_INTERRUPTED if job_run.interrupted else EXIT_OK
    outputs.drop_previous()
    if job_run.ending == "cancelled":  # a second Ctrl-C: no savepoint, so nothing to reconcile
        return fail(f"cancelled; {outputs.folder} holds what the last completed checkpoint committed, "
                     "not what was read after it", EXIT_INTERRUPTED)
    # Records read: counted in the input files when the job read them all, else by the job's source.
    finished_files = job_run.ending == "finished" and records_in_files is not None
    records_read = records_in_files if finished_files else job_run.records_read
    summary = summarize(outputs.folder, records_read, job_run.wall_seconds, settings.labels.streamed, job_run.labels_read,
                        settings.model.drift.detector != "none")
    print("\n".join(summary.lines()))
    if job_run.savepoint is not None:
        print(f"stopped with savepoint {job_run.savepoint}")
    print(f"outputs in {outputs.folder}")
    if not summary.reconciled:
        return EXIT_FAILED
    return EXIT_INTERRUPTED if job_run.interrupted else EXIT_OK


class _Progress:
    """While a file-output job runs, prints every PROGRESS_SECONDS what it has committed so far:
    scores, dead letters and their rate since the last line (outputs are committed at each
    checkpoint, so the figures move in steps)."""

    def __init__(self, folder: Path):
        from streaming.reporting.outputs import CommittedCounts

        self.counts = CommittedCounts(folder)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._print_progress, name="progress", daemon=True)
        self.thread.start()

    def _print_progress(self) -> None:
        last_total, last_at = 0, time.monotonic()
        while not self.done.wait(PROGRESS_SECONDS):
            counts = self.counts.counts()
            total, now = counts["scores"] + counts["dead-letters"], time.monotonic()
            rate = (total - last_total) / (now - last_at)
            print(f"committed so far: {counts['scores']:,} scored, {counts['dead-letters']:,} dead-lettered "
                  f"({rate:,.0f} records/s)", flush=True)
            last_total, last_at = total, now

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


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


