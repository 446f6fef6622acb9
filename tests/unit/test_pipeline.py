"""TransactionReader (udfs/reading.py), dead letters, envelopes (udfs/wire.py) and ModelScorer
(udfs/scoring.py), held to the one-record-at-a-time reference (tests/reference/pipeline.py)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import zlib
from collections import Counter

import pytest

from tests.pseudonyms import hmac_pseudonym, hmac_token, letter_bytes
from tests.reference.pipeline import read_bundle, score_and_learn, score_batch
from udfs.features import FeatureEncoder
from udfs.generator import GeneratorSettings, generate
from udfs.model import KeyModel, Sgd
from udfs.reading import TransactionReader, shard_of
from udfs.records import ModelInput, ScoreContext
from udfs.scoring import ModelScorer
from udfs.wire import split_envelope

DEAD_LETTER_FIELDS = {"schema_version", "raw", "raw_base64", "account_ids_pseudonymized", "truncated", "stage",
                      "reason", "source", "txn_id", "received_at"}
NOW = 1_767_300_000_000


def line_of(record: dict) -> bytes:
    return json.dumps(record).encode("utf-8")


def tagged(payload: bytes, line: int = 1, tag_path: str = "/data/in.jsonl") -> str:
    """A record as the file source sends it; `tag_path` is the path as written in the tag, with
    backslash, tab and newline escaped (tests/integration/test_source_tags.py runs the real
    SourceTaggedLineFormat.java against split_envelope)."""
    return f"file:{line}:{tag_path}\t" + payload.decode("latin-1")


# ---------------------------------------------------------------- split_envelope


def test_split_envelope_reads_file_line_and_payload():
    assert split_envelope('file:12:/data/in.jsonl\t{"a": 1}') == ({"file": "/data/in.jsonl", "line": 12},
                                                                  b'{"a": 1}')


@pytest.mark.parametrize("tag_path, path", [
    ("/data/with\\ttab.jsonl", "/data/with\ttab.jsonl"),
    ("/data/with\\nnewline.jsonl", "/data/with\nnewline.jsonl"),
    ("/data/tab\\tand\\nnewline\\t.jsonl", "/data/tab\tand\nnewline\t.jsonl"),
    ("/data/with:colons:12.jsonl", "/data/with:colons:12.jsonl"),
    ("/data/back\\\\slash.jsonl", "/data/back\\slash.jsonl"),
])
def test_split_envelope_unescapes_the_path(tag_path, path):
    source, payload = split_envelope(tagged(b'{"a": 1}', 3, tag_path))
    assert source == {"file": path, "line": 3}
    assert payload == b'{"a": 1}'


@pytest.mark.parametrize("tag_path, path", [("/data/dir\\\\new.jsonl", "/data/dir\\new.jsonl"),
                                            ("/data/dir\\\\todo.jsonl", "/data/dir\\todo.jsonl")])
def test_split_envelope_unescapes_a_backslash_followed_by_n_or_t(tag_path, path):
    assert split_envelope(tagged(b"{}", 1, tag_path)) == ({"file": path, "line": 1}, b"{}")


def test_split_envelope_keeps_tabs_inside_the_payload():
    assert split_envelope('file:1:/p\t{"a": "x\ty"}\t')[1] == b'{"a": "x\ty"}\t'


def test_split_envelope_turns_latin1_characters_back_into_the_original_bytes():
    raw = b'{"a": "\xff\xfe\xc3\xa9"}'
    assert split_envelope(tagged(raw))[1] == raw


@pytest.mark.parametrize("envelope", ['{"a": 1}', '{"a": "x\ty"}', 'x\tfile:1:/p', '{"city": "Zürich"}', ""])
def test_split_envelope_keeps_a_bare_payload_whole_as_utf8(envelope):
    assert split_envelope(envelope) == ({}, envelope.encode("utf-8"))


# ---------------------------------------------------------------- read


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


def test_prepare_gives_a_prepared_record_keyed_by_the_configured_field(local_reader):
    result = local_reader.read_envelope(tagged(line_of(transaction())), NOW)
    assert isinstance(result, ModelInput)
    assert result.model_key == "grocery"
    assert result.txn_id == "t-1"
    assert result.label == 1
    assert result.event_time == 1_767_262_500_000  # 2026-01-01T10:15:00Z: 1_767_225_600_000 + 10.25 h
    assert len(result.indices) == len(result.values)
    assert all(0 <= i < len(local_reader.encoder.names) for i in result.indices)
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.values)


@pytest.mark.parametrize("field, expected", [("country", "GB"), ("channel", "pos"), ("currency", "GBP")])
def test_prepare_uses_another_configured_model_key(local_reader, field, expected):
    reader = TransactionReader(local_reader.rules, local_reader.encoder, field,
                              local_reader.dead_letter_raw_bytes)
    assert reader.read_envelope(tagged(line_of(transaction())), NOW).model_key == expected


def test_prepare_keys_by_the_pseudonym_when_keyed_by_account(local_reader):
    reader = TransactionReader(local_reader.rules, local_reader.encoder, "account_id",
                              local_reader.dead_letter_raw_bytes)
    key = reader.read_envelope(tagged(line_of(transaction())), NOW).model_key
    assert key == hmac_pseudonym("ACCT-SECRET-77", local_reader.rules.pseudonym_key)
    assert "SECRET" not in key


def test_prepare_accepts_a_bare_payload(local_reader):
    assert isinstance(local_reader.read_envelope(json.dumps(transaction()), NOW), ModelInput)


# ---------------------------------------------------------------- dead letters


def dead_letter(reader, envelope: str) -> tuple[str, dict]:
    result = reader.read_envelope(envelope, NOW)
    assert isinstance(result, str), result
    return result, json.loads(result)


def test_a_dead_letter_is_one_json_line_with_the_contract_fields(local_reader):
    raw = line_of(transaction(amount=-5))
    text, letter = dead_letter(local_reader, tagged(raw, 9, "/data/in.jsonl"))
    assert "\n" not in text
    assert set(letter) == DEAD_LETTER_FIELDS
    assert letter["schema_version"] == 2
    assert letter["account_ids_pseudonymized"] is True and letter["truncated"] is False
    assert letter["stage"] == "clean"
    assert "amount" in letter["reason"] and "\n" not in letter["reason"]
    assert letter["source"] == {"file": "/data/in.jsonl", "line": 9}
    assert letter["txn_id"] == "t-1"
    assert letter["received_at"] == NOW
    key = local_reader.rules.pseudonym_key
    assert json.loads(letter["raw"]) == dict(transaction(amount=-5), account_id=hmac_pseudonym("ACCT-SECRET-77", key))
    token = hmac_token(hmac_pseudonym("ACCT-SECRET-77", key), key)
    assert letter_bytes(letter) == raw.replace(b"ACCT-SECRET-77", token.encode())


def test_a_dead_letter_from_a_bare_payload_has_an_empty_source(local_reader):
    _, letter = dead_letter(local_reader, "[1, 2]")
    assert letter["source"] == {}
    assert letter["stage"] == "parse"
    assert letter["txn_id"] is None


def test_a_features_stage_dead_letter_carries_the_txn_id(local_reader):
    record = transaction()
    record["features"]["device_risk_score"] = "high"
    _, letter = dead_letter(local_reader, tagged(line_of(record)))
    assert letter["stage"] == "features"
    assert letter["txn_id"] == "t-1"


@pytest.mark.parametrize("raw", [
    line_of(transaction(amount=-5)),  # clean
    line_of(transaction(amount=float("nan"))),  # parse: a NaN literal
    line_of(transaction())[:line_of(transaction()).index(b"ACCT") + 10],  # parse: truncated inside the id
    line_of(transaction())[:line_of(transaction()).index(b"ACCT") + 20],  # parse: truncated after it
    line_of(transaction(merchant_category="gro\udcffcery")).replace(b"\\udcff", b"\xff"),  # decode
], ids=["clean", "nan", "cut-in-id", "cut-after-id", "invalid-utf8"])
def test_a_dead_letter_never_carries_the_raw_account_id(local_reader, raw):
    assert b"ACCT-SECRET-77"[:8] in raw  # the account id (or its start) is in the input
    text, letter = dead_letter(local_reader, tagged(raw))
    assert "ACCT-SEC" not in text
    assert b"ACCT-SEC" not in letter_bytes(letter)


def test_a_dead_letter_shows_invalid_utf8_as_backslash_x_escapes(local_reader):
    raw = b'{"txn_id": "t-9", "merchant_category": "\xff\xfegrocery", "amount": 1}'
    _, letter = dead_letter(local_reader, tagged(raw))
    assert letter["stage"] == "decode"
    assert letter["raw"] == '{"txn_id": "t-9", "merchant_category": "\\xff\\xfegrocery", "amount": 1}'


def oversize_record(size: int, account_first: bool) -> bytes:
    record = transaction(memo="é" * size)  # two bytes per character: the cut may split one
    if not account_first:
        record = {k: v for k, v in record.items() if k != "account_id"}
        record["account_id"] = "ACCT-SECRET-77"
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def test_an_oversize_dead_letter_keeps_a_prefix_and_the_hash_of_everything(local_settings, local_reader):
    raw = oversize_record(40_000, account_first=False)
    cap = local_settings.cleaning.dead_letter_raw_bytes
    assert len(raw) > local_settings.cleaning.max_record_bytes
    _, letter = dead_letter(local_reader, tagged(raw))
    assert letter["stage"] == "decode"
    assert set(letter) == DEAD_LETTER_FIELDS | {"raw_sha256", "raw_bytes"}
    assert letter["truncated"] is True
    assert letter["raw_bytes"] == len(raw)
    assert letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert letter["raw"] == raw[:cap].decode("utf-8", errors="backslashreplace")
    assert letter_bytes(letter) == raw[:cap]


def test_an_oversize_dead_letter_redacts_the_account_in_its_prefix(local_reader):
    raw = oversize_record(40_000, account_first=True)
    text, letter = dead_letter(local_reader, tagged(raw))
    assert "ACCT-SEC" not in text and b"ACCT-SEC" not in letter_bytes(letter)
    key = local_reader.rules.pseudonym_key
    assert hmac_pseudonym("ACCT-SECRET-77", key) in letter["raw"]
    assert hmac_token(hmac_pseudonym("ACCT-SECRET-77", key), key).encode() in letter_bytes(letter)


def test_a_dead_letter_keeps_at_most_the_configured_prefix(local_reader):
    reader = TransactionReader(local_reader.rules, local_reader.encoder, "merchant_category", 100)
    raw = b'{"txn_id": "t-1", "memo": "' + b"x" * 70_000 + b'"}'
    _, letter = dead_letter(reader, tagged(raw))
    assert letter["raw"] == raw[:100].decode("ascii")
    assert letter_bytes(letter) == raw[:100]
    assert letter["raw_bytes"] == len(raw)


def test_a_record_under_the_cap_keeps_all_its_bytes_and_has_no_hash(local_reader):
    raw = b'{"txn_id": "t-1", "memo": "' + b"x" * 5000 + b'", "amount": -1}'
    _, letter = dead_letter(local_reader, tagged(raw))
    assert letter_bytes(letter) == raw and letter["truncated"] is False
    # The preview is only the first cleaning.dead_letter_raw_bytes (1024) bytes, as text.
    assert letter["raw"] == raw[:1024].decode("ascii")
    assert "raw_sha256" not in letter and "raw_bytes" not in letter


# ---------------------------------------------------------------- ModelScorer

NAMES = ("a", "b", "c")


CONTEXT = ScoreContext("travel", "GB", "mobile", 12.5, "GBP", "0123456789abcdef0123456789abcdef")


def model_input(features, label, event_time=1_000, txn_id="t", key="k") -> ModelInput:
    """A record whose dense `features` are given as a sparse vector listing every index."""
    return ModelInput(key, txn_id, event_time, label, list(range(len(features))), list(features), CONTEXT)


def margin_probability(key_model: KeyModel, x) -> float:
    z = key_model.model.bias + sum(w * xi for w, xi in zip(key_model.model.weights, x))
    return 1.0 / (1.0 + math.exp(-z))


def trained(scorer: ModelScorer, records: int = 5) -> KeyModel:
    key_model = scorer.new_model()
    rng = random.Random(1)
    for i in range(records):
        score_and_learn(scorer, key_model, model_input([rng.uniform(-1, 1) for _ in NAMES], i % 2), NOW)
    return key_model


def test_an_unlabelled_record_is_scored_and_leaves_the_model_unchanged():
    scorer = ModelScorer(NAMES, (), Sgd(0.5), snapshot_every=1000, top_reasons=2)
    key_model = trained(scorer)
    before = key_model.to_bytes()
    x = [0.3, -1.2, 2.0]
    expected = margin_probability(key_model, x)
    score, snapshot = score_and_learn(scorer, key_model, model_input(x, None, 4242, "t-u", "grocery"), NOW + 1)
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
    score_and_learn(scorer, key_model, model_input([0.3, -1.2, 2.0], None), NOW)
    assert (key_model.model.weights, key_model.model.bias, key_model.model.updates) == (weights, bias, updates)


def test_a_labelled_record_is_scored_before_the_model_learns_from_it():
    scorer = ModelScorer(NAMES, (), Sgd(0.5), snapshot_every=1000, top_reasons=3)
    key_model = trained(scorer)
    x = [1.0, 2.0, -0.5]
    expected = margin_probability(key_model, x)
    weights_before = list(key_model.model.weights)
    score, _ = score_and_learn(scorer, key_model, model_input(x, 1, 777), NOW)
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
    out = json.loads(score_and_learn(scorer, key_model, model_input([1.0, 1.0, -4.0], None), NOW)[0])
    assert set(out) == {"schema_version", "txn_id", "model_key", "score", "label", "event_time",
                        "model_updates", "reasons", "scored_at", "merchant_category", "country", "channel", "amount", "currency",
                        "account"}
    assert tuple(out[name] for name in ScoreContext._fields) == CONTEXT
    assert out["reasons"] == [{"feature": "c", "contribution": -4.0}, {"feature": "b", "contribution": -3.0}]


def test_a_snapshot_is_emitted_every_snapshot_every_updates():
    scorer = ModelScorer(NAMES, (1,), Sgd(0.1), snapshot_every=3, top_reasons=0)
    key_model = scorer.new_model()
    rng = random.Random(2)
    emitted = []
    labels = [1, 0, None, 0, 1, None, None, 0, 1, 1, 0]  # 8 labelled records
    for i, label in enumerate(labels):
        record = model_input([rng.uniform(-1, 1) for _ in NAMES], label, event_time=5000 + i, key="grocery")
        _, snapshot = score_and_learn(scorer, key_model, record, NOW)
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
    """Constant rate, no regularization, raw features: exactly the textbook sequential update
    w <- w - rate (p - y) x, b <- b - rate (p - y) (README, "What the job does", model)."""
    rate = 0.05
    scorer = ModelScorer(NAMES, (), Sgd(rate), snapshot_every=10_000, top_reasons=0)
    key_model = scorer.new_model()
    theta, b = [0.0] * len(NAMES), 0.0
    rng = random.Random(8)
    for i in range(300):
        x = [rng.uniform(-3, 3) for _ in NAMES]
        y = rng.choice([0, 1, None])
        score, _ = score_and_learn(scorer, key_model, model_input(x, y), NOW)
        p = 1.0 / (1.0 + math.exp(-(sum(t * xi for t, xi in zip(theta, x)) + b)))
        assert json.loads(score)["score"] == pytest.approx(p, abs=1e-9)
        if y is not None:
            theta = [t - rate * (p - y) * xi for t, xi in zip(theta, x)]
            b -= rate * (p - y)
    assert key_model.model.weights == pytest.approx(theta, abs=1e-9)
    assert key_model.model.bias == pytest.approx(b, abs=1e-9)


@pytest.mark.parametrize("account", [["ACCT-SECRET-77"], {"id": "ACCT-SECRET-77"}], ids=["array", "object"])
def test_a_dead_letter_never_carries_an_account_id_wrapped_in_an_array_or_object(local_reader, account):
    text, letter = dead_letter(local_reader, tagged(line_of(transaction(account_id=account))))
    assert letter["stage"] == "clean"
    assert "ACCT-SEC" not in text


def test_a_sparse_record_is_scored_and_learned_from_exactly_like_its_dense_form():
    names = ("n0", "n1", "n2", "c=a", "c=b", "c=c", "h_sin", "h_cos")
    scorer = ModelScorer(names, (0, 1), Sgd(0.2, l2=0.01), snapshot_every=4, top_reasons=3)
    sparse_model, dense_model = scorer.new_model(), scorer.new_model()
    rng = random.Random(6)
    for i in range(200):
        indices = [0, 1, 2, 3 + rng.randrange(3), 6, 7]
        values = [rng.uniform(0, 9), rng.uniform(-1, 1), rng.choice([0.0, 1.0]), 1.0, rng.uniform(-1, 1),
                  rng.uniform(-1, 1)]
        x = [0.0] * len(names)
        for j, v in zip(indices, values):
            x[j] = v
        label = rng.choice([0, 1, None])
        sparse = score_and_learn(scorer, sparse_model, ModelInput("k", f"t{i}", 10 + i, label, indices, values, CONTEXT), NOW)
        dense = score_and_learn(scorer, dense_model, model_input(x, label, 10 + i, f"t{i}"), NOW)
        assert sparse == dense, i
    assert sparse_model.model.weights == dense_model.model.weights
    assert sparse_model.model.bias == dense_model.model.bias
    assert sparse_model.model.updates == dense_model.model.updates > 100


# ---------------------------------------------------------------- shard_of

SHARD_KEYS = ["grocery", "restaurants", "fuel", "online_retail", "travel", "crypto_exchange", "", "åre", "café",
              "GB", "us", "0" * 32, "0123456789abcdef0123456789abcdef", "日本", "a\tb", "x" * 300]


@pytest.mark.parametrize("shards", [1, 2, 7, 32, 4096])
def test_shard_of_is_in_range_and_is_crc32_mod_shards(shards):
    for key in SHARD_KEYS:
        shard = shard_of(key, shards)
        assert type(shard) is int and 0 <= shard < shards
        assert shard == zlib.crc32(key.encode("utf-8")) % shards


def test_shard_of_spreads_keys_over_shards():
    categories = [f"category-{i}" for i in range(200)]
    used = Counter(shard_of(key, 8) for key in categories)
    assert set(used) == set(range(8))
    assert max(used.values()) < 60  # no shard takes most keys (200 / 8 = 25 on average)


SHARD_PROBE = """
import json, sys
from udfs.reading import shard_of
keys = json.loads(sys.argv[1])
print(json.dumps({str(n): [shard_of(k, n) for k in keys] for n in (3, 32, 4096)}))
"""


def test_shard_of_is_the_same_in_a_process_with_another_hash_seed():
    here = {str(n): [zlib.crc32(k.encode("utf-8")) % n for k in SHARD_KEYS] for n in (3, 32, 4096)}
    for seed in ("0", "12345", "random"):
        result = subprocess.run([sys.executable, "-c", SHARD_PROBE, json.dumps(SHARD_KEYS)],
                                env={**os.environ, "PYTHONHASHSEED": seed},
                                capture_output=True, text=True, check=True, timeout=60)
        assert json.loads(result.stdout) == here
    assert len(set(here["32"])) > 1  # the shard does depend on the key


# ---------------------------------------------------------------- read_bundle

BUNDLE_PATH = "/data/bundle\tand\nnames.jsonl"
BUNDLE_TAG_PATH = "/data/bundle\\tand\\nnames.jsonl"  # escaped by the source: the envelope has no raw newline


def utf8_line(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


# Lines holding characters that other line splitters (str.splitlines, io text mode) treat as line
# breaks once the envelope is decoded as latin-1: \r, \x0b, \x0c, \x1c-\x1e, \x85 (from "Å" = c3 85),
# U+2028 (raw UTF-8 e2 80 a8 is no break in latin-1; kept for a splitter working on UTF-8 text).
AWKWARD_LINES = {
    "aw-1": utf8_line(transaction(txn_id="aw-1", merchant_category="Åre")),  # valid: key "åre"
    "aw-2": line_of(transaction(txn_id="aw-2")).replace(b', "amount"', b',\r"amount"'),  # valid: \r is JSON space
    "aw-3": utf8_line(transaction(txn_id="aw-3", merchant_id="m\u2028x")),  # valid
    "aw-4": utf8_line(transaction(txn_id="aw-4", merchant_id="m\x1cx")).replace(b"\\u001c", b"\x1c"),  # parse: raw
    "aw-5": b'{"txn_id": "aw-5",\x0b\x0c\x1d\x1e "amount": 1}',  # parse
    "aw-6": b"",  # decode: empty
    "aw-7": utf8_line(transaction(txn_id="aw-7", merchant_category="Café", is_fraud=None)),  # valid: key "café"
    "aw-8": b"\x85\x85",  # decode: not UTF-8
}
AWKWARD_VALID = {"aw-1", "aw-2", "aw-3", "aw-7"}


def bundle_lines(seed: int = 9) -> list[bytes]:
    lines = list(generate(GeneratorSettings(records=400, seed=seed, malformed_share=0.15, oversize_bytes=70_000)))
    for position, line in zip((0, 57, 123, 200, 201, 250, 333, 399), AWKWARD_LINES.values()):
        lines.insert(position, line)
    return lines


def envelopes_of(lines: list[bytes]) -> list[str]:
    return [tagged(line, number, BUNDLE_TAG_PATH) for number, line in enumerate(lines, 1)]


def test_the_awkward_lines_are_what_the_bundle_tests_assume(local_reader):
    text = "".join(envelopes_of(list(AWKWARD_LINES.values())))
    for trap in "\r\x0b\x0c\x1c\x1d\x1e\x85":
        assert trap in text, repr(trap)
    for number, (txn_id, line) in enumerate(AWKWARD_LINES.items(), 1):
        result = local_reader.read_envelope(tagged(line, number, BUNDLE_TAG_PATH), NOW)
        assert isinstance(result, ModelInput) == (txn_id in AWKWARD_VALID), (txn_id, result)


def identity(result) -> tuple[str, object]:
    """What identifies one record's output: ("dead", source line) or ("prepared", txn_id)."""
    if isinstance(result, str):
        return "dead", json.loads(result)["source"]["line"]
    return "prepared", result.txn_id


@pytest.mark.parametrize("shards", [1, 3, 32, 4096])
def test_read_bundle_gives_every_record_exactly_once_grouped_by_shard_in_arrival_order(local_reader, shards):
    lines = bundle_lines()
    envelopes = envelopes_of(lines)
    assert all("\n" not in e for e in envelopes)
    by_shard, dead_letters = read_bundle(local_reader, "\n".join(envelopes), shards, NOW)

    # Expected, one envelope at a time: the line number each output must come from.
    line_of_txn = {}
    expected_dead_lines = []
    for number, envelope in enumerate(envelopes, 1):
        result = local_reader.read_envelope(envelope, NOW)
        kind, ident = identity(result)
        if kind == "dead":
            expected_dead_lines.append(number)
        else:
            assert ident not in line_of_txn
            line_of_txn[ident] = number
    assert len(expected_dead_lines) > 40 and len(line_of_txn) > 300  # both kinds are well represented

    # Exactly once: every line number appears once over all shards and the dead letters.
    prepared_lines = [line_of_txn[r.txn_id] for records in by_shard.values() for r in records]
    dead_lines = [json.loads(d)["source"]["line"] for d in dead_letters]
    assert sorted(prepared_lines + dead_lines) == list(range(1, len(lines) + 1))
    assert dead_lines == expected_dead_lines  # dead letters in arrival order too
    assert all(json.loads(d)["source"]["file"] == BUNDLE_PATH for d in dead_letters)

    # Each shard: the right shard for its keys, in arrival order, no empty groups.
    shard_of_key: dict[str, int] = {}
    for shard, records in by_shard.items():
        assert 0 <= shard < shards
        assert records
        numbers = [line_of_txn[r.txn_id] for r in records]
        assert numbers == sorted(numbers)
        for r in records:
            assert zlib.crc32(r.model_key.encode("utf-8")) % shards == shard
            assert shard_of_key.setdefault(r.model_key, shard) == shard  # one shard per key
    assert {"åre", "café", "grocery"} <= set(shard_of_key)
    assert AWKWARD_VALID <= set(line_of_txn)
    if shards == 1:
        assert list(by_shard) == [0]


def test_read_bundle_gives_the_same_records_as_reading_them_one_at_a_time(local_reader):
    envelopes = envelopes_of(bundle_lines(seed=4))
    by_shard, dead_letters = read_bundle(local_reader, "\n".join(envelopes), 5, NOW)
    expected_by_shard: dict[int, list[ModelInput]] = {}
    expected_dead = []
    for envelope in envelopes:
        result = local_reader.read_envelope(envelope, NOW)
        if isinstance(result, str):
            expected_dead.append(result)
        else:
            expected_by_shard.setdefault(zlib.crc32(result.model_key.encode("utf-8")) % 5, []).append(result)
    assert by_shard == expected_by_shard
    assert dead_letters == expected_dead


def test_a_bundle_of_one_record(local_reader):
    envelope = tagged(line_of(transaction()), 7)
    by_shard, dead_letters = read_bundle(local_reader, envelope, 32, NOW)
    assert by_shard == {zlib.crc32(b"grocery") % 32: [local_reader.read_envelope(envelope, NOW)]}
    assert dead_letters == []


def test_a_bundle_of_dead_letters_only_has_no_shards(local_reader):
    envelopes = [tagged(b"", 1), tagged(b"[1]", 2), tagged(line_of(transaction(amount=-1)), 3)]
    by_shard, dead_letters = read_bundle(local_reader, "\n".join(envelopes), 4, NOW)
    assert by_shard == {}
    assert [json.loads(d)["source"]["line"] for d in dead_letters] == [1, 2, 3]
    assert [json.loads(d)["stage"] for d in dead_letters] == ["decode", "parse", "clean"]


def test_a_bundle_keeps_records_with_equal_content_apart(local_reader):
    envelope = tagged(line_of(transaction(txn_id="dup")), 1)
    by_shard, dead_letters = read_bundle(local_reader, "\n".join([envelope] * 5), 2, NOW)
    assert [r.txn_id for records in by_shard.values() for r in records] == ["dup"] * 5
    assert dead_letters == []


# ---------------------------------------------------------------- score_batch


@pytest.fixture
def stream_records(local_reader) -> list[ModelInput]:
    """A generated stream, prepared by the local profile: 20 Zipf-skewed keys, a few unlabelled."""
    records = []
    for number, line in enumerate(generate(GeneratorSettings(records=1500, seed=31, unlabelled_share=0.1)), 1):
        result = local_reader.read_envelope(tagged(line, number), NOW)
        assert isinstance(result, ModelInput), result
        records.append(result)
    return records


def stream_scorer(encoder: FeatureEncoder, sgd: Sgd, snapshot_every: int) -> ModelScorer:
    """A scorer wired like streaming/job/'s model_scorer."""
    return ModelScorer(encoder.names, encoder.standardized, sgd, snapshot_every, top_reasons=3)


def one_at_a_time(scorer: ModelScorer, records: list[ModelInput]) -> tuple[list[str], list[str], dict[str, KeyModel]]:
    models: dict[str, KeyModel] = {}
    scores, snapshots = [], []
    for record in records:
        key_model = models.setdefault(record.model_key, scorer.new_model())
        score, snapshot = score_and_learn(scorer, key_model, record, NOW)
        scores.append(score)
        if snapshot is not None:
            snapshots.append(snapshot)
    return scores, snapshots, models


def in_batches(scorer: ModelScorer, records: list[ModelInput], size: int):
    """The stream scored in batches of `size`, models stored as bytes between batches the way the
    job keeps them in state; also checks every batch's load_model calls."""
    store: dict[str, bytes] = {}
    scores, snapshots = [], []
    for start in range(0, len(records), size):
        batch = records[start:start + size]
        loads: list[str] = []

        def load(key: str) -> KeyModel | None:
            loads.append(key)
            return KeyModel.from_bytes(store[key]) if key in store else None

        batch_models: dict[str, KeyModel] = {}
        batch_scores, batch_snapshots = score_batch(scorer, batch, batch_models, load, NOW)
        keys = {r.model_key for r in batch}
        assert Counter(loads) == Counter(keys), start  # each key of the batch loaded exactly once
        assert set(batch_models) == keys  # every touched model is handed back for storing
        assert len(batch_scores) == len(batch)
        store.update({key: model.to_bytes() for key, model in batch_models.items()})
        scores += batch_scores
        snapshots += batch_snapshots
    return scores, snapshots, store


SGDS = [Sgd(0.01), Sgd(0.05, "inverse_scaling", 0.5, l2=0.001)]


@pytest.mark.parametrize("sgd", SGDS, ids=["local-profile", "inverse-scaling-l2"])
def test_scoring_in_batches_gives_exactly_what_scoring_one_record_at_a_time_gives(local_reader, stream_records,
                                                                                  sgd):
    pristine = copy.deepcopy(stream_records)
    scorer = stream_scorer(local_reader.encoder, sgd, snapshot_every=40)
    ref_scores, ref_snapshots, ref_models = one_at_a_time(scorer, copy.deepcopy(stream_records))
    assert len(ref_models) > 10 and len(ref_snapshots) > 10
    assert len({json.loads(s)["score"] for s in ref_scores}) > 1000
    for size in (1, 7, 100, len(stream_records)):
        scores, snapshots, store = in_batches(scorer, stream_records, size)
        assert scores == ref_scores, size
        assert snapshots == ref_snapshots, size
        assert store == {key: model.to_bytes() for key, model in ref_models.items()}, size
        assert stream_records == pristine  # scoring never changes the records


def test_score_batch_uses_the_models_it_is_given_without_loading_them(local_reader, stream_records):
    scorer = stream_scorer(local_reader.encoder, Sgd(0.01), snapshot_every=1000)
    batch = stream_records[:50]
    keys = {r.model_key for r in batch}
    given_key = batch[0].model_key
    given = scorer.new_model()
    models = {given_key: given}
    loads: list[str] = []

    def load(key):
        loads.append(key)
        return None

    score_batch(scorer, batch, models, load, NOW)
    assert given_key not in loads
    assert Counter(loads) == Counter(keys - {given_key})
    assert models[given_key] is given
    assert given.model.updates == sum(1 for r in batch if r.model_key == given_key and r.label is not None)


def test_score_batch_of_nothing_loads_nothing():
    scorer = ModelScorer(NAMES, (), Sgd(0.1), snapshot_every=1, top_reasons=1)
    models: dict[str, KeyModel] = {}
    assert score_batch(scorer, [], models, lambda key: pytest.fail(f"loaded {key}"), NOW) == ([], [])
    assert models == {}


def test_score_batch_emits_a_snapshot_every_snapshot_every_updates_of_a_key(local_reader, stream_records):
    every = 5
    scorer = stream_scorer(local_reader.encoder, Sgd(0.01), snapshot_every=every)
    _, snapshots, store = in_batches(scorer, stream_records, 7)
    assert all(KeyModel.from_bytes(data).model.rejected_updates == 0 for data in store.values())
    # Expected from the records alone: the (every * k)-th labelled record of each key triggers one.
    labelled: dict[str, list[ModelInput]] = {}
    expected = []
    for record in stream_records:
        if record.label is not None:
            labelled.setdefault(record.model_key, []).append(record)
            count = len(labelled[record.model_key])
            if count % every == 0:
                expected.append((record.model_key, count, record.event_time))
    got = [(s["model_key"], s["model_updates"], s["event_time"]) for s in map(json.loads, snapshots)]
    assert got == expected
    assert len(expected) > 200


def test_dead_letters_and_snapshots_carry_the_key_of_their_kafka_message(local_reader):
    """The job keys Kafka messages with these keys without parsing the lines again."""
    letter = local_reader.read_envelope(tagged(b'{"txn_id": " t-9 ", "amount": "lots"}'), NOW)
    assert (letter.key, json.loads(letter)["txn_id"]) == ("t-9", "t-9")
    assert local_reader.read_envelope(tagged(b"not json"), NOW).key is None
    scorer = ModelScorer(["x"], (), Sgd(0.1), snapshot_every=1, top_reasons=1)
    key_model = scorer.new_model()
    _, snapshot = score_and_learn(scorer, key_model, model_input([1.0], 1, key="grocery"), NOW)
    assert (snapshot.key, json.loads(snapshot)["model_key"]) == ("grocery", "grocery")


# ---------------------------------------------------------------- the columnar path (what the job runs)


def kafka_envelope(payload: bytes, offset: int) -> str:
    """A record as TaggedKafkaDeserializer.java sends it: backslash and newline escaped."""
    text = payload.decode("latin-1").replace("\\", "\\\\").replace("\n", "\\n")
    return f"kafka:1:{offset}:transactions\t{text}"


@pytest.mark.parametrize("shards", [1, 3, 32])
@pytest.mark.parametrize("source", ["files", "kafka"])
def test_read_bundle_columns_gives_what_read_bundle_gives(local_reader, shards, source):
    lines = bundle_lines(seed=6) + [line + b"\\n" for line in bundle_lines(seed=7)[:50]]
    envelopes = envelopes_of(lines) if source == "files" else [kafka_envelope(line, i) for i, line in enumerate(lines)]
    bundle = "\n".join(envelopes)
    expected_by_shard, expected_dead = read_bundle(local_reader, bundle, shards, NOW)
    by_shard, dead_letters = local_reader.read_bundle_columns(bundle, shards, NOW)
    assert {shard: batch.records() for shard, batch in by_shard.items()} == expected_by_shard
    assert dead_letters == expected_dead
    assert [letter.key for letter in dead_letters] == [letter.key for letter in expected_dead]
    assert len(expected_dead) > 40 and sum(map(len, expected_by_shard.values())) > 300


def test_the_columnar_path_scores_a_generated_stream_as_the_reference_does(local_reader):
    """Bundles read by columns and scored by the compiled model against the reference, record by
    record, on the local profile's features (every kind of feature and dead letter)."""
    lines = list(generate(GeneratorSettings(records=3000, seed=12, malformed_share=0.05, unlabelled_share=0.1)))
    scorer = stream_scorer(local_reader.encoder, Sgd(0.05, "inverse_scaling", 0.5, l2=0.001), snapshot_every=50)
    models: dict[str, KeyModel] = {}
    table = scorer.new_table()
    for start in range(0, len(lines), 256):
        bundle = "\n".join(envelopes_of(lines[start:start + 256]))
        expected, expected_dead = read_bundle(local_reader, bundle, 1, NOW)
        batches, dead = local_reader.read_bundle_columns(bundle, 1, NOW)
        assert dead == expected_dead
        if not expected:
            continue
        ref_scores, ref_snapshots = score_batch(scorer, expected[0], models, lambda key: None, NOW)
        scores, snapshots, _ = scorer.score_columns(batches[0], table, NOW)
        for ours, theirs in zip(map(json.loads, scores), map(json.loads, ref_scores), strict=True):
            assert math.isclose(ours.pop("score"), theirs.pop("score"), rel_tol=1e-12, abs_tol=1e-12)
            for mine, reference in zip(ours.pop("reasons"), theirs.pop("reasons"), strict=True):
                assert mine["feature"] == reference["feature"]
                assert math.isclose(mine["contribution"], reference["contribution"], rel_tol=1e-12, abs_tol=1e-12)
            assert ours == theirs
        assert [json.loads(s)["model_updates"] for s in snapshots] == [json.loads(s)["model_updates"] for s in ref_snapshots]
    assert len(models) == len(table) > 10
    for key, reference in models.items():
        ours = KeyModel.from_bytes(table.to_bytes(table.rows[key]))
        assert ours.model.updates == reference.model.updates > 0
        assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
                   for a, b in zip(ours.model.weights, reference.model.weights, strict=True))
