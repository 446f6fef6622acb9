"""The run summary `riskstream run` prints and writes as JSON, from a folder of committed outputs."""

from __future__ import annotations

import json
import math

from streaming.reporting.outputs import IDLE_GAP_MS, reading_seconds, reason_kind, summarize, uncommitted_line_count


def write_outputs(folder, scores: list[dict], letters: list[dict], **others: list[dict]) -> None:
    for name, lines in {"scores": scores, "dead-letters": letters, **others}.items():
        (folder / name).mkdir()
        (folder / name / "part-0").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_reasons_of_one_kind_count_together_whatever_values_they_quote():
    assert reason_kind("channel 'fax' is not one of atm, mobile, pos, web") == \
        reason_kind("channel 'telex' is not one of atm, mobile, pos, web") == \
        "channel … is not one of atm, mobile, pos, web"
    assert reason_kind("not valid UTF-8: byte 0xe2 at offset 128") == "not valid UTF-8: byte … at offset …"
    assert reason_kind("event_time -5 is outside 1970..9999") == reason_kind("event_time 20000 is outside 1970..9999")
    assert reason_kind("txn_id is missing") == "txn_id is missing"


def test_reading_time_leaves_out_waits_for_input():
    assert reading_seconds([]) == reading_seconds([5]) == 0
    start = 1_000_000
    # 2 s of records, a wait of a minute (a watched folder between files), then 1 s more.
    times = [start, start + 1000, start + 2000, start + 62_000, start + 62_500, start + 63_000]
    assert reading_seconds(reversed(times)) == 3.0
    assert reading_seconds([start, start + IDLE_GAP_MS]) == IDLE_GAP_MS / 1000


def test_a_summary_counts_reasons_says_of_how_many_and_points_only_to_folders_written(tmp_path):
    scores = [{"score": 0.2, "label": 0, "model_key": "a", "scored_at": 1000 + 10 * i} for i in range(50)]
    letters = [{"stage": "clean", "reason": f"channel '{name}' is not one of atm", "received_at": 1500}
               for name in ("fax", "telex", "fax")] + [{"stage": "parse", "reason": "empty record", "received_at": 1490}]
    write_outputs(tmp_path, scores, letters, analytics=[{"window": "1m"}])
    summary = summarize(tmp_path, 60, 30.0, records_in_input=200)
    lines = "\n".join(summary.lines())
    assert "records read                60   of 200 in the input (stopped before its end)" in lines
    assert "  by reason                  3   channel … is not one of atm\n" \
           "                             1   empty record\n" in lines
    assert "analytics         1 window lines, 0 late-record lines (no late/ written)" in lines
    assert "throughput        108 records/s over 0.5 s of reading (30.0 s in all, with start-up)" in lines
    figures = summary.as_json()
    assert figures["dead_letters_by_reason"] == {"channel … is not one of atm": 3, "empty record": 1}
    assert figures["dead_letters_by_stage"] == {"clean": 3, "parse": 1}
    assert (figures["records_read"], figures["records_in_input"], figures["scored"]) == (60, 200, 50)
    assert figures["reconciled"] is False  # 60 read, 54 accounted
    assert figures["log_loss"] is not None and figures["roc_auc"] is None  # one class only: no AUC
    assert (figures["window_lines"], figures["late_lines"]) == (1, 0)
    json.dumps(figures, allow_nan=False)  # valid JSON: no NaN


def test_a_summary_whose_records_read_are_unknown_does_not_claim_a_mismatch(tmp_path):
    write_outputs(tmp_path, [{"score": 0.2, "label": 1, "model_key": "a"}], [])
    summary = summarize(tmp_path, None, 1.0)
    assert summary.reconciled and summary.as_json()["records_read"] is None
    assert any(line.startswith("accounting        not checked") for line in summary.lines())
    assert not any("of " in line and "in the input" in line for line in summary.lines())
    assert math.isnan(summary.roc_auc)


def test_lines_written_but_not_committed_are_those_of_hidden_part_files_whole_lines_only(tmp_path):
    assert uncommitted_line_count(tmp_path / "scores") == 0  # no folder yet
    (tmp_path / "part-0").write_text("{}\n{}\n")  # committed: not counted here
    (tmp_path / ".part-1.inprogress.3f2a").write_text("{}\n{}\n{}\n{\"half")  # the last line is being written
    (tmp_path / ".part-2.pending").write_text("{}\n")
    assert uncommitted_line_count(tmp_path) == 4


def test_a_summary_counts_txn_ids_repeated_under_another_key_only_when_de_duplication_wrote_them(tmp_path):
    score = {"score": 0.5, "label": None, "model_key": "fuel"}
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    write_outputs(tmp_path / "off", [score], [])
    assert summarize(tmp_path / "off", 1, 1.0).repeated_ids is None
    report = {"schema_version": 1, "txn_id": "t1"}
    write_outputs(tmp_path / "on", [score, score], [], **{"repeated-ids": [report, {**report, "txn_id": "t2"}]})
    summary = summarize(tmp_path / "on", 2, 1.0)
    assert summary.repeated_ids == 2 and summary.as_json()["repeated_ids"] == 2
    assert any(line.startswith("repeated txn_ids") and " 2 " in line and "see repeated-ids/" in line
               for line in summary.lines())
