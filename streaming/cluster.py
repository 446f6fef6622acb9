"""The local standalone session cluster and the job on it.

`LocalCluster` runs a JobManager and TaskManagers from the installed PyFlink (its `bin/` scripts),
with Flink's configuration from `conf/flink` and pid files, logs and state under `var/flink`.
`submit_command` is the `flink run` command that submits the scoring job; the job's state and
savepoints go through Flink's REST API (`rest`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from streaming.config import PROJECT_ROOT, ConfigError, ServiceUnreachable
from streaming.flink_options import python_worker_executable
from udfs.live_metrics import DEAD_LETTER_STAGES

JOB_NAME = "riskstream-scoring"
ENTRY_MODULE = "streaming.flink_main"  # what `flink run` runs
ENDED = ("FINISHED", "FAILED", "CANCELED")  # job states that do not change any more
# The group of the job's own metrics under its operators' (streaming/job.py; README "Metrics"): the
# REST API names them `<operator>.riskstream.<name>`, and a dead-letter counter
# `<operator>.riskstream.stage.<stage>.dead_lettered`.
METRICS_GROUP = "riskstream"
# Gauges that `job_metrics` does not sum over subtasks: the recent log loss of each subtask (in
# micro-units) and how many labelled records it is over, combined into one weighted mean instead.
RECENT_LOSS_GAUGES = ("recent_log_loss_micro", "recent_labelled")


class ClusterError(RuntimeError):
    """The cluster or its REST API did not do what was asked; the message says what happened."""


class ClusterUnreachable(ClusterError, ServiceUnreachable):
    """Nothing answers at the cluster's REST address."""


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
        conf = yaml.safe_load((self.conf_dir / "config.yaml").read_text(encoding="utf-8"))
        rest = conf.get("rest", {})
        return f"http://{rest.get('address', '127.0.0.1')}:{rest.get('port', 8081)}"

    def is_up(self) -> bool:
        try:
            rest(self.rest_url, "GET", "/overview", timeout=2)
            return True
        except ClusterError:
            return False

    def up(self, overrides: dict[str, str] | None = None, taskmanagers: int = 1, timeout_s: float = 90) -> bool:
        """Starts a JobManager and `taskmanagers` TaskManagers, with `overrides` on top of config.yaml,
        and waits until all slots are registered. Returns False (and starts nothing) when the REST
        API already answers."""
        if self.is_up():
            return False
        for folder in ("log", "pid", "tmp"):
            (self.state_dir / folder).mkdir(parents=True, exist_ok=True)
        self._link_libraries()
        self._script("jobmanager.sh", "start", overrides)
        for _ in range(taskmanagers):
            self.start_taskmanager(overrides)
        self.wait_for_taskmanagers(taskmanagers, timeout_s)
        return True

    def down(self) -> None:
        """Stops every JobManager and TaskManager of this cluster, and kills what the scripts could
        not stop (for example a TaskManager whose pid file went stale), with its Python workers,
        and any Python worker a TaskManager that died earlier left behind."""
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
        sys.stdout.flush()
        os.execve(script, [script, "start-foreground", *self._dynamic_properties(settings)], self.environment())

    def start_taskmanager(self, overrides: dict[str, str] | None = None) -> None:
        self._script("taskmanager.sh", "start", overrides)

    def taskmanager_pids(self) -> list[int]:
        return [pid for pid, command in self._java_processes() if "TaskManagerRunner" in command]

    def processes(self) -> list[int]:
        """Pids of this cluster's JobManager and TaskManager JVMs (found by their --configDir)."""
        return [pid for pid, _ in self._java_processes()]

    def wait_for_taskmanagers(self, count: int, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if rest(self.rest_url, "GET", "/overview", timeout=2)["taskmanagers"] >= count:
                    return
            except ClusterError:
                pass
            time.sleep(0.5)
        raise ClusterError(f"the cluster at {self.rest_url} did not register {count} TaskManager(s) "
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


def rest(base_url: str, method: str, path: str, body: dict | None = None, timeout: float = 10) -> Any:
    """One call to Flink's REST API; returns the decoded JSON answer (None when empty)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            payload = answer.read()
    except urllib.error.HTTPError as error:
        detail = " ".join(error.read().decode("utf-8", "replace").split())[:300]
        raise ClusterError(f"{method} {path}: HTTP {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ClusterUnreachable(f"no Flink cluster answers at {base_url} ({getattr(error, 'reason', error)}); "
                                 f"start the local one with `make cluster-up`, or set flink.rest_address") from None
    return json.loads(payload) if payload else None


def unended_jobs(base_url: str) -> list[dict[str, Any]]:
    """The cluster's jobs that are not finished, failed or cancelled (REST job overviews)."""
    return [job for job in rest(base_url, "GET", "/jobs/overview")["jobs"] if job["state"] not in ENDED]


def scoring_jobs(base_url: str) -> list[str]:
    """The ids of the jobs named riskstream-scoring that are not finished, failed or cancelled."""
    return [job["jid"] for job in unended_jobs(base_url) if job["name"] == JOB_NAME]


def running_job(base_url: str) -> str:
    """The id of the one job named riskstream-scoring that is not finished, failed or cancelled."""
    jobs = scoring_jobs(base_url)
    if len(jobs) != 1:
        raise ClusterError(f"expected one running {JOB_NAME} job, found {len(jobs)}; name one by its id")
    return jobs[0]


def job_status(base_url: str, job_id: str) -> dict[str, Any]:
    """{state, last_checkpoint: {id, completed_at_ms, duration_ms, size_bytes, path} or None,
    checkpoint_counts, metrics (the job's own, see `job_metrics`)} of a job."""
    job = rest(base_url, "GET", f"/jobs/{job_id}")
    checkpoints = rest(base_url, "GET", f"/jobs/{job_id}/checkpoints")
    latest = (checkpoints.get("latest") or {}).get("completed")
    last = None if latest is None else {
        "id": latest["id"], "completed_at_ms": latest["latest_ack_timestamp"],
        "duration_ms": latest["end_to_end_duration"], "size_bytes": latest["state_size"],
        "path": latest.get("external_path")}
    return {"job_id": job_id, "name": job["name"], "state": job["state"], "last_checkpoint": last,
            "checkpoint_counts": checkpoints.get("counts", {}),
            "metrics": job_metrics(base_url, job_id, job["vertices"])}


def job_metrics(base_url: str, job_id: str, vertices: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's own metrics now (see `metric_figures`), read from the REST API: per vertex, the
    names of its subtasks' metrics, then the job's ones summed over its subtasks (`agg=sum`), and
    the recent-log-loss gauges of each subtask. Empty while no subtask has reported any (a
    Python operator reports its metrics when it finishes its first bundle) and once the job has
    ended and Flink has dropped its tasks' metrics."""
    sums: dict[str, float] = {}
    subtasks: list[dict[str, float]] = []
    for vertex in vertices:
        path = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
        names = [metric["id"] for metric in rest(base_url, "GET", path) if _short_metric_name(metric["id"])]
        if not names:
            continue
        summed = rest(base_url, "GET", f"{path}?{_metric_query(names)}&agg=sum")
        sums.update({metric["id"]: metric["sum"] for metric in summed})
        loss_names = [name for name in names if _short_metric_name(name) in RECENT_LOSS_GAUGES]
        for index in range(vertex["parallelism"]) if loss_names else ():
            answer = rest(base_url, "GET", f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/{index}/metrics?"
                                           f"{_metric_query(loss_names)}")
            subtasks.append({_short_metric_name(metric["id"]): float(metric["value"]) for metric in answer})
    return metric_figures(sums, subtasks)


def metric_figures(sums: dict[str, float], subtasks: list[dict[str, float]]) -> dict[str, Any]:
    """The job's own metrics as `riskstream status` prints them, from REST API answers: `sums` maps
    a metric's REST name to its sum over the vertex's subtasks, and `subtasks` holds each scoring
    subtask's recent-log-loss gauges by short name. Returns the counters and gauges by short name,
    summed over subtasks (integers: records_read, scored, model_keys, and any the job adds),
    `dead_lettered` as {stage: count} with its `total` (every stage of DEAD_LETTER_STAGES once
    records_read is there: process mode reports a counter only once it has counted), and
    `recent_log_loss` (natural log, per record) over the last labelled records of every subtask:
    the subtasks' figures weighted by how many labelled records each is over (`recent_labelled`,
    their sum), None before any."""
    figures: dict[str, Any] = {}
    stages: dict[str, int] = {}
    for name, total in sums.items():
        short = _short_metric_name(name)
        if short is None or short in RECENT_LOSS_GAUGES:
            continue
        stage, _, counter = short.removeprefix("stage.").rpartition(".")
        if short.startswith("stage.") and counter == "dead_lettered":
            stages[stage] = stages.get(stage, 0) + int(total)
        else:
            figures[short] = figures.get(short, 0) + int(total)
    if "records_read" in figures:  # the preparing operator has reported: a stage not reported counted none
        stages = {**{stage: 0 for stage in DEAD_LETTER_STAGES}, **stages}
    if stages:
        known = [stage for stage in DEAD_LETTER_STAGES if stage in stages]
        order = known + sorted(set(stages) - set(known))
        figures["dead_lettered"] = {**{stage: stages[stage] for stage in order}, "total": sum(stages.values())}
    # Read as a record goes: read, then scored or dead-lettered; then the rest by name.
    leading = [name for name in ("records_read", "scored", "dead_lettered") if name in figures]
    figures = {name: figures[name] for name in [*leading, *sorted(set(figures) - set(leading))]}
    if subtasks:
        labelled = sum(int(subtask.get("recent_labelled", 0)) for subtask in subtasks)
        weighted = sum(subtask.get("recent_log_loss_micro", 0) * subtask.get("recent_labelled", 0)
                       for subtask in subtasks)
        figures["recent_log_loss"] = round(weighted / labelled / 1e6, 6) if labelled else None
        figures["recent_labelled"] = labelled
    return figures


def _short_metric_name(name: str) -> str | None:
    """`records_read` of `decode-parse-clean-features.riskstream.records_read` (the name after the
    job's metrics group); None for a metric of Flink's own."""
    _, group, short = name.partition(f".{METRICS_GROUP}.")
    return short if group else None


def _metric_query(names: list[str]) -> str:
    return "get=" + urllib.parse.quote(",".join(names), safe=",")


def stop_with_savepoint(base_url: str, job_id: str, directory: str, drain: bool = False,
                        timeout_s: float = 300) -> str:
    """Stops the job with a savepoint in `directory` and returns the savepoint's path. With `drain`
    the job ends for good first: its sources stop and the end of input passes through every
    operator, so the last model snapshots are written (resuming from such a savepoint continues
    with an input that has ended)."""
    trigger = rest(base_url, "POST", f"/jobs/{job_id}/stop", {"targetDirectory": directory, "drain": drain})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = rest(base_url, "GET", f"/jobs/{job_id}/savepoints/{trigger['request-id']}")
        if answer["status"]["id"] == "COMPLETED":
            operation = answer["operation"]
            if "failure-cause" in operation:
                cause = operation["failure-cause"].get("stack-trace", "").splitlines()[:1]
                raise ClusterError(f"the savepoint failed: {' '.join(cause)}")
            return operation["location"]
        time.sleep(0.5)
    raise ClusterError(f"no savepoint after {timeout_s:.0f} s")


def latest_restore_point(checkpoint_directory: str, savepoint_directory: str) -> Path | None:
    """The newest complete savepoint (`<savepoint_directory>/savepoint-*`) or retained checkpoint
    (`<checkpoint_directory>/<job id>/chk-*`) on the local file system, by when its metadata was
    written; None when there is none. A checkpoint still being written has no _metadata yet."""
    metadata = [*Path(savepoint_directory).glob("savepoint-*/_metadata"),
                *Path(checkpoint_directory).glob("*/chk-*/_metadata")]
    return max(metadata, key=lambda path: path.stat().st_mtime).parent if metadata else None


def cancel(base_url: str, job_id: str, timeout_s: float = 60) -> None:
    """Cancels a job and returns once it has ended, so that what comes next (a resume from its
    retained checkpoint, a new submit) does not find it still cancelling."""
    rest(base_url, "PATCH", f"/jobs/{job_id}?mode=cancel")
    deadline = time.monotonic() + timeout_s
    while rest(base_url, "GET", f"/jobs/{job_id}")["state"] not in ENDED:
        if time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} was still cancelling after {timeout_s:.0f} s; see the cluster's log")
        time.sleep(0.2)


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
