"""`make bench`'s global part (`--only global`): what the data-parallel global model costs the job.

Issue 26's target: records/s with the global model on at least 0.8 of the same run with it off, at
the default cadence (model.global's defaults). On the benchmark's file and profile (conf/bench.yaml),
each round runs, one after the other and in alternating order (the machine is noisy):

  off                    the per-key models only (model.blend key);
  on, default cadence    the same plus the global model, GLOBAL_ON with model.global's defaults
                         (synchronous, max_staleness 0, cadence_records 1000, no cadence_ms);
  on, cadence_ms         the same with model.global.cadence_ms=CADENCE_MS (20 keys only, below).

Keyed by merchant_category (20 keys) and by account_id. At 20 keys only 17 of the 32 shards get
records, and with max_staleness 0 a shard without records holds every synchronous round open until
its input ends (docs/design.md, "The global model in the job"): at the default cadence the global
model then stays at version 0 for the whole run while the shards keep every record for their next
partial. With cadence_ms a shard sends what it has (possibly nothing) that long after it got its
version, so rounds complete; versions still become visible only when the checkpoint that wrote them
completes (every 5 s in conf/bench.yaml), which bounds the cadence whatever CADENCE_MS says. Keyed by
account every shard gets records, and the default cadence completes rounds by itself.

Both runs of a pair write their outputs to Kafka (ROUTE, fresh topics per run, deleted after it),
since the global model's versions go round through kafka.model_versions_topic and its scores must
go where the off run's go; the broker's CPU is counted with the job's (kind "broker"). Figures per
run: records/s from the first score to the last (scored_at), core-µs per record of every process
(run_bench.cpu_per_record), versions published (the versions topic) and versions scores used
(distinct global_version), the largest checkpoint. Each on/off ratio is the median over the rounds
of that round's ratio.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable

import psutil

# What turns the global model on: the one list to change when the recommended configuration
# changes (model.blend sum once the job wires it in: `--global-on model.blend=sum`).
GLOBAL_ON = ["model.blend=global"]
# Where both runs of a pair write: the global model's versions need a broker today
# (check_global_model); a file route for the versions would make this the profile's files.
ROUTE = ["output.kind=kafka"]
# The cadence that lets synchronous rounds complete at 20 keys: a shard sends 1 s after it got its
# version (docs/design.md: set model.global.cadence_ms where a shard may get no record).
CADENCE_MS = 1000
TARGET = 0.8
# The file's size in a full `make bench` (its other parts take 1,000,000).
GLOBAL_RECORDS = 200_000
KEYS = (("merchant_category", "20 keys", True), ("account_id", "account keys", False))


def broker_pids() -> list[int]:
    """The local Kafka broker's process (kafka/kafka.sh's `kafka.Kafka`), if one runs."""
    return [process.pid for process in psutil.process_iter(["cmdline"])
            if "kafka.Kafka" in (process.info["cmdline"] or [])]


def measure(run_job: Callable[..., dict], profile: Path, name: str, data: Path, key: str, overrides: list[str]) -> dict:
    """One job run on `data` keyed by `key` with Kafka output on fresh topics, measured by
    `run_job` (run_bench.run_job, on `profile`) with the broker, and its global model's versions
    counted."""
    from streaming.config import load_settings
    from streaming.ops import kafka_tools

    run_overrides = [*ROUTE, *kafka_tools.isolated_overrides(f"bench-{key}"), *overrides]
    settings = load_settings(profile, [f"source.paths=['{data}']", f"model.key={key}", *run_overrides])
    kafka_tools.create_topics(settings)
    scores: list[dict] = []

    def read_scores() -> list[dict]:
        scores.extend(json.loads(value) for _, _, _, value in
                      kafka_tools.tail(settings, settings.kafka.scores_topic, idle_timeout_s=5))
        return scores

    try:
        measured = run_job(name, data, key, *run_overrides, scores=read_scores, also=broker_pids())
        versions = [json.loads(value) for _, _, _, value in
                    kafka_tools.tail(settings, settings.kafka.model_versions_topic, idle_timeout_s=3)]
    finally:
        kafka_tools.delete_topics(settings)
    return {**measured,
            "versions_published": len(versions),
            "versions_labelled_records": sum(version["labelled_records"] for version in versions),
            "versions_used_by_scores": len({score.get("global_version") for score in scores} - {None})}


def configurations(key: str, with_cadence: bool, global_on: list[str]) -> list[tuple[str, list[str]]]:
    on = [("on, default cadence", list(global_on))]
    if with_cadence:
        on.append((f"on, cadence_ms {CADENCE_MS}", [*global_on, f"model.global.cadence_ms={CADENCE_MS}"]))
    return [("off", ["model.blend=key"]), *on]


def global_model_cost(run_job: Callable[..., dict], profile: Path, data: Path, repeat: int,
                      global_on: list[str]) -> dict:
    """{key: {configuration: {runs, medians}}} plus the on/off ratios and the target's verdict (see
    the module docstring), each run measured by `run_job` (run_bench.run_job, on `profile`); prints
    each run as it ends."""
    results: dict = {"global_on": list(global_on), "cadence_ms": CADENCE_MS, "target": TARGET, "keys": {}}
    for key, label, with_cadence in KEYS:
        configs = configurations(key, with_cadence, global_on)
        runs: dict[str, list[dict]] = {name: [] for name, _ in configs}
        for round_number in range(repeat):
            # Alternating order, so that neither side always runs first on a warming machine.
            for name, overrides in configs if round_number % 2 == 0 else configs[::-1]:
                slug = name.replace(", ", "-").replace(" ", "-")
                run = measure(run_job, profile, f"global-{key}-{slug}", data, key, overrides)
                runs[name].append(run)
                print(f"  {label}, {name}, round {round_number + 1}: {run['records_per_second']:,.0f} records/s, "
                      f"{run['core_us_per_record']:.1f} core-µs/record, {run['versions_published']} versions "
                      f"published, {run['versions_used_by_scores']} used by scores", flush=True)
        off = runs["off"]
        by_config = {}
        for name, measured in runs.items():
            by_config[name] = {
                "records_per_second": statistics.median(run["records_per_second"] for run in measured),
                "core_us_per_record": statistics.median(run["core_us_per_record"] for run in measured),
                "core_us_per_record_by_kind": {kind: statistics.median(run["core_us_per_record_by_kind"][kind]
                                                                       for run in measured)
                                               for kind in measured[0]["core_us_per_record_by_kind"]},
                "rps_ratio": statistics.median(run["records_per_second"] / base["records_per_second"]
                                               for run, base in zip(measured, off)),
                "cpu_ratio": statistics.median(run["core_us_per_record"] / base["core_us_per_record"]
                                               for run, base in zip(measured, off)),
                "rps_ratio_by_round": [run["records_per_second"] / base["records_per_second"]
                                       for run, base in zip(measured, off)],
                "versions_published": statistics.median(run["versions_published"] for run in measured),
                "versions_used_by_scores": statistics.median(run["versions_used_by_scores"] for run in measured),
                "max_checkpoint_mb": statistics.median((run["max_checkpoint_bytes"] or 0) / 2**20 for run in measured),
                "wall_s": statistics.median(run["wall_s"] for run in measured),
                "scored": measured[-1]["scored"], "keys": measured[-1]["keys"],
                "runs": measured,
            }
        default = by_config["on, default cadence"]["rps_ratio"]
        results["keys"][key] = {"label": label, "configurations": by_config, "target_met": default >= TARGET,
                                "stage_us": global_stage_profile(profile, data, key, global_on)}
    return results


def print_global_table(results: dict) -> None:
    """The global part's table: per key and configuration, medians over the rounds."""
    on = " ".join(results["global_on"])
    print(f"\n{'global model (' + on + ')':<40}{'records/s':>10}{'core-µs':>9}{'on/off':>8}{'on/off':>8}"
          f"{'versions':>10}{'used':>6}{'ckpt MB':>9}{'wall s':>8}")
    print(f"{'':<40}{'':>10}{'/record':>9}{'rec/s':>8}{'CPU':>8}{'published':>10}{'':>6}{'largest':>9}{'':>8}")
    for key, of_key in results["keys"].items():
        for name, figures in of_key["configurations"].items():
            row = f"{of_key['label'] + ', ' + name:<40}" if name == "off" else f"{'  ' + name:<40}"
            print(f"{row}{figures['records_per_second']:>10,.0f}{figures['core_us_per_record']:>9.1f}"
                  f"{figures['rps_ratio']:>8.2f}{figures['cpu_ratio']:>8.2f}{figures['versions_published']:>10,.0f}"
                  f"{figures['versions_used_by_scores']:>6,.0f}{figures['max_checkpoint_mb']:>9,.0f}"
                  f"{figures['wall_s']:>8.1f}")
    print(f"\n{'core-µs per record by process':<40}" + "".join(
        f"{kind:>16}" for kind in ("jvm", "python workers", "broker", "client")))
    for key, of_key in results["keys"].items():
        for name, figures in of_key["configurations"].items():
            kinds = figures["core_us_per_record_by_kind"]
            print(f"{of_key['label'] + ', ' + name:<40}" + "".join(
                f"{kinds.get(kind, 0.0):>16.1f}" for kind in ("jvm", "python workers", "broker", "client")))
    stages = {of_key["label"]: of_key["stage_us"] for of_key in results["keys"].values()}
    print(f"\n{'global model per stage, µs per record':<40}" + "".join(f"{label:>16}" for label in stages))
    for stage in [stage for stage in next(iter(stages.values())) if stage != "versions"]:
        print(f"{'  ' + stage + (' (for scale)' if stage == 'key_model' else ''):<40}"
              + "".join(f"{of_label[stage]:>16.1f}" for of_label in stages.values()))
    summed = "  the global model's, summed"
    print(f"{summed:<40}"
          + "".join(f"{sum(v for k, v in of_label.items() if k not in ('key_model', 'versions')):>16.1f}"
                    for of_label in stages.values()))
    print(f"{'  versions (back at once, one process)':<40}"
          + "".join(f"{of_label['versions']:>16,}" for of_label in stages.values()))
    for key, of_key in results["keys"].items():
        default = of_key["configurations"]["on, default cadence"]
        rounds = ", ".join(f"{ratio:.2f}" for ratio in default["rps_ratio_by_round"])
        print(f"target, {of_key['label']}: records/s on / off at the default cadence {default['rps_ratio']:.2f} "
              f"(rounds {rounds}) {'>=' if of_key['target_met'] else '<'} {results['target']}: "
              f"{'met' if of_key['target_met'] else 'NOT met'}")


def global_stage_profile(profile: Path, data: Path, key: str, global_on: list[str],
                         limit: int = 200_000) -> dict[str, float]:
    """µs per record of the global model's own work in the scoring operator (and under "versions"
    the number of versions the aggregator published), in one process on the
    first `limit` records of `data` keyed by `key`, in the job's shard batches (bundles of 1,000
    records split by performance.shards), as streaming/job/global_versions.py calls it:

      key_model   the key models' assessment the global model adds to (ModelScorer.assess_columns);
      blend       the batch scored by the shard's held version (GlobalPart.scored);
      keep        the batch's raw records kept for the next partial, and the new segment's bytes
                  (GlobalPart.add, segment_bytes: GlobalShards.kept);
      partials    the partials due, the segments they used up, the shard's state bytes
                  (GlobalPart.partials, ShardGlobal.settle, to_bytes: GlobalShards.emit);
      aggregate   the aggregator's step (Rounds.add) and each version offered to every shard, with
                  the partials that sends (GlobalShards.version).

    Versions come back at once here; in the job at the next checkpoint, so its rounds are fewer and
    its partials larger. Flink's part (the second input, the keyed state writes, the aggregator
    operator, the versions' Kafka round trip) is not in these: it is the job's CPU minus them."""
    import time
    from itertools import islice

    from streaming.config import load_settings
    from streaming.config.from_settings import global_part, global_rounds, model_scorer, transaction_reader
    from streaming.reporting.outputs import file_records
    from udfs.global_scoring import segment_bytes

    settings = load_settings(profile, [f"model.key={key}", *global_on])
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    part, rounds = global_part(settings, scorer), global_rounds(settings, scorer)
    shard_count = settings.performance.shards
    shards = {shard: part.new_shard() for shard in range(shard_count)}
    table = scorer.new_table()
    spent = dict.fromkeys(("key_model", "blend", "keep", "partials", "aggregate"), 0)
    clock = time.perf_counter_ns
    records = versions = 0

    def emit(shard: int, partials: list[bytes]) -> list[tuple[int, bytes]]:
        held = shards[shard]
        gone, rest = held.settle()
        if rest is not None:
            segment_bytes(rest[1])
        held.to_bytes()
        return [(shard, partial) for partial in partials]

    lines = file_records(data)
    while chunk := list(islice(lines, 1_000)):
        if records >= limit:
            break
        now_ms = time.time_ns() // 1_000_000
        by_shard, _ = reader.read_columns(chunk, lambda i: {}, shard_count, now_ms)
        for shard, batch in by_shard.items():
            held = shards[shard]
            records += len(batch)
            started = clock()
            assessed = scorer.assess_columns(batch, table)
            assessed_at = clock()
            part.scored(held.held, batch, assessed)
            blended = clock()
            part.add(held, batch, True)
            held.added(len(batch))
            segment_bytes(held.pending.split(len(held.pending) - len(batch))[1])
            kept = clock()
            sent = emit(shard, part.partials(held, shard))
            emitted = clock()
            while sent:  # the aggregator, and its versions back to every shard at once
                _, partial = sent.pop(0)
                for message in rounds.add(partial, now_ms):
                    versions += 1
                    for number, other in shards.items():
                        part.offer(other, message)
                        sent += emit(number, part.partials(other, number))
            spent["key_model"] += assessed_at - started
            spent["blend"] += blended - assessed_at
            spent["keep"] += kept - blended
            spent["partials"] += emitted - kept
            spent["aggregate"] += clock() - emitted
    return {**{stage: ns / records / 1000 for stage, ns in spent.items()}, "versions": versions}
