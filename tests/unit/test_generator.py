"""The seeded transaction generator (udfs/generator.py), checked against the real pipeline rules."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from udfs.generator import MALFORMED_KINDS, GeneratorSettings, generate, generate_with_kinds
from udfs.label_generator import LabelStreamSettings
from udfs.records import ModelInput

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


def test_every_valid_line_passes_the_local_pipeline(lines_by_kind, local_reader):
    valid = lines_by_kind[None]
    assert len(valid) > 1000
    for number, line in enumerate(valid, 1):
        result = local_reader.read_envelope(envelope(line, number), now_ms=0)
        assert isinstance(result, ModelInput), result
        record = json.loads(line)
        assert result.txn_id == record["txn_id"]
        assert result.label == record["is_fraud"]
        assert result.model_key == record["merchant_category"]


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_every_malformed_line_is_dead_lettered_at_its_stage(kind, lines_by_kind, local_reader):
    lines = lines_by_kind[kind]
    assert lines
    for number, line in enumerate(lines, 1):
        result = local_reader.read_envelope(envelope(line, number), now_ms=0)
        assert isinstance(result, str), (kind, line[:200])
        letter = json.loads(result)
        assert letter["stage"] == EXPECTED_STAGE[kind], (kind, letter["reason"], line[:200])
        assert letter["source"] == {"file": "/data/generated.jsonl", "line": number}


# ---------------------------------------------------------------- drift

DRIFT_RECORDS = 8000
BIG_AMOUNT = 150.0  # currency units; about a fifth of the generated transactions are at least this


def parsed(settings: GeneratorSettings) -> list[dict]:
    return [json.loads(line) for line in generate(settings)]


def fraud_rate_ratio_of_big_to_small_amounts(records: list[dict]) -> float:
    """Fraud rate among labelled transactions of at least BIG_AMOUNT over that among smaller ones:
    above 1 when big amounts are more often fraud, below 1 when small ones are."""
    def rate(big: bool) -> float:
        labels = [r["is_fraud"] for r in records if r["is_fraud"] is not None and (r["amount"] >= BIG_AMOUNT) == big]
        assert len(labels) > 500 and sum(labels) > 0
        return sum(labels) / len(labels)
    return rate(True) / rate(False)


def test_a_drift_reverses_how_fraud_depends_on_the_amount_from_the_drift_point_on():
    seed = 3  # any seed: over seeds 1-7 the ratio is 2.6-4.2 without drift and 0.3-0.6 after one
    half = DRIFT_RECORDS // 2
    steady = parsed(GeneratorSettings(records=DRIFT_RECORDS, seed=seed))
    drifting = parsed(GeneratorSettings(records=DRIFT_RECORDS, seed=seed, drift_at=0.5))
    # Without a drift, big amounts are fraud about three times as often as small ones, throughout.
    assert fraud_rate_ratio_of_big_to_small_amounts(steady[:half]) > 2
    assert fraud_rate_ratio_of_big_to_small_amounts(steady[half:]) > 2
    # With one, that holds before the drift point and turns around after it (card testing: small amounts).
    assert fraud_rate_ratio_of_big_to_small_amounts(drifting[:half]) > 2
    assert fraud_rate_ratio_of_big_to_small_amounts(drifting[half:]) < 1


def test_records_before_the_drift_point_are_byte_identical_to_those_of_a_stream_without_drift():
    drift_at = 0.3
    drift_index = int(drift_at * DRIFT_RECORDS)  # the first record drawn from the drifted model
    steady = list(generate(GeneratorSettings(records=DRIFT_RECORDS, seed=8, malformed_share=0.05)))
    drifting = list(generate(GeneratorSettings(records=DRIFT_RECORDS, seed=8, malformed_share=0.05, drift_at=drift_at)))
    assert drifting[:drift_index] == steady[:drift_index]
    first_difference = next((i for i, (a, b) in enumerate(zip(steady, drifting)) if a != b), None)
    assert first_difference is not None and drift_index <= first_difference < drift_index + 200  # from there on


def test_a_drift_changes_only_the_labels_not_the_transactions():
    steady = parsed(GeneratorSettings(records=DRIFT_RECORDS, seed=4))
    drifting = parsed(GeneratorSettings(records=DRIFT_RECORDS, seed=4, drift_at=0.5))
    without_label = [({**a, "is_fraud": None}, {**b, "is_fraud": None}) for a, b in zip(steady, drifting)]
    assert all(a == b for a, b in without_label)
    assert [a["is_fraud"] is None for a in steady] == [b["is_fraud"] is None for b in drifting]
    changed = sum(a["is_fraud"] != b["is_fraud"] for a, b in zip(steady, drifting))
    assert changed > 100  # about 4% of the 4,000 records after the drift point


# ---------------------------------------------------------------- settings out of range


@pytest.mark.parametrize("given, named", [
    ({"records": -5}, "records: must be >= 1 (got -5)"),
    ({"records": 0}, "records: must be >= 1 (got 0)"),
    ({"accounts": 0}, "accounts: must be >= 1 (got 0)"),
    ({"malformed_share": 5}, "malformed_share: must be in [0, 1) (got 5)"),
    ({"malformed_share": 1.0}, "malformed_share: must be in [0, 1) (got 1.0)"),
    ({"unlabelled_share": -0.1}, "unlabelled_share: must be in [0, 1] (got -0.1)"),
    ({"drift_at": 1.0}, "drift_at: must be in (0, 1) (got 1.0)"),
    ({"mean_gap_ms": 0}, "mean_gap_ms: must be in (0, 1e6] (got 0)"),
    ({"iso_time_share": 2}, "iso_time_share: must be in [0, 1] (got 2)"),
])
def test_generator_settings_out_of_range_raise_naming_the_field(given, named):
    with pytest.raises(ValueError) as info:
        GeneratorSettings(**{"records": 10, **given})
    assert str(info.value) == named


@pytest.mark.parametrize("given, named", [
    ({"never_share": 2}, "never_share: must be in [0, 1] (got 2)"),
    ({"malformed_share": -1}, "malformed_share: must be in [0, 1] (got -1)"),
    ({"min_delay_ms": 0}, "min_delay_ms: must be > 0 (got 0)"),
    ({"min_delay_ms": 10, "max_delay_ms": 5}, "max_delay_ms: must be >= min_delay_ms (10) (got 5)"),
])
def test_label_stream_settings_out_of_range_raise_naming_the_field(given, named):
    with pytest.raises(ValueError) as info:
        LabelStreamSettings(**given)
    assert str(info.value) == named


def test_the_mean_gap_spaces_event_times_and_its_default_keeps_the_stream():
    def span_ms(settings: GeneratorSettings) -> int:
        times = [json.loads(line)["event_time"] for line in generate(settings)]
        numbers = [time for time in times if isinstance(time, int)]  # a tenth are ISO strings
        return numbers[-1] - numbers[0]

    assert list(generate(GeneratorSettings(records=300, seed=4))) == \
        list(generate(GeneratorSettings(records=300, seed=4, mean_gap_ms=100.0)))
    assert 0.8 * 3000 * 100 < span_ms(GeneratorSettings(records=3000, seed=4)) < 1.2 * 3000 * 100
    assert 0.8 * 3000 * 20_000 < span_ms(GeneratorSettings(records=3000, seed=4, mean_gap_ms=20_000)) \
        < 1.2 * 3000 * 20_000
