"""`riskstream score` and `model export` on a real run's final models (the mini-cluster, the local
profile): `score` gives a record the score line the job writes for it when the record comes next,
and the export applied by hand gives the same score."""

from __future__ import annotations

import json

from streaming.config import PSEUDONYM_KEY_ENV
from streaming.config.from_settings import transaction_reader
from tests.cli import RISKSTREAM, riskstream, shell
from tests.reference.exported_model import score_by_hand
from udfs.generator import GeneratorSettings, generate


def test_score_with_a_runs_final_models_is_the_jobs_score_of_the_next_record(tmp_path, scoring_job, monkeypatch):
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)  # the job and the command use the profile's key
    lines = list(generate(GeneratorSettings(records=2001, seed=13)))
    record = lines[-1]
    before = scoring_job(tmp_path / "before", lines[:-1])  # the run whose final models score the record
    out = tmp_path / "before" / "out"
    reader = transaction_reader(before.settings)
    read = reader.read(record, {}, 0)
    assert read.model_key in {snapshot["model_key"] for snapshot in before.snapshots}
    (tmp_path / "record.json").write_bytes(record + b"\n")

    scored = shell(f"{RISKSTREAM} score --model-from {out} < record.json", tmp_path)
    assert scored.returncode == 0 and scored.stderr == "", scored.stderr
    line = json.loads(scored.stdout)
    assert line["txn_id"] == read.txn_id and line["model_updates"] > 0

    exported = riskstream("model", "export", read.model_key, "--from", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    features = {reader.encoder.names[i]: value for i, value in zip(read.indices, read.values)}
    assert abs(score_by_hand(json.loads(exported.stdout), features) - line["score"]) < 1e-9

    after = scoring_job(tmp_path / "after", lines)  # the same stream with the record next
    job = [score for score in after.scores if score["txn_id"] == read.txn_id]
    assert len(job) == 1
    assert {**line, "scored_at": None} == {**job[0], "scored_at": None}
