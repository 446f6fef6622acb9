"""`riskstream evaluate` (streaming/cli/evaluate.py) run as a user runs it, on a small generated
stream: the table's rows, the files it writes, the base-rate row against a computation of its
own, the one line about River's rows when the River environment is absent, its mistakes, and its
two model steps (the job's compiled scorer, udfs.prequential's learner) agreeing on the job's path."""

from __future__ import annotations

import csv
import math

import orjson
import pytest

from tests.cli import PROJECT, assert_one_line_failure, riskstream
from udfs.generator import GeneratorSettings, generate

LOCAL = str(PROJECT / "conf" / "local.yaml")
RECORDS = 3_000


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluate") / "tx.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in generate(GeneratorSettings(records=RECORDS, seed=11,
                                                                                  accounts=500))))
    return path


@pytest.fixture(scope="module")
def evaluated(stream, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluated")
    done = riskstream("evaluate", "--config", LOCAL, "--input", str(stream), "--model", "slow=learning_rate=0.01",
                      "--model", "fast=learning_rate=0.2,l2=0.001", "--drift-at", "2000", "--out", str(out / "eval"),
                      "--river-python", str(out / "no-river" / "python"), cwd=out)
    return done, out / "eval"


def hindsight_log_loss(labels: list[int]) -> float:
    share = sum(labels) / len(labels)
    return -sum(math.log(share) if y else math.log(1 - share) for y in labels) / len(labels)


def test_the_table_has_the_base_rate_and_each_model_and_says_how_to_get_river(evaluated, stream):
    done, _ = evaluated
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = [line.split(" | ")[0].strip() for line in lines if " | " in line]
    assert rows[2:] == ["base rate (hindsight)", "slow", "fast"]
    assert "whole stream (" in lines[2] and "from record 1,500 (" in lines[2] and "after drift at 2,000 (" in lines[2]
    river = [line for line in lines if line.startswith("River rows:")]
    assert len(river) == 1
    assert "no River environment at" in river[0] and "no-river/python" in river[0]
    assert "`make river-env` creates it" in river[0]


def test_the_base_rate_row_is_the_hindsight_log_loss_of_each_part(evaluated, stream):
    done, out = evaluated
    # Every generated record is scored (none malformed): the second half starts at record 1,500.
    labels = [orjson.loads(line)["is_fraud"] for line in stream.read_bytes().splitlines()]
    second_half = [y for y in labels[RECORDS // 2:] if y is not None]
    after_drift = [y for y in labels[2000:] if y is not None]
    with (out / "metrics.csv").open() as metrics:
        rows = {(row["model"], row["part"]): row for row in csv.DictReader(metrics)}
    assert float(rows["base rate (hindsight)", "from record 1,500"]["log_loss"]) == pytest.approx(
        hindsight_log_loss(second_half), rel=1e-12)
    assert float(rows["base rate (hindsight)", "after drift at 2,000"]["log_loss"]) == pytest.approx(
        hindsight_log_loss(after_drift), rel=1e-12)
    assert int(rows["base rate (hindsight)", "from record 1,500"]["labelled"]) == len(second_half)
    printed = next(line for line in done.stdout.splitlines() if line.startswith("base rate"))
    assert printed.split(" | ")[2].split()[0] == f"{hindsight_log_loss(second_half):.4f}"
    # The models learn: both beat the base rate's ROC AUC of 0.5 on the second half.
    assert {model for (model, part) in rows if part == "whole stream"} == {"base rate (hindsight)", "slow", "fast"}
    assert all(float(rows[model, "from record 1,500"]["roc_auc"]) > 0.6 for model in ("slow", "fast"))


def test_the_learning_curves_are_written_as_csv_and_png(evaluated, stream):
    _, out = evaluated
    with (out / "learning_curve.csv").open() as curve:
        rows = list(csv.DictReader(curve))
    assert {row["model"] for row in rows} == {"slow", "fast"}
    labels = [orjson.loads(line)["is_fraud"] for line in stream.read_bytes().splitlines()]
    labelled_positions = [position for position, y in enumerate(labels) if y is not None]
    last = [row for row in rows if row["model"] == "slow"][-1]
    assert (int(last["record"]), int(last["labelled"])) == (labelled_positions[-1], len(labelled_positions))
    window = max(100, len(labelled_positions) // 20)
    assert {int(row["window"]) for row in rows} == {window}
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_override_fails_in_one_line_naming_the_model_and_the_setting(stream, tmp_path):
    done = riskstream("evaluate", "--config", LOCAL, "--input", str(stream), "--model", "bad=learning_rate=-1",
                      "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert_one_line_failure(done, 2, "--model bad", "model.learning_rate", "greater than 0")
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("model, phrase", [("nameless", "expected NAME=OVERRIDES"),
                                           ("k=key=account_id", "model.key is the same for every model")])
def test_a_malformed_model_fails_in_one_line(stream, tmp_path, model, phrase):
    done = riskstream("evaluate", "--config", LOCAL, "--input", str(stream), "--model", model,
                      "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert_one_line_failure(done, 2, f"--model {model}", phrase)


@pytest.mark.parametrize("overrides", [
    ["model.learning_rate=0.05", "model.l2=0.001"],
    ["model.optimizer=adagrad", "model.learning_rate=0.1", "model.initial_bias=-3"],
    ["model.optimizer=ftrl", "model.ftrl.alpha=0.2", "model.ftrl.l1=0.01", "model.ftrl.l2=0.1"],
])
def test_the_compiled_scorer_and_the_prequential_learner_score_the_jobs_path_alike(stream, overrides):
    from streaming.cli.evaluate import prequential_learner
    from streaming.config import load_settings
    from streaming.config.from_settings import transaction_reader
    from streaming.reporting.outputs import file_records
    from udfs.evaluation import read_stream

    settings = load_settings(LOCAL, overrides)
    chunks, _ = read_stream(transaction_reader(settings), file_records(stream), chunk=700)
    compiled, learner = prequential_learner(settings).step, prequential_learner(settings, compiled=False).step
    for chunk in chunks:
        fast, plain = compiled(chunk), learner(chunk)
        assert len(fast) == len(chunk.batch) and 0 < fast.min() and fast.max() < 1
        assert abs(fast - plain).max() < 1e-12


def test_drift_events_are_those_of_the_prequential_learner_and_written_as_csv(tmp_path):
    from streaming.cli.evaluate import prequential_learner
    from streaming.config import load_settings
    from streaming.config.from_settings import transaction_reader
    from streaming.reporting.outputs import file_records
    from udfs.drift import drift_loss, make_detector
    from udfs.evaluation import read_stream
    from udfs.model import Sgd
    from udfs.prequential import LearningSettings, PrequentialLearner

    drifting = tmp_path / "drift.jsonl"
    drifting.write_bytes(b"".join(line + b"\n" for line in generate(
        GeneratorSettings(records=6_000, seed=5, accounts=300, drift_at=0.5))))
    drift = ["model.drift.detector=page_hinkley", "model.drift.page_hinkley.threshold=5", "model.drift.loss_cap=4"]
    settings = load_settings(LOCAL, ["model.learning_rate=0.05", "model.on_drift=reset", *drift])
    reader = transaction_reader(settings)
    chunks, _ = read_stream(reader, file_records(drifting))
    learner = prequential_learner(settings)
    scores = [p for chunk in chunks for p in learner.step(chunk).tolist()]
    detector = settings.model.drift.detector_settings()
    direct = PrequentialLearner(reader.encoder.names, reader.encoder.standardized,
                                LearningSettings(optimizer=Sgd(0.05), on_drift="reset"),
                                detector_factory=lambda: make_detector(detector),
                                detector_loss=lambda p, y: drift_loss(p, y, 4.0))
    assert scores == [direct.process(record)[0] for chunk in chunks for record in chunk.batch.records()]
    assert learner.drift_events == direct.drift_events and len(direct.drift_events) > 0

    done = riskstream("evaluate", "--config", LOCAL, "--input", str(drifting), "--set", "model.learning_rate=0.05",
                      "--model", "plain=on_drift=report", "--model", "detect=" + ",".join(
                          item.removeprefix("model.") for item in ["model.on_drift=reset", *drift]),
                      "--out", str(tmp_path / "eval"), "--river-python", str(tmp_path / "none"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    keys = len({event.model_key for event in direct.drift_events})
    assert f"drift events of detect: {len(direct.drift_events):,} on {keys:,} keys" in done.stdout
    assert "drift events of plain" not in done.stdout
    with (tmp_path / "eval" / "drift_events.csv").open() as events:
        rows = list(csv.DictReader(events))
    assert [(row["model_key"], row["txn_id"]) for row in rows] == [
        (event.model_key, event.txn_id) for event in direct.drift_events]


def test_the_global_model_settings_reach_the_prequential_learner(stream):
    from streaming.cli.evaluate import prequential_learner
    from streaming.config import load_settings
    from streaming.config.from_settings import transaction_reader
    from streaming.reporting.outputs import file_records
    from udfs.evaluation import read_stream
    from udfs.global_model import GlobalSettings
    from udfs.model import AdaGrad
    from udfs.prequential import LearningSettings, PrequentialLearner

    settings = load_settings(LOCAL, ["model.optimizer=adagrad", "model.learning_rate=0.2", "model.initial_bias=-3",
                                     "model.cold_start=global", "model.blend=sum", "model.global.cadence_records=7",
                                     "model.global.learning_rate=0.05"])
    reader = transaction_reader(settings)
    chunks, _ = read_stream(reader, file_records(stream))
    direct = PrequentialLearner(reader.encoder.names, reader.encoder.standardized, LearningSettings(
        optimizer=AdaGrad(0.2), initial_bias=-3.0, cold_start="global", blend="sum",
        global_model=GlobalSettings(cadence_records=7, learning_rate=0.05)))
    step = prequential_learner(settings).step
    for chunk in chunks:
        expected = [direct.process(record)[0] for record in chunk.batch.records()]
        assert step(chunk).tolist() == expected
