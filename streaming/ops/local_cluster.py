"""The local standalone session cluster and the job on it.

`LocalCluster` runs a JobManager and TaskManagers from the installed PyFlink (its `bin/` scripts),
with Flink's configuration from `conf/flink` and pid files, logs and state under `var/flink`.
`submit_command` is the `flink run` command that submits the scoring job; the job's state and
savepoints go through Flink's REST API (streaming/ops/rest.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from streaming.config import PROJECT_ROOT, ConfigError
from streaming.config.flink_options import python_worker_executable
from streaming.job.identity import ENTRY_MODULE
from streaming.ops import worker_forks
from streaming.ops.rest import ClusterError, rest


def flink_overrides(path: Path) -> dict[str, str]:
    """A YAML mapping of Flink settings (e.g. conf/flink/test.yaml), as `-D key=value` pairs take them."""
    try:
        overrides = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: {str(error).splitlines()[0]}") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: must be a mapping of Flink settings")
    return {str(key): str(value) for key, value in overrides.items()}


def flink_home() -> Path:
    """The installed PyFlink, which is a complete Flink distribution (bin/, lib/, opt/)."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


@dataclass(frozen=True)
class LocalCluster:
    """A standalone session cluster on this machine. `conf_dir` holds Flink's config.yaml and log
    settings; `state_dir` gets the pid files (pid/), logs (log/), working files (tmp/) and the
    class path (lib/)."""

    conf_dir: Path = PROJECT_ROOT / "conf" / "flink"
    state_dir: Path = PROJECT_ROOT / "var" / "flink"

    @classmethod
    def of_project(cls, project: Path) -> "LocalCluster":
        """The cluster of the project in `project`, wherever the current directory is."""
        return cls(project / "conf" / "flink", project / "var" / "flink")

    def environment(self) -> dict[str, str]:
        """The environment for Flink's scripts and the `flink` command: this cluster's files."""
        return {**os.environ,
                "FLINK_CONF_DIR": str(self.conf_dir.resolve()),
                # PyFlink's plugins/ (Flink's default too, unless the user's environment says
                # otherwise): the Prometheus reporter that config.yaml enables ships there.
                "FLINK_PLUGINS_DIR": str(flink_home() / "plugins"),
                "FLINK_LIB_DIR": str((self.state_dir / "lib").resolve()),
                "FLINK_LOG_DIR": str((self.state_dir / "log").resolve()),
                "FLINK_PID_DIR": str((self.state_dir / "pid").resolve())}

    def client_environment(self) -> dict[str, str]:
        """The environment of the `flink` command (the client): this cluster's configuration and
        log folder; its class path is PyFlink's own, so it works where the cluster's lib/ is not
        (a container that only submits)."""
        environment = self.environment()
        del environment["FLINK_LIB_DIR"], environment["FLINK_PID_DIR"]
        return environment

    @property
    def rest_url(self) -> str:
        """http://address:port of the REST API, from `rest.address` and `rest.port` in config.yaml."""
        return self.rest_url_with({})

    def rest_url_with(self, overrides: dict[str, str]) -> str:
        """http://address:port of the REST API: `rest.address` and `rest.port` of `overrides` (as
        `flink_overrides` reads them), else of config.yaml."""
        conf = yaml.safe_load((self.conf_dir / "config.yaml").read_text(encoding="utf-8"))
        rest = conf.get("rest", {})
        address = overrides.get("rest.address", rest.get("address", "127.0.0.1"))
        return f"http://{address}:{overrides.get('rest.port', rest.get('port', 8081))}"

    def is_up(self) -> bool:
        try:
            rest(self.rest_url, "GET", "/overview", timeout=2)
            return True
        except ClusterError:
            return False

    def up(self, overrides: dict[str, str] | None = None, taskmanagers: int = 1, timeout_s: float = 90) -> bool:
        """Starts a JobManager and `taskmanagers` TaskManagers, with `overrides` on top of config.yaml,
        and waits until all slots are registered. Returns False (and starts nothing) when this
        cluster's JobManager already listens at the REST address; raises ClusterError (one line)
        when another program does, whatever it answers: a JobManager started there would fail."""
        overrides = overrides or {}
        url = self.rest_url_with(overrides)
        address = urllib.parse.urlsplit(url)
        host, port = address.hostname, address.port
        if _something_listens(host, port):
            if self._listens_on(port):
                return False
            raise ClusterError(f"cluster up: {host}:{port} is taken by another program, not this project's cluster "
                               f"(no JobManager of {self.conf_dir} listens there); stop it, or choose another port "
                               f"with `rest.port: PORT` in a file given to --overrides (and flink.rest_address: "
                               f"{host}:PORT in the profiles)")
        for folder in ("log", "pid", "tmp"):
            (self.state_dir / folder).mkdir(parents=True, exist_ok=True)
        self._link_libraries()
        self._script("jobmanager.sh", "start", overrides)
        for _ in range(taskmanagers):
            self.start_taskmanager(overrides)
        self.wait_for_taskmanagers(taskmanagers, timeout_s, url)
        return True

    def down(self) -> bool:
        """Stops every JobManager and TaskManager of this cluster, and kills what the scripts could
        not stop (for example a TaskManager whose pid file went stale), with its Python workers,
        and any Python worker a TaskManager that died earlier left behind. Returns False when
        nothing of this cluster was running (then it only removes stale pid files)."""
        if not self.processes() and not self.python_workers():
            # Flink's stop-all signals every pid its pid files list that is alive, which after a
            # crash or a reboot may be another program's.
            for pid_file in (self.state_dir / "pid").glob("*.pid"):
                pid_file.unlink()
            return False
        if (self.state_dir / "lib").is_dir():  # the scripts need it
            self._script("taskmanager.sh", "stop-all")
            self._script("jobmanager.sh", "stop-all")
        deadline = time.monotonic() + 15
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.processes():
            kill_tree(pid)
        for pid in self.python_workers():
            kill_tree(pid)
        return True

    def python_workers(self) -> list[int]:
        """Pids of the Python workers this cluster's TaskManagers started (pyflink's beam_boot,
        with the FLINK_CONF_DIR they inherited), running or left behind by a TaskManager that died."""
        conf_dir = str(self.conf_dir.resolve())
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            if "pyflink.fn_execution.beam.beam_boot" not in (process.info["cmdline"] or ()):
                continue
            try:
                if process.environ().get("FLINK_CONF_DIR") == conf_dir:
                    found.append(process.pid)
            except psutil.Error:  # ended meanwhile, or not ours to read
                continue
        return found

    def run_in_foreground(self, role: str, overrides: dict[str, str] | None = None) -> None:
        """Becomes one JobManager or TaskManager (`role`) of this cluster, logging to the console:
        the main process of a container (docker-compose.yml), which Docker stops and restarts.
        A TaskManager announces this host's address (as the other containers reach it) unless
        `overrides` set taskmanager.host. Does not return."""
        if role not in ("jobmanager", "taskmanager"):
            raise ClusterError(f"no Flink role {role!r}; use jobmanager or taskmanager")
        for folder in ("log", "pid", "tmp"):
            (self.state_dir / folder).mkdir(parents=True, exist_ok=True)
        self._link_libraries()
        settings = dict(overrides or {})
        if role == "taskmanager":
            settings.setdefault("taskmanager.host", socket.gethostbyname(socket.gethostname()))
        script = str(flink_home() / "bin" / f"{role}.sh")
        if role == "taskmanager":
            # Flink's scripts exec the JVM in this very process (same pid and start time), so its
            # workers' fork server can start now and import while the JVM starts.
            worker_forks.start_server(psutil.Process(), self.environment())
        sys.stdout.flush()
        os.execve(script, [script, "start-foreground", *self._dynamic_properties(settings)], self.environment())

    def start_taskmanager(self, overrides: dict[str, str] | None = None) -> None:
        """Starts a TaskManager, and its Python workers' fork server beside it, so that the first
        job it runs (a restore after another TaskManager died, say) finds the harness imported."""
        before = set(self.taskmanager_pids())
        self._script("taskmanager.sh", "start", overrides)
        for pid in set(self.taskmanager_pids()) - before:
            try:
                worker_forks.start_server(psutil.Process(pid), self.environment())
            except psutil.NoSuchProcess:  # it failed at once; its log says why
                pass

    def taskmanager_pids(self) -> list[int]:
        return [pid for pid, command in self._java_processes() if "TaskManagerRunner" in command]

    def busy_taskmanager_pids(self, rest_url: str | None = None) -> list[int]:
        """Pids of this cluster's TaskManagers that hold a job's slots, as the REST API at `rest_url`
        (default: `self.rest_url`) reports them: a TaskManager's id there ("host:port-suffix") names
        the port its RPC service listens on."""
        busy_ports = {int(taskmanager["id"].rpartition("-")[0].rpartition(":")[2])
                      for taskmanager in rest(rest_url or self.rest_url, "GET", "/taskmanagers")["taskmanagers"]
                      if taskmanager["freeSlots"] < taskmanager["slotsNumber"]}
        busy = []
        for pid in self.taskmanager_pids():
            try:
                ports = {connection.laddr.port for connection in psutil.Process(pid).net_connections("tcp")
                         if connection.status == psutil.CONN_LISTEN}
            except psutil.Error:  # ended meanwhile
                continue
            if ports & busy_ports:
                busy.append(pid)
        return busy

    def processes(self) -> list[int]:
        """Pids of this cluster's JobManager and TaskManager JVMs (found by their --configDir)."""
        return [pid for pid, _ in self._java_processes()]

    def wait_for_taskmanagers(self, count: int, timeout_s: float = 90, rest_url: str | None = None) -> None:
        """Waits until `count` TaskManagers are registered at `rest_url` (default: `self.rest_url`)."""
        rest_url = rest_url or self.rest_url
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if rest(rest_url, "GET", "/overview", timeout=2)["taskmanagers"] >= count:
                    return
            except ClusterError:
                pass
            time.sleep(0.5)
        raise ClusterError(f"the cluster at {rest_url} did not register {count} TaskManager(s) "
                           f"in {timeout_s:.0f} s; see {self.state_dir / 'log'}")

    def _link_libraries(self) -> None:
        """The cluster's lib/: PyFlink's lib/ plus its flink-python jar from opt/, which Python jobs
        need on the cluster's class path (PyFlink's `flink run` has it only on the client's)."""
        lib = self.state_dir / "lib"
        if lib.exists():
            shutil.rmtree(lib)
        lib.mkdir(parents=True)
        home = flink_home()
        for jar in [*(home / "lib").glob("*.jar"), *(home / "opt").glob("flink-python*.jar")]:
            (lib / jar.name).symlink_to(jar)

    def _listens_on(self, port: int) -> bool:
        """Whether one of this cluster's JVMs listens on `port` (TCP)."""
        for pid in self.processes():
            try:
                connections = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:  # ended meanwhile, or not ours to read
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections):
                return True
        return False

    def _java_processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of this cluster's JVMs."""
        marker = f"--configDir {self.conf_dir.resolve()}"
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            command = " ".join(process.info["cmdline"] or ())  # None when access is denied
            if marker in command:
                found.append((process.info["pid"], command))
        return found

    def _script(self, script: str, action: str, overrides: dict[str, str] | None = None) -> None:
        dynamic = self._dynamic_properties(overrides or {}) if action == "start" else []
        subprocess.run([str(flink_home() / "bin" / script), action, *dynamic], env=self.environment(),
                       check=True, stdout=subprocess.DEVNULL)

    def _dynamic_properties(self, settings: dict[str, str]) -> list[str]:
        """`-D key=value` arguments of a JobManager or TaskManager; working files (Python workers,
        RocksDB, blobs) stay in this cluster's folder unless `settings` say otherwise."""
        settings = {"io.tmp.dirs": str((self.state_dir / "tmp").resolve()), **settings}
        return [argument for key, value in settings.items() for argument in ("-D", f"{key}={value}")]


def _something_listens(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port succeeds (any program listening there)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def submit_command(profile: Path, rest_address: str, overrides: list[str] | tuple[str, ...] = (),
                   from_path: str | None = None, python: str = sys.executable) -> list[str]:
    """The `flink run` command that submits the scoring job, detached, to the cluster whose REST API
    is at `rest_address` (host:port), built from `profile` plus `overrides`; with `from_path` it
    resumes from that savepoint or retained checkpoint. Run it with `LocalCluster.client_environment()`
    (Flink's client settings and class path)."""
    command = [str(flink_home() / "bin" / "flink"), "run", "--detached", "--jobmanager", rest_address,
               "--pyClientExecutable", python, "--pyExecutable", str(python_worker_executable(python))]
    if from_path is not None:
        command += ["--fromSavepoint", from_path]
    command += ["--pyModule", ENTRY_MODULE, "--config", str(Path(profile).resolve())]
    for override in overrides:
        command += ["--set", override]
    return command


def submit(cluster: LocalCluster, command: list[str]) -> str:
    """Runs a `submit_command` and returns the id of the job it submitted."""
    done = subprocess.run(command, env=cluster.client_environment(), capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if "submitted with JobID" in line:
            return line.rsplit(" ", 1)[-1].strip()
    log = cluster.state_dir / "log" / f"submit-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}", encoding="utf-8")
    output = (done.stdout + done.stderr).strip()
    why = innermost_cause(output, output.splitlines()[-1] if output else "no output")
    raise ClusterError(f"flink run did not submit the job (exit {done.returncode}): {why}; its whole output is in {log}")


def innermost_cause(trace: str, otherwise: str) -> str:
    """The line of a Java stack trace that says why it failed: its last "Caused by:" (without that
    prefix), or `otherwise` when it has none; at most 300 characters."""
    causes = [line.strip().removeprefix("Caused by:").strip() for line in trace.splitlines()
              if line.strip().startswith("Caused by:")]
    return (causes[-1] if causes else otherwise).strip()[:300]


def command_line(command: list[str]) -> str:
    """`command` as a user would type it in a shell, with the cluster's configuration folder in
    front (FLINK_CONF_DIR=... flink run ...)."""
    return f"FLINK_CONF_DIR={shlex.quote(str(LocalCluster().conf_dir))} {shlex.join(command)}"


def latest_restore_point(checkpoint_directory: str, savepoint_directory: str) -> Path | None:
    """The newest complete savepoint (`<savepoint_directory>/savepoint-*`) or retained checkpoint
    (`<checkpoint_directory>/<job id>/chk-*`) on the local file system, by when its metadata was
    written; None when there is none. A checkpoint still being written has no _metadata yet."""
    metadata = [*Path(savepoint_directory).glob("savepoint-*/_metadata"),
                *Path(checkpoint_directory).glob("*/chk-*/_metadata")]
    return max(metadata, key=lambda path: path.stat().st_mtime).parent if metadata else None


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...); none when `pid` is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int) -> list[int]:
    """SIGKILLs `pid` and all its descendants (found before the first kill, so none is orphaned
    unseen); returns their pids."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [pid]
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:  # ended meanwhile
            pass
    return [member.pid for member in tree]
