"""The checks of `make compose-test` (docker/compose-test.sh) that need Python, run inside a
container of the stack's own image (`docker compose run --rm -T tools python -m tests.compose_stack
CHECK ...`), against the stack's broker and JobManager as conf/compose.yaml names them.

  job [--parallelism P] [--taskmanagers N]
                             waits until one riskstream-scoring job runs, all tasks RUNNING (at
                             parallelism P, on N TaskManagers, when given); prints its id
  one-job                    fails unless exactly one riskstream-scoring job has not ended
  phase-checkpoint SINCE_MS TOTAL
                             waits for a checkpoint triggered after SINCE_MS (epoch ms) to complete,
                             then fails if all TOTAL records are committed already (too late to kill)
  restored                   waits until the job restored from a checkpoint and runs again
  accounted SEED... --records N --malformed-share S
                             waits until committed scores plus dead letters account for every record
                             of the streams `riskstream produce --generate N --seed SEED` sent, then
                             checks exactly once: each valid txn_id scored once, dead letters unique
                             by partition and offset and as many as the malformed records
  analytics-quiet            once the stream has gone quiet (each partition read in event-time order):
                             waits until every window that each partition's watermark has passed is
                             committed, then checks the committed windows against the plain-Python
                             reference (tests/analytics_reference.py) figure for figure, and no late line
  analytics-once             each window and late line committed once (through the kill), a window
                             only where the reference has one, every record late by its partition's
                             watermark in the late lines, and every late line of a scored record

Each prints one line; a failed check exits 1 with one line saying what did not hold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from streaming.config import DEFAULT_PROFILES, load_settings, profile_from_environment
from streaming.config.from_settings import window_specs
from streaming.job import identity
from streaming.ops import drill as failover_drill
from streaming.ops import rest
from tests.analytics_reference import (
    committed_analytics,
    expected_for,
    mismatches,
    readable_event_time,
    topic_splits,
)
from udfs.generator import GeneratorSettings, generate_with_kinds


class CheckFailed(RuntimeError):
    pass


def wait_for(what: str, condition, timeout_s: float, poll_s: float = 1.0):
    """Polls `condition` until it returns something true; returns that, or raises CheckFailed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except rest.ClusterError:  # the JobManager is briefly busy, e.g. while the job restarts
            value = None
        if value:
            return value
        time.sleep(poll_s)
    raise CheckFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")


def running_job(url: str, parallelism: int | None = None, taskmanagers: int | None = None) -> str | None:
    """The id of the one scoring job, once it and all its tasks run (every task at `parallelism`,
    and the cluster with `taskmanagers` TaskManagers, when given)."""
    jobs = rest.scoring_jobs(url)
    if len(jobs) != 1:
        return None
    job = rest.rest(url, "GET", f"/jobs/{jobs[0]}")
    running = job["state"] == "RUNNING" and all(vertex["status"] == "RUNNING" for vertex in job["vertices"])
    if parallelism is not None:
        running &= all(vertex["parallelism"] == parallelism for vertex in job["vertices"])
    if taskmanagers is not None:
        running &= rest.rest(url, "GET", "/overview")["taskmanagers"] == taskmanagers
    return job["jid"] if running else None


def expected_streams(seeds: list[int], records: int, malformed_share: float) -> tuple[set[str], int]:
    """The valid txn_ids and the number of malformed records of the streams that `riskstream produce
    --generate RECORDS --seed SEED --malformed-share S` sent (the CLI's default accounts)."""
    from streaming.cli import parser

    valid, malformed = set(), 0
    for seed in seeds:
        args = parser().parse_args(["produce", "--generate", str(records), "--seed", str(seed),
                                    "--malformed-share", str(malformed_share)])
        stream = generate_with_kinds(GeneratorSettings(records=args.generate, seed=args.seed, accounts=args.accounts,
                                                       malformed_share=args.malformed_share))
        for kind, line in stream:
            if kind is None:
                valid.add(json.loads(line)["txn_id"])
            else:
                malformed += 1
    return valid, malformed


def check_accounted(settings, seeds: list[int], records: int, malformed_share: float, timeout_s: float) -> str:
    valid, malformed = expected_streams(seeds, records, malformed_share)
    total = len(valid) + malformed
    wait_for(f"{total:,} committed scores and dead letters",
             lambda: failover_drill.committed_outputs(settings) >= total, timeout_s, poll_s=2)
    committed = failover_drill.read_committed(settings, idle_timeout_s=5, until_end=False)  # the job still runs
    scored = [score["txn_id"] for _, score in committed.scores]
    if len(scored) != len(set(scored)):
        raise CheckFailed(f"{len(scored) - len(set(scored))} scores were delivered twice")
    if set(scored) != valid:
        raise CheckFailed(f"{len(valid - set(scored))} valid records never scored, "
                          f"{len(set(scored) - valid)} scores of records never sent")
    letters = [(letter["source"]["partition"], letter["source"]["offset"]) for _, letter in committed.dead_letters]
    if len(letters) != len(set(letters)):
        raise CheckFailed(f"{len(letters) - len(set(letters))} dead letters were delivered twice")
    if len(letters) != malformed:
        raise CheckFailed(f"{len(letters)} dead letters for {malformed} malformed records")
    return (f"exactly once: {len(scored):,} scores (every valid txn_id once) + {len(letters):,} dead letters "
            f"(unique by partition and offset, as many as the malformed records) = {total:,} records")


def committed_analytics_once(settings):
    """committed_analytics(), with a window or late line committed twice as a CheckFailed."""
    try:
        return committed_analytics(settings, idle_timeout_s=2)
    except AssertionError as repeat:
        raise CheckFailed(str(repeat)) from None


def check_analytics_quiet(settings, timeout_s: float) -> str:
    committed = failover_drill.read_committed(settings, idle_timeout_s=5, until_end=False)
    splits = topic_splits(settings, idle_timeout_s=5)
    windows, late = expected_for(settings, splits, [score for _, score in committed.scores])
    # The job's watermark passes at least the smallest of the partitions' watermarks (each read in
    # order, so none of their records is late); a window is due once that is past its end plus
    # the allowed lateness.
    out_of_orderness_ms = settings.event_time.transactions.out_of_orderness_ms
    largest_event_times = [max(time for time in map(readable_event_time, lines) if time is not None)
                           for _, lines in splits]
    watermark = min(largest_event_times) - out_of_orderness_ms
    size_ms = {spec.name: spec.size_ms for spec in window_specs(settings)}
    due = {key for key in windows
           if key[1] + size_ms[key[0]] + settings.analytics.allowed_lateness_ms < watermark}
    if not due:
        raise CheckFailed("no window is due: the stream spans too little event time for this check")

    def all_due_committed():
        emitted, emitted_late = committed_analytics_once(settings)
        return (emitted, emitted_late) if emitted.keys() >= due else None

    emitted, emitted_late = wait_for(f"the {len(due):,} due windows to be committed", all_due_committed,
                                     timeout_s, poll_s=2)
    if emitted.keys() - windows.keys():
        raise CheckFailed(f"{len(emitted.keys() - windows.keys())} windows committed that the reference does not have")
    wrong = mismatches(emitted, windows)
    if wrong:
        raise CheckFailed(f"{len(wrong)} windows differ from the reference, e.g. {wrong[0]}: "
                          f"{emitted[wrong[0]]} against {windows[wrong[0]]}")
    if late or emitted_late:
        raise CheckFailed(f"{len(emitted_late)} late lines committed and {len(late)} in the reference; "
                          "an in-order stream has none")
    return (f"analytics: {len(emitted):,} windows committed ({len(due):,} due by every partition's watermark), "
            "each as the reference's; no late record")


def check_analytics_once(settings) -> str:
    committed = failover_drill.read_committed(settings, idle_timeout_s=5, until_end=False)
    scores = [score for _, score in committed.scores]
    windows, late = expected_for(settings, topic_splits(settings, idle_timeout_s=5), scores)
    emitted, emitted_late = committed_analytics_once(settings)
    if emitted.keys() - windows.keys():
        raise CheckFailed(f"{len(emitted.keys() - windows.keys())} windows committed that the reference does not have")
    # A partition idle between the phases can make a record late by the scoring operator's watermark
    # too (docs/analytics.md), so the late lines hold the reference's and maybe more.
    if late.keys() - emitted_late.keys():
        raise CheckFailed(f"{len(late.keys() - emitted_late.keys())} records late by their partition's watermark "
                          "have no late line")
    scored = {score["txn_id"] for score in scores}
    if {txn_id for txn_id, _ in emitted_late} - scored:
        raise CheckFailed("late lines of records that were never scored")
    return (f"analytics exactly once: {len(emitted):,} windows and {len(emitted_late):,} late lines, each "
            f"committed once; {len(late):,} late by their partition's watermark, all there")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.compose_stack")
    checks = parser.add_subparsers(dest="check", required=True)
    job = checks.add_parser("job")
    job.add_argument("--parallelism", type=int, default=None)
    job.add_argument("--taskmanagers", type=int, default=None)
    checks.add_parser("one-job")
    phase = checks.add_parser("phase-checkpoint")
    phase.add_argument("since_ms", type=int)
    phase.add_argument("total", type=int)
    checks.add_parser("restored")
    accounted = checks.add_parser("accounted")
    accounted.add_argument("seeds", type=int, nargs="+")
    accounted.add_argument("--records", type=int, required=True)
    accounted.add_argument("--malformed-share", type=float, required=True)
    checks.add_parser("analytics-quiet")
    checks.add_parser("analytics-once")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    settings = load_settings(profile_from_environment() or DEFAULT_PROFILES["cluster"])
    url = settings.flink.rest_url
    try:
        if args.check == "job":
            wanted = "".join([f" at parallelism {args.parallelism}" if args.parallelism else "",
                              f" on {args.taskmanagers} TaskManagers" if args.taskmanagers else ""])
            print(wait_for(f"a running riskstream-scoring job{wanted}",
                           lambda: running_job(url, args.parallelism, args.taskmanagers), args.timeout))
        elif args.check == "one-job":
            jobs = rest.scoring_jobs(url)
            if len(jobs) != 1:
                raise CheckFailed(f"{len(jobs)} {identity.JOB_NAME} jobs have not ended; expected one")
            print(f"one {identity.JOB_NAME} job: {jobs[0]}")
        elif args.check == "phase-checkpoint":
            job_id = rest.scoring_jobs(url)[0]

            def completed_in_phase():
                latest = (rest.rest(url, "GET", f"/jobs/{job_id}/checkpoints").get("latest") or {}).get("completed")
                return latest if latest and latest["trigger_timestamp"] > args.since_ms else None

            checkpoint = wait_for("a checkpoint of this phase", completed_in_phase, args.timeout, poll_s=0.2)
            committed = failover_drill.committed_outputs(settings)
            if committed >= args.total:
                raise CheckFailed(f"all {args.total:,} records were committed before the kill could happen")
            print(f"checkpoint {checkpoint['id']} of this phase completed; {committed:,} of {args.total:,} "
                  "records committed")
        elif args.check == "restored":
            job_id = rest.scoring_jobs(url)[0]

            def restored():
                counts = rest.rest(url, "GET", f"/jobs/{job_id}/checkpoints")
                return counts if counts["counts"]["restored"] >= 1 and running_job(url) == job_id else None

            answer = wait_for("the job to restore from a checkpoint", restored, args.timeout)
            print(f"job {job_id} restored checkpoint {answer['latest']['restored']['id']} and runs again")
        elif args.check == "analytics-quiet":
            print(check_analytics_quiet(settings, args.timeout))
        elif args.check == "analytics-once":
            print(check_analytics_once(settings))
        else:
            print(check_accounted(settings, args.seeds, args.records, args.malformed_share, args.timeout))
    except CheckFailed as failure:
        print(f"check {args.check} failed: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
