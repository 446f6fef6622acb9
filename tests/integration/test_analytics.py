"""Windowed analytics through the real job (a Flink mini-cluster at parallelism 2, two input files,
one per split) against a plain-Python reference (udfs.analytics.analyze) over the same records."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import orjson
import pytest

from streaming.outputs import committed_lines
from udfs.analytics import ScoredRecord, WindowSpec, analyze
from udfs.generator import GeneratorSettings, generate

OUT_OF_ORDERNESS_MS = 2_000
ALLOWED_LATENESS_MS = 1_000
SPECS = (WindowSpec(30_000, 30_000), WindowSpec(60_000, 20_000))
GROUP_BY = ("merchant_category", "country")


def shuffled_event_times(lines: list[bytes], seed: int, share: float, max_delay_ms: int) -> list[bytes]:
    """The lines with `share` of them given an event time up to `max_delay_ms` earlier than written:
    records that arrive out of order, some of them later than the watermark allows."""
    rng = random.Random(seed)
    delayed = []
    for line in lines:
        record = json.loads(line)
        if rng.random() < share:
            record["event_time"] = int(record["event_time"]) - rng.randrange(max_delay_ms) if isinstance(
                record["event_time"], int) else record["event_time"]
        delayed.append(orjson.dumps(record))
    return delayed


def event_time_of(line: bytes) -> int:
    from datetime import datetime

    value = json.loads(line)["event_time"]
    return value if isinstance(value, int) else round(datetime.fromisoformat(value).timestamp() * 1000)


@pytest.fixture(scope="module")
def analytics_run(tmp_path_factory):
    from tests.integration.conftest import run_scoring_job

    workdir = tmp_path_factory.mktemp("analytics")
    in_order = list(generate(GeneratorSettings(records=2_500, seed=11, mean_gap_ms=50)))
    out_of_order = shuffled_event_times(list(generate(GeneratorSettings(records=2_500, seed=12, mean_gap_ms=50))),
                                        seed=13, share=0.08, max_delay_ms=40_000)
    late_file = workdir / "out-of-order.jsonl"
    late_file.write_bytes(b"".join(line + b"\n" for line in out_of_order))
    windows = json.dumps([{"size_ms": spec.size_ms, "slide_ms": spec.slide_ms} for spec in SPECS])
    job = run_scoring_job(
        workdir, in_order, f"source.paths=[{json.dumps(str(workdir / 'in-order.jsonl'))}, {json.dumps(str(late_file))}]",
        "analytics.enabled=true", f"analytics.windows={windows}",
        f"analytics.out_of_orderness_ms={OUT_OF_ORDERNESS_MS}", f"analytics.allowed_lateness_ms={ALLOWED_LATENESS_MS}",
        "analytics.idleness_ms=600000", file_name="in-order.jsonl")
    out = Path(job.settings.output.path)
    return {"in_order": in_order, "out_of_order": out_of_order, "scores": job.scores,
            "analytics": list(committed_lines(out / "analytics")), "late": list(committed_lines(out / "late"))}


def reference(run) -> tuple[dict, dict]:
    """(window key -> reference figures, (txn_id, window) -> missed windows) from the inputs, split
    by file, and each record's score as the job wrote it."""
    scores = {score["txn_id"]: score for score in run["scores"]}
    expected_windows, expected_late = {}, {}
    for spec in SPECS:
        arrivals, txn_ids = [], []
        for split, lines in (("in-order", run["in_order"]), ("out-of-order", run["out_of_order"])):
            for line in lines:
                txn_id = json.loads(line)["txn_id"]
                score = scores[txn_id]
                txn_ids.append(txn_id)
                arrivals.append((split, ScoredRecord(
                    event_time_of(line), {"merchant_category": score["merchant_category"], "country": score["country"]},
                    score["account"], score["amount"], score["currency"], score["score"], score["label"])))
        windows, late = analyze(arrivals, spec, GROUP_BY, OUT_OF_ORDERNESS_MS, ALLOWED_LATENESS_MS)
        for (start, group_by, group), figures in windows.items():
            expected_windows[(spec.name, start, group_by, group)] = figures.figures()
        for record in late:
            expected_late[(txn_ids[record.index], spec.name)] = [(start, start + spec.size_ms, by) for start, by in record.missed]
    return expected_windows, expected_late


def close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def test_every_window_matches_the_reference_and_the_late_set_is_exact(analytics_run):
    expected_windows, expected_late = reference(analytics_run)
    emitted = {}
    for line in analytics_run["analytics"]:
        key = (line["window"], line["window_start"], line["group_by"], line["group"])
        assert key not in emitted, f"window emitted twice: {key}"
        emitted[key] = {k: v for k, v in line.items()
                        if k not in ("schema_version", "window", "window_start", "window_end", "group_by", "group")}
        assert line["window_end"] - line["window_start"] == int(line["window"].split("-")[1][:-2])
    assert emitted.keys() == expected_windows.keys()
    mismatched = [key for key in emitted if not close(emitted[key], expected_windows[key])]
    assert not mismatched, (mismatched[:3], [(emitted[k], expected_windows[k]) for k in mismatched[:1]])
    late = {(line["txn_id"], line["window"]): [(m["window_start"], m["window_end"], m["late_by_ms"])
                                               for m in line["missed"]] for line in analytics_run["late"]}
    assert len(late) == len(analytics_run["late"])
    assert late == expected_late
    assert len(late) > 20  # the shuffled file does have late records
    assert len(emitted) > 100


def test_an_in_order_stream_has_no_late_record(analytics_run):
    in_order = {json.loads(line)["txn_id"] for line in analytics_run["in_order"]}
    assert not [line for line in analytics_run["late"] if line["txn_id"] in in_order]
    assert in_order <= {score["txn_id"] for score in analytics_run["scores"]}
