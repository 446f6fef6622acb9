"""decode -> parse -> clean, pseudonymization and redaction (udfs/cleaning.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.pseudonyms import as_pairs, hmac_pseudonym, hmac_token, letter_bytes, pseudonymized
from udfs.cleaning import (
    MissingPolicy,
    Rejected,
    clean,
    decode,
    parse,
    pseudonymize,
    redact_account_id,
    redact_account_id_bytes,
)
from udfs.reading import TransactionReader

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
    assert (rejected.stage, rejected.reason) == ("decode", "not valid UTF-8: byte 0xff at offset 23")  # after `{"merchant_category": "`


def test_decode_rejects_a_cut_multibyte_sequence():
    rejected = rejected_stage(decode, "€".encode("utf-8")[:2], 1024)
    assert (rejected.stage, rejected.reason) == ("decode", "not valid UTF-8: byte 0xe2 at offset 0")


def test_decode_rejects_a_record_over_max_record_bytes():
    rejected = rejected_stage(decode, b'{"a":"' + b"x" * 100 + b'"}', 64)
    assert (rejected.stage, rejected.reason) == ("decode", "record is 108 bytes, over the 64-byte limit")


def test_decode_accepts_a_record_of_exactly_max_record_bytes():
    raw = b'{"a":"' + b"x" * (64 - 8) + b'"}'
    assert len(raw) == 64
    assert decode(raw, 64) == raw.decode("ascii")


@pytest.mark.parametrize("raw", [b"", b" ", b"   ", b"\t", b"\n", b" \r\n\t "])
def test_decode_rejects_empty_and_whitespace_only_records(raw):
    rejected = rejected_stage(decode, raw, 1024)
    assert (rejected.stage, rejected.reason) == ("decode", "empty record")


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
    rejected = rejected_stage(parse, text)
    assert rejected.stage == "parse" and rejected.reason.startswith("not valid JSON: "), rejected.reason
    assert "\n" not in rejected.reason


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_parse_rejects_nan_and_infinity_literals(literal):
    rejected = rejected_stage(parse, f'{{"txn_id": "t1", "amount": {literal}}}')
    assert rejected.stage == "parse" and rejected.reason.startswith("not valid JSON: "), rejected.reason


@pytest.mark.parametrize("text", ['["t1", 12.5]', '"t1"', "42", "null", "true"])
def test_parse_rejects_json_that_is_not_an_object(text):
    rejected = rejected_stage(parse, text)
    kind = {"[": "list", '"': "str", "4": "int", "n": "NoneType", "t": "bool"}[text[0]]
    assert (rejected.stage, rejected.reason) == ("parse", f"expected a JSON object, got {kind}")


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


@pytest.mark.parametrize("value, expected", [("\x1c7", 7.0), ("7\x1f", 7.0), (" \x1e2.5\x1d ", 2.5)])
def test_clean_reads_an_amount_around_whitespace_that_float_does_not_strip(record, rules, value, expected):
    # Found by the property tests: str.strip() takes these for whitespace and float() does not, so
    # float(value) raised ValueError out of clean (and would have failed the job).
    record["amount"] = value
    assert clean(record, rules)["amount"] == expected


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


@pytest.mark.parametrize("value, shown", [({"account_id": "ZQXW-KJHG"}, "object"),
                                          ([{"\u0061ccount_id": "ZQXW-KJHG"}], "array"),
                                          ("ZQXW", "'ZQXW'"), (2, "2")])
def test_a_rejected_label_shows_no_content_of_an_array_or_object(record, rules, value, shown):
    # Found by the property tests: the reason held repr(value), and so an account id nested in it.
    record["is_fraud"] = value
    assert rejected_stage(clean, record, rules).reason == f"is_fraud must be 0, 1 or null, got {shown}"


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


def test_pseudonym_differs_for_another_key_and_another_account():
    base = pseudonymize("acct-0000042", KEY)
    assert pseudonymize("acct-0000042", b"another-key") != base
    assert pseudonymize("acct-0000043", KEY) != base


@pytest.mark.parametrize("account", ["acct-0000042", "", "0123456789abcdef0123456789abcdef", "jürgen"])
def test_pseudonym_is_32_hex_chars_and_never_the_raw_id(account):
    pseudonym = pseudonymize(account, KEY)
    assert re.fullmatch(r"[0-9a-f]{32}", pseudonym)
    assert pseudonym != account


@pytest.mark.parametrize("account, normalized", [
    ("acct-0000042", "acct-0000042"), (" acct-0000042\t", "acct-0000042"), ("acct \t 42", "acct 42"),
    ("jürgen", "jürgen"), ("", ""),
])
def test_pseudonym_is_the_keyed_hmac_sha256_of_the_whitespace_normalized_account(account, normalized):
    expected = hmac.new(KEY, normalized.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
    assert pseudonymize(account, KEY) == expected


def test_clean_gives_the_same_pseudonym_to_the_same_account(record, rules):
    other = dict(record, txn_id="t-0002", amount=99.0)
    assert clean(record, rules)["account_id"] == clean(other, rules)["account_id"]


# ---------------------------------------------------------------- redaction

SECRET = "ZQXW-KJHG"  # letters that never occur in hex pseudonyms or in the field names


def test_redaction_replaces_the_account_id_in_complete_json():
    text = json.dumps({"txn_id": "t1", "account_id": SECRET, "amount": 1})
    redacted = redact_account_id(text, KEY)
    assert SECRET not in redacted
    assert json.loads(redacted)["account_id"] == hmac_pseudonym(SECRET, KEY)
    assert json.loads(redacted)["txn_id"] == "t1"


def test_redaction_handles_spaces_around_the_colon():
    redacted = redact_account_id('{"account_id" :   "' + SECRET + '"}', KEY)
    assert redacted == '{"account_id" :   "' + hmac_pseudonym(SECRET, KEY) + '"}'


def test_redaction_replaces_every_account_id_in_the_text():
    text = json.dumps([{"account_id": SECRET}, {"account_id": SECRET + "-2"}])
    assert json.loads(redact_account_id(text, KEY)) == [{"account_id": hmac_pseudonym(SECRET, KEY)},
                                                        {"account_id": hmac_pseudonym(SECRET + "-2", KEY)}]


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
        assert hmac_pseudonym(value, KEY) in redacted


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32-le"])
@pytest.mark.parametrize("key", ["account_id", "\\u0061ccount_id"])
@pytest.mark.parametrize("value", [SECRET, 'x\\"]' + SECRET])
def test_redaction_finds_an_account_id_in_utf_16_and_utf_32_text(codec, key, value):
    # Found by the property tests: a record sent in UTF-16 reaches a dead letter with NULs between
    # its characters (and \xNN for its other bytes), which hid the key, and the id went out as it
    # was; then NULs between a backslash and the quote it escapes ended the id early.
    raw = ('{"txn_id": "t1", "' + key + '": "' + value + '", "amount": 1}').encode(codec)
    redacted = redact_account_id(raw.decode("utf-8", errors="backslashreplace"), KEY).replace("\x00", "")
    assert SECRET not in redacted and '"t1"' in redacted


def test_redaction_leaves_text_without_an_account_id_unchanged():
    text = '{"txn_id": "t1", "account": "' + SECRET + '", "amount": 1}'
    assert redact_account_id(text, KEY) == text


def test_redaction_of_an_account_id_cut_after_a_backslash():
    text = json.dumps({"txn_id": "t1", "account_id": "jürgen-" + SECRET})  # ensure_ascii: j\u00fcrgen-...
    truncated = text[: text.index("\\u00fc") + 1]  # ends in the middle of the escape: ..."j\
    assert truncated.endswith('"j\\')
    assert '"j\\' not in redact_account_id(truncated, KEY)


# ---------------------------------------------------------------- redaction: any spelling, any cut

SECRET_LETTERS = set(SECRET) - {"-"}


def quoted_pseudonym(plain: str) -> str:
    return '"' + hmac_pseudonym(plain, KEY) + '"'


def u_escape(char: str, upper: bool = False) -> str:
    """`char` as a JSON \\uXXXX escape, its hex digits in lower or upper case."""
    return "\\u" + (f"{ord(char):04X}" if upper else f"{ord(char):04x}")


def secret_left_in(text: str) -> str:
    """The letters of SECRET found in `text`, written literally or as \\uXXXX escapes in any case."""
    unescaped = re.sub(r"\\u([0-9a-fA-F]{4})", lambda match: chr(int(match.group(1), 16)), text)
    return "".join(char for char in unescaped if char in SECRET_LETTERS)


ACCOUNT_ID_SPELLINGS = {
    "u005f": "account\\u005fid",
    "u005F": "account\\u005Fid",
    "u0061": "\\u0061ccount_id",
    "all-lower": "".join(u_escape(char) for char in "account_id"),
    "all-upper": "".join(u_escape(char, upper=True) for char in "account_id"),
    "mixed": "".join(u_escape(char, upper=i % 2 == 0) if i % 3 else char for i, char in enumerate("account_id")),
}


@pytest.mark.parametrize("spelled_key", ACCOUNT_ID_SPELLINGS.values(), ids=ACCOUNT_ID_SPELLINGS.keys())
def test_redaction_finds_an_account_id_key_in_any_spelling(spelled_key):
    assert json.loads('{"' + spelled_key + '": 1}') == {"account_id": 1}  # the premise: it is the key
    text = '{"txn_id":"t1","' + spelled_key + '":"' + SECRET + '","amount":-1}'
    expected = '{"txn_id":"t1","' + spelled_key + '":' + quoted_pseudonym(SECRET) + ',"amount":-1}'
    assert redact_account_id(text, KEY) == expected


def test_redaction_of_a_plainly_spelled_key_keeps_the_pseudonym_it_always_had():
    before = hmac.new(KEY, SECRET.encode(), hashlib.sha256).hexdigest()[:32]
    text = '{"account_id": "' + SECRET + '", "amount": 1}'
    assert redact_account_id(text, KEY) == '{"account_id": "' + before + '", "amount": 1}'


def test_redaction_hashes_an_escaped_id_as_the_id_it_spells():
    spelled_id = "ZQ" + u_escape("X") + "W" + u_escape("-", upper=True) + "".join(u_escape(c) for c in "KJHG")
    text = '{"account\\u005fid":"' + spelled_id + '"}'
    assert json.loads(text) == {"account_id": SECRET}
    assert redact_account_id(text, KEY) == '{"account\\u005fid":' + quoted_pseudonym(SECRET) + '}'


def test_redaction_replaces_duplicated_and_nested_keys():
    p = quoted_pseudonym
    text = ('{"account_id":"ZQXW-KJHG","a":{"account\\u005fid":"ZQXW-1"},'
            '"b":[{"\\u0061ccount_id":"ZQXW-2"},[{"c":{"account_id" : "KJHG"}}]],"account\\u005Fid":"ZQXW-3"}')
    expected = ('{"account_id":' + p(SECRET) + ',"a":{"account\\u005fid":' + p("ZQXW-1") + '},'
                '"b":[{"\\u0061ccount_id":' + p("ZQXW-2") + '},[{"c":{"account_id" : ' + p("KJHG") + '}}]],'
                '"account\\u005Fid":' + p("ZQXW-3") + '}')
    assert redact_account_id(text, KEY) == expected


@pytest.mark.parametrize("value, hashed", [
    ('"ZQXW-KJHG"', SECRET),
    ("90817263", "90817263"),
    ("-9.08e7", "-9.08e7"),
    ('{"id": "ZQXW-KJHG", "n": [1, 2]}', '{"id": "ZQXW-KJHG", "n": [1, 2]}'),
    ('["ZQXW", {"k": "KJHG"}]', '["ZQXW", {"k": "KJHG"}]'),
    ('{"account_id": "ZQXW-KJHG"}', '{"account_id": "ZQXW-KJHG"}'),  # a key inside the value goes with it
    ("true", "true"),
    ("false", "false"),
    ("null", "null"),
    ("ZQXW KJHG", "ZQXW KJHG"),  # broken JSON: unquoted, with a space
], ids=["string", "integer", "float", "object", "array", "nested-key", "true", "false", "null", "unquoted"])
def test_redaction_replaces_a_value_of_any_type_whole(value, hashed):
    for template in ('{{"account\\u005fid": {}, "amount": 1}}', '[{{"\\u0061ccount_id":{}}}]',
                     '{{"a": 1, "account_id" :\n  {} \n}}'):
        assert redact_account_id(template.format(value), KEY) == template.format(quoted_pseudonym(hashed))


def test_redaction_of_an_id_with_a_stray_quote_takes_the_rest_of_the_text():
    # The quotes no longer pair up, so nothing after the id can be trusted to be outside it.
    text = '{"account_id": "ZQ"XW-KJHG", "amount": 1}'
    assert redact_account_id(text, KEY) == '{"account_id": ' + quoted_pseudonym('ZQ"XW-KJHG", "amount": 1}')


@pytest.mark.parametrize("text", [
    '{"account_idx": "ZQXW-KJHG"}',
    '{"ACCOUNT_ID": "ZQXW-KJHG"}',
    '{"account\\u005fId": "ZQXW-KJHG"}',
    '{"account\\u0020id": "ZQXW-KJHG"}',
    '{"\\ud83d\\ude00account_id": "ZQXW-KJHG"}',  # a surrogate pair before it: another key
    '{"a": "account_id", "b": "ZQXW-KJHG"}',  # a value, not followed by a colon
    '["\\u0061ccount_id", "ZQXW-KJHG"]',
    '{"note": "\\"account_id\\": \\"ZQXW-KJHG\\""}',  # inside a string value: its quotes are escaped
])
def test_redaction_leaves_other_keys_and_values_that_merely_say_account_id(text):
    parsed = json.loads(text)
    assert not (isinstance(parsed, dict) and "account_id" in parsed)  # the premise
    assert redact_account_id(text, KEY) == text


@pytest.mark.parametrize("text", [
    '{"x\\"account_id": "ZQXW-KJHG"}',  # valid JSON, the key is x"account_id
    '{"note": "\\"account_id": "ZQXW-KJHG"}',  # not JSON: the note ends after account_id
])
def test_redaction_errs_on_the_side_of_privacy_where_a_quote_may_not_open_the_key(text):
    assert redact_account_id(text, KEY) == text.replace('"ZQXW-KJHG"', quoted_pseudonym(SECRET))


HEAD = '{"txn_id":"t1","account\\u005fid"'


@pytest.mark.parametrize("text, expected", [
    ('{"txn_id":"t1","account\\u00', '{"txn_id":"t1","account\\u00'),  # in the key's escape: no value yet
    ('{"txn_id":"t1","account\\u005fi', '{"txn_id":"t1","account\\u005fi'),
    (HEAD, HEAD),
    (HEAD + " ", HEAD + " "),
    (HEAD + ":", HEAD + ":" + quoted_pseudonym("")),
    (HEAD + ": ", HEAD + ": " + quoted_pseudonym("")),
    (HEAD + ':"', HEAD + ":" + quoted_pseudonym("")),
    (HEAD + ':"ZQX', HEAD + ":" + quoted_pseudonym("ZQX")),
    (HEAD + ':"ZQ\\u00', HEAD + ":" + quoted_pseudonym("ZQ\\u00")),  # in an escape of the value
    (HEAD + ':"ZQ\\', HEAD + ":" + quoted_pseudonym("ZQ\\")),
    (HEAD + ':"ZQXW-KJHG"', HEAD + ":" + quoted_pseudonym(SECRET)),
    (HEAD + ':"ZQXW-KJHG",', HEAD + ":" + quoted_pseudonym(SECRET) + ","),
    (HEAD + ':{"id":["ZQX', HEAD + ":" + quoted_pseudonym('{"id":["ZQX')),
    (HEAD + ":9081", HEAD + ":" + quoted_pseudonym("9081")),
])
def test_redaction_of_text_cut_after_an_escaped_key(text, expected):
    assert redact_account_id(text, KEY) == expected


def test_redaction_of_text_that_was_not_utf8():
    raw = (b'{"merchant":"caf\xe9","account\\u005fid":"ZQXW-KJHG","x\xff":1,"m":"a\\\xff",'
           b'"\\u0061ccount_id":"ZQ\xffXW"}')
    text = raw.decode("utf-8", errors="backslashreplace")  # as TransactionReader.dead_letter decodes it
    assert text == ('{"merchant":"caf\\xe9","account\\u005fid":"ZQXW-KJHG","x\\xff":1,"m":"a\\\\xff",'
                    '"\\u0061ccount_id":"ZQ\\xffXW"}')
    assert redact_account_id(text, KEY) == (
        '{"merchant":"caf\\xe9","account\\u005fid":' + quoted_pseudonym(SECRET) + ',"x\\xff":1,"m":"a\\\\xff",'
        '"\\u0061ccount_id":' + quoted_pseudonym("ZQ\\xffXW") + '}')


def test_redaction_takes_linear_time_on_text_made_to_slow_a_scan_down():
    text = ('{"a":"' + '\\"' * 200_000 + '",' + '"account\\u005fid":1,' * 20_000
            + '"account_id":' + "[" * 100_000 + '"' + "\\" * 100_001)
    started = time.perf_counter()
    redacted = redact_account_id(text, KEY)
    assert time.perf_counter() - started < 5  # about 0.1 s; a quadratic scan takes hours
    assert redacted.count('"' + hmac_pseudonym("1", KEY) + '"') == 20_000
    assert redacted.endswith('"account_id":' + quoted_pseudonym("[" * 100_000 + '"' + "\\" * 100_001))


# Records built from pieces, so the test knows where each account_id value is: (bytes, whether
# it is an account_id value, where the colon is in a key piece).
Piece = tuple[bytes, bool, int | None]


def spelled(text: str, rng: random.Random, share: float) -> str:
    """`text` as the inside of a JSON string, each character \\u-escaped (in a random hex case) with
    probability `share`."""
    return "".join(u_escape(char, upper=rng.random() < 0.5) if rng.random() < share else char for char in text)


def other(text: str | bytes) -> list[Piece]:
    return [(text.encode() if isinstance(text, str) else text, False, None)]


def account_member(rng: random.Random) -> list[Piece]:
    key = '"' + spelled("account_id", rng, rng.choice([0, 0.3, 1])) + '"' + rng.choice(["", " "])
    key_and_colon = key + ":" + rng.choice(["", " ", "\n "])
    return [(key_and_colon.encode(), False, len(key)),
            (('"' + spelled(SECRET, rng, rng.choice([0, 0.5, 1])) + '"').encode(), True, None)]


def json_object(members: list[list[Piece]]) -> list[Piece]:
    pieces = other("{")
    for i, member in enumerate(members):
        pieces += (other(", ") if i else []) + member
    return pieces + other("}")


def generated_record(rng: random.Random, index: int) -> list[Piece]:
    members = [other(f'"txn_id":"t{index}"'), other('"amount":12.5')]
    members += [account_member(rng) for _ in range(rng.randint(1, 3))]  # duplicated keys
    if rng.random() < 0.5:
        members.append(other('"nested":') + json_object([other('"a":') + json_object([account_member(rng)])]))
    if rng.random() < 0.5:
        members.append(other('"list":[1,') + json_object([account_member(rng)]) + other(',"x"]'))
    if rng.random() < 0.3:
        members.append(other('"memo":"caf\u00e9 \\ud83d\\ude00"'))
    if rng.random() < 0.2:
        members.append(other(b'"memo":"bad \xff\xfe byte"'))  # not UTF-8
    if rng.random() < 0.3:
        members.append(other('"note":"\\"account_id\\": \\"x\\""'))
    rng.shuffle(members)
    return json_object(members)


@pytest.mark.parametrize("seed", range(30))
def test_redaction_of_generated_records_in_random_spellings_cut_anywhere(seed):
    rng = random.Random(seed)
    pieces = generated_record(rng, seed)
    raw = b"".join(data for data, _, _ in pieces)
    pseudonym = hmac_pseudonym(SECRET, KEY)
    values = sum(is_value for _, is_value, _ in pieces)

    redacted = redact_account_id(raw.decode("utf-8", errors="backslashreplace"), KEY)
    assert redacted == "".join(f'"{pseudonym}"' if is_value else data.decode("utf-8", errors="backslashreplace")
                               for data, is_value, _ in pieces)
    if b"\xff" not in raw:
        assert pseudonymized(as_pairs(raw), as_pairs(redacted), lambda value: hmac_pseudonym(value, KEY)) == values

    for cut in range(len(raw) + 1):
        text = raw[:cut].decode("utf-8", errors="backslashreplace")
        redacted = redact_account_id(text, KEY)
        assert secret_left_in(redacted) == "", text
        outside_values, colons_seen = kept_around_values(pieces, cut)
        pseudonyms = re.findall(r'"[0-9a-f]{32}"', redacted)
        assert len(pseudonyms) == colons_seen, text
        assert re.sub(r'"[0-9a-f]{32}"', "", redacted) == \
            b"".join(outside_values).decode("utf-8", errors="backslashreplace"), text


def kept_around_values(pieces, cut: int) -> tuple[list[bytes], int]:
    """Of a generated record's `pieces` (data, is an account id value, where its key's colon is)
    cut after `cut` bytes: the bytes outside the id values, and how many id keys' colons it holds."""
    outside_values, colons_seen, offset = [], 0, 0
    for data, is_value, colon_at in pieces:
        if not is_value:
            outside_values.append(data[:max(0, cut - offset)])
        if colon_at is not None and cut > offset + colon_at:
            colons_seen += 1
        offset += len(data)
    return outside_values, colons_seen


TOKEN = re.compile(rb'"rs-pseudonym:v1:([0-9a-f]{32}):[0-9a-f]{32}"')


@pytest.mark.parametrize("seed", range(30))
def test_byte_redaction_of_generated_records_cut_anywhere_keeps_every_other_byte(seed):
    rng = random.Random(seed)
    pieces = generated_record(rng, seed)
    raw = b"".join(data for data, _, _ in pieces)
    token = hmac_token(hmac_pseudonym(SECRET, KEY), KEY).encode()
    assert redact_account_id_bytes(raw, KEY) == b"".join(b'"' + token + b'"' if is_value else data
                                                         for data, is_value, _ in pieces)
    for cut in range(len(raw) + 1):
        redacted = redact_account_id_bytes(raw[:cut], KEY)
        assert secret_left_in(redacted.decode("utf-8", errors="backslashreplace")) == "", raw[:cut]
        outside_values, colons_seen = kept_around_values(pieces, cut)
        tokens = TOKEN.findall(redacted)
        assert len(tokens) == colons_seen, raw[:cut]
        for match in TOKEN.finditer(redacted):  # each a token of the key, whatever part of an id it hides
            assert match.group() == b'"' + hmac_token(match.group(1).decode(), KEY).encode() + b'"'
        assert TOKEN.sub(b"", redacted) == b"".join(outside_values), raw[:cut]


# ---------------------------------------------------------------- redaction in dead letters


def test_a_dead_letter_redacts_an_escaped_key(local_reader, envelope):
    raw = b'{"txn_id":"t1","account\\u005fid":"ZQXW-KJHG","amount":-1}'
    letter = json.loads(local_reader.read_envelope(envelope(raw), 0))
    assert letter["stage"] == "clean" and letter["schema_version"] == 2
    key = local_reader.rules.pseudonym_key
    pseudonym = hmac_pseudonym(SECRET, key)
    assert letter["raw"] == '{"txn_id":"t1","account\\u005fid":"' + pseudonym + '","amount":-1}'
    assert letter_bytes(letter) == raw.replace(SECRET.encode(), hmac_token(pseudonym, key).encode())
    assert letter["account_ids_pseudonymized"] is True and letter["truncated"] is False


def test_a_dead_letter_of_a_record_that_is_not_utf8_redacts_an_escaped_key(local_reader, envelope):
    raw = b'{"txn_id":"t-8","merchant_category":"caf\xe9","\\u0061ccount_id":"ZQXW-KJHG","amount":1}'
    letter = json.loads(local_reader.read_envelope(envelope(raw), 0))
    assert letter["stage"] == "decode"
    key = local_reader.rules.pseudonym_key
    pseudonym = hmac_pseudonym(SECRET, key)
    assert letter["raw"] == '{"txn_id":"t-8","merchant_category":"caf\\xe9","\\u0061ccount_id":"' + pseudonym \
        + '","amount":1}'
    assert letter_bytes(letter) == raw.replace(SECRET.encode(), hmac_token(pseudonym, key).encode())


def test_a_dead_letter_keeps_bytes_that_are_not_utf8_and_literal_backslashes_apart(local_reader, envelope):
    # The preview writes byte 0xe9 and the four characters \xe9 alike; the bytes tell them apart.
    raw = b'{"txn_id":"t-9","merchant_category":"caf\xe9 \\\\xe9 \\u00e9","account_id":"ZQXW-KJHG","amount":-1}'
    letter = json.loads(local_reader.read_envelope(envelope(raw), 0))
    assert letter["stage"] == "decode"
    assert "caf\\xe9 \\\\xe9" in letter["raw"]  # in the preview, an escape and a literal look alike
    key = local_reader.rules.pseudonym_key
    token = hmac_token(hmac_pseudonym(SECRET, key), key)
    assert letter_bytes(letter) == raw.replace(SECRET.encode(), token.encode())
    assert letter_bytes(letter)[:60].count(b"\xe9") == 1


def test_a_dead_letter_hashes_an_id_holding_bytes_that_are_not_utf8_as_the_preview_shows_it(local_reader,
                                                                                            envelope):
    raw = b'{"txn_id":"t-10","account_id":"ZQ\xffXW","amount":1}'
    letter = json.loads(local_reader.read_envelope(envelope(raw), 0))
    key = local_reader.rules.pseudonym_key
    pseudonym = hmac_pseudonym("ZQ\\xffXW", key)
    assert letter["raw"] == '{"txn_id":"t-10","account_id":"' + pseudonym + '","amount":1}'
    assert letter_bytes(letter) == b'{"txn_id":"t-10","account_id":"' + hmac_token(pseudonym, key).encode() \
        + b'","amount":1}'


def test_a_dead_letter_keeps_a_record_of_any_bytes_exactly(local_reader):
    key = local_reader.rules.pseudonym_key
    token = hmac_token(hmac_pseudonym(SECRET, key), key).encode()
    rng = random.Random(5)
    for _ in range(300):
        before, after = (bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))) for _ in range(2))
        raw = before + b'"account_id":"ZQXW-KJHG",' + after
        letter = json.loads(local_reader.dead_letter(raw, Rejected("decode", "some reason"), {}, 0))
        assert letter_bytes(letter) == before + b'"account_id":"' + token + b'",' + after


def test_a_dead_letter_of_a_record_sent_again_keeps_its_token(local_reader, envelope):
    """A dead letter's bytes sent again and dead-lettered again: the token stays the same (its
    pseudonym is not hashed twice); a forged token is hashed like an id."""
    key = local_reader.rules.pseudonym_key
    token = hmac_token(hmac_pseudonym(SECRET, key), key)
    raw = b'{"txn_id":"t-11","account_id":"' + token.encode() + b'","amount":-1}'
    again = json.loads(local_reader.read_envelope(envelope(raw), 0))
    assert letter_bytes(again) == raw
    assert again["raw"] == '{"txn_id":"t-11","account_id":"' + hmac_pseudonym(SECRET, key) + '","amount":-1}'
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    raw = b'{"txn_id":"t-12","account_id":"' + forged.encode() + b'","amount":-1}'
    letter = json.loads(local_reader.read_envelope(envelope(raw), 0))
    assert letter_bytes(letter) == raw.replace(forged.encode(), hmac_token(hmac_pseudonym(forged, key), key).encode())


def test_an_oversize_dead_letter_redacts_an_escaped_key_in_a_prefix_cut_inside_a_character(local_reader,
                                                                                            envelope):
    head = '{"txn_id":"t-big","account\\u005Fid":"ZQXW-KJHG","memo":"'
    cap = local_reader.dead_letter_raw_bytes
    memo = "x" * ((cap - len(head)) % 2 + 1) + "\u00e9" * 40_000  # a two-byte character straddles the cut
    raw = (head + memo + '"}').encode()
    assert len(raw) > local_reader.rules.max_record_bytes
    letter = json.loads(local_reader.read_envelope(envelope(raw), 0))
    assert letter["stage"] == "decode" and letter["raw_bytes"] == len(raw)
    assert letter["truncated"] is True and letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert letter["raw"].endswith("\u00e9\\xc3")
    key = local_reader.rules.pseudonym_key
    pseudonym = hmac_pseudonym(SECRET, key)
    assert letter["raw"] == raw[:cap].decode("utf-8", errors="backslashreplace").replace(SECRET, pseudonym)
    assert letter_bytes(letter) == raw[:cap].replace(SECRET.encode(), hmac_token(pseudonym, key).encode())
    assert letter_bytes(letter).endswith(b"\xc3")


def test_an_oversize_dead_letter_cut_inside_an_escaped_id_keeps_no_part_of_it(local_reader, envelope):
    head = '{"txn_id":"t-big","\\u0061ccount_id":'
    spelled_id = '"ZQ\\u0058W-KJHG"'
    raw = (head + spelled_id + ',"memo":"' + "x" * 70_000 + '"}').encode()
    value_start, value_end = len(head), len(head) + len(spelled_id)
    key = local_reader.rules.pseudonym_key
    for cap in range(value_start - 3, value_end + 3):
        preparer = TransactionReader(local_reader.rules, local_reader.encoder, local_reader.model_key_field, cap)
        line = preparer.read_envelope(envelope(raw), 0)
        kept = raw[:cap].decode()
        if cap < value_start:  # cut before the colon
            expected, hashed = kept, None
        elif cap < value_end:  # cut inside the value
            hashed = hmac_pseudonym(kept[value_start:].strip('"'), key)
            expected = kept[:value_start] + '"' + hashed + '"'
        else:
            hashed = hmac_pseudonym(SECRET, key)
            expected = kept[:value_start] + '"' + hashed + '"' + kept[value_end:]
        letter = json.loads(line)
        assert letter["raw"] == expected, cap
        redacted = expected if hashed is None else expected.replace(hashed, hmac_token(hashed, key))
        assert letter_bytes(letter) == redacted.encode(), cap
        assert secret_left_in(letter["raw"]) == "" and secret_left_in(letter_bytes(letter).decode()) == "", cap
