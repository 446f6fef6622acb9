"""The published JSON Schemas (schemas/<name>/v<N>.json, draft 2020-12): each is a valid schema with
the fields docs/contracts.md promises; version 1 holds the lines the job wrote when it was
published (tests/fixtures/outputs-v1/) and the lines the current writers make now (readers of
version 1 still read the current outputs); and the check has teeth: an incompatible change to a
current line (a required field renamed or removed, a type changed) fails it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from streaming.config import load_settings
from streaming.config.from_settings import model_scorer, transaction_reader
from streaming.reporting.outputs import OUTPUTS
from streaming.reporting.schema_docs import CONTRACTS, main, render
from tests.output_schemas import INPUTS, SCHEMAS, assert_lines_valid, schema_path, violations
from udfs.analytics import WindowSpec, late_records
from udfs.cleaning import Rejected
from udfs.drift import DriftSettings, PageHinkleyParameters
from udfs.drift_tracking import DriftTracker
from udfs.generator import MALFORMED_KINDS, GeneratorSettings, generate, generate_with_kinds
from udfs.global_model import GlobalModel
from udfs.global_scoring import final_message, version_message
from udfs.label_outcomes import label_dead_letter, learning_line
from udfs.labels import read_label

PROJECT = Path(__file__).resolve().parents[2]
FIXTURES = PROJECT / "tests" / "fixtures" / "outputs-v1"
NAMES = (*INPUTS, *OUTPUTS)
# Outputs whose lines Java writes (WindowAnalytics.java, RepeatedIds.java): checked on fixture lines.
JAVA_WRITTEN = {"analytics", "repeated-ids"}
NOW = 1_767_300_000_000
LABEL_OUTCOMES = ("duplicate", "contradicting", "expired", "unknown", "late")


def fixture_lines(name: str) -> list[bytes]:
    return [line for line in (FIXTURES / f"{name}.jsonl").read_bytes().splitlines() if line]


def fixture_records(name: str) -> list[dict]:
    return [orjson.loads(line) for line in fixture_lines(name)]


def test_every_input_and_output_has_a_version_1_schema_and_nothing_else_is_in_schemas():
    assert sorted(path.name for path in SCHEMAS.iterdir() if path.is_dir()) == sorted(NAMES)
    assert all(schema_path(name, 1).is_file() for name in NAMES)


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*/v*.json")), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_each_schema_is_a_valid_draft_2020_12_schema_that_documents_its_fields(path):
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/schemas/{path.parent.name}/{path.name}")
    assert schema["title"] and schema["description"] and schema["type"] == "object"
    undocumented = [name for name, field in schema["properties"].items() if not field.get("description")]
    assert not undocumented, f"{path}: properties without a description: {undocumented}"
    assert set(schema["required"]) <= set(schema["properties"])
    if path.parent.name in OUTPUTS:  # every output line names its version (docs/contracts.md, "Outputs")
        version = int(re.fullmatch(r"v(\d+)\.json", path.name).group(1))
        assert "schema_version" in schema["required"] and schema["properties"]["schema_version"]["const"] == version


@pytest.mark.parametrize("name", NAMES)
def test_every_fixture_line_the_job_wrote_at_version_1_is_valid(name):
    lines = fixture_lines(name)
    assert 5 <= len(lines) <= 100  # a few dozen (model-versions: every version of a run)
    if name in INPUTS:
        bad = [(line, violations(name, line, version=1)) for line in lines if violations(name, line, version=1)]
        assert not bad, bad[:3]
    else:
        assert assert_lines_valid(name, lines) == len(lines)
    # The schema as published (its $refs resolved by jsonschema) agrees with the inlined copy the checks use.
    published = Draft202012Validator(json.loads(schema_path(name, 1).read_text(encoding="utf-8")))
    assert all(published.is_valid(orjson.loads(line)) for line in lines)


def test_the_fixtures_cover_each_variant_of_the_outputs():
    scores = fixture_records("scores")
    assert {(s["label"], "global_version" in s) for s in scores} == {(label, global_model) for label in (0, 1, None)
                                                                     for global_model in (False, True)}
    letters = fixture_records("dead-letters")
    assert {letter["stage"] for letter in letters} == {"decode", "parse", "clean", "features"}
    assert any("raw_sha256" in letter for letter in letters) and any(letter["txn_id"] is None for letter in letters)
    label_letters = fixture_records("label-dead-letters")
    # `late` needs a label whose transaction's log was already dropped: not made by the fixture runs.
    assert {letter.get("outcome") for letter in label_letters if letter["stage"] == "label"} == \
        set(LABEL_OUTCOMES) - {"late"}
    assert {letter["stage"] for letter in label_letters} >= {"label", "label-decode", "label-parse", "label-clean"}
    assert {e["detector"] for e in fixture_records("drift")} == {"page_hinkley", "adwin"}
    assert {e["global_version"] is None for e in fixture_records("drift")} == {True, False}
    versions = fixture_records("model-versions")
    assert sorted(v["version"] for v in versions) == list(range(len(versions)))  # a whole run's, in part-file order
    assert [v["version"] for v in versions if v.get("final")] == [len(versions) - 1]
    assert {s["optimizer"] for s in fixture_records("model-snapshots")} == {"sgd", "ftrl"}
    assert {a["window"] for a in fixture_records("analytics")} == {"tumbling-30000ms", "sliding-60000ms-20000ms"}
    assert fixture_records("late") and fixture_records("learning")


@pytest.fixture(scope="module")
def current_lines() -> dict[str, list[bytes]]:
    """Lines written now, in this process, by the job's own writers (the Java window lines aside:
    the fixtures and the integration tests check those): per output, its lines as UTF-8 JSON."""
    settings = load_settings(PROJECT / "conf" / "local.yaml", ["model.snapshot_every=50"])
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    raws = [line for _, line in generate_with_kinds(GeneratorSettings(records=1200, seed=3, malformed_share=0.1,
                                                                      drift_at=0.5, unlabelled_share=0.2))]
    batches, dead_letters = reader.read_columns(raws, lambda i: {"file": "/in.jsonl", "line": i + 1}, 1, NOW)
    batch = batches[0]
    table = scorer.new_table()
    assessed = scorer.assess_columns(batch, table)
    tracker = DriftTracker(DriftSettings("page_hinkley", PageHinkleyParameters(min_instances=20, threshold=3.0)),
                           "report", scorer)
    drift = tracker.after_batch(tracker.detectors(), batch, assessed, table, NOW)
    _, _, late = late_records([WindowSpec(10_000, 10_000), WindowSpec(60_000, 20_000)], 0, batch,
                              int(batch.event_times.max()))
    label = read_label(b'{"txn_id": "t-1", "is_fraud": 1, "label_time": 1767225600000, "source": "review"}', 65536)
    unreadable = []
    for raw in (b"\xff\xfe", b"[1]", b'{"txn_id": "t-2", "is_fraud": 2, "label_time": 0}', b"x" * 70_000):
        try:
            read_label(raw, 65536)
        except Rejected as rejected:
            unreadable.append(reader.dead_letter(raw, rejected, {"topic": "labels", "partition": 0, "offset": 7}, NOW))
    model = GlobalModel.initial(scorer.feature_names, [0, 1, 2])
    return {
        "scores": scorer.score_lines(batch, assessed, NOW),
        "dead-letters": [letter.encode() for letter in dead_letters],
        "model-snapshots": [line.encode() for line in assessed.snapshots],
        "drift": [line.encode() for line in drift],
        "late": [line for _, line in late],
        "learning": [learning_line("t-1", "grocery", label, 1767225500000, 12, False),
                     learning_line("t-1", "grocery", label, 1767225700000, 13, True)],
        "label-dead-letters": [label_dead_letter(label, outcome, f"the label is {outcome}", NOW)
                               for outcome in LABEL_OUTCOMES] + [letter.encode() for letter in unreadable],
        "model-versions": [model.to_message(), version_message(model, dropped_stale_records=3), final_message(model)],
    }


def test_the_current_writers_make_every_kind_of_line(current_lines):
    assert {orjson.loads(line)["stage"] for line in current_lines["dead-letters"]} == {
        "decode", "parse", "clean", "features"}
    assert any(b'"raw_sha256"' in line for line in current_lines["dead-letters"])
    assert {orjson.loads(line)["label"] for line in current_lines["scores"]} == {0, 1, None}
    assert len(current_lines["drift"]) >= 1 and len(current_lines["late"]) >= 1
    assert len(current_lines["model-snapshots"]) >= 1
    assert {orjson.loads(line)["stage"] for line in current_lines["label-dead-letters"]} == {
        "label", "label-decode", "label-parse", "label-clean"}
    assert len(MALFORMED_KINDS) <= len(current_lines["dead-letters"])


@pytest.mark.parametrize("name", sorted(set(OUTPUTS) - JAVA_WRITTEN))
def test_readers_of_version_1_still_read_what_the_current_writers_write(current_lines, name):
    assert assert_lines_valid(name, current_lines[name]) == len(current_lines[name])


def renamed(record: dict, field: str) -> dict:
    changed = dict(record)
    changed[f"{field}_v2"] = changed.pop(field)
    return changed


def removed(record: dict, field: str) -> dict:
    return {name: value for name, value in record.items() if name != field}


def retyped(record: dict, field: str) -> dict:
    # What a careless writer might change: a number as text, text as a list, null as an object,
    # anything else (an object, a list) as its JSON text.
    value = record[field]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        changed = str(value)
    elif isinstance(value, str):
        changed = [value]
    elif value is None:
        changed = {}
    else:
        changed = json.dumps(value)
    return {**record, field: changed}


@pytest.mark.parametrize("change", [renamed, removed, retyped])
@pytest.mark.parametrize("name", sorted(set(OUTPUTS) - JAVA_WRITTEN))
def test_a_planted_incompatible_change_to_a_current_line_fails_version_1(current_lines, name, change):
    """Every required field of the current line, renamed, removed or given another type in a copy:
    each copy fails (a field a reader of version 1 needs is gone or unreadable), the line itself passes."""
    record = orjson.loads(current_lines[name][-1])
    assert not violations(name, record)
    schema = json.loads(schema_path(name, 1).read_text(encoding="utf-8"))
    for field in schema["required"]:
        assert violations(name, change(record, field)), f"{name}: {change.__name__} {field} was not caught"


def test_a_line_is_checked_against_the_schema_of_its_own_version(current_lines):
    letter = orjson.loads(current_lines["dead-letters"][0])
    with pytest.raises(AssertionError, match="no schema for schema_version 99"):
        violations("dead-letters", {**letter, "schema_version": 99})
    assert violations("dead-letters", removed(letter, "schema_version")) == [
        f"no integer schema_version in {removed(letter, 'schema_version')!r:.200}"]


@pytest.mark.parametrize("name", sorted(JAVA_WRITTEN))
def test_the_java_written_fixture_lines_fail_version_1_when_changed_incompatibly(name):
    """The window lines and the repeated-ids reports come from Java (no JVM in this tier): the same
    teeth on a fixture line."""
    record = fixture_records(name)[0]
    assert not violations(name, record)
    schema = json.loads(schema_path(name, 1).read_text(encoding="utf-8"))
    for field in schema["required"]:
        for change in (renamed, removed, retyped):
            assert violations(name, change(record, field)), f"{change.__name__} {field} was not caught"


def test_generated_transactions_and_labels_the_job_reads_are_valid_inputs():
    """The input schemas hold what the generator writes when it means a valid record."""
    lines = list(generate(GeneratorSettings(records=300, seed=9)))
    bad = [line for line in lines if violations("transactions", line, version=1)]
    assert not bad, bad[:2]
    assert violations("transactions", removed(orjson.loads(lines[0]), "amount"), version=1)
    assert violations("labels", {"txn_id": "t", "is_fraud": 2, "label_time": 0}, version=1)


def test_the_contract_tables_are_the_ones_the_schemas_give():
    text = CONTRACTS.read_text(encoding="utf-8")
    assert render(text) == text, "docs/contracts.md's tables differ from schemas/: run `make docs-contracts`"
    # Every schema is published there, and its table regenerated.
    for path in sorted(SCHEMAS.glob("*/v*.json")):
        assert f"<!-- generated from {path.relative_to(PROJECT)} -->" in text, path


def test_a_table_edited_by_hand_is_told_apart_from_the_generated_one():
    text = CONTRACTS.read_text(encoding="utf-8")
    edited = text.replace("| `score` | number in [0, 1] |", "| `score` | number |", 1)
    assert edited != text and render(edited) == text
    assert main(["--check"]) == 0
