"""`riskstream report` on a small output folder written here, as `riskstream run` would leave it
with every optional output on (analytics, late records, the learning log, label dead letters,
drift events) and its run record: each CSV against figures recomputed here from the lines, each
PNG a real image, and index.html showing the run's settings first. Also what a new run does to
the previous run's report and run record."""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from streaming.config import load_settings
from streaming.reporting.outputs import RUN_RECORD, RunOutputs, read_run_record, write_run_record
from streaming.reporting.report import PLOT_WIDTH_PX
from tests.cli import PROJECT, assert_one_line_failure, riskstream
from tests.report_files import csv_rows, png_size
from udfs.cleaning import epoch_millis
from udfs.generator import GeneratorSettings, drift_index
from udfs.report_tables import OTHER, TOP_GROUPS, report_window_ms

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
HOUR = 3_600_000
CATEGORIES = [f"category{i:02d}" for i in range(20)]  # as many as the generator has
CURRENCIES = ("USD", "EUR", "GBP")
DRIFT_AT = "2026-01-01T01:30:00Z"
DRIFT_AT_MS = T0 + 90 * 60_000


def jsonl(folder: Path, lines: list[dict], part: str = "part-0") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / part).write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def scores(rng: random.Random, n: int = 1500) -> list[dict]:
    weights = [1 / (rank + 1) for rank in range(len(CATEGORIES))]
    return [{"txn_id": f"t{i}", "model_key": (category := rng.choices(CATEGORIES, weights)[0]),
             "merchant_category": category, "score": rng.random(), "label": rng.choice([0, 0, 0, 1, None]),
             "event_time": T0 + rng.randrange(3 * HOUR), "currency": rng.choice(CURRENCIES),
             "amount": round(rng.uniform(0, 3000), 2)} for i in range(n)]


def analytics_lines(rng: random.Random) -> list[dict]:
    lines = []
    for window, size in (("tumbling-600000ms", 600_000), ("sliding-1200000ms-600000ms", 1_200_000)):
        for start in range(T0, T0 + 3 * HOUR, 600_000):
            for group_by, groups in (("merchant_category", CATEGORIES), ("country", ("US", "GB", "DE"))):
                for group in groups:
                    n = rng.randrange(0, 30)
                    labelled = rng.randrange(0, n + 1)
                    frauds = rng.randrange(0, labelled + 1)
                    amount = {currency: {"sum": rng.uniform(1, 5000), "mean": 1.0, "max": rng.uniform(1, 900)}
                              for currency in rng.sample(CURRENCIES, rng.randrange(1, 3))}
                    lines.append({"schema_version": 1, "window": window, "window_start": start,
                                  "window_end": start + size, "group_by": group_by, "group": group,
                                  "transactions": n, "labelled_transactions": labelled, "fraud_count": frauds,
                                  "fraud_rate": frauds / labelled if labelled else None, "amount": amount})
    return lines


def late_lines(rng: random.Random) -> list[dict]:
    return [{"schema_version": 1, "txn_id": f"late{i}", "model_key": "x", "event_time": T0 + rng.randrange(3 * HOUR),
             "window": rng.choice(["tumbling-600000ms", "sliding-1200000ms-600000ms"]), "watermark": 0,
             "missed": [{"window_start": 0, "window_end": 1, "late_by_ms": rng.randrange(1, 90_000)}
                        for _ in range(rng.randrange(1, 3))]} for i in range(60)]


def learning_lines(rng: random.Random) -> list[dict]:
    lines = []
    for i in range(400):
        delay = rng.choice([-5, 0, 59_999, 60_000, rng.randrange(1, 40 * 24 * HOUR)])
        event_time = T0 + rng.randrange(3 * HOUR)
        lines.append({"schema_version": 1, "txn_id": f"t{i}", "model_key": "x", "label": rng.choice([0, 1]),
                      "label_time": event_time + delay, "source": None, "event_time": event_time,
                      "delay_ms": delay, "model_updates": i, "update_rejected": False})
    return lines


def label_letters(rng: random.Random) -> list[dict]:
    return ([{"stage": "label", "outcome": rng.choice(["duplicate", "unknown", "expired", "contradicting"])}
             for _ in range(50)] + [{"stage": "label-parse"}] * 3)


def drift_events(rng: random.Random) -> list[dict]:
    return [{"schema_version": 1, "model_key": rng.choice(CATEGORIES[:4]), "txn_id": f"t{i}",
             "event_time": T0 + rng.randrange(3 * HOUR), "loss": 1.0, "detector": "page_hinkley",
             "action": "report"} for i in range(25)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """An output folder with every optional output and a run record, and its report."""
    rng = random.Random(27)
    folder = tmp_path_factory.mktemp("run")
    out = folder / "out"
    run = {"scores": scores(rng), "dead-letters": [{"stage": s} for s in ["parse"] * 4 + ["clean"] * 7],
           "analytics": analytics_lines(rng), "late": late_lines(rng), "learning": learning_lines(rng),
           "label-dead-letters": label_letters(rng), "drift": drift_events(rng)}
    for name, lines in run.items():
        half = len(lines) // 2
        jsonl(out / name, lines[:half], "part-0")
        jsonl(out / name, lines[half:], "part-1")
    (out / "scores" / ".part-2.inprogress").write_text('{"not": "committed"}\n')
    overrides = ["analytics.enabled=true", "model.drift.detector=page_hinkley", "model.optimizer=adagrad"]
    write_run_record(out, load_settings(PROJECT / "conf" / "local.yaml", overrides), PROJECT / "conf" / "local.yaml",
                     overrides)
    done = riskstream("report", "--from", "out", "--drift-at", DRIFT_AT, cwd=folder)
    assert done.returncode == 0 and not done.stderr, done.stderr[-3000:]  # no warning from the plotting either
    return run, out / "report", done



def test_every_plot_is_an_image_with_its_csv_and_on_the_page(report):
    _, folder, done = report
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert done.stdout.strip().endswith(str((folder / "index.html").resolve()))
    for plot in ("learning_curve", "fraud_rate_by_category", "amount_distribution", "score_distribution",
                 "records_per_minute", "dead_letters_by_stage", "analytics_by_group", "analytics_amounts",
                 "late_records", "label_outcomes", "label_delays", "drift_events"):
        width, height = png_size(folder / f"{plot}.png")
        assert width == PLOT_WIDTH_PX and height >= 300
        assert f'src="{plot}.png"' in page and f'href="{plot}.csv"' in page and f'height="{height}"' in page


def test_the_page_starts_with_the_runs_settings(report):
    run, folder, _ = report
    page = (folder / "index.html").read_text(encoding="utf-8")
    settings_table = page[page.index('<table id="run">'):page.index("</table>")]
    assert page.index('<table id="run">') < page.index('<table id="figures">') < page.index("<img")
    assert f"{PROJECT / 'conf' / 'local.yaml'} --set analytics.enabled=true --set model.drift" in settings_table
    assert "one model per merchant_category, adagrad, learning rate 0.01 (constant)" in settings_table
    assert "drift detector page_hinkley" in settings_table
    assert f"<td>{PROJECT / 'data' / 'sample.jsonl'}</td>" in settings_table or "sample.jsonl</td>" in settings_table
    assert "learning log and label outcomes (labels.mode inline)" in settings_table  # as the run record says
    times = [s["event_time"] for s in run["scores"]]
    first, last = (utc_text(t) for t in (min(times), max(times)))
    assert f"<th>event time</th><td>{first} to {last}</td>" in settings_table
    assert f"<th>input drift (--drift-at)</th><td>{DRIFT_AT}</td>" in settings_table


def utc_text(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms // 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_fraud_rate_draws_the_top_categories_and_the_rest_as_other(report):
    run, folder, _ = report
    labelled = [s for s in run["scores"] if s["label"] is not None]
    window = report_window_ms(s["event_time"] for s in run["scores"])
    sizes = Counter(s["merchant_category"] for s in labelled)
    top = sorted(sizes, key=lambda c: (-sizes[c], c))[:TOP_GROUPS]
    rows = csv_rows(folder / "fraud_rate_by_category.csv")
    assert list(dict.fromkeys(row["merchant_category"] for row in rows)) == [*top, OTHER]
    for row in rows:
        start = int(row["window_start"])
        inside = [s["label"] for s in labelled if start <= s["event_time"] < start + window
                  and (s["merchant_category"] == row["merchant_category"]
                       or (row["merchant_category"] == OTHER and s["merchant_category"] not in top))]
        assert (int(row["labelled"]), int(row["frauds"])) == (len(inside), sum(inside))


def test_amounts_are_drawn_per_currency(report):
    run, folder, _ = report
    rows = csv_rows(folder / "amount_distribution.csv")
    for currency in CURRENCIES:
        labelled = [s for s in run["scores"] if s["label"] is not None and s["currency"] == currency]
        mine = [row for row in rows if row["currency"] == currency]
        assert sum(int(row["not_fraud"]) + int(row["fraud"]) for row in mine) == len(labelled)
        for row in mine:
            inside = [s["label"] for s in labelled if float(row["low"]) <= s["amount"] < float(row["high"])]
            assert (int(row["not_fraud"]), int(row["fraud"])) == (inside.count(0), inside.count(1))


def test_analytics_by_group_of_the_smallest_tumbling_window(report):
    run, folder, _ = report
    lines = [line for line in run["analytics"] if line["window"] == "tumbling-600000ms"]
    rows = csv_rows(folder / "analytics_by_group.csv")
    assert {row["window"] for row in rows} == {"tumbling-600000ms"}
    for group_by in ("country", "merchant_category"):
        mine = [line for line in lines if line["group_by"] == group_by]
        sizes = Counter()
        for line in mine:
            sizes[line["group"]] += line["transactions"]
        top = sorted(sizes, key=lambda g: (-sizes[g], g))[:TOP_GROUPS]
        drawn = [row for row in rows if row["group_by"] == group_by]
        assert list(dict.fromkeys(row["group"] for row in drawn)) == top + ([OTHER] if len(sizes) > TOP_GROUPS else [])
        sums = defaultdict(lambda: [0, 0, 0])
        for line in mine:
            summed = sums[(line["group"] if line["group"] in top else OTHER, line["window_start"])]
            for i, field in enumerate(("transactions", "labelled_transactions", "fraud_count")):
                summed[i] += line[field]
        assert {(row["group"], int(row["window_start"])): [int(row["transactions"]), int(row["labelled_transactions"]),
                                                           int(row["fraud_count"])] for row in drawn} == sums
        for row in drawn:
            labelled, frauds = int(row["labelled_transactions"]), int(row["fraud_count"])
            assert (float(row["fraud_rate"]) if row["fraud_rate"] else None) == (
                pytest.approx(frauds / labelled) if labelled else None)


def test_analytics_amounts_keep_each_currency_apart(report):
    run, folder, _ = report
    expected = {}
    for line in run["analytics"]:
        if line["window"] == "tumbling-600000ms" and line["group_by"] == "country":
            for currency, amount in line["amount"].items():
                total, largest = expected.get((currency, line["window_start"]), (0.0, 0.0))
                expected[(currency, line["window_start"])] = (total + amount["sum"], max(largest, amount["max"]))
    rows = csv_rows(folder / "analytics_amounts.csv")
    assert len(rows) == len(expected)
    for row in rows:
        total, largest = expected[(row["currency"], int(row["window_start"]))]
        assert float(row["amount_sum"]) == pytest.approx(total, rel=1e-12)
        assert float(row["amount_max"]) == largest


def test_late_records_per_window_missed_and_report_window(report):
    run, folder, _ = report
    window = report_window_ms(s["event_time"] for s in run["scores"])
    rows = csv_rows(folder / "late_records.csv")
    assert sum(int(row["late_lines"]) for row in rows) == len(run["late"])
    for row in rows:
        start = int(row["window_start"])
        inside = [line for line in run["late"] if line["window"] == row["window"]
                  and start <= line["event_time"] < start + window]
        assert int(row["late_lines"]) == len(inside)
        assert int(row["max_late_by_ms"]) == max(m["late_by_ms"] for line in inside for m in line["missed"])


def test_label_outcomes_and_delays(report):
    run, folder, _ = report
    outcomes = {row["outcome"]: int(row["labels"]) for row in csv_rows(folder / "label_outcomes.csv")}
    letters = Counter(letter.get("outcome") or letter["stage"] for letter in run["label-dead-letters"])
    assert outcomes == {"applied": len(run["learning"]), **letters}
    assert list(outcomes)[:2] == ["applied", "duplicate"]
    rows = csv_rows(folder / "label_delays.csv")
    assert sum(int(row["not_fraud"]) + int(row["fraud"]) for row in rows) == len(run["learning"])
    for row in rows:
        low = int(row["low_ms"])
        high = int(row["high_ms"]) if row["high_ms"] else float("inf")
        inside = [line["label"] for line in run["learning"]
                  if (low <= line["delay_ms"] or low == 0) and line["delay_ms"] < high]
        assert (int(row["not_fraud"]), int(row["fraud"])) == (inside.count(0), inside.count(1)), row


def test_drift_events_per_window(report):
    run, folder, _ = report
    window = report_window_ms(s["event_time"] for s in run["scores"])
    rows = csv_rows(folder / "drift_events.csv")
    assert sum(int(row["events"]) for row in rows) == len(run["drift"])
    for row in rows:
        start = int(row["window_start"])
        inside = [e["model_key"] for e in run["drift"] if start <= e["event_time"] < start + window]
        assert (int(row["events"]), int(row["model_keys"])) == (len(inside), len(set(inside)))


def test_a_run_without_optional_outputs_or_record_says_so_and_draws_only_what_it_wrote(tmp_path):
    jsonl(tmp_path / "out" / "scores", scores(random.Random(3), 50))
    done = riskstream("report", "--from", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / "report"
    assert sorted(path.stem for path in folder.glob("*.png")) == sorted(
        ["learning_curve", "fraud_rate_by_category", "amount_distribution", "score_distribution",
         "records_per_minute", "dead_letters_by_stage"])
    assert "<th>profile</th><td>not recorded" in (folder / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("value, phrase", [("yesterday", "not ISO-8601"), ("2026-01-01T01:00:00", "no time zone")])
def test_a_drift_time_that_cannot_be_read_is_refused_in_one_line(tmp_path, value, phrase):
    jsonl(tmp_path / "out" / "scores", scores(random.Random(3), 20))
    done = riskstream("report", "--from", "out", "--drift-at", value, cwd=tmp_path)
    assert_one_line_failure(done, 2, "report --drift-at", phrase)
    assert not (tmp_path / "out" / "report").exists()


def test_a_new_run_sets_the_previous_report_and_record_aside_and_a_failed_one_puts_them_back(tmp_path):
    settings = load_settings(PROJECT / "conf" / "local.yaml", [])
    jsonl(tmp_path / "scores", [{"score": 0.5}])
    write_run_record(tmp_path, settings, PROJECT / "conf" / "local.yaml", [])
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("the previous run's report")
    outputs = RunOutputs(tmp_path)
    outputs.set_previous_aside()
    assert not (tmp_path / "report").exists() and not (tmp_path / RUN_RECORD).exists()
    write_run_record(tmp_path, settings, PROJECT / "conf" / "local.yaml", ["model.learning_rate=0.5"])
    outputs.restore_previous()  # the job failed: the previous outputs, record and report are whole again
    assert (tmp_path / "report" / "index.html").read_text() == "the previous run's report"
    assert read_run_record(tmp_path)["overrides"] == []
    outputs.set_previous_aside()
    write_run_record(tmp_path, settings, PROJECT / "conf" / "local.yaml", ["model.learning_rate=0.5"])
    outputs.drop_previous()  # the run committed its outputs: no report of the previous run is left
    assert not (tmp_path / "report").exists() and not (tmp_path / ".previous").exists()
    assert read_run_record(tmp_path)["overrides"] == ["model.learning_rate=0.5"]


def test_the_run_record_holds_the_settings_but_not_the_pseudonym_key(tmp_path):
    settings = load_settings(PROJECT / "conf" / "local.yaml", ["model.learning_rate=0.05"])
    path = write_run_record(tmp_path, settings, PROJECT / "conf" / "local.yaml", ["model.learning_rate=0.05"])
    record = read_run_record(tmp_path)
    assert record["settings"]["model"]["learning_rate"] == 0.05 and "privacy" not in record["settings"]
    assert record["settings"]["source"]["paths"] == list(settings.source.paths)
    assert "local-development-key" not in path.read_text()


def test_generate_prints_where_its_drift_starts_as_report_reads_it(tmp_path):
    done = riskstream("generate", "--out", "tx.jsonl", "--records", "500", "--drift-at", "0.3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = re.search(r"the drift starts at line 151, event time (\S+) \(riskstream report --drift-at (\S+)\)",
                      done.stdout)
    assert found is not None and found.group(1) == found.group(2), done.stdout
    line = (tmp_path / "tx.jsonl").read_bytes().splitlines()[150]
    assert epoch_millis("event_time", found.group(1)) == epoch_millis("event_time", orjson.loads(line)["event_time"])
    assert drift_index(GeneratorSettings(records=500, drift_at=0.3)) == 150
    assert "drift" not in riskstream("generate", "--out", "plain.jsonl", "--records", "50", cwd=tmp_path).stdout


def test_a_run_record_of_another_version_is_named_not_fatal(tmp_path):
    from streaming.reporting.report import read_output_folder, run_settings

    jsonl(tmp_path / "scores", scores(random.Random(4), 5))
    (tmp_path / RUN_RECORD).write_text('{"profile": "conf/x.yaml", "settings": {"model": {}}}')
    shown = run_settings(read_output_folder(tmp_path), None)
    assert shown["profile"] == "run.json is not readable by this version" and "event time" in shown


def test_label_outcomes_are_drawn_when_no_label_was_applied(tmp_path):
    """A sink writes no folder before its first line: a run whose labels were all dead-lettered has
    label-dead-letters/ and no learning/."""
    from streaming.reporting.report import build_report, read_output_folder

    jsonl(tmp_path / "out" / "scores", scores(random.Random(5), 30))
    letters = label_letters(random.Random(5))
    jsonl(tmp_path / "out" / "label-dead-letters", letters)
    build_report(read_output_folder(tmp_path / "out"), tmp_path / "report")
    outcomes = {row["outcome"]: int(row["labels"]) for row in csv_rows(tmp_path / "report" / "label_outcomes.csv")}
    assert outcomes == Counter(letter.get("outcome") or letter["stage"] for letter in letters)
    assert all(row["not_fraud"] == row["fraud"] == "0" for row in csv_rows(tmp_path / "report" / "label_delays.csv"))
