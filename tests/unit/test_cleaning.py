"""decode -> parse -> clean, pseudonymization and redaction (udfs/cleaning.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from udfs.cleaning import MissingPolicy, Rejected, clean, decode, parse, pseudonymize, redact_account_id

KEY = b"unit-test-pseudonym-key"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def rejected_stage(call, *args) -> Rejected:
    with pytest.raises(Rejected) as info:
        call(*args)
    return info.value


# ---------------------------------------------------------------- decode


def test_decode_returns_the_text_of_valid_utf8():
    text = '{"merchant_category": "café", "note": "€ 5 — ok"}'
    assert decode(text.encode("utf-8"), 1024) == text


def test_decode_rejects_invalid_utf8_at_stage_decode():
    rejected = rejected_stage(decode, b'{"merchant_category": "\xff\xfe"}', 1024)
    assert rejected.stage == "decode"


def test_decode_rejects_a_cut_multibyte_sequence():
    rejected = rejected_stage(decode, "€".encode("utf-8")[:2], 1024)
    assert rejected.stage == "decode"


def test_decode_rejects_a_record_over_max_record_bytes():
    rejected = rejected_stage(decode, b'{"a":"' + b"x" * 100 + b'"}', 64)
    assert rejected.stage == "decode"


def test_decode_accepts_a_record_of_exactly_max_record_bytes():
    raw = b'{"a":"' + b"x" * (64 - 8) + b'"}'
    assert len(raw) == 64
    assert decode(raw, 64) == raw.decode("ascii")


@pytest.mark.parametrize("raw", [b"", b" ", b"   ", b"\t", b"\n", b" \r\n\t "])
def test_decode_rejects_empty_and_whitespace_only_records(raw):
    assert rejected_stage(decode, raw, 1024).stage == "decode"


# ---------------------------------------------------------------- parse


def test_parse_returns_the_json_object():
    text = '{"txn_id": "t1", "amount": 3.5, "features": {"a": 1}}'
    assert parse(text) == json.loads(text)


@pytest.mark.parametrize("text", [
    '{"txn_id": "t1", "amo',
    '{"txn_id": "t1"',
    '{"txn_id": ',
    "{",
])
def test_parse_rejects_truncated_json(text):
    assert rejected_stage(parse, text).stage == "parse"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_parse_rejects_nan_and_infinity_literals(literal):
    assert rejected_stage(parse, f'{{"txn_id": "t1", "amount": {literal}}}').stage == "parse"


@pytest.mark.parametrize("text", ['["t1", 12.5]', '"t1"', "42", "null", "true"])
def test_parse_rejects_json_that_is_not_an_object(text):
    assert rejected_stage(parse, text).stage == "parse"


# ---------------------------------------------------------------- clean: a valid record


def test_clean_keeps_a_valid_record_and_pseudonymizes_the_account(record, rules):
    cleaned = clean(record, rules)
    assert cleaned == {
        "txn_id": "t-0001",
        "event_time": 1_767_225_600_000,
        "account_id": cleaned["account_id"],
        "merchant_id": "m-groc-001",
        "merchant_category": "grocery",
        "country": "US",
        "channel": "web",
        "amount": 12.5,
        "currency": "USD",
        "features": {"score": 0.25, "count": 3},
        "is_fraud": 0,
    }
    assert cleaned["account_id"] != "acct-0000042"
    assert re.fullmatch(r"[0-9a-f]{32}", cleaned["account_id"])


# ---------------------------------------------------------------- clean: amount


@pytest.mark.parametrize("value, expected", [("12.50", 12.5), (" 7 ", 7.0), ("0", 0.0), (3, 3.0), (0, 0.0)])
def test_clean_coerces_numeric_amounts_to_float(record, rules, value, expected):
    record["amount"] = value
    amount = clean(record, rules)["amount"]
    assert isinstance(amount, float) and amount == expected


@pytest.mark.parametrize("value", [
    True, False, -0.01, -5, "-3", "NaN", "nan", "Infinity", "-Infinity", "1e999", "twelve", "",
    [12.5], {"value": 12.5}, float("nan"), float("inf"),
])
def test_clean_rejects_amounts_that_are_not_finite_non_negative_numbers(record, rules, value):
    record["amount"] = value
    rejected = rejected_stage(clean, record, rules)
    assert rejected.stage == "clean"
    assert "amount" in rejected.reason


# ---------------------------------------------------------------- clean: event_time


def test_clean_keeps_epoch_millisecond_event_times(record, rules):
    expected = epoch_ms(datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=timezone.utc))
    record["event_time"] = expected
    assert clean(record, rules)["event_time"] == expected


@pytest.mark.parametrize("text", [
    "2026-03-04T05:06:07.890Z",
    "2026-03-04T07:06:07.890+02:00",
    "2026-03-03T23:06:07.890-06:00",
    " 2026-03-04T05:06:07.890+00:00 ",
])
def test_clean_converts_iso_8601_with_a_zone_to_epoch_ms(record, rules, text):
    record["event_time"] = text
    expected = epoch_ms(datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=timezone.utc))
    assert clean(record, rules)["event_time"] == expected


def test_clean_accepts_the_last_millisecond_of_year_9999(record, rules):
    last = epoch_ms(datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=timezone.utc))
    record["event_time"] = last
    assert clean(record, rules)["event_time"] == last


@pytest.mark.parametrize("value", [
    "2026-03-04T05:06:07",  # no zone
    "2026-03-04",  # a date, no zone
    "yesterday",
    "2026-13-45T00:00:00Z",
    -5,
    1.5,
    True,
    [1767225600000],
    epoch_ms(datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=timezone.utc)) + 1,
])
def test_clean_rejects_event_times_without_a_zone_or_out_of_range(record, rules, value):
    record["event_time"] = value
    rejected = rejected_stage(clean, record, rules)
    assert rejected.stage == "clean"
    assert "event_time" in rejected.reason


# ---------------------------------------------------------------- clean: categoricals


@pytest.mark.parametrize("channel", ["fax", "carrier_pigeon", "web pos", "", "  "])
def test_clean_rejects_unknown_channels(record, rules, channel):
    record["channel"] = channel
    assert rejected_stage(clean, record, rules).stage == "clean"


@pytest.mark.parametrize("field, raw, expected", [
    ("merchant_category", "  Online   Retail ", "online retail"),
    ("merchant_category", "GROCERY", "grocery"),
    ("merchant_category", "Gift\tCards", "gift cards"),
    ("country", " gb ", "GB"),
    ("country", "De", "DE"),
    ("channel", " WEB ", "web"),
    ("channel", "Mobile", "mobile"),
    ("currency", " eur ", "EUR"),
])
def test_clean_normalizes_case_and_whitespace_of_categoricals(record, rules, field, raw, expected):
    record[field] = raw
    assert clean(record, rules)[field] == expected


@pytest.mark.parametrize("field, value", [("country", "USA"), ("country", "U1"), ("currency", "EURO")])
def test_clean_rejects_malformed_country_and_currency_codes(record, rules, field, value):
    record[field] = value
    assert rejected_stage(clean, record, rules).stage == "clean"


# ---------------------------------------------------------------- clean: missing values


@pytest.mark.parametrize("field", [
    "txn_id", "event_time", "account_id", "merchant_category", "country", "channel", "amount",
])
@pytest.mark.parametrize("how", ["absent", "null"])
def test_clean_rejects_a_missing_required_field_naming_it(record, rules, field, how):
    if how == "absent":
        del record[field]
    else:
        record[field] = None
    rejected = rejected_stage(clean, record, rules)
    assert rejected.stage == "clean"
    assert field in rejected.reason


def test_clean_uses_an_impute_policy_for_a_missing_required_field(record, make_rules):
    rules = make_rules(missing={"country": MissingPolicy(True, "ZZ"),
                                "merchant_category": MissingPolicy(True, "Unknown")})
    del record["country"]
    record["merchant_category"] = None
    cleaned = clean(record, rules)
    assert cleaned["country"] == "ZZ"
    assert cleaned["merchant_category"] == "unknown"


def test_clean_dead_letters_an_optional_field_whose_policy_says_so(record, make_rules):
    rules = make_rules(missing={"merchant_id": MissingPolicy(False)})
    del record["merchant_id"]
    rejected = rejected_stage(clean, record, rules)
    assert rejected.stage == "clean" and "merchant_id" in rejected.reason


@pytest.mark.parametrize("how", ["absent", "null"])
def test_clean_imputes_the_default_currency(record, make_rules, how):
    rules = make_rules(default_currency="CHF")
    if how == "absent":
        del record["currency"]
    else:
        record["currency"] = None
    assert clean(record, rules)["currency"] == "CHF"


def test_clean_fills_absent_optional_fields(record, rules):
    for field in ("merchant_id", "features", "is_fraud"):
        del record[field]
    cleaned = clean(record, rules)
    assert cleaned["merchant_id"] is None
    assert cleaned["features"] == {}
    assert cleaned["is_fraud"] is None


def test_clean_rejects_features_that_are_not_an_object(record, rules):
    record["features"] = [1, 2]
    assert rejected_stage(clean, record, rules).stage == "clean"


# ---------------------------------------------------------------- clean: label


@pytest.mark.parametrize("value", [0, 1, None])
def test_clean_accepts_labels_0_1_and_null(record, rules, value):
    record["is_fraud"] = value
    assert clean(record, rules)["is_fraud"] == value


def test_clean_treats_an_absent_label_as_score_only(record, rules):
    del record["is_fraud"]
    assert clean(record, rules)["is_fraud"] is None


@pytest.mark.parametrize("value", [2, -1, True, False, "1", "yes", 0.5, [1]])
def test_clean_rejects_labels_other_than_0_1_null(record, rules, value):
    record["is_fraud"] = value
    rejected = rejected_stage(clean, record, rules)
    assert rejected.stage == "clean"
    assert "is_fraud" in rejected.reason


# ---------------------------------------------------------------- clean: txn_id on rejections


@pytest.mark.parametrize("txn_id, expected", [
    ("t-77", "t-77"),
    ("  t-77 ", "t-77"),
    (77, "77"),
    ("", None),
    ("   ", None),
    (None, None),
    (12.5, None),
    (True, None),
    (["t-77"], None),
])
def test_a_rejection_carries_the_txn_id_when_usable(record, rules, txn_id, expected):
    record["txn_id"] = txn_id
    record["amount"] = -1  # rejected whatever the txn_id
    assert rejected_stage(clean, record, rules).txn_id == expected


def test_a_rejection_for_an_absent_txn_id_carries_none(record, rules):
    del record["txn_id"]
    assert rejected_stage(clean, record, rules).txn_id is None


# ---------------------------------------------------------------- pseudonyms


def test_pseudonym_is_stable_for_the_same_key():
    assert pseudonymize("acct-0000042", KEY) == pseudonymize("acct-0000042", KEY)


def test_pseudonym_differs_for_another_key_and_another_account():
    base = pseudonymize("acct-0000042", KEY)
    assert pseudonymize("acct-0000042", b"another-key") != base
    assert pseudonymize("acct-0000043", KEY) != base


@pytest.mark.parametrize("account", ["acct-0000042", "", "0123456789abcdef0123456789abcdef", "jürgen"])
def test_pseudonym_is_32_hex_chars_and_never_the_raw_id(account):
    pseudonym = pseudonymize(account, KEY)
    assert re.fullmatch(r"[0-9a-f]{32}", pseudonym)
    assert pseudonym != account


def test_pseudonym_is_the_keyed_hmac_sha256_of_the_account():
    expected = hmac.new(KEY, "acct-0000042".encode(), hashlib.sha256).hexdigest()[:32]
    assert pseudonymize("acct-0000042", KEY) == expected


def test_clean_gives_the_same_pseudonym_to_the_same_account(record, rules):
    other = dict(record, txn_id="t-0002", amount=99.0)
    assert clean(record, rules)["account_id"] == clean(other, rules)["account_id"]


# ---------------------------------------------------------------- redaction

SECRET = "ZQXW-KJHG"  # letters that never occur in hex pseudonyms or in the field names


def test_redaction_replaces_the_account_id_in_complete_json():
    text = json.dumps({"txn_id": "t1", "account_id": SECRET, "amount": 1})
    redacted = redact_account_id(text, KEY)
    assert SECRET not in redacted
    assert json.loads(redacted)["account_id"] == pseudonymize(SECRET, KEY)
    assert json.loads(redacted)["txn_id"] == "t1"


def test_redaction_handles_spaces_around_the_colon():
    redacted = redact_account_id('{"account_id" :   "' + SECRET + '"}', KEY)
    assert SECRET not in redacted


def test_redaction_replaces_every_account_id_in_the_text():
    text = json.dumps([{"account_id": SECRET}, {"account_id": SECRET + "-2"}])
    assert SECRET not in redact_account_id(text, KEY)


def test_redaction_leaves_no_fragment_of_an_account_id_cut_off_anywhere():
    text = json.dumps({"txn_id": "t1", "account_id": SECRET, "amount": 1}, separators=(",", ":"))
    start = text.index(SECRET)
    for cut in range(start + 1, start + len(SECRET) + 1):
        truncated = text[:cut]
        fragment = text[start:cut]
        redacted = redact_account_id(truncated, KEY)
        assert fragment not in redacted, truncated


@pytest.mark.parametrize("value", ["1234567", "-1234567", "12345.678"])
def test_redaction_replaces_numeric_account_ids(value):
    for text in (f'{{"account_id": {value}, "amount": 5}}', f'{{"amount": 5, "account_id": {value}'):
        redacted = redact_account_id(text, KEY)
        assert value.lstrip("-") not in redacted
        assert pseudonymize(value, KEY) in redacted


def test_redaction_leaves_text_without_an_account_id_unchanged():
    text = '{"txn_id": "t1", "account": "' + SECRET + '", "amount": 1}'
    assert redact_account_id(text, KEY) == text


def test_redaction_of_an_account_id_cut_after_a_backslash():
    text = json.dumps({"txn_id": "t1", "account_id": "jürgen-" + SECRET})  # ensure_ascii: j\u00fcrgen-...
    truncated = text[: text.index("\\u00fc") + 1]  # ends in the middle of the escape: ..."j\
    assert truncated.endswith('"j\\')
    assert '"j\\' not in redact_account_id(truncated, KEY)
