"""`riskstream model list|show|export` and `score` (streaming/cli/models.py, udfs/model_export.py,
ModelScorer.score_next): a key's export applied by hand, and `score`, give what the job gives the
key's next record; every mistake ends in one line and the documented exit code.

The job here is its own code without Flink: the compiled scoring (`ModelScorer.score_columns`) over
records read as the job reads them (`TransactionReader.read_columns`); tests/integration/
test_model_use.py holds `score` to a real run."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone

import pytest

from streaming.config import load_settings
from streaming.config.from_settings import model_scorer, transaction_reader
from tests.cli import PROJECT, RISKSTREAM, assert_one_line_failure, riskstream, shell
from tests.reference.exported_model import score_by_hand
from udfs.generator import GeneratorSettings, generate
from udfs.model import STATE_VERSION, KeyModel
from udfs.model_export import EXPORT_VERSION, exported_model

LOCAL = PROJECT / "conf" / "local.yaml"
NOW = 1_767_300_000_000
TRAINED = 1500  # records the models learn from before the records they score next


def read_batch(reader, lines: list[bytes]):
    """The records of `lines` the job would score, as one batch in arrival order."""
    batches, _ = reader.read_columns(lines, lambda _: {}, 1, NOW)
    return batches[0]


def job_run(overrides: tuple[str, ...] = (), records: int = TRAINED + 200):
    """The job's code on a generated stream: (settings, reader, scorer, the stream's lines, the
    score lines of the whole stream, the models after its first TRAINED lines)."""
    settings = load_settings(LOCAL, list(overrides))
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    lines = list(generate(GeneratorSettings(records=records, seed=5)))
    whole, _, _ = scorer.score_columns(read_batch(reader, lines), scorer.new_table(), NOW)
    table = scorer.new_table()
    scorer.score_columns(read_batch(reader, lines[:TRAINED]), table, NOW)
    models = {key: table.key_model(row) for key, row in table.rows.items()}
    return settings, reader, scorer, lines, whole, models


def snapshot_json(scorer, models: dict[str, KeyModel], key: str) -> dict:
    """The key's end-of-input snapshot as the job writes it, read back as JSON."""
    return json.loads(scorer.snapshot(models[key], key))


def first_next_records(lines: list[bytes], whole: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(line, the job's score line) of the first record of each key after the first TRAINED lines
    (the generator writes no malformed record here, so line i was scored as whole[i])."""
    seen, pairs = set(), []
    for line, score in zip(lines[TRAINED:], whole[TRAINED:]):
        key = json.loads(score)["model_key"]
        if key not in seen:
            seen.add(key)
            pairs.append((line, score))
    return pairs


def features_of(reader, line: bytes) -> dict[str, float]:
    """The record's encoded features by name, as the job encodes them."""
    record = reader.read(line, {}, NOW)
    return {reader.encoder.names[i]: v for i, v in zip(record.indices, record.values)}


@pytest.mark.parametrize("overrides", [(), ("model.optimizer=adagrad", "model.learning_rate=0.05"),
                                       ("model.optimizer=ftrl",)])
def test_score_next_and_the_export_by_hand_give_the_jobs_score_of_each_keys_next_record(no_key_in_environment,
                                                                                         overrides):
    _, reader, scorer, lines, whole, models = job_run(overrides)
    pairs = first_next_records(lines, whole)
    assert len(pairs) >= 10
    for line, job_line in pairs:
        key = json.loads(job_line)["model_key"]
        snapshot = snapshot_json(scorer, models, key)
        before = models[key].to_bytes()
        scored = scorer.score_next(read_batch(reader, [line]), KeyModel.from_snapshot(snapshot, scorer.feature_names),
                                   NOW)
        assert scored == job_line  # the same bytes: score, reasons, model_updates, context
        assert models[key].to_bytes() == before
        export = exported_model(snapshot)
        assert abs(score_by_hand(export, features_of(reader, line)) - json.loads(job_line)["score"]) < 1e-9


def test_a_key_without_a_model_is_scored_by_a_new_keys_model_as_the_job_does(no_key_in_environment):
    settings = load_settings(LOCAL)
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    batch = read_batch(reader, list(generate(GeneratorSettings(records=1, seed=3))))
    first, _, _ = scorer.score_columns(batch, scorer.new_table(), NOW)
    assert scorer.score_next(batch, None, NOW) == first[0]
    assert json.loads(first[0])["model_updates"] == 0


def test_the_export_lists_everything_in_the_features_order(no_key_in_environment):
    _, _, scorer, _, _, models = job_run(("model.optimizer=ftrl",), records=TRAINED)
    key = max(models, key=lambda k: models[k].model.updates)
    snapshot = snapshot_json(scorer, models, key)
    export = exported_model(snapshot)
    names = list(scorer.feature_names)
    assert export["features"] == names and export["model_key"] == key
    assert export["weights"] == [snapshot["weights"][name] for name in names] and export["bias"] == snapshot["bias"]
    statistics = export["standardization"]
    assert statistics["features"] == [names[i] for i in scorer.standardized] == list(snapshot["standardization"]["features"])
    count = snapshot["standardization"]["count"]
    assert statistics["count"] == count > 1
    for name, mean, std, m2 in zip(statistics["features"], statistics["mean"], statistics["std"], statistics["m2"]):
        assert (mean, m2) == (snapshot["standardization"]["features"][name]["mean"],
                              snapshot["standardization"]["features"][name]["m2"])
        assert std == math.sqrt(m2 / count)
    assert export["optimizer"]["kind"] == "ftrl"
    for name in ("z", "n"):
        accumulator = snapshot["accumulators"][name]
        assert export["optimizer"]["accumulators"][name] == {"weights": [accumulator["weights"][n] for n in names],
                                                              "bias": accumulator["bias"]}
    assert (export["model_updates"], export["rejected_updates"], export["event_time"]) == (
        snapshot["model_updates"], snapshot["rejected_updates"], snapshot["event_time"])
    assert (export["export_version"], export["snapshot_schema_version"], export["state_version"]) == (
        EXPORT_VERSION, 1, STATE_VERSION)
    with pytest.raises(ValueError, match="snapshot version 2"):
        exported_model({**snapshot, "schema_version": 2})


# ---------------------------------------------------------------- the commands, as a user runs them


@pytest.fixture
def run_output(tmp_path, no_key_in_environment):
    """A run's output folder, `out/` in tmp_path, holding the end-of-input snapshots of the models
    after TRAINED generated records, and `record.json`, the next record of the stream (with the
    job's score line of it); returns (reader, that score line)."""
    _, reader, scorer, lines, whole, models = job_run(records=TRAINED + 1)
    folder = tmp_path / "out" / "model-snapshots"
    folder.mkdir(parents=True)
    (folder / "model-snapshots-0-0.jsonl").write_text("".join(scorer.snapshot(models[key], key) + "\n"
                                                              for key in sorted(models)))
    (folder / ".model-snapshots-0-1.jsonl.inprogress").write_text("not committed, not read\n")
    (tmp_path / "record.json").write_bytes(lines[-1] + b"\n")
    return reader, whole[-1]


def test_model_list_prints_each_keys_latest_snapshot(tmp_path, run_output):
    snapshots = [json.loads(line) for line in (tmp_path / "out" / "model-snapshots" / "model-snapshots-0-0.jsonl")
                 .read_text().splitlines()]
    done = riskstream("model", "list", "--from", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["model", "key", "updates", "rejected", "last", "update", "(event", "time,", "UTC)",
                              "optimizer"]
    expected = [[s["model_key"], f"{s['model_updates']:,}", "0",
                 *datetime.fromtimestamp(s["event_time"] / 1000, timezone.utc).isoformat(" ", "milliseconds")[:-6].split(),
                 "sgd"] for s in snapshots]
    assert [row.split() for row in rows] == expected


def test_score_gives_the_jobs_score_of_the_next_record_and_the_export_by_hand_agrees(tmp_path, run_output):
    reader, job_line = run_output
    scored = shell(f"{RISKSTREAM} score --model-from out < record.json", tmp_path)
    assert scored.returncode == 0 and scored.stderr == "", scored.stderr
    line, job = json.loads(scored.stdout), json.loads(job_line)
    assert {**line, "scored_at": None} == {**job, "scored_at": None}
    exported = riskstream("model", "export", f" {job['model_key'].title()} ", "--from", "out", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    by_hand = score_by_hand(json.loads(exported.stdout), features_of(reader, (tmp_path / "record.json").read_bytes()[:-1]))
    assert abs(by_hand - line["score"]) < 1e-9


def test_score_of_a_record_the_job_would_dead_letter_gives_the_reason(tmp_path, run_output):
    record = json.loads((tmp_path / "record.json").read_text())
    (tmp_path / "bad.json").write_text(json.dumps({**record, "country": "USA"}))
    done = shell(f"{RISKSTREAM} score --model-from out < bad.json", tmp_path)
    assert_one_line_failure(done, 4, "dead-letter this record at stage clean", "country 'USA' is not an ISO-3166")
    assert done.stdout == ""


@pytest.mark.parametrize("stdin, phrases", [
    ("two.json", ("stdin holds 2 lines", "one JSON object on one line")),
    ("/dev/null", ("stdin is empty", "score --model-from OUTPUT < record.json")),
])
def test_score_reads_exactly_one_record(tmp_path, run_output, stdin, phrases):
    (tmp_path / "two.json").write_text((tmp_path / "record.json").read_text() * 2)
    done = shell(f"{RISKSTREAM} score --model-from out < {stdin}", tmp_path)
    assert_one_line_failure(done, 2, *phrases)


def test_score_and_export_refuse_a_run_of_the_global_model(tmp_path, run_output):
    score = f"{RISKSTREAM} score --model-from out"
    by_profile = shell(f"{score} --set model.blend=sum < record.json", tmp_path)
    assert_one_line_failure(by_profile, 2, "score:", "the profile trains the global model", "model.blend sum")
    versions = tmp_path / "out" / "model-versions"
    versions.mkdir()
    (versions / "model-versions-0-0.jsonl").write_text("{}\n")
    by_output = shell(f"{score} < record.json", tmp_path)
    assert_one_line_failure(by_output, 2, "the run trained the global model (out/model-versions holds its versions)",
                            "model.blend key")
    exported = riskstream("model", "export", "grocery", "--from", "out", cwd=tmp_path)
    assert_one_line_failure(exported, 2, "model export:", "standardized by the global model", "model show")


def test_score_and_export_refuse_a_run_that_reset_a_model_on_drift(tmp_path, run_output):
    # After a reset the key's updates start again at 0: its latest snapshot is no longer the one
    # after the most updates.
    drift = tmp_path / "out" / "drift"
    drift.mkdir()
    (drift / "drift-0-0.jsonl").write_text(json.dumps({"model_key": "fuel", "action": "report"}) + "\n")
    kept = shell(f"{RISKSTREAM} score --model-from out < record.json", tmp_path)
    assert kept.returncode == 0, kept.stderr
    (drift / "drift-0-0.jsonl").write_text(json.dumps({"model_key": "fuel", "action": "reset"}) + "\n")
    done = shell(f"{RISKSTREAM} score --model-from out < record.json", tmp_path)
    assert_one_line_failure(done, 2, "score: the run reset the model of 'fuel' on drift", "needs a run without resets")
    exported = riskstream("model", "export", "grocery", "--from", "out", cwd=tmp_path)
    assert_one_line_failure(exported, 2, "model export: the run reset the model of 'fuel'")


def test_score_with_a_profile_of_other_features_says_to_give_the_runs_profile(tmp_path, run_output):
    done = shell(f"{RISKSTREAM} score --model-from out "
                 f"--set features.time.hour_of_day=one_hot < record.json", tmp_path)
    assert_one_line_failure(done, 2, "learned from other features than the profile's features.* (25 against 47; "
                            "feature 23 is 'hour_of_day_sin', the profile's 'hour_of_day=0')", "--config")


@pytest.mark.parametrize("command", [["model", "list"], ["model", "show", "grocery"], ["model", "export", "grocery"],
                                     ["score"]])
def test_the_model_commands_on_a_run_without_snapshots_are_a_user_error(tmp_path, command):
    option = "--model-from" if command == ["score"] else "--from"
    (tmp_path / "out" / "model-snapshots").mkdir(parents=True)
    done = shell(f"{RISKSTREAM} {' '.join(command)} {option} out < /dev/null", tmp_path)
    assert_one_line_failure(done, 2, "no model snapshots in out/model-snapshots", "run the job", option)
    nothing = shell(f"{RISKSTREAM} {' '.join(command)} {option} nothing < /dev/null",
                    tmp_path)
    assert_one_line_failure(nothing, 2, f"{option}: nothing has no model-snapshots/ folder", "output.path of a run")


@pytest.mark.parametrize("command, option, default", [
    (["model", "list"], "--from OUTPUT", "the profile's output.path"),
    (["model", "show", "k"], "--from OUTPUT", "the profile's output.path"),
    (["model", "export", "k"], "--from OUTPUT", "the profile's output.path"),
    (["score"], "--model-from OUTPUT", "the profile's output.path"),
    (["score"], "--idle-timeout IDLE_TIMEOUT", "(default: 5.0)"),
    (["score"], "--config CONFIG", f"(default: {LOCAL})"),
])
def test_the_model_commands_options_are_in_help_with_their_defaults(tmp_path, command, option, default):
    helped = riskstream(*command, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert re.search(re.escape(option) + r" (?:(?!--).)*" + re.escape(default), text), text
