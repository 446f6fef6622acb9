"""A client of Flink's REST API: the scoring job's state, metrics, savepoints and cancellation,
on any cluster (the local one, the compose stack's, a remote one).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from streaming.config import ServiceUnreachable
from streaming.job.identity import JOB_NAME, METRICS_GROUP
from udfs.live_metrics import DEAD_LETTER_STAGES

ENDED = ("FINISHED", "FAILED", "CANCELED")  # job states that do not change any more
# Gauges that `job_metrics` does not sum over subtasks: the recent log loss of each subtask (in
# micro-units) and how many labelled records it is over, combined into one weighted mean instead.
RECENT_LOSS_GAUGES = ("recent_log_loss_micro", "recent_labelled")


class ClusterError(RuntimeError):
    """The cluster or its REST API did not do what was asked; the message says what happened."""


class ClusterUnreachable(ClusterError, ServiceUnreachable):
    """Nothing answers at the cluster's REST address."""


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


def cancel(base_url: str, job_id: str, timeout_s: float = 60) -> None:
    """Cancels a job and returns once it has ended, so that what comes next (a resume from its
    retained checkpoint, a new submit) does not find it still cancelling."""
    rest(base_url, "PATCH", f"/jobs/{job_id}?mode=cancel")
    deadline = time.monotonic() + timeout_s
    while rest(base_url, "GET", f"/jobs/{job_id}")["state"] not in ENDED:
        if time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} was still cancelling after {timeout_s:.0f} s; see the cluster's log")
        time.sleep(0.2)


