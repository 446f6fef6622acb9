"""Ctrl-C on `riskstream run`, as a terminal sends it: SIGINT to the command's whole process group
(the Python client, PyFlink's gateway JVM and the Python workers the JVM starts).

A run watching a folder is stopped with a savepoint: everything read before it is committed, the
printed summary reconciles with what was committed, and no process of the run is left. A second
Ctrl-C cancels instead; a Ctrl-C during start-up ends the command in one line. The count of records
read comes from the job's source (RecordBundler's accumulator), apart from the outputs; for input
files it must equal the lines of the files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streaming.cli.run import READ_COUNTS_FILE
from streaming.reporting.outputs import committed_lines, committed_parts, count_file_records
from tests.cli import RISKSTREAM, assert_one_line_failure, user_environment
from tests.integration.conftest import LOCAL_PROFILE
from tests.integration.test_cli_run import number, summary_figures
from udfs.generator import GeneratorSettings, generate

# Per source subtask: slow enough that a Ctrl-C lands while a file is still being read. A file is one
# split, read by one subtask: LONG_FILE records take 49 s or more (a second's worth comes at once) on
# any machine, however fast, while the tests press Ctrl-C within a poll of the file's first committed
# record (a checkpoint every 500 ms). Nothing waits for the rest of such a file, so this adds no time.
RECORDS_PER_SECOND = 40
LONG_FILE = 2000


class BackgroundRun:
    """`riskstream run` under `workdir` (outputs, checkpoints and savepoints there) with `settings`
    (--set) and `options`, in a session of its own (so its process group is the command's, as in a
    terminal); what it prints goes to files named after `name`, so nothing it leaves behind can hold
    a pipe open. `files`: the input files' lines by name, for `accounted_lines`."""

    def __init__(self, workdir: Path, settings: list[str], options: tuple[str, ...] = (), name: str = "run"):
        self.workdir = workdir
        self.out = workdir / "out"
        self.stdout_path, self.stderr_path = workdir / f"{name}-stdout.txt", workdir / f"{name}-stderr.txt"
        command = [str(RISKSTREAM), "run", "--config", str(LOCAL_PROFILE), *options]
        for setting in (f"source.max_records_per_second={RECORDS_PER_SECOND}", f"output.path={self.out}",
                        f"checkpointing.directory={workdir / 'checkpoints'}",
                        f"checkpointing.savepoint_directory={workdir / 'savepoints'}", "checkpointing.interval_ms=500",
                        *settings):
            command += ["--set", setting]
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(command, cwd=workdir, env=user_environment(), stdout=stdout,
                                            stderr=stderr, start_new_session=True, preexec_fn=default_sigint)
        self.files: dict[str, list[bytes]] = {}

    def ctrl_c(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)

    def wait_until(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.process.poll() is None, f"the run ended while waiting for {what}:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout_s} s:\n{self.stderr()[-3000:]}"
            time.sleep(0.2)

    def finish(self, timeout_s: float = 120) -> subprocess.CompletedProcess:
        self.process.wait(timeout=timeout_s)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, self.stdout(), self.stderr())

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def committed(self) -> tuple[list[dict], list[dict]]:
        """(committed scores, committed dead letters)."""
        return list(committed_lines(self.out / "scores")), list(committed_lines(self.out / "dead-letters"))

    def accounted_lines(self) -> Counter:
        """How often each (file name, line number) of the dropped files is in the committed outputs:
        dead letters say where they came from, scores are matched by txn_id."""
        line_of_txn = {}
        for name, lines in self.files.items():
            for line_number, line in enumerate(lines, start=1):
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("txn_id"), str):
                    line_of_txn[record["txn_id"]] = (name, line_number)
        scores, dead_letters = self.committed()
        unknown = [score["txn_id"] for score in scores if score["txn_id"] not in line_of_txn]
        assert not unknown, f"scores of records never dropped: {unknown[:5]}"
        accounted = Counter(line_of_txn[score["txn_id"]] for score in scores)
        accounted.update((Path(letter["source"]["file"]).name, letter["source"]["line"]) for letter in dead_letters)
        return accounted

    def live_processes(self) -> dict[int, str]:
        """The processes of this run's session that are still running, by pid, with their command
        lines: its own, the JVM, the Python workers, wherever they were re-parented. Zombies are
        not counted: they have ended and only wait to be reaped."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
            if int(session) == self.process.pid and state != "Z":
                found[int(entry.name)] = command
        return found

    def assert_no_process_left(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while self.live_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not self.live_processes(), list(self.live_processes().values())

    def kill(self) -> None:
        """Whatever a failed test left running."""
        if self.live_processes():
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=30)


class WatchingRun(BackgroundRun):
    """A BackgroundRun watching the folder `workdir/incoming`, into which `drop` puts files."""

    def __init__(self, workdir: Path):
        self.incoming = workdir / "incoming"
        self.incoming.mkdir(parents=True)
        super().__init__(workdir, ["source.kind=directory", f"source.directory={self.incoming}",
                                   "source.discovery_interval_ms=200"])

    def drop(self, name: str, lines: list[bytes]) -> None:
        """Puts a file into the watched folder at once: written under a hidden name (the source
        skips those), then renamed."""
        hidden = self.incoming / f".{name}"
        hidden.write_bytes(b"".join(line + b"\n" for line in lines))
        hidden.rename(self.incoming / name)
        self.files[name] = lines


def default_sigint() -> None:
    """In the child before it runs the command: SIGINT as a terminal's shell leaves it. A suite
    started in the background (`make test &`) inherits SIGINT ignored, and `riskstream run`, like
    Python itself, then leaves Ctrl-C alone."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ignores_sigint(pid: int) -> bool:
    """Whether process `pid` ignores SIGINT (its SigIgn mask in /proc, bit SIGINT - 1)."""
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return bool(ignored >> (signal.SIGINT - 1) & 1)


def transactions(seed: int, records: int) -> list[bytes]:
    return list(generate(GeneratorSettings(records=records, seed=seed, malformed_share=0.05)))


def assert_each_file_accounted_as_a_prefix(accounted: Counter, files: dict[str, list[bytes]]) -> dict[str, int]:
    """Every record in the outputs at most once, and of each file the lines 1..k for some k: the
    source reads a file in order, and what it read before a checkpoint is committed whole. Returns k
    per file."""
    assert not [line for line, times in accounted.items() if times > 1], "records accounted more than once"
    prefixes = {}
    for name, lines in files.items():
        numbers = sorted(line_number for file, line_number in accounted if file == name)
        assert numbers == list(range(1, len(numbers) + 1)), f"{name}: committed lines are not 1..k"
        prefixes[name] = len(numbers)
    assert sum(prefixes.values()) == sum(accounted.values()), "outputs of lines that were never dropped"
    return prefixes


def test_ctrl_c_stops_a_watching_run_with_everything_it_read_committed_and_accounted(tmp_path):
    run = WatchingRun(tmp_path)
    try:
        run.drop("first.jsonl", transactions(seed=61, records=120))
        run.wait_until(lambda: len(run.accounted_lines()) == 120, 180, "commit of every record of first.jsonl")
        run.drop("second.jsonl", transactions(seed=62, records=LONG_FILE))
        run.wait_until(lambda: any(file == "second.jsonl" for file, _ in run.accounted_lines()), 60,
                       "committed record of second.jsonl")
        # Python workers as processes of their own: on a local mini-cluster PyFlink runs them so only
        # when the variable pyflink_internals.run_python_workers_as_processes sets is read (else they
        # are threads of the client, "loopback"); this is the check that PyFlink still reads it.
        workers = [pid for pid, command in run.live_processes().items() if "beam_boot" in command]
        assert workers, "no Python worker processes: the run should use process mode"
        # The JVM and so its Python workers ignore SIGINT (PyFlink starts the JVM so), which is
        # why they live on to take the savepoint when a terminal sends Ctrl-C to all of them.
        assert all(ignores_sigint(pid) for pid in workers)
        run.ctrl_c()
        done = run.finish()
        assert done.returncode == 130, done.stderr[-3000:]
        assert "Traceback" not in done.stdout + done.stderr and "\tat " not in done.stdout + done.stderr
        figures = summary_figures(done.stdout)
        read, scored, dead_lettered = (number(figures[name]) for name in ("records read", "scored", "dead-lettered"))
        assert read == scored + dead_lettered
        assert figures["accounting"] == "read = scored + dead-lettered"

        scores, dead_letters = run.committed()
        assert (len(scores), len(dead_letters)) == (scored, dead_lettered)
        prefixes = assert_each_file_accounted_as_a_prefix(run.accounted_lines(), run.files)
        assert prefixes["first.jsonl"] == 120
        assert 1 <= prefixes["second.jsonl"] < LONG_FILE  # stopped mid-file, with what it read committed
        assert sum(prefixes.values()) == read
        run.assert_no_process_left()
    finally:
        run.kill()


def test_a_second_ctrl_c_cancels_and_leaves_whole_checkpoints_committed(tmp_path):
    run = WatchingRun(tmp_path)
    try:
        run.drop("first.jsonl", transactions(seed=71, records=LONG_FILE))
        run.wait_until(lambda: len(run.accounted_lines()) > 0, 180, "committed record")
        run.ctrl_c()
        time.sleep(0.3)  # two signals in one instant would reach the process as one
        run.ctrl_c()
        done = run.finish()
        assert done.returncode == 130, done.stderr[-3000:]
        assert "Traceback" not in done.stdout + done.stderr and "\tat " not in done.stdout + done.stderr
        assert "cancel" in done.stderr, done.stderr
        prefixes = assert_each_file_accounted_as_a_prefix(run.accounted_lines(), run.files)
        assert 1 <= prefixes["first.jsonl"] < LONG_FILE  # cancelled mid-file: what was committed is whole
        run.assert_no_process_left()
    finally:
        run.kill()


@pytest.mark.parametrize("after_jvm_s", [0.0, 3.0], ids=["as-the-jvm-starts", "while-the-job-is-built"])
def test_ctrl_c_during_start_up_ends_the_command_in_one_line(tmp_path, after_jvm_s):
    run = WatchingRun(tmp_path)
    try:
        run.drop("first.jsonl", transactions(seed=81, records=50))
        run.wait_until(lambda: any(command.split(" ", 1)[0].endswith("java")
                                   for command in run.live_processes().values()), 60, "gateway JVM")
        time.sleep(after_jvm_s)
        run.ctrl_c()
        done = run.finish(timeout_s=60)
        assert_one_line_failure(done, 130, "interrupted")
        assert run.committed() == ([], [])
        run.assert_no_process_left()
    finally:
        run.kill()


# The records-read test's file in the run shared with other tests (conftest.shared_run), written
# without a newline after its last line.
UNTERMINATED_FILE = "records-read.jsonl"


def records_read_lines() -> list[bytes]:
    """700 transactions (txn_ids t91-...), then an empty line, a line that is not JSON, and an
    unterminated JSON object, which is the file's last line."""
    return transactions(seed=91, records=700) + [b"", b"not json", b'{"unterminated": ']


def test_records_read_counts_every_line_of_the_input_files(shared_run):
    lines = records_read_lines()
    assert shared_run.inputs[UNTERMINATED_FILE] == lines
    path = Path(shared_run.path(UNTERMINATED_FILE))
    assert path.read_bytes() == b"\n".join(lines)  # the last line has no newline: still a record
    job_run, settings = shared_run.outputs.job_run, shared_run.outputs.settings

    assert job_run.ending == "finished" and not job_run.interrupted
    assert count_file_records([str(path)]) == len(lines)
    # The job's own count over every file of the run: each file's lines, this one's last included.
    assert job_run.records_read == count_file_records(settings.source.paths) == \
        sum(map(len, shared_run.inputs.values()))
    assert len(shared_run.outputs.scores) + len(shared_run.outputs.dead_letters) == job_run.records_read


def file_run(workdir: Path, lines: list[bytes], *options: str, settings: tuple[str, ...] = (),
             name: str = "run") -> BackgroundRun:
    """A BackgroundRun of `riskstream run` on the file `workdir/tx.jsonl`, which holds `lines`."""
    path = workdir / "tx.jsonl"
    if not path.exists():
        path.write_bytes(b"".join(line + b"\n" for line in lines))
    run = BackgroundRun(workdir, ["source.paths=[tx.jsonl]", *settings], options, name)
    run.files["tx.jsonl"] = lines
    return run


def test_a_second_ctrl_c_half_a_second_after_the_first_ends_a_file_run_in_one_line(tmp_path):
    """As a user presses it: the second Ctrl-C cancels the job, or, when the savepoint was quicker,
    lands after the job stopped; either way one line, no py4j traceback, and whole checkpoints."""
    run = file_run(tmp_path, transactions(seed=73, records=LONG_FILE))
    try:
        run.wait_until(lambda: len(run.accounted_lines()) > 0, 180, "committed record")
        run.ctrl_c()
        time.sleep(0.5)
        run.ctrl_c()
        done = run.finish()
        line = assert_one_line_failure(done, 130)
        assert "cancelled" in line or "stopped with savepoint" in line, line
        prefixes = assert_each_file_accounted_as_a_prefix(run.accounted_lines(), run.files)
        assert 1 <= prefixes["tx.jsonl"] < LONG_FILE
        if "stopped with savepoint" in line:  # everything read before the savepoint is committed
            figures = summary_figures(done.stdout)
            assert figures["accounting"] == "read = scored + dead-lettered"
            assert number(figures["records read"]) == prefixes["tx.jsonl"]
        run.assert_no_process_left()
    finally:
        run.kill()


def test_a_file_run_stopped_with_ctrl_c_resumes_from_its_savepoint_and_both_parts_reconcile(tmp_path):
    records = LONG_FILE  # the Ctrl-C lands part way through the file; the resumed run reads the rest at full speed
    lines = transactions(seed=75, records=records)
    first = file_run(tmp_path, lines, name="first")
    try:
        first.wait_until(lambda: len(first.accounted_lines()) > 0, 180, "committed record")
        first.ctrl_c()
        stopped = first.finish()
        first.assert_no_process_left()
    finally:
        first.kill()
    line = assert_one_line_failure(stopped, 130, "stopped with savepoint", "riskstream run --from ")
    savepoint = line.rsplit("riskstream run --from ", 1)[1].rstrip("`")
    figures = summary_figures(stopped.stdout)
    read_first = number(figures["records read"])
    assert 0 < read_first < records
    assert f"{read_first:,}   of {records:,} in the input" in stopped.stdout, stopped.stdout
    assert figures["accounting"] == "read = scored + dead-lettered"
    assert json.loads((Path(savepoint) / READ_COUNTS_FILE).read_text())["records_read"] == read_first
    first_parts = {part.relative_to(first.out): part.read_bytes() for folder in ("scores", "dead-letters")
                   for part in committed_parts(first.out / folder)}

    second = file_run(tmp_path, lines, "--from", savepoint, "--summary-json", "summary.json", name="second",
                      settings=("source.max_records_per_second=null",))
    try:
        resumed = second.finish(timeout_s=180)
    finally:
        second.kill()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr
    figures = summary_figures(resumed.stdout)
    assert number(figures["records read"]) == records and figures["accounting"] == "read = scored + dead-lettered"
    # The resumed run continued the first one's outputs: they are still there, none set aside, and
    # together the two parts hold every record of the file once.
    assert not (second.out / ".previous").exists()
    assert all((second.out / part).read_bytes() == data for part, data in first_parts.items())
    assert assert_each_file_accounted_as_a_prefix(second.accounted_lines(), second.files) == {"tx.jsonl": records}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["ending"], summary["resumed_from"], summary["records_read"]) == ("finished", savepoint, records)
    assert summary["scored"] + summary["dead_lettered"] == records and summary["reconciled"]


def test_ctrl_c_after_the_job_has_ended_changes_nothing(tmp_path):
    """Ctrl-C pressed again and again from the moment the summary is out until the command has
    exited: the run still ends as it would have (exit 0), with no py4j traceback (as the process
    exits, PyFlink's Java objects are released with calls into the JVM)."""
    run = file_run(tmp_path, transactions(seed=77, records=300), settings=("source.max_records_per_second=null",))
    try:
        run.wait_until(lambda: "outputs in " in run.stdout(), 180, "the summary")
        while run.process.poll() is None:
            try:
                run.ctrl_c()
            except ProcessLookupError:  # the whole group has ended
                break
            time.sleep(0.02)
        done = run.finish()
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr.strip() == "", done.stderr[-3000:]
        assert summary_figures(done.stdout)["accounting"] == "read = scored + dead-lettered"
        run.assert_no_process_left()
    finally:
        run.kill()
