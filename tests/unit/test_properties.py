"""Properties of reading transactions and labels, on hostile input (tests/hostile_records.py):

1. every record gives a cleaned record or a dead letter with a stage and a one-line reason, never
   another exception (TransactionReader.read, udfs.labels.read_label);
2. the batch path (TransactionReader.read_columns: clean_batch, encode_batch) gives each record of
   a batch what the per-record path gives it: the same dead letters in order, the same records;
3. a cleaned record holds every invariant docs/contracts.md states, checked here from the parsed
   record, not from the cleaning code;
4. no raw account id, in any spelling, is in any output: dead letters (raw, reason, txn_id), the
   cleaned record's contract fields, what goes to the models (model key, score context).

Hypothesis runs them under tests/unit/conftest.py's profile: `unit` (few, fixed examples) in the
unit tier, `fuzz` (many, random) in `make fuzz`. docs/contracts.md ("How the contracts are
tested") says which planted bug made each property fail.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.hostile_records import BASE_TRANSACTION, SECRET_MARKER, encoded, labels, leaks, transactions
from tests.output_schemas import violations
from tests.pseudonyms import hmac_pseudonym
from udfs.cleaning import MAX_EVENT_TIME_MS, Rejected, clean, decode, parse
from udfs.labels import MAX_SOURCE_CHARS, Label, read_label
from udfs.reading import TransactionReader, shard_of
from udfs.records import DeadLetter, ModelInput
from udfs.wire import RecordBatch

pytestmark = pytest.mark.property

CAP = 2048  # bytes: a small cap, so that records at it and over it are cheap to make
NOW = 1_767_300_000_000
KEY_FIELDS = ("merchant_category", "account_id", "merchant_id", "currency")
TRANSACTION_STAGES = {"decode", "parse", "clean", "features"}
LABEL_STAGES = {"label-decode", "label-parse", "label-clean"}
CONTRACT_FIELDS = {"txn_id", "event_time", "account_id", "merchant_id", "merchant_category", "country", "channel",
                   "amount", "currency", "features", "is_fraud"}
batches = st.lists(transactions(CAP), min_size=4, max_size=12)

# Records a previous property run found wrong, kept as fixed examples.
# An amount whose control character str.strip() removes and float() does not (ValueError).
AMOUNT_WITH_A_CONTROL = encoded(orjson.dumps({**BASE_TRANSACTION, "amount": "\x1c7",
                                              "account_id": f"a-{SECRET_MARKER}"}).decode())
# A label whose reason showed a value's repr, the account id nested in it included.
LABEL_WITH_A_NESTED_ID = (b'{"txn_id":"t-1","is_fraud":{"account_id":"a-' + SECRET_MARKER.encode()
                          + b'"},"label_time":1}')
LABEL_TXN_ID_WITH_A_NESTED_ID = b'{"txn_id":[{"\\u0061ccount_id":"' + SECRET_MARKER.encode() + b'"}],"is_fraud":1}'
TRANSACTION_WITH_A_NESTED_ID = encoded(orjson.dumps(
    {**BASE_TRANSACTION, "account_id": 9_081_726_354_001, "is_fraud": {"account_id": f"b-{SECRET_MARKER}"}}).decode())
# UTF-16 text: the key and the id hold NULs between their characters.
UTF16_TRANSACTION = orjson.dumps({**BASE_TRANSACTION, "account_id": f"a-{SECRET_MARKER}"}).decode().encode("utf-16")
# ... and an escaped quote in the id: NULs between the backslash and the quote.
UTF16_ESCAPED_QUOTE = orjson.dumps({**BASE_TRANSACTION, "account_id": f'a"]{SECRET_MARKER}'}).decode().encode("utf-16")


@pytest.fixture
def readers(local_reader) -> dict[str, TransactionReader]:
    """The local profile's reader with a cap of CAP bytes, by model key field."""
    rules = dataclasses.replace(local_reader.rules, max_record_bytes=CAP)
    return {field: TransactionReader(rules, local_reader.encoder, field, local_reader.dead_letter_raw_bytes)
            for field in KEY_FIELDS}


def source_of(position: int) -> dict[str, Any]:
    return {"file": "/data/in.jsonl", "line": position + 1}


# ---------------------------------------------------------------- checks


def checked_dead_letter(letter: DeadLetter, raw: bytes, source: dict[str, Any], stages: set[str],
                        cap: int) -> dict[str, Any]:
    """The dead letter's fields, after checking its contract (docs/contracts.md, "Dead letters")
    and that no account id shows in it."""
    assert isinstance(letter, DeadLetter)
    fields = orjson.loads(str(letter))
    assert fields["stage"] in stages and fields["stage"] == letter.stage
    reason = fields["reason"]
    assert isinstance(reason, str) and reason.strip() and not re.search("[\n\r\u2028\u2029\x85]", reason), reason
    assert fields["txn_id"] is None or (isinstance(fields["txn_id"], str) and fields["txn_id"])
    assert letter.key == fields["txn_id"]
    assert (fields["schema_version"], fields["source"], fields["received_at"]) == (2, source, NOW)
    assert isinstance(fields["raw"], str) and fields["account_ids_pseudonymized"] is True
    assert ("raw_bytes" in fields) == ("raw_sha256" in fields) == fields["truncated"] == (len(raw) > cap)
    assert not violations("label-dead-letters" if fields["stage"].startswith("label") else "dead-letters", fields)
    # The bytes replay would send again, one character per byte (latin-1), so that an id spelled in
    # UTF-16 or UTF-32 is found as well (leaks drops the NULs between its characters).
    kept = base64.b64decode(fields["raw_base64"]).decode("latin-1")
    for text in (letter, fields["raw"], reason, str(fields["txn_id"]), kept):
        assert leaks(text) is None, f"an account id shows in {text!r}"
    return fields


def assert_clean_transaction(txn: dict[str, Any], record: dict[str, Any], reader: TransactionReader) -> None:
    """`txn`, cleaned from the parsed `record`, as docs/contracts.md ("Transactions") describes
    it; expected values derived from `record` here."""
    rules = reader.rules

    def normalized(value: Any) -> str:  # ends stripped, inner whitespace as one space
        assert type(value) in (str, int), value  # strings, or integers taken as their text
        return " ".join(str(value).split())

    assert set(txn) == CONTRACT_FIELDS
    for name in ("txn_id", "account_id", "merchant_id", "merchant_category", "country", "channel", "currency"):
        value = txn[name]
        assert value is None or (type(value) is str and value and value == " ".join(value.split())), (name, value)
    assert txn["txn_id"] == normalized(record["txn_id"])
    event_time = record["event_time"]
    assert type(txn["event_time"]) is int and 0 <= txn["event_time"] < MAX_EVENT_TIME_MS
    if type(event_time) is int:
        assert txn["event_time"] == event_time
    elif type(event_time) is float:
        assert txn["event_time"] == event_time and event_time.is_integer()
    else:
        assert type(event_time) is str
    assert txn["account_id"] == hmac_pseudonym(normalized(record["account_id"]), rules.pseudonym_key)
    merchant_id = record.get("merchant_id")
    assert txn["merchant_id"] == (None if merchant_id is None else normalized(merchant_id))
    assert txn["merchant_category"] == normalized(record["merchant_category"]).lower()
    assert txn["country"] == normalized(record["country"]).upper() and re.fullmatch("[A-Z]{2}", txn["country"])
    assert txn["channel"] == normalized(record["channel"]).lower() and txn["channel"] in rules.channels
    amount = record["amount"]
    assert type(txn["amount"]) is float and math.isfinite(txn["amount"]) and txn["amount"] >= 0
    if type(amount) in (int, float):
        assert txn["amount"] == float(amount)
    else:
        assert type(amount) is str
    currency = record.get("currency")
    assert txn["currency"] == (rules.default_currency if currency is None else normalized(currency).upper())
    assert re.fullmatch("[A-Z]{3}", txn["currency"])
    assert txn["features"] == (record.get("features") or {}) and type(txn["features"]) is dict
    assert txn["is_fraud"] == record.get("is_fraud") and type(txn["is_fraud"]) in (int, type(None))
    # Its contract fields show no raw account id (`features` keeps the record's own object, whose
    # entries other than the configured numbers go nowhere).
    assert leaks(repr({name: value for name, value in txn.items() if name != "features"})) is None


def assert_model_input(model_input: ModelInput, txn: dict[str, Any], reader: TransactionReader) -> None:
    """What goes to the key's model is the cleaned transaction's, with features as the profile
    configures them (numbers finite and at most 1e12 in magnitude, log1p where configured)."""
    context = model_input.context
    assert model_input.model_key == txn[reader.model_key_field]
    assert (model_input.txn_id, model_input.event_time, model_input.label) == (txn["txn_id"], txn["event_time"],
                                                                              txn["is_fraud"])
    assert tuple(context) == (txn["merchant_category"], txn["country"], txn["channel"], txn["amount"],
                              txn["currency"], txn["account_id"])
    names = reader.encoder.names
    assert len(model_input.indices) == len(model_input.values)
    assert all(type(i) is int and 0 <= i < len(names) for i in model_input.indices)
    assert all(type(v) is float and math.isfinite(v) for v in model_input.values)
    # The numeric features come first (the profile's: amount and features.<name>, log1p when
    # named log_<name>), then the categorical and time ones.
    for index, name in enumerate(names):
        if "=" in name or "#" in name or name.startswith(("hour_of_day", "day_of_week")):
            break
        raw_name = name.removeprefix("log_")
        raw = txn["amount"] if raw_name == "amount" else txn["features"][raw_name]
        assert type(raw) in (int, float) and abs(raw) <= 1e12
        assert model_input.values[index] == (math.log1p(raw) if name.startswith("log_") else float(raw))
    assert leaks(repr(model_input)) is None


def per_record(reader: TransactionReader, raw: bytes, source: dict[str, Any]) -> ModelInput | DeadLetter:
    """`reader.read`, checked: a model input as the contract says, or a dead letter as it says."""
    result = reader.read(raw, source, NOW)  # any exception but a dead letter fails the test
    if isinstance(result, DeadLetter):
        checked_dead_letter(result, raw, source, TRANSACTION_STAGES, reader.rules.max_record_bytes)
        return result
    assert isinstance(result, ModelInput)
    record = parse(decode(raw, reader.rules.max_record_bytes))
    txn = clean(record, reader.rules)
    assert_clean_transaction(txn, record, reader)
    assert_model_input(result, txn, reader)
    return result


# ---------------------------------------------------------------- transactions


# Several records per example: each costs little next to drawing an example.
@given(raws=batches, key_field=st.sampled_from(KEY_FIELDS))
@example(raws=[AMOUNT_WITH_A_CONTROL], key_field="merchant_category")
@example(raws=[TRANSACTION_WITH_A_NESTED_ID], key_field="account_id")
@example(raws=[UTF16_TRANSACTION], key_field="merchant_category")
@example(raws=[UTF16_ESCAPED_QUOTE], key_field="merchant_category")
def test_every_transaction_is_read_or_dead_lettered_as_the_contract_says(raws, key_field, readers):
    for position, raw in enumerate(raws):
        per_record(readers[key_field], raw, source_of(position))


@given(raws=batches)
@example(raws=[AMOUNT_WITH_A_CONTROL])
def test_a_cleaned_transaction_holds_every_documented_invariant(raws, readers):
    reader = readers["merchant_category"]
    for raw in raws:
        try:
            record = parse(decode(raw, CAP))
            txn = clean(record, reader.rules)
        except Rejected as rejected:
            assert rejected.stage in {"decode", "parse", "clean"}
            continue
        assert_clean_transaction(txn, record, reader)


@given(raws=batches, key_field=st.sampled_from(KEY_FIELDS), shards=st.sampled_from([1, 3]))
def test_the_batch_path_reads_a_batch_as_the_per_record_path_reads_each_record(raws, key_field, shards, readers):
    reader = readers[key_field]
    expected_letters, expected_by_shard = [], {}
    for position, raw in enumerate(raws):
        result = per_record(reader, raw, source_of(position))
        if isinstance(result, DeadLetter):
            expected_letters.append(result)
        else:
            expected_by_shard.setdefault(shard_of(result.model_key, shards), []).append(result)
    by_shard, letters = reader.read_columns(raws, source_of, shards, NOW)
    assert [(str(letter), letter.key, letter.stage) for letter in letters] == \
        [(str(letter), letter.key, letter.stage) for letter in expected_letters]
    # repr: a float's repr tells -0.0 from 0.0 and 1 from 1.0, which == does not.
    assert {shard: repr(batch.records()) for shard, batch in by_shard.items() if len(batch)} == \
        {shard: repr(records) for shard, records in expected_by_shard.items()}
    for batch in by_shard.values():  # strings hold no newline, so the batch travels as bytes intact
        assert repr(RecordBatch.from_bytes(batch.to_bytes()).records()) == repr(batch.records())
        assert leaks("\n".join(batch.model_keys + batch.txn_ids + batch.categories + batch.countries + batch.channels
                                + batch.currencies + batch.accounts)) is None


# ---------------------------------------------------------------- labels


@given(raws=st.lists(labels(CAP), min_size=4, max_size=12))
@example(raws=[LABEL_WITH_A_NESTED_ID])
@example(raws=[LABEL_TXN_ID_WITH_A_NESTED_ID])
def test_every_label_is_read_or_dead_lettered_as_the_contract_says(raws, readers):
    for raw in raws:
        check_label(readers["merchant_category"], raw)


def check_label(reader: TransactionReader, raw: bytes) -> None:
    """`read_label`, checked: a label as docs/contracts.md ("Labels") says, or a dead letter."""
    try:
        label = read_label(raw, CAP)
    except Rejected as rejected:
        checked_dead_letter(reader.dead_letter(raw, rejected, source_of(0), NOW), raw, source_of(0), LABEL_STAGES,
                            CAP)
        return
    record = parse(decode(raw, CAP))
    assert isinstance(label, Label)
    assert type(record["txn_id"]) in (str, int)
    assert label.txn_id == " ".join(str(record["txn_id"]).split()) and label.txn_id
    assert type(label.is_fraud) is int and label.is_fraud == record["is_fraud"] in (0, 1)
    assert type(label.label_time) is int and 0 <= label.label_time < MAX_EVENT_TIME_MS
    source = record.get("source")
    assert label.source == (" ".join(source.split()) or None if isinstance(source, str) else None)
    assert label.source is None or len(label.source) <= MAX_SOURCE_CHARS
    assert leaks(repr(label)) is None
