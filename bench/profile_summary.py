"""Where the job's time goes while it scores: py-spy on every Python worker and Java Flight Recorder
on the JVM, for a few seconds of a running job, summed up by where each sample was.

py-spy (pinned in constraints.txt, the `bench` extra) samples each worker's Python stacks 100 times a
second without stopping it; a sample in C code (numpy, numba, orjson) counts for the Python function
that called it. JFR's `profile` settings sample the JVM's running Java threads every 10-20 ms. A
sample is "riskstream" when any frame of its stack is the project's code (udfs/, streaming/, the
riskstream.flink Java package): the work, and what it calls. The rest is the framework around it:
Beam's and PyFlink's Python runtime (reading and writing the data plane, state requests), or in the
JVM Flink's runtime (network, serialization, checkpoints) and its Python runner (gRPC, Beam's
harness). The top leaf functions say what, inside each, the samples were doing.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import psutil

PROJECT = Path(__file__).resolve().parents[1]
PY_SPY = PROJECT / ".venv" / "bin" / "py-spy"
# The project's own code, as py-spy names a frame's file and as JFR names a frame's class.
PROJECT_PYTHON = ("/udfs/", "/streaming/")
PROJECT_JAVA = "riskstream.flink."


class JobProfiler:
    """Profiles a running job's process tree once: `attach` (called while the job runs) starts
    py-spy on every Python worker and a JFR recording in the JVM, `seconds` long, once the workers
    have run for `settle_s` (start-up, numba's compilation); `summary` reads what they recorded.
    `process_kind` tells a process's kind from its command line (bench.run_bench.process_kind)."""

    def __init__(self, folder: Path, process_kind: Callable[[list[str]], str], seconds: float = 10.0,
                 settle_s: float = 5.0):
        self.folder = folder
        self.process_kind = process_kind
        self.seconds = seconds
        self.settle_s = settle_s
        self.attached = False
        self.workers_seen_at: float | None = None
        self.samplers: list[subprocess.Popen] = []
        self.jfr_file = folder / "jvm.jfr"

    def attach(self, root_pid: int) -> None:
        """Starts the profilers if the job's Python workers have run long enough; else does nothing."""
        if self.attached:
            return
        try:
            tree = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
            kinds = {process.pid: self.process_kind(process.cmdline()) for process in tree}
        except psutil.NoSuchProcess:
            return
        workers = [pid for pid, kind in kinds.items() if kind == "python workers"]
        jvms = [pid for pid, kind in kinds.items() if kind == "jvm"]
        if not workers or not jvms:
            return
        if self.workers_seen_at is None:
            self.workers_seen_at = time.monotonic()
        if time.monotonic() - self.workers_seen_at < self.settle_s:
            return
        self.attached = True
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("py-*.txt"):
            old.unlink()
        for pid in workers:
            self.samplers.append(subprocess.Popen(
                [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(self.seconds)), "--rate", "100",
                 "--format", "raw", "--full-filenames", "--nonblocking", "--output", str(self.folder / f"py-{pid}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        subprocess.run(["jcmd", str(jvms[0]), "JFR.start", "name=riskstream-bench", "settings=profile",
                        f"duration={int(self.seconds)}s", f"filename={self.jfr_file}"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def summary(self, top: int = 6) -> dict:
        """{"python": ..., "jvm": ...}, each {"samples", "riskstream_share" (0..1), "top": [[leaf, share]]}
        (None for a side that recorded nothing)."""
        for sampler in self.samplers:
            try:
                sampler.wait(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                sampler.kill()
        python_stacks: Counter = Counter()
        for path in self.folder.glob("py-*.txt"):
            python_stacks.update(_collapsed_stacks(path.read_text(errors="replace")))
        return {"python": _summarize(python_stacks, lambda frame: any(part in frame for part in PROJECT_PYTHON), top),
                "jvm": _summarize(_jfr_stacks(self.jfr_file), lambda frame: frame.startswith(PROJECT_JAVA), top)}


def _collapsed_stacks(text: str) -> Counter:
    """py-spy's raw output (one `frame;frame;...;leaf count` line per distinct stack) as a Counter of
    stacks (tuples of frames, outermost first, without line numbers)."""
    stacks: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(_without_line(frame) for frame in stack.split(";"))] += int(count)
    return stacks


def _without_line(frame: str) -> str:
    """`function (path/file.py:12)` as `function (path/file.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0]})" if ":" in where else frame


def _jfr_stacks(recording: Path) -> Counter:
    """The JVM's execution samples in a JFR recording, as a Counter of stacks (class.method,
    outermost first); empty when there is no recording."""
    if not recording.exists():
        return Counter()
    printed = subprocess.run(["jfr", "print", "--json", "--events", "jdk.ExecutionSample", str(recording)],
                             capture_output=True, text=True, check=False).stdout
    try:
        events = json.loads(printed)["recording"]["events"]
    except (ValueError, KeyError):
        return Counter()
    stacks: Counter = Counter()
    for event in events:
        frames = (event.get("values", {}).get("stackTrace") or {}).get("frames") or []
        # JFR names classes as the JVM does (riskstream/flink/RecordBundler): dotted here, as Java writes them.
        stacks[tuple(f"{frame['method']['type']['name'].replace('/', '.')}.{frame['method']['name']}"
                     for frame in reversed(frames))] += 1
    return stacks


def _summarize(stacks: Counter, is_project_frame, top: int) -> dict | None:
    samples = sum(stacks.values())
    if not samples:
        return None
    project = sum(count for stack, count in stacks.items() if any(is_project_frame(frame) for frame in stack))
    leaves: Counter = Counter()
    for stack, count in stacks.items():
        leaves[stack[-1] if stack else "?"] += count
    return {"samples": samples, "riskstream_share": project / samples,
            "top": [[leaf, count / samples] for leaf, count in leaves.most_common(top)]}


def print_profile(summary: dict) -> None:
    """The profile's lines of the bench table."""
    for side, title in (("python", "Python workers (py-spy)"), ("jvm", "JVM (JFR)")):
        figures = summary.get(side)
        if figures is None:
            print(f"profile, {title}: nothing recorded")
            continue
        print(f"profile, {title}: {figures['samples']:,} samples, {figures['riskstream_share']:.0%} in "
              "Riskstream's code (and what it calls), the rest framework; top leaves:")
        for leaf, share in figures["top"]:
            print(f"  {share:>5.1%}  {leaf[:100]}")
