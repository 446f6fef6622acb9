"""De-duplication by txn_id through the real job (docs/dedup.md): a redelivery within the horizon is
dead-lettered once with stage `dedup` and changes no model; one past the horizon is scored as new; a
txn_id under another model key is scored and reported on the `repeated-ids` output."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from streaming.reporting.outputs import committed_lines, latest_snapshots
from udfs.generator import GeneratorSettings, generate_with_kinds

from .conftest import run_scoring_job

HORIZON_MS = 60_000  # the generator's records are about 100 ms apart: some 600 records
RECORDS = 3000
# Records per second: the watermark the scoring operator sees trails the records read by a second or
# two of processing (its interval, bundling, the Python workers), i.e. 40 times that in event time, plus the
# out-of-orderness (5 s of event time), far less than the 290 s before the past-horizon copies.
PACE = 400


def inputs() -> tuple[list[bytes], list[bytes], dict[int, int], list[int]]:
    """(the input with redeliveries, the same input without the redeliveries within the horizon,
    {line number of a redelivery within the horizon: line number of its first delivery}, line numbers
    of the records repeated under another model key). Line numbers count from 1."""
    originals = [line for _, line in generate_with_kinds(GeneratorSettings(records=RECORDS, seed=71, malformed_share=0))]
    with_redeliveries: list[bytes] = []
    without: list[bytes] = []
    redelivered_at: dict[int, int] = {}
    other_key_at: list[int] = []
    first_line: dict[int, int] = {}
    for index, line in enumerate(originals):
        with_redeliveries.append(line)
        without.append(line)
        first_line[index] = len(with_redeliveries)
        if index >= 100 and index % 40 == 0:  # a redelivery of the record 100 earlier: ~10 s of event time
            with_redeliveries.append(originals[index - 100])
            redelivered_at[len(with_redeliveries)] = first_line[index - 100]
        if index in (1500, 1501, 1502):  # the same txn_id under another merchant category (the model key)
            record = json.loads(line)
            record["merchant_category"] = "grocery" if record["merchant_category"] != "grocery" else "fuel"
            repeat = json.dumps(record).encode()
            with_redeliveries.append(repeat)
            without.append(repeat)
            other_key_at.append(len(with_redeliveries))
    # Past the horizon: the first ten records again, some 290 s of event time after them.
    with_redeliveries += originals[:10]
    without += originals[:10]
    return with_redeliveries, without, redelivered_at, other_key_at


def test_redeliveries_are_dead_lettered_once_and_change_no_model(tmp_path):
    lines, reference_lines, redelivered_at, other_key_at = inputs()
    # Paced: a file is read faster than watermarks are emitted (every 200 ms), and what is past the
    # horizon is decided by the watermark the scoring operator has seen.
    paced = f"source.max_records_per_second={PACE}"
    run = run_scoring_job(tmp_path / "dedup", lines, f"dedup.horizon_ms={HORIZON_MS}", paced)
    # The same input without the redeliveries, de-duplication off: what the models must be.
    reference = run_scoring_job(tmp_path / "reference", reference_lines, "dedup.horizon_ms=0", paced)

    assert len(run.scores) + len(run.dead_letters) == len(lines)
    letters = {letter["source"]["line"]: letter for letter in run.dead_letters}
    event_times = {score["txn_id"]: score["event_time"] for score in run.scores}  # cleaned: epoch ms
    assert {letter["source"]["line"] for letter in run.dead_letters} - set(redelivered_at) == set(), "a record scored once"
    assert len(letters) == len(run.dead_letters) == len(redelivered_at) > 60
    assert set(letters) == set(redelivered_at)
    for line_number, letter in letters.items():
        first = json.loads(lines[redelivered_at[line_number] - 1])
        assert letter["stage"] == "dedup" and letter["raw"] is None and letter["txn_id"] == first["txn_id"]
        first_delivery = (f"({event_times[first['txn_id']]}) from file {run.settings.source.paths[0]} "
                          f"line {redelivered_at[line_number]}")
        assert letter["reason"].endswith(first_delivery), letter["reason"]

    # Every other record scored once, past-horizon copies and other-key repeats included, with the
    # score the run without redeliveries gave it, and every model as that run left it.
    def scored(scores):
        return Counter((score["txn_id"], score["model_key"], score["score"], score["model_updates"]) for score in scores)
    assert scored(run.scores) == scored(reference.scores)
    first_ten = [json.loads(line)["txn_id"] for line in lines[:10]]
    assert all(Counter(score["txn_id"] for score in run.scores)[txn_id] == 2 for txn_id in first_ten)
    models, reference_models = latest_snapshots(run.snapshots), latest_snapshots(reference.snapshots)
    assert models.keys() == reference_models.keys()
    for key, model in models.items():
        assert (model["weights"], model["bias"], model["model_updates"]) == (
            reference_models[key]["weights"], reference_models[key]["bias"], reference_models[key]["model_updates"]), key

    # The txn_ids scored under two model keys, each reported once, with both deliveries.
    reports = list(committed_lines(Path(run.settings.output.path) / "repeated-ids"))
    repeated = {json.loads(lines[line_number - 1])["txn_id"]: line_number for line_number in other_key_at}
    assert sorted(report["txn_id"] for report in reports) == sorted(repeated)
    for report in reports:
        assert report["first"]["model_key"] != report["repeat"]["model_key"]
        # In the order the two shards' records reached the reporting operator: either may be first.
        lines_reported = {report["first"]["source"]["line"], report["repeat"]["source"]["line"]}
        assert lines_reported == {repeated[report["txn_id"]] - 1, repeated[report["txn_id"]]}
