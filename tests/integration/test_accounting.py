"""Every record read is scored or dead-lettered, and each kind of bad record is dead-lettered
at the right stage with the right reason (in the run shared with other tests: conftest.shared_run)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

from tests.pseudonyms import hmac_pseudonym, hmac_token, letter_bytes
from udfs.generator import MALFORMED_KINDS, GeneratorSettings, generate_with_kinds

# kind -> (stage, a pattern the one-line reason must match); the test's own expectations.
EXPECTED = {
    "truncated_json": ("parse", r"not valid JSON"),
    "not_an_object": ("parse", r"expected a JSON object"),
    "nan_literal": ("parse", r"not valid JSON"),
    "infinity_string": ("clean", r"amount is not finite"),
    "wrong_type": ("clean", r"(amount|merchant_category|event_time) .*(must be|is not a number)"),
    "negative_amount": ("clean", r"amount is negative"),
    "missing_field": ("clean", r"^(event_time|account_id|merchant_category|country|channel|amount) is missing$"),
    "missing_txn_id": ("clean", r"^txn_id (is missing|is empty|must be a string)"),
    "unknown_channel": ("clean", r"^channel '(carrier_pigeon|fax|telex)' is not one of"),
    "bad_label": ("clean", r"^is_fraud must be 0, 1 or null"),
    "bad_event_time": ("clean", r"^event_time "),
    "bad_feature": ("features", r"^[a-z_0-9]+ (must be a number|is out of range)|^features\.[a-z_0-9]+ is missing$"),
    "invalid_utf8": ("decode", r"^not valid UTF-8"),
    "empty_line": ("decode", r"^empty record$"),
    "oversize": ("decode", r"over the 65536-byte limit$"),
}


INPUT_FILE = "generated.jsonl"  # this test's file in the shared run (conftest.shared_run)


SEED = 11


def generated_stream() -> list[tuple[str | None, bytes]]:
    """6,000 transactions, 5% malformed: (the kind of fault or None, line). Their txn_ids start with
    t11- (udfs/generator.py), which no other input of the shared run uses."""
    return list(generate_with_kinds(GeneratorSettings(records=6000, seed=SEED, malformed_share=0.05)))


def test_every_record_is_scored_or_dead_lettered_at_the_right_stage(shared_run):
    assert set(EXPECTED) == set(MALFORMED_KINDS)
    generated = generated_stream()
    kinds = Counter(kind for kind, _ in generated if kind)
    assert set(kinds) == set(MALFORMED_KINDS)
    assert 0.04 < sum(kinds.values()) / len(generated) < 0.06
    assert shared_run.inputs[INPUT_FILE] == [line for _, line in generated]

    outputs = shared_run.outputs
    # The whole run: every line of every input file scored or dead-lettered.
    assert len(outputs.scores) + len(outputs.dead_letters) == sum(map(len, shared_run.inputs.values()))
    scores = [score for score in outputs.scores if score["txn_id"].startswith(f"t{SEED}-")]
    dead_letters = shared_run.dead_letters_of(INPUT_FILE)
    assert len(scores) + len(dead_letters) == len(generated)
    assert len(dead_letters) == sum(kinds.values())
    for letter in dead_letters:
        line_number = letter["source"]["line"]
        kind, raw = generated[line_number - 1]
        assert kind is not None, f"line {line_number} is valid but was dead-lettered: {letter['reason']}"
        stage, reason = EXPECTED[kind]
        assert letter["stage"] == stage, (kind, letter)
        assert re.search(reason, letter["reason"]), (kind, letter["reason"])
        assert "\n" not in letter["reason"]
        assert "acct-" not in letter["raw"], "a real account id left the cleaning stage"
        assert b"acct-" not in letter_bytes(letter), "a real account id left the cleaning stage"
        assert letter["schema_version"] == 2 and letter["truncated"] == (kind == "oversize")
        if kind == "oversize":
            assert letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()
            assert letter["raw_bytes"] == len(raw)
            # The first bytes are kept, with the account id swapped for its (longer) pseudonym
            # in the preview, and for its token in the bytes.
            account = json.loads(raw)["account_id"]
            key = outputs.settings.pseudonym_key()
            pseudonym = hmac_pseudonym(account, key)
            kept = raw[: outputs.settings.cleaning.dead_letter_raw_bytes]
            assert letter["raw"] == kept.decode().replace(account, pseudonym)
            assert letter_bytes(letter) == kept.replace(account.encode(), hmac_token(pseudonym, key).encode())
        if kind == "missing_txn_id":
            assert letter["txn_id"] is None
        elif kind not in ("invalid_utf8", "empty_line", "oversize", "truncated_json", "not_an_object", "nan_literal"):
            assert letter["txn_id"] is not None and letter["txn_id"] in raw.decode()

    valid_ids = {raw.split(b'"txn_id":"')[1].split(b'"')[0].decode() for kind, raw in generated if kind is None}
    assert {s["txn_id"] for s in scores} == valid_ids
    assert all("acct-" not in str(s) for s in outputs.scores)
