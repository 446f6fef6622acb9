"""RecordPreparer, dead letters and ModelScorer (udfs/pipeline.py)."""

from __future__ import annotations

import hashlib
import json
import math
import random

import pytest

from udfs.cleaning import CleaningRules, pseudonymize
from udfs.features import FeatureEncoder
from udfs.model import KeyModel, Sgd
from udfs.pipeline import ModelScorer, Prepared, RecordPreparer, split_envelope

DEAD_LETTER_FIELDS = {"schema_version", "raw", "stage", "reason", "source", "txn_id", "received_at"}
NOW = 1_767_300_000_000


def java_escape(path: str) -> str:
    """The escaping SourceTaggedLineFormat.java applies to a path before tagging a line with it."""
    return path.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def line_of(record: dict) -> bytes:
    return json.dumps(record).encode("utf-8")


def tagged(payload: bytes, line: int = 1, path: str = "/data/in.jsonl") -> str:
    return f"file:{line}:{java_escape(path)}\t" + payload.decode("latin-1")


# ---------------------------------------------------------------- split_envelope


def test_split_envelope_reads_file_line_and_payload():
    assert split_envelope('file:12:/data/in.jsonl\t{"a": 1}') == ({"file": "/data/in.jsonl", "line": 12},
                                                                  b'{"a": 1}')


@pytest.mark.parametrize("path", [
    "/data/with\ttab.jsonl",
    "/data/with\nnewline.jsonl",
    "/data/tab\tand\nnewline\t.jsonl",
    "/data/with:colons:12.jsonl",
    "/data/back\\slash.jsonl",
])
def test_split_envelope_unescapes_the_path(path):
    source, payload = split_envelope(tagged(b'{"a": 1}', 3, path))
    assert source == {"file": path, "line": 3}
    assert payload == b'{"a": 1}'


@pytest.mark.parametrize("path", ["/data/dir\\new.jsonl", "/data/dir\\todo.jsonl"])
def test_split_envelope_unescapes_a_backslash_followed_by_n_or_t(path):
    source, _ = split_envelope(tagged(b"{}", 1, path))
    assert source["file"] == path


def test_split_envelope_keeps_tabs_inside_the_payload():
    assert split_envelope('file:1:/p\t{"a": "x\ty"}\t')[1] == b'{"a": "x\ty"}\t'


def test_split_envelope_turns_latin1_characters_back_into_the_original_bytes():
    raw = b'{"a": "\xff\xfe\xc3\xa9"}'
    assert split_envelope(tagged(raw))[1] == raw


@pytest.mark.parametrize("envelope", ['{"a": 1}', '{"a": "x\ty"}', 'x\tfile:1:/p', '{"city": "Zürich"}', ""])
def test_split_envelope_keeps_a_bare_payload_whole_as_utf8(envelope):
    assert split_envelope(envelope) == ({}, envelope.encode("utf-8"))


# ---------------------------------------------------------------- prepare


def transaction(**changes) -> dict:
    record = {
        "txn_id": "t-1", "event_time": "2026-01-01T10:15:00Z", "account_id": "ACCT-SECRET-77",
        "merchant_id": "m-1", "merchant_category": " Grocery ", "country": "gb", "channel": "POS",
        "amount": 42.0, "currency": "GBP", "is_fraud": 1,
        "features": {"txn_count_1h": 1, "txn_count_24h": 4, "amount_to_avg_ratio": 1.2,
                     "minutes_since_last_txn": 30.0, "distinct_merchants_24h": 2, "account_age_days": 400,
                     "failed_logins_24h": 0, "device_risk_score": 0.1, "distance_from_home_km": 3.5,
                     "new_device": 0},
    }
    record.update(changes)
    return record


def test_prepare_gives_a_prepared_record_keyed_by_the_configured_field(local_preparer):
    result = local_preparer.prepare(tagged(line_of(transaction())), NOW)
    assert isinstance(result, Prepared)
    assert result.model_key == "grocery"
    assert result.txn_id == "t-1"
    assert result.label == 1
    assert result.event_time == 1_767_262_500_000  # 2026-01-01T10:15:00Z: 1_767_225_600_000 + 10.25 h
    assert len(result.features) == len(local_preparer.encoder.names)
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.features)


@pytest.mark.parametrize("field, expected", [("country", "GB"), ("channel", "pos"), ("currency", "GBP")])
def test_prepare_uses_another_configured_model_key(local_preparer, field, expected):
    preparer = RecordPreparer(local_preparer.rules, local_preparer.encoder, field,
                              local_preparer.dead_letter_raw_bytes)
    assert preparer.prepare(tagged(line_of(transaction())), NOW).model_key == expected


def test_prepare_keys_by_the_pseudonym_when_keyed_by_account(local_preparer):
    preparer = RecordPreparer(local_preparer.rules, local_preparer.encoder, "account_id",
                              local_preparer.dead_letter_raw_bytes)
    key = preparer.prepare(tagged(line_of(transaction())), NOW).model_key
    assert key == pseudonymize("ACCT-SECRET-77", local_preparer.rules.pseudonym_key)
    assert "SECRET" not in key


def test_prepare_accepts_a_bare_payload(local_preparer):
    assert isinstance(local_preparer.prepare(json.dumps(transaction()), NOW), Prepared)


# ---------------------------------------------------------------- dead letters


def dead_letter(preparer, envelope: str) -> tuple[str, dict]:
    result = preparer.prepare(envelope, NOW)
    assert isinstance(result, str), result
    return result, json.loads(result)


def test_a_dead_letter_is_one_json_line_with_the_contract_fields(local_preparer):
    raw = line_of(transaction(amount=-5))
    text, letter = dead_letter(local_preparer, tagged(raw, 9, "/data/in.jsonl"))
    assert "\n" not in text
    assert set(letter) == DEAD_LETTER_FIELDS
    assert isinstance(letter["schema_version"], int)
    assert letter["stage"] == "clean"
    assert "amount" in letter["reason"] and "\n" not in letter["reason"]
    assert letter["source"] == {"file": "/data/in.jsonl", "line": 9}
    assert letter["txn_id"] == "t-1"
    assert letter["received_at"] == NOW
    key = local_preparer.rules.pseudonym_key
    assert json.loads(letter["raw"]) == dict(transaction(amount=-5), account_id=pseudonymize("ACCT-SECRET-77", key))


def test_a_dead_letter_from_a_bare_payload_has_an_empty_source(local_preparer):
    _, letter = dead_letter(local_preparer, "[1, 2]")
    assert letter["source"] == {}
    assert letter["stage"] == "parse"
    assert letter["txn_id"] is None


def test_a_features_stage_dead_letter_carries_the_txn_id(local_preparer):
    record = transaction()
    record["features"]["device_risk_score"] = "high"
    _, letter = dead_letter(local_preparer, tagged(line_of(record)))
    assert letter["stage"] == "features"
    assert letter["txn_id"] == "t-1"


@pytest.mark.parametrize("raw", [
    line_of(transaction(amount=-5)),  # clean
    line_of(transaction(amount=float("nan"))),  # parse: a NaN literal
    line_of(transaction())[:line_of(transaction()).index(b"ACCT") + 10],  # parse: truncated inside the id
    line_of(transaction())[:line_of(transaction()).index(b"ACCT") + 20],  # parse: truncated after it
    line_of(transaction(merchant_category="gro\udcffcery")).replace(b"\\udcff", b"\xff"),  # decode
], ids=["clean", "nan", "cut-in-id", "cut-after-id", "invalid-utf8"])
def test_a_dead_letter_never_carries_the_raw_account_id(local_preparer, raw):
    assert b"ACCT-SECRET-77"[:8] in raw  # the account id (or its start) is in the input
    text, _ = dead_letter(local_preparer, tagged(raw))
    assert "ACCT-SEC" not in text


def test_a_dead_letter_shows_invalid_utf8_as_backslash_x_escapes(local_preparer):
    raw = b'{"txn_id": "t-9", "merchant_category": "\xff\xfegrocery", "amount": 1}'
    _, letter = dead_letter(local_preparer, tagged(raw))
    assert letter["stage"] == "decode"
    assert letter["raw"] == '{"txn_id": "t-9", "merchant_category": "\\xff\\xfegrocery", "amount": 1}'


def oversize_record(size: int, account_first: bool) -> bytes:
    record = transaction(memo="é" * size)  # two bytes per character: the cut may split one
    if not account_first:
        record = {k: v for k, v in record.items() if k != "account_id"}
        record["account_id"] = "ACCT-SECRET-77"
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def test_an_oversize_dead_letter_keeps_a_prefix_and_the_hash_of_everything(local_settings, local_preparer):
    raw = oversize_record(40_000, account_first=False)
    cap = local_settings.cleaning.dead_letter_raw_bytes
    assert len(raw) > local_settings.cleaning.max_record_bytes
    _, letter = dead_letter(local_preparer, tagged(raw))
    assert letter["stage"] == "decode"
    assert set(letter) == DEAD_LETTER_FIELDS | {"raw_sha256", "raw_bytes"}
    assert letter["raw_bytes"] == len(raw)
    assert letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert letter["raw"] == raw[:cap].decode("utf-8", errors="backslashreplace")


def test_an_oversize_dead_letter_redacts_the_account_in_its_prefix(local_preparer):
    raw = oversize_record(40_000, account_first=True)
    text, letter = dead_letter(local_preparer, tagged(raw))
    assert "ACCT-SEC" not in text
    assert pseudonymize("ACCT-SECRET-77", local_preparer.rules.pseudonym_key) in letter["raw"]


def test_a_dead_letter_keeps_at_most_the_configured_prefix(local_preparer):
    preparer = RecordPreparer(local_preparer.rules, local_preparer.encoder, "merchant_category", 100)
    raw = b'{"txn_id": "t-1", "memo": "' + b"x" * 70_000 + b'"}'
    _, letter = dead_letter(preparer, tagged(raw))
    assert letter["raw"] == raw[:100].decode("ascii")
    assert letter["raw_bytes"] == len(raw)


def test_a_record_under_the_cap_keeps_all_its_bytes_and_has_no_hash(local_preparer):
    raw = b'{"txn_id": "t-1", "memo": "' + b"x" * 5000 + b'", "amount": -1}'
    _, letter = dead_letter(local_preparer, tagged(raw))
    assert letter["raw"] == raw.decode("ascii")
    assert "raw_sha256" not in letter and "raw_bytes" not in letter


# ---------------------------------------------------------------- ModelScorer

NAMES = ("a", "b", "c")


def prepared(features, label, event_time=1_000, txn_id="t", key="k") -> Prepared:
    return Prepared(key, txn_id, event_time, label, list(features))


def margin_probability(key_model: KeyModel, x) -> float:
    z = key_model.model.bias + sum(w * xi for w, xi in zip(key_model.model.weights, x))
    return 1.0 / (1.0 + math.exp(-z))


def trained(scorer: ModelScorer, records: int = 5) -> KeyModel:
    key_model = scorer.new_model()
    rng = random.Random(1)
    for i in range(records):
        scorer.score_and_learn(key_model, prepared([rng.uniform(-1, 1) for _ in NAMES], i % 2), NOW)
    return key_model


def test_an_unlabelled_record_is_scored_and_leaves_the_model_unchanged():
    scorer = ModelScorer(NAMES, (), Sgd(0.5), snapshot_every=1000, top_reasons=2)
    key_model = trained(scorer)
    before = key_model.to_bytes()
    x = [0.3, -1.2, 2.0]
    expected = margin_probability(key_model, x)
    score, snapshot = scorer.score_and_learn(key_model, prepared(x, None, 4242, "t-u", "grocery"), NOW + 1)
    assert key_model.to_bytes() == before
    assert snapshot is None
    out = json.loads(score)
    assert out["score"] == pytest.approx(expected, rel=1e-12)
    assert out["label"] is None
    assert out["txn_id"] == "t-u" and out["model_key"] == "grocery"
    assert out["event_time"] == 4242 and out["scored_at"] == NOW + 1
    assert out["model_updates"] == 5


def test_an_unlabelled_record_leaves_the_weights_unchanged_with_standardization():
    scorer = ModelScorer(NAMES, (0, 2), Sgd(0.5), snapshot_every=1000, top_reasons=2)
    key_model = trained(scorer)
    weights, bias, updates = list(key_model.model.weights), key_model.model.bias, key_model.model.updates
    scorer.score_and_learn(key_model, prepared([0.3, -1.2, 2.0], None), NOW)
    assert (key_model.model.weights, key_model.model.bias, key_model.model.updates) == (weights, bias, updates)


def test_a_labelled_record_is_scored_before_the_model_learns_from_it():
    scorer = ModelScorer(NAMES, (), Sgd(0.5), snapshot_every=1000, top_reasons=3)
    key_model = trained(scorer)
    x = [1.0, 2.0, -0.5]
    expected = margin_probability(key_model, x)
    weights_before = list(key_model.model.weights)
    score, _ = scorer.score_and_learn(key_model, prepared(x, 1, 777), NOW)
    out = json.loads(score)
    assert out["score"] == pytest.approx(expected, rel=1e-12)
    assert out["model_updates"] == 5
    assert out["label"] == 1
    assert key_model.model.updates == 6
    assert key_model.model.weights != weights_before
    assert key_model.last_event_time == 777


def test_the_score_json_has_the_contract_fields_and_ranked_reasons():
    scorer = ModelScorer(NAMES, (), Sgd(0.5), snapshot_every=1000, top_reasons=2)
    key_model = scorer.new_model()
    key_model.model.weights = [0.5, -3.0, 1.0]
    out = json.loads(scorer.score_and_learn(key_model, prepared([1.0, 1.0, -4.0], None), NOW)[0])
    assert set(out) == {"schema_version", "txn_id", "model_key", "score", "label", "event_time",
                        "model_updates", "reasons", "scored_at"}
    assert out["reasons"] == [{"feature": "c", "contribution": -4.0}, {"feature": "b", "contribution": -3.0}]


def test_a_snapshot_is_emitted_every_snapshot_every_updates():
    scorer = ModelScorer(NAMES, (1,), Sgd(0.1), snapshot_every=3, top_reasons=0)
    key_model = scorer.new_model()
    rng = random.Random(2)
    emitted = []
    labels = [1, 0, None, 0, 1, None, None, 0, 1, 1, 0]  # 8 labelled records
    for i, label in enumerate(labels):
        record = prepared([rng.uniform(-1, 1) for _ in NAMES], label, event_time=5000 + i, key="grocery")
        _, snapshot = scorer.score_and_learn(key_model, record, NOW)
        if snapshot is not None:
            emitted.append((i, json.loads(snapshot)))
    # the 3rd and 6th labelled records are at positions 3 and 8
    assert [i for i, _ in emitted] == [3, 8]
    assert [s["model_updates"] for _, s in emitted] == [3, 6]
    assert [s["event_time"] for _, s in emitted] == [5003, 5008]
    assert all(s["model_key"] == "grocery" and list(s["weights"]) == list(NAMES) for _, s in emitted)
    restored = KeyModel.from_snapshot(emitted[-1][1], NAMES)
    assert restored.model.updates == 6


def test_plain_sgd_matches_the_textbook_sequential_update():
    """Constant rate, no regularization, raw features: the exact reference of shared/DESIGN.md."""
    rate = 0.05
    scorer = ModelScorer(NAMES, (), Sgd(rate), snapshot_every=10_000, top_reasons=0)
    key_model = scorer.new_model()
    theta, b = [0.0] * len(NAMES), 0.0
    rng = random.Random(8)
    for i in range(300):
        x = [rng.uniform(-3, 3) for _ in NAMES]
        y = rng.choice([0, 1, None])
        score, _ = scorer.score_and_learn(key_model, prepared(x, y), NOW)
        p = 1.0 / (1.0 + math.exp(-(sum(t * xi for t, xi in zip(theta, x)) + b)))
        assert json.loads(score)["score"] == pytest.approx(p, abs=1e-9)
        if y is not None:
            theta = [t - rate * (p - y) * xi for t, xi in zip(theta, x)]
            b -= rate * (p - y)
    assert key_model.model.weights == pytest.approx(theta, abs=1e-9)
    assert key_model.model.bias == pytest.approx(b, abs=1e-9)


@pytest.mark.parametrize("account", [["ACCT-SECRET-77"], {"id": "ACCT-SECRET-77"}], ids=["array", "object"])
def test_a_dead_letter_never_carries_an_account_id_wrapped_in_an_array_or_object(local_preparer, account):
    text, letter = dead_letter(local_preparer, tagged(line_of(transaction(account_id=account))))
    assert letter["stage"] == "clean"
    assert "ACCT-SEC" not in text
