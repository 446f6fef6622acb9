"""`riskstream report` on the outputs of a real run: each CSV against a computation from the
outputs here, each PNG a real image of the report's size, and index.html referencing every plot
and headline figure."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from streaming.reporting.report import PLOT_HEIGHT_PX, PLOT_WIDTH_PX
from tests.cli import riskstream
from tests.report_files import csv_rows, png_size
from udfs.report_tables import OTHER, TOP_GROUPS, report_window_ms

PLOTS = ("learning_curve", "fraud_rate_by_category", "amount_distribution", "score_distribution",
         "records_per_minute", "dead_letters_by_stage")



def test_report_of_a_run(tmp_path, shared_run):
    """The report of the run shared with other tests (conftest.shared_run: 6,000 generated
    transactions, 5% malformed, and a few dozen more), written here."""
    lines = [line for lines in shared_run.inputs.values() for line in lines]
    outputs = shared_run.outputs
    done = riskstream("report", "--from", str(shared_run.folder / "out"), "--to", str(tmp_path / "rep"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = tmp_path / "rep"
    assert done.stdout.strip().endswith(str((report / "index.html").resolve()))

    scores, letters = outputs.scores, outputs.dead_letters
    assert len(scores) + len(letters) == len(lines) and letters
    for plot in PLOTS:
        assert png_size(report / f"{plot}.png") == (PLOT_WIDTH_PX, PLOT_HEIGHT_PX)

    by_stage = Counter(letter["stage"] for letter in letters)
    assert {row["stage"]: int(row["dead_letters"]) for row in csv_rows(report / "dead_letters_by_stage.csv")} == by_stage

    minutes = Counter(score["event_time"] // 60_000 * 60_000 for score in scores)
    per_minute = {int(row["minute_start"]): int(row["records"]) for row in csv_rows(report / "records_per_minute.csv")}
    assert {minute: n for minute, n in per_minute.items() if n} == minutes
    assert sorted(per_minute) == list(range(min(minutes), max(minutes) + 1, 60_000))

    labelled = [(s["score"], s["label"]) for s in scores if s["label"] is not None]
    bins = Counter((min(int(p * 20), 19), y) for p, y in labelled)
    for row in csv_rows(report / "score_distribution.csv"):
        b = round(float(row["low"]) * 20)
        assert (int(row["not_fraud"]), int(row["fraud"])) == (bins[(b, 0)], bins[(b, 1)])

    overall = [row for row in csv_rows(report / "learning_curve.csv") if row["model_key"] == "(all)"]
    window = report_window_ms(s["event_time"] for s in scores)
    assert sum(int(row["labelled"]) for row in overall) == len(labelled) and len(overall) > 3
    for row in overall:
        start = int(row["window_start"])
        pairs = [(s["score"], s["label"]) for s in scores
                 if s["label"] is not None and start <= s["event_time"] < start + window]
        loss = sum(-math.log(p) if y else -math.log(1 - p) for p, y in pairs) / len(pairs)
        assert float(row["log_loss"]) == pytest.approx(loss, rel=1e-9)

    fraud_rows = csv_rows(report / "fraud_rate_by_category.csv")
    categories = Counter(s["merchant_category"] for s in scores if s["label"] is not None)
    top = sorted(categories, key=lambda category: (-categories[category], category))[:TOP_GROUPS]
    assert len(categories) > TOP_GROUPS  # the generator's 20: the rest are drawn together
    assert list(dict.fromkeys(row["merchant_category"] for row in fraud_rows)) == [*top, OTHER]
    assert sum(int(row["frauds"]) for row in fraud_rows) == sum(y for _, y in labelled)
    amount_rows = csv_rows(report / "amount_distribution.csv")
    assert sum(int(row["not_fraud"]) + int(row["fraud"]) for row in amount_rows) == len(labelled)

    page = (report / "index.html").read_text(encoding="utf-8")
    for plot in PLOTS:
        assert f'src="{plot}.png"' in page and f'href="{plot}.csv"' in page
    assert f"<td>{len(scores):,}</td>" in page and f"<td>{len(letters):,}</td>" in page
    assert f"<td>{sum(y for _, y in labelled):,}</td>" in page

