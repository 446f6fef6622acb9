"""The seeded transaction generator (udfs/generator.py), checked against the real pipeline rules."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from udfs.generator import MALFORMED_KINDS, GeneratorSettings, generate, generate_with_kinds
from udfs.pipeline import Prepared

# The stage at which each malformed kind must be dead-lettered by the local profile's pipeline.
EXPECTED_STAGE = {
    "truncated_json": "parse",
    "not_an_object": "parse",
    "nan_literal": "parse",
    "infinity_string": "clean",
    "wrong_type": "clean",
    "negative_amount": "clean",
    "missing_field": "clean",
    "missing_txn_id": "clean",
    "unknown_channel": "clean",
    "bad_label": "clean",
    "bad_event_time": "clean",
    "bad_feature": "features",
    "invalid_utf8": "decode",
    "empty_line": "decode",
    "oversize": "decode",
}

MIXED = GeneratorSettings(records=3000, seed=21, malformed_share=0.3)


@pytest.fixture(scope="module")
def mixed_stream() -> list[tuple[str | None, bytes]]:
    return list(generate_with_kinds(MIXED))


@pytest.fixture(scope="module")
def lines_by_kind(mixed_stream) -> dict[str | None, list[bytes]]:
    by_kind: dict[str | None, list[bytes]] = defaultdict(list)
    for kind, line in mixed_stream:
        by_kind[kind].append(line)
    return by_kind


def envelope(line: bytes, number: int) -> str:
    return f"file:{number}:/data/generated.jsonl\t" + line.decode("latin-1")


# ---------------------------------------------------------------- determinism


def test_same_settings_give_identical_bytes():
    settings = GeneratorSettings(records=500, seed=5, malformed_share=0.2, drift_at=0.5)
    assert list(generate(settings)) == list(generate(GeneratorSettings(records=500, seed=5, malformed_share=0.2,
                                                                       drift_at=0.5)))


def test_another_seed_gives_other_bytes():
    first = list(generate(GeneratorSettings(records=200, seed=5)))
    second = list(generate(GeneratorSettings(records=200, seed=6)))
    assert first != second
    assert sum(a != b for a, b in zip(first, second)) == 200


def test_generate_yields_the_lines_of_generate_with_kinds(mixed_stream):
    assert list(generate(MIXED)) == [line for _, line in mixed_stream]


@pytest.mark.parametrize("records", [1, 17, 1000])
def test_generate_yields_the_requested_number_of_lines(records):
    lines = list(generate(GeneratorSettings(records=records, malformed_share=0.1)))
    assert len(lines) == records
    assert not any(b"\n" in line for line in lines)


def test_without_malformed_share_every_record_is_valid():
    assert {kind for kind, _ in generate_with_kinds(GeneratorSettings(records=500))} == {None}


# ---------------------------------------------------------------- content


def test_fraud_rate_among_labelled_records_is_a_few_percent():
    labels = [json.loads(line)["is_fraud"] for line in generate(GeneratorSettings(records=10_000, seed=3))]
    known = [y for y in labels if y is not None]
    assert 0.01 <= sum(known) / len(known) <= 0.10
    assert len(known) < len(labels)  # the default unlabelled share leaves some records score-only


def test_unlabelled_share_is_respected():
    labels = [json.loads(line)["is_fraud"] for line in generate(GeneratorSettings(records=2000, unlabelled_share=0.5))]
    assert 0.4 <= labels.count(None) / len(labels) <= 0.6


def test_every_malformed_kind_appears(lines_by_kind):
    assert set(lines_by_kind) - {None} == set(MALFORMED_KINDS)


def test_a_short_stream_still_has_every_kind():
    kinds = [kind for kind, _ in generate_with_kinds(GeneratorSettings(records=200, seed=1, malformed_share=0.2))]
    assert set(MALFORMED_KINDS) <= set(kinds)


def test_the_expected_stage_table_covers_every_kind():
    assert set(EXPECTED_STAGE) == set(MALFORMED_KINDS)


def test_every_valid_line_passes_the_local_pipeline(lines_by_kind, local_preparer):
    valid = lines_by_kind[None]
    assert len(valid) > 1000
    for number, line in enumerate(valid, 1):
        result = local_preparer.prepare(envelope(line, number), now_ms=0)
        assert isinstance(result, Prepared), result
        record = json.loads(line)
        assert result.txn_id == record["txn_id"]
        assert result.label == record["is_fraud"]
        assert result.model_key == record["merchant_category"]


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_every_malformed_line_is_dead_lettered_at_its_stage(kind, lines_by_kind, local_preparer):
    lines = lines_by_kind[kind]
    assert lines
    for number, line in enumerate(lines, 1):
        result = local_preparer.prepare(envelope(line, number), now_ms=0)
        assert isinstance(result, str), (kind, line[:200])
        letter = json.loads(result)
        assert letter["stage"] == EXPECTED_STAGE[kind], (kind, letter["reason"], line[:200])
        assert letter["source"] == {"file": "/data/generated.jsonl", "line": number}
