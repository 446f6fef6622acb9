"""Runs the real `riskstream` command as a user would: a subprocess, in a folder of the test's choice."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RISKSTREAM = Path(sys.executable).parent / "riskstream"  # the installed command, next to this interpreter

# Host:port where nothing listens (port 1 is reserved and unused here), for "no broker" and "no cluster".
NOTHING_LISTENS = "127.0.0.1:1"


def riskstream(*args: str, cwd: Path, timeout_s: float = 300, project: Path | None = None) -> subprocess.CompletedProcess:
    """Runs `riskstream args...` in `cwd` with the developer's pseudonym key unset; returns what it
    printed. With `project` (a `project_copy`), the command's code and own folders are that copy's."""
    environment = user_environment()
    if project is not None:
        environment["PYTHONPATH"] = str(project)
    return subprocess.run([str(RISKSTREAM), *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=timeout_s)


def project_copy(folder: Path) -> Path:
    """A copy of the project in `folder` for `riskstream(..., project=folder)`: its Python packages
    and conf/, and empty stand-ins for the jars `make jars` builds. The command finds its own
    folders from its code, so it uses the copy's: the local cluster's conf/flink and var/flink
    (no cluster of the developer's is seen or stopped) and build/ (no need for `make jars`)."""
    for name in ("streaming", "udfs", "conf"):
        shutil.copytree(PROJECT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "build" / "flink-jars").mkdir(parents=True)
    (folder / "build" / "riskstream-flink.jar").touch()
    (folder / "build" / "flink-jars" / "flink-sql-connector-kafka-5.0.0-2.2.jar").touch()
    return folder


def shell(command: str, cwd: Path, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """Runs one command line with bash in `cwd`, as a user's terminal would."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=user_environment(), capture_output=True,
                          text=True, timeout=timeout_s)


def user_environment() -> dict[str, str]:
    """This environment without the developer's pseudonym key, so profiles use their own, and
    without a default profile (RISKSTREAM_PROFILE, set in the stack's image), so commands use theirs."""
    return {name: value for name, value in os.environ.items()
            if name not in ("RISKSTREAM_PSEUDONYM_KEY", "RISKSTREAM_PROFILE")}


def assert_one_line_failure(done: subprocess.CompletedProcess, exit_code: int, *phrases: str) -> str:
    """Asserts that the command failed as a user error should: the exit code, exactly one line on
    stderr that contains every phrase, and no Python or Java stack trace anywhere. Returns the line."""
    assert done.returncode == exit_code, (done.returncode, done.stderr[-2000:])
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "\tat " not in output, output[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
