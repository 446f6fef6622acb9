"""clean_batch (udfs/batch_cleaning.py) against the per-record reference
clean(parse(decode(raw, max_record_bytes)), rules): the same outcome for every record."""

from __future__ import annotations

import copy
import functools
import json
import math
import random
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import msgspec
import orjson
import pytest

from tests.hostile_records import spell
from tests.records import VALID_RECORD
from udfs import batch_cleaning
from udfs.batch_cleaning import clean_batch
from udfs.cleaning import CleaningRules, MissingPolicy, Rejected, clean, decode, parse
from udfs.generator import MALFORMED_KINDS, GeneratorSettings, generate, generate_with_kinds, malformed

BASE = VALID_RECORD
DROP = object()  # `line(field=DROP)` leaves the field out

# Policies that impute every field, in spellings the reference normalizes.
IMPUTING = {
    "txn_id": MissingPolicy(True, " t-imputed "),
    "event_time": MissingPolicy(True, "2026-01-01T00:00:00Z"),
    "account_id": MissingPolicy(True, " acct-unknown "),
    "merchant_category": MissingPolicy(True, "Unknown"),
    "country": MissingPolicy(True, " zz "),
    "channel": MissingPolicy(True, "WEB"),
    "amount": MissingPolicy(True, "0"),
    "merchant_id": MissingPolicy(False),
    "currency": MissingPolicy(True, None),
    "features": MissingPolicy(True, {"imputed": 1}),
    "is_fraud": MissingPolicy(True, 0),
}
# Policies whose values the reference rejects or treats in a way of its own.
ODD = {
    "txn_id": MissingPolicy(True, 7),
    "event_time": MissingPolicy(True, True),
    "account_id": MissingPolicy(True, 42),
    "merchant_category": MissingPolicy(True, ["x"]),
    "country": MissingPolicy(True, "usa"),
    "channel": MissingPolicy(True, None),
    "amount": MissingPolicy(True, 2**64),
    "merchant_id": MissingPolicy(True, "  "),
    "currency": MissingPolicy(True, "eur"),
    "features": MissingPolicy(True, []),
    "is_fraud": MissingPolicy(True, 1.0),
}
# Policies with floats the parser never gives.
ODD_FLOATS = {
    "event_time": MissingPolicy(True, 1.5),
    "amount": MissingPolicy(True, math.inf),
    "is_fraud": MissingPolicy(True, math.nan),
    "merchant_id": MissingPolicy(True, -0.0),
}
RULE_SETS = {
    "default": {},
    "imputing": {"missing": IMPUTING},
    "odd": {"missing": ODD},
    "odd-floats": {"missing": ODD_FLOATS},
    "nan-amount": {"missing": {"amount": MissingPolicy(True, math.nan)}},
    "lower-default-currency": {"default_currency": "eur"},
    "bad-default-currency": {"default_currency": "EURO"},
}


@pytest.fixture(params=list(RULE_SETS), ids=list(RULE_SETS))
def any_rules(request, make_rules):
    return make_rules(**RULE_SETS[request.param])


# ---------------------------------------------------------------- helpers


def reference(raw: bytes, rules) -> dict[str, Any] | Rejected:
    try:
        return clean(parse(decode(raw, rules.max_record_bytes)), rules)
    except Rejected as rejected:
        return rejected


def typed(value: Any) -> list[tuple]:
    """`value` as a flat list of parts (pre-order, without recursion: values can be nested deeper
    than Python's recursion limit), each with its type (1, 1.0 and True are equal otherwise),
    dict keys in order, floats by repr (so -0.0 is not 0.0)."""
    parts: list[tuple] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            parts.append(("dict", type(item).__name__, len(item)))
            for key, inner in reversed(list(item.items())):
                stack.extend((inner, key))
        elif isinstance(item, list):
            parts.append(("list", len(item)))
            stack.extend(reversed(item))
        elif isinstance(item, float):
            parts.append(("float", repr(item)))
        else:
            parts.append((type(item).__name__, item))
    return parts


def outcome(result: Any) -> tuple:
    if isinstance(result, Rejected):
        return ("rejected", type(result).__name__, result.stage, result.reason, result.txn_id, result.args)
    return ("cleaned", typed(result))


def assert_same(raws: list[bytes], rules) -> list[tuple]:
    """clean_batch gives every record of `raws` the reference's outcome; returns the outcomes."""
    expected = [outcome(reference(raw, rules)) for raw in raws]
    results = clean_batch(raws, rules)
    assert len(results) == len(raws)
    for raw, want, result in zip(raws, expected, results):
        assert outcome(result) == want, f"record {raw[:400]!r}"
    return expected


def line(**fields: Any) -> bytes:
    record = copy.deepcopy(BASE)
    for name, value in fields.items():
        if value is DROP:
            record.pop(name, None)
        else:
            record[name] = value
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


def with_value(field: str, json_text: str) -> bytes:
    """The base record with `field` written as the raw JSON text `json_text` (which may be invalid)."""
    text = line(**{field: "@@@"}).decode("utf-8")
    return text.replace('"@@@"', json_text).encode("utf-8")


BASE_TEXT = line().decode("utf-8")


@pytest.fixture
def reference_calls(monkeypatch) -> dict[str, int]:
    """How often clean_batch falls back to the reference `parse` and `clean`."""
    calls = {"parse": 0, "clean": 0}

    def counted(name, function):
        def wrapper(*args):
            calls[name] += 1
            return function(*args)
        return wrapper

    monkeypatch.setattr(batch_cleaning, "parse", counted("parse", batch_cleaning.parse))
    monkeypatch.setattr(batch_cleaning, "clean", counted("clean", batch_cleaning.clean))
    return calls


# ---------------------------------------------------------------- generated records


def test_valid_generated_records_are_cleaned_as_the_reference_does_without_falling_back(rules, reference_calls):
    settings = GeneratorSettings(records=5000, seed=11, accounts=800, iso_time_share=0.3, unlabelled_share=0.05)
    raws = list(generate(settings))
    outcomes = assert_same(raws, rules)
    assert all(kind == "cleaned" for kind, *_ in outcomes)
    assert reference_calls == {"parse": 0, "clean": 0}


def test_a_generated_stream_with_every_malformed_kind(rules):
    stream = list(generate_with_kinds(GeneratorSettings(records=3000, seed=21, malformed_share=0.3,
                                                        oversize_bytes=5000)))
    assert {kind for kind, _ in stream if kind} == set(MALFORMED_KINDS)
    outcomes = assert_same([raw for _, raw in stream], rules)
    assert sum(kind == "rejected" for kind, *_ in outcomes) > 500


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_every_malformed_kind_gets_the_reference_outcome(kind, any_rules):
    records = [json.loads(raw) for raw in generate(GeneratorSettings(records=60, seed=5))]
    raws = [malformed(kind, record, random.Random(i), oversize_bytes=5000) for i, record in enumerate(records)]
    outcomes = assert_same(raws, any_rules)
    if kind != "bad_feature" and not any_rules.missing:  # features are checked after cleaning
        assert any(result == "rejected" for result, *_ in outcomes)


def test_an_empty_batch():
    assert clean_batch([], CleaningRules(b"k", frozenset({"web"}), "USD", {}, 100)) == []


# ---------------------------------------------------------------- hostile input


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _hostile() -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []

    def add(name: str, raw: bytes | str) -> None:
        cases.append((name, raw.encode("utf-8") if isinstance(raw, str) else raw))

    # Nesting around orjson's depth limit (1024), in features, an unknown field and at the top.
    for depth in (1, 2, 1021, 1022, 1023, 1024, 1025, 1100):
        add(f"nested-feature-{depth}", with_value("features", '{"a":' + _nested(depth) + "}"))
        add(f"nested-unknown-{depth}", BASE_TEXT[:-1] + ',"memo":' + _nested(depth) + "}")
        add(f"nested-top-{depth}", _nested(depth))
    # NUL, raw and escaped.
    add("nul-raw-in-string", BASE_TEXT.replace('"t-0001"', '"t-\x0001"'))
    add("nul-between-tokens", BASE_TEXT.replace(',"amount"', ',\x00"amount"'))
    add("nul-after", BASE_TEXT + "\x00")
    add("nul-before", "\x00" + BASE_TEXT)
    add("nul-only", "\x00")
    for field in ("txn_id", "account_id", "merchant_id", "merchant_category", "country", "channel", "currency"):
        add(f"nul-escaped-{field}", with_value(field, '"\\u0000' + str(BASE[field]) + '"'))
        add(f"nul-escaped-alone-{field}", with_value(field, '"\\u0000"'))
    add("nul-escaped-feature-key", with_value("features", '{"\\u0000":1}'))
    # Byte order marks.
    add("bom", b"\xef\xbb\xbf" + BASE_TEXT.encode())
    add("bom-after-space", b" \xef\xbb\xbf" + BASE_TEXT.encode())
    add("bom-in-value", with_value("txn_id", '"\ufefft-1"'))
    add("bom-escaped-channel", with_value("channel", '"\\ufeffweb"'))
    add("bom-only", b"\xef\xbb\xbf")
    # Surrogates: lone, reversed, valid pairs, and encoded in UTF-8 (not valid UTF-8).
    for spelling in ("\\ud800", "\\udc00", "\\udbff", "\\ud800\\u0041", "\\ude00\\ud83d", "\\ud800\\ud800",
                     "\\ud83d\\ude00", "\\uD83D\\uDE00", "x\\ud800"):
        add(f"surrogate-txn-{spelling}", with_value("txn_id", f'"{spelling}"'))
        add(f"surrogate-account-{spelling}", with_value("account_id", f'"a{spelling}"'))
        add(f"surrogate-feature-key-{spelling}", with_value("features", f'{{"{spelling}":1}}'))
        add(f"surrogate-feature-value-{spelling}", with_value("features", f'{{"a":"{spelling}"}}'))
        add(f"surrogate-unknown-{spelling}", BASE_TEXT[:-1] + f',"memo":"{spelling}"}}')
        add(f"surrogate-unknown-key-{spelling}", BASE_TEXT[:-1] + f',"{spelling}":1}}')
    add("surrogate-utf8-txn", BASE_TEXT.encode().replace(b"t-0001", b"t-\xed\xa0\x80"))
    add("surrogate-utf8-unknown", BASE_TEXT.encode()[:-1] + b',"memo":"\xed\xa0\x80"}')
    # Duplicate keys.
    for first, second in (("5", "6"), ('"x"', "6"), ("6", '"x"'), ("6", "[1]"), ("[1]", "6"), ("6", "null"),
                          ("null", "6"), ("-1", "6"), ("6", "-1"), ("6", "true")):
        add(f"duplicate-amount-{first}-{second}", with_value("amount", f'{first},"amount":{second}'))
    add("duplicate-txn-null", with_value("txn_id", '"t-1","txn_id":null'))
    add("duplicate-txn-two", with_value("txn_id", '"t-1","txn_id":"t-2"'))
    add("duplicate-channel", with_value("channel", '"fax","channel":"web"'))
    add("duplicate-channel-bad-last", with_value("channel", '"web","channel":"fax"'))
    add("duplicate-features", with_value("features", '{"a":1},"features":{"b":2}'))
    add("duplicate-features-null", with_value("features", '{"a":1},"features":null'))
    add("duplicate-feature-key", with_value("features", '{"a":1,"b":2,"a":3}'))
    add("duplicate-escaped-key", with_value("amount", '5,"\\u0061mount":7'))
    add("duplicate-escaped-key-first", BASE_TEXT.replace('{"txn_id"', '{"\\u0061mount":7,"txn_id"'))
    add("duplicate-is-fraud", with_value("is_fraud", '1,"is_fraud":true'))
    add("duplicate-unknown", BASE_TEXT[:-1] + ',"memo":1,"memo":2}')
    # Huge and extreme numbers.
    for number in (2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(2**63), -(2**63) - 1, -(2**64),
                   "1" * 400):
        for field in ("amount", "event_time", "is_fraud", "txn_id", "account_id"):
            add(f"huge-{field}-{str(number)[:12]}", with_value(field, str(number)))
        add(f"huge-feature-{str(number)[:12]}", with_value("features", f'{{"a":{number}}}'))
        add(f"huge-unknown-{str(number)[:12]}", BASE_TEXT[:-1] + f',"memo":{number}}}')
    for number in ("1e400", "-1e400", "1E400", "1e-400", "-1e-400", "0e999", "1.7976931348623157e308",
                   "1.7976931348623159e308", "5e-324", "2.4703282292062327e-324", "-0.0", "-0", "0.1e1",
                   "9007199254740993", "9007199254740993.0", "1767225600000.0", "1.7672256e12", "1e12"):
        for field in ("amount", "event_time", "is_fraud"):
            add(f"number-{field}-{number}", with_value(field, number))
        add(f"number-feature-{number}", with_value("features", f'{{"a":{number}}}'))
        add(f"number-unknown-{number}", BASE_TEXT[:-1] + f',"memo":{number}}}')
    # Not JSON numbers.
    for literal in ("NaN", "Infinity", "-Infinity", "nan", "inf", "+1", "01", "1.", ".5", "-", "1e", "0x10",
                    "tru", "nul", "True", "None", "undefined"):
        add(f"literal-amount-{literal}", with_value("amount", literal))
        add(f"literal-feature-{literal}", with_value("features", f'{{"a":{literal}}}'))
        add(f"literal-unknown-{literal}", BASE_TEXT[:-1] + f',"memo":{literal}}}')
    # Around the object.
    for name, before, after in (("trailing-space", "", " \t\r\n"), ("trailing-garbage", "", " x"),
                                ("trailing-object", "", "{}"), ("trailing-form-feed", "", "\x0c"),
                                ("trailing-vertical-tab", "", "\x0b"), ("trailing-nbsp", "", "\u00a0"),
                                ("trailing-comma", "", ","), ("leading-space", " \n\t\r", ""),
                                ("leading-form-feed", "\x0c", ""), ("leading-nbsp", "\u00a0", ""),
                                ("two-objects", "", "\n" + BASE_TEXT)):
        add(name, before + BASE_TEXT + after)
    add("trailing-comma-inside", BASE_TEXT[:-1] + ",}")
    add("truncated", BASE_TEXT[:-1])
    add("single-quotes", BASE_TEXT.replace('"', "'"))
    # Bytes that are not UTF-8, and UTF-8 that is not ASCII.
    raw = BASE_TEXT.encode()
    add("invalid-utf8-txn", raw.replace(b"t-0001", b"t-\xff01"))
    add("invalid-utf8-unknown", raw[:-1] + b',"memo":"\xff\xfe"}')
    add("invalid-utf8-unknown-key", raw[:-1] + b',"m\xc3\x28":1}')
    add("invalid-utf8-feature-key", raw.replace(b'"score"', b'"sc\xc0\xafore"'))
    add("invalid-utf8-cut-at-end", raw + "€".encode()[:2])
    add("invalid-utf8-outside-strings", raw.replace(b',"amount"', b',\xff"amount"'))
    add("utf8-merchant", line(merchant_id="café-☕"))
    add("utf8-account", line(account_id="kontø 7"))
    add("utf8-unknown", BASE_TEXT[:-1] + ',"memo":"ünïcödé ☕"}')
    add("utf8-feature-key", line(features={"größe": 1.5}))
    add("nbsp-channel", line(channel="\u00a0web\u00a0"))
    add("em-space-category", line(merchant_category="\u2003Grocery\u2003 Store"))
    add("ideographic-space-country", line(country="\u3000us"))
    add("dotted-i-country", line(country="ıt"))
    add("sharp-s-currency", line(currency="ß"))
    add("fullwidth-country", line(country="ＵＳ"))
    # Empty and whitespace-only records.
    for blank in (b"", b" ", b"\t", b"\r\n", b"\n\n", b"\x0c", b"\x0b", b"\x1c", b"\x85",
                  "\u3000".encode(), "\u00a0".encode(), "\u2028".encode(), b"\x00"):
        add(f"blank-{blank!r}", blank)
    # Bools where numbers or strings are expected.
    for field in ("is_fraud", "event_time", "amount", "txn_id", "account_id", "merchant_id", "currency",
                  "country", "channel", "merchant_category", "features"):
        for value in (True, False):
            add(f"bool-{field}-{value}", line(**{field: value}))
    # Floats where ints are expected.
    for value in (1.0e12, 1_767_225_600_000.0, 1.5, 1e300, -0.0, 0.0, -1.0, 253_402_300_799_999.0,
                  253_402_300_800_000.0, 1767225600000.5):
        add(f"float-event-time-{value}", line(event_time=value))
    for value in (0, -1, 1, 253_402_300_799_999, 253_402_300_800_000):
        add(f"int-event-time-{value}", line(event_time=value))
    for value in (1.0, 0.0, -0.0, 0.5):
        add(f"float-is-fraud-{value}", line(is_fraud=value))
    # ISO-8601 event times.
    for text in ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00z", "2026-01-01T00:00:00+00:00",
                 "2026-01-01T05:30:00+05:30", "2026-01-01T00:00:00", " 2026-01-01T00:00:00Z ",
                 "2026-01-01T00:00:00.123456Z", "2026-01-01T00:00:00.0005+00:00", "2026-01-01T00:00:00.0015Z",
                 "2026-13-45T00:00:00Z", "9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.9999+00:00",
                 "1969-12-31T23:59:59.999Z", "1970-01-01T00:00:00Z", "2026-01-01", "2026-01-01Z", "", "  ",
                 "20260101T000000Z", "2026-01-01 00:00:00Z", "2026-W01-1T00:00Z", "yesterday", "1767225600000",
                 "2026-01-01T00:00:00\u00a0Z", "2026-01-01T00:00:00+24:00"):
        add(f"iso-{text}", line(event_time=text))
    # Integers where text is expected (the reference accepts them via `_text`).
    for field in ("txn_id", "merchant_category", "account_id", "merchant_id", "country", "currency", "channel"):
        for value in (77, 0, -5):
            add(f"int-{field}-{value}", line(**{field: value}))
        add(f"float-{field}", line(**{field: 7.5}))
    # Strings for amount.
    for text in ("12.50", " 7 ", "1e3", "1E-2", "-1", "-0", "  -0.0 ", "nan", "NaN", "inf", "-Infinity",
                 "+inf", "1_000", "0x10", "", " ", ".5", "5.", "١٢", "1e400", "1e-400", "+5", "12,5", "\u00a012"):
        add(f"amount-string-{text}", line(amount=text))
    # Whitespace and case.
    for field, value in (("merchant_category", " Grocery  Store "), ("merchant_category", "GROCERY"),
                         ("merchant_category", "\t"), ("country", " us"), ("country", "u s"), ("country", "USA"),
                         ("country", "\tus\n"), ("country", "u"), ("country", "U1"), ("channel", "WEB"),
                         ("channel", " Web "), ("channel", "w eb"), ("channel", "fax"), ("currency", "usd"),
                         ("currency", " Eur "), ("currency", "US$"), ("currency", ""), ("currency", "  "),
                         ("account_id", "  acct   42  "), ("account_id", "acct\u00a042"), ("account_id", ""),
                         ("account_id", " \t "), ("txn_id", "  t   1  "), ("txn_id", "\t"), ("txn_id", ""),
                         ("txn_id", "t\n1"), ("merchant_id", " m  1 "), ("merchant_id", ""), ("merchant_id", " ")):
        add(f"text-{field}-{value!r}", line(**{field: value}))
    # Unicode escapes of keys and values.
    for old, new in (('"txn_id"', '"\\u0074xn_id"'), ('"account_id"', '"\\u0061ccount\\u005Fid"'),
                     ('"channel"', '"chann\\u0065l"'), ('"web"', '"\\u0077eb"'), ('"US"', '"\\u0055\\u0053"'),
                     ('"USD"', '"u\\u0073d"'), ('"grocery"', '"\\u0047rocery"'), ('"features"', '"featur\\u0065s"'),
                     ('"score"', '"\\u0073core"'), ('"t-0001"', '"t\\u002d0001"'), ('"t-0001"', '"t\\t0001"'),
                     ('"t-0001"', '"t\\/0001"'), ('"acct-0000042"', '"acct\\u00a00000042"')):
        add(f"escaped-{new}", BASE_TEXT.replace(old, new, 1))
    # Missing and null fields.
    for field in BASE:
        add(f"absent-{field}", line(**{field: DROP}))
        add(f"null-{field}", line(**{field: None}))
    add("empty-object", "{}")
    add("only-unknown", '{"memo":1}')
    # Not objects.
    for text in ("[]", "[1]", '"x"', "1", "null", "true", "[" + BASE_TEXT + "]"):
        add(f"not-object-{text[:10]}", text)
    # Features of every shape.
    for value in ([], "x", 1, {}, {"a": [1]}, {"a": {"b": 1}}, {"a": True}, {"a": None}, {"a": "x"},
                  {"a": 1e300}, {"a": -0.0}, {"": 1}):
        add(f"features-{value!r}", line(features=value))
    # Unknown fields and near-miss keys.
    for extra in ('"memo":"x"', '"schema_version":1', '"Txn_id":"t"', '"amount ":1', '"features.a":1',
                  '"memo":{"account_id":"a"}', '"memo":null'):
        add(f"unknown-{extra}", BASE_TEXT[:-1] + "," + extra + "}")
    return cases


HOSTILE = _hostile()


@pytest.mark.parametrize("raw", [raw for _, raw in HOSTILE], ids=[name for name, _ in HOSTILE])
def test_hostile_records_get_the_reference_outcome(raw, rules):
    assert_same([raw], rules)


def test_hostile_records_together_in_one_batch(any_rules):
    outcomes = assert_same([raw for _, raw in HOSTILE], any_rules)
    assert sum(kind == "cleaned" for kind, *_ in outcomes) > 100
    assert sum(kind == "rejected" for kind, *_ in outcomes) > 100


def test_every_byte_anywhere_in_a_record(rules):
    text = BASE_TEXT.encode()
    places = [1, text.index(b":") + 1, text.index(b"t-0001") + 2, text.index(b'"score"') + 2,
              text.index(b",") + 1, text.index(b"12.5"), text.index(b"12.5") + 2, len(text) - 1, len(text)]
    raws = [text[:place] + bytes([byte]) + text[place:] for byte in range(256) for place in places]
    assert_same(raws, rules)


def test_every_escape_in_keys_and_values(rules):
    escapes = [f"\\u{code:04x}" for code in range(0x100)] + [f"\\u{code:04X}" for code in range(0x20, 0x80)]
    escapes += [f"\\u{code:04x}" for code in (0x2028, 0xa0, 0x3000, 0xfeff, 0xfffe, 0xffff, 0xd7ff, 0xe000)]
    escapes += ["\\" + chr(char) for char in range(0x20, 0x7f)]
    raws = []
    for escape in escapes:
        raws.append(with_value("txn_id", f'"t{escape}1"'))
        raws.append(with_value("channel", f'"{escape}web{escape}"'))
        raws.append(with_value("country", f'"U{escape}"'))
        raws.append(with_value("features", f'{{"k{escape}":1,"v":"{escape}"}}'))
        raws.append(BASE_TEXT.replace('"amount"', f'"amoun{escape}"').encode())
    assert_same(raws, rules)


def test_floats_are_read_as_the_reference_reads_them(rules):
    rng = random.Random(3)
    texts = []
    for _ in range(1500):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30))).lstrip("0") or "0"
        fraction = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30)))
        texts.append(f"{digits}.{fraction}e{rng.randint(-340, 320)}")
        texts.append(repr(rng.uniform(0, 10 ** rng.randint(0, 18))))
        low = rng.uniform(0, 1e300) if rng.random() < 0.5 else rng.uniform(0, 1e-300)
        halfway = (Decimal(low) + Decimal(math.nextafter(low, math.inf))) / 2  # ties: the hard case
        texts.append(format(halfway, "e"))
    raws = [with_value("amount", text) for text in texts]
    raws += [with_value("features", f'{{"a":{text},"b":-{text}}}') for text in texts]
    outcomes = assert_same(raws, rules)
    assert sum(kind == "cleaned" for kind, *_ in outcomes) > 3000


# ---------------------------------------------------------------- the size cap


@pytest.mark.parametrize("padding", ["trailing-space", "unknown-field", "merchant-spaces"])
def test_a_record_exactly_at_the_cap_and_one_byte_over(make_rules, padding):
    cap = 600
    rules = make_rules(max_record_bytes=cap)

    def padded(size: int) -> bytes:
        if padding == "trailing-space":
            raw = BASE_TEXT.encode()
            return raw + b" " * (size - len(raw))
        if padding == "unknown-field":
            raw = (BASE_TEXT[:-1] + ',"memo":""}').encode()
            return raw[:-2] + b"x" * (size - len(raw)) + b'"}'
        raw = line(merchant_id="m-1").decode()
        return raw.replace('"m-1"', '"m-1' + " " * (size - len(raw)) + '"').encode()

    at_cap, over = padded(cap), padded(cap + 1)
    assert (len(at_cap), len(over)) == (cap, cap + 1)
    assert [kind for kind, *_ in assert_same([at_cap, over], rules)] == ["cleaned", "rejected"]
    assert clean_batch([over], rules)[0].stage == "decode"


def test_the_cap_counts_bytes_not_characters(make_rules):
    rules = make_rules(max_record_bytes=300)
    raws = [line(merchant_id="€" * count) for count in range(0, 120, 7)]
    raws += [raw[:-1] + b"\xff}" for raw in raws]
    outcomes = assert_same(raws, rules)
    assert {kind for kind, *_ in outcomes} == {"cleaned", "rejected"}


# ---------------------------------------------------------------- random near-valid records


_OTHER_VALUES = [0, 1, -1, 7, 2**63, 2**64, 10**25, 0.0, -0.0, 1.5, 1e300, "", " ", "x", "12.5", " 7 ", "nan",
                 "WEB", " us ", "2026-01-01T00:00:00Z", True, False, None, [], [1], {}, {"a": 1}]




def _dump(value: Any, rng: random.Random, escape: float) -> str:
    if isinstance(value, str):
        return spell(value, rng, escape)
    if isinstance(value, dict):
        return _dump_pairs(list(value.items()), rng, escape)
    if isinstance(value, list):
        return "[" + ",".join(_dump(v, rng, escape) for v in value) + "]"
    return json.dumps(value)  # NaN as the literal NaN


def _dump_pairs(pairs: list[tuple[str, Any]], rng: random.Random, escape: float) -> str:
    """An object from (key, value) pairs, so that a key can come twice."""
    return "{" + ",".join(spell(key, rng, escape) + ":" + _dump(value, rng, escape) for key, value in pairs) + "}"


def _mutate(pairs: list[tuple[str, Any]], rng: random.Random) -> None:
    index = rng.randrange(len(pairs))
    name, value = pairs[index]
    how = rng.randrange(14)
    if how == 0:
        del pairs[index]
    elif how == 1:
        pairs[index] = (name, None)
    elif how == 2:
        pairs[index] = (name, rng.choice(_OTHER_VALUES))
    elif how == 3 and isinstance(value, str):
        spaced = rng.choice([" ", "  ", "\t", "\u00a0", "\n"]).join([value[:2], value[2:]])
        pairs[index] = (name, rng.choice([str.upper, str.lower, str.title, str.strip])(f" {spaced} "))
    elif how == 4:  # a duplicate key, before or after
        pairs.insert(rng.choice([index, index + 1]), (name, rng.choice(_OTHER_VALUES + [value])))
    elif how == 5:
        amount = dict(pairs).get("amount")
        if type(amount) not in (int, float):
            amount = 1.0
        text = rng.choice(["{}", " {} ", "{:e}", "{:.3f}", "-{}", "+{}"]).format(amount)
        pairs[rng.randrange(len(pairs))] = ("amount", text)
    elif how == 6:
        millis = rng.randrange(0, 253_402_300_800_000)
        seconds, ms = divmod(millis, 1000)
        moment = f"{datetime.fromtimestamp(seconds, timezone.utc):%Y-%m-%dT%H:%M:%S}.{ms:03d}"
        suffix = rng.choice(["Z", "z", "+00:00", "+01:00", "-05:30", "", " "])
        pairs.append(("event_time", moment + suffix))
    elif how == 7:
        pairs[index] = (name, rng.choice([True, False]))
    elif how == 8:
        event_time = dict(pairs).get("event_time", 0)
        if isinstance(event_time, int):
            pairs.append(("event_time", rng.choice([float(event_time), event_time * 1000, -event_time])))
    elif how == 9:
        pairs.insert(rng.randrange(len(pairs) + 1), (rng.choice(["memo", "Amount", "txn id", "features.x"]),
                                                     rng.choice(_OTHER_VALUES)))
    elif how == 10:
        pairs.append(("is_fraud", rng.choice([0, 1, None, 2, -1, True, 1.0, "1", 2**64])))
    elif how == 11:
        current = dict(pairs).get("features")
        features = dict(current) if isinstance(current, dict) else {}
        features[rng.choice(["a", "txn_count_1h", ""])] = rng.choice(_OTHER_VALUES)
        pairs.append(("features", features))
    elif how == 12:
        pairs.append((rng.choice(["txn_id", "account_id", "merchant_id", "merchant_category"]),
                      rng.choice([77, -3, 0, 12.5])))
    elif how == 13:
        pairs.append(("amount", rng.choice([-0.01, 0, 0.0, -0.0, 1e-320, 10**20, float("nan")])))


@functools.cache
def _near_valid(seed: int, count: int) -> tuple[bytes, ...]:
    rng = random.Random(seed)
    records = [json.loads(raw) for raw in generate(GeneratorSettings(records=300, seed=seed, accounts=100))]
    raws = []
    for _ in range(count):
        pairs = list(rng.choice(records).items())
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            if pairs:
                _mutate(pairs, rng)
        text = _dump_pairs(pairs, rng, escape=rng.choice([0.0, 0.0, 0.05, 0.5]))
        if rng.random() < 0.1:
            text = rng.choice([" ", "\n", "\ufeff", ""]) + text + rng.choice([" ", "\r\n", "\x00", "x", ""])
        raw = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.05:
            cut = rng.randrange(len(raw) + 1)
            raw = raw[:cut] + rng.choice([b"", b"\xff", b"\x00", b"}", b'"', b"\\"]) + raw[cut + 1:]
        raws.append(raw)
    return tuple(raws)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_near_valid_records(seed, any_rules):
    outcomes = assert_same(list(_near_valid(seed, 2000)), any_rules)
    cleaned = sum(kind == "cleaned" for kind, *_ in outcomes)
    assert 0.15 * len(outcomes) < cleaned < 0.85 * len(outcomes)


# ---------------------------------------------------------------- fast path, fallback, caches


def test_unknown_fields_are_parsed_by_the_reference_and_still_cleaned_fast(rules, reference_calls):
    raws = [BASE_TEXT[:-1].encode() + b',"schema_version":%d}' % i for i in range(50)]
    assert [kind for kind, *_ in assert_same(raws, rules)] == ["cleaned"] * 50
    assert reference_calls == {"parse": 50, "clean": 0}


def test_rejected_records_are_rejected_by_the_reference_itself(rules, reference_calls):
    raws = [line(amount=-1.0), line(channel="fax"), line(country=DROP), b"[1]", b"{", b"\xff"]
    outcomes = assert_same(raws, rules)
    assert all(kind == "rejected" for kind, *_ in outcomes)
    assert reference_calls["clean"] == 3


def test_an_exception_the_reference_raises_is_raised(make_rules):
    rules = make_rules(missing={"amount": MissingPolicy(True, 10**400)})
    with pytest.raises(OverflowError):
        reference(line(amount=DROP), rules)
    with pytest.raises(OverflowError):
        clean_batch([line(), line(amount=DROP)], rules)


@pytest.mark.parametrize("raw", [
    b'{"amount":9223372036854775808}',  # orjson: int; msgspec takes no bound past int64
    b'{"amount":18446744073709551616}',  # orjson: float; msgspec: int
    b'{"features":{"a":-9223372036854775809}}',
    b'{"memo":1e400}',  # msgspec skips an unknown field without orjson's checks
    b'{"memo":"\xff"}',
    b'{"features":{"a":[1]}}',  # nested: orjson's depth limit is not msgspec's
    b'{"features":{"a":{"b":1}}}',
    b'{"is_fraud":true}',
    b'{"event_time":true}',
])
def test_the_shape_sends_what_msgspec_reads_unlike_orjson_to_the_reference(raw):
    with pytest.raises((msgspec.DecodeError, UnicodeDecodeError)):
        batch_cleaning._decode_shape(raw)


def test_what_the_shape_takes_msgspec_reads_as_orjson_does():
    raw = (b'{"txn_id":"a\\u0000\\ud83d\\ude00","amount":-0.0,"event_time":1e-400,"is_fraud":-9223372036854775808,'
           b'"features":{"a":1,"b":true,"a":5e-324,"c":null,"d":"\\u00e9"},"currency":"x","currency":null}')
    shape = batch_cleaning._decode_shape(raw)
    parsed = orjson.loads(raw)
    assert typed([getattr(shape, name) for name in batch_cleaning.FIELDS]) == \
        typed([parsed.get(name) for name in batch_cleaning.FIELDS])


def test_pseudonyms_follow_the_key(make_rules):
    raws = [line(account_id=f"acct-{i % 7}") for i in range(40)]
    first = make_rules()
    second = CleaningRules(b"another-key", first.channels, "USD", {}, 4096)
    assert_same(raws, first)
    assert_same(raws, second)
    assert_same(raws, first)
    assert clean_batch(raws[:1], first)[0]["account_id"] != clean_batch(raws[:1], second)[0]["account_id"]


def test_channels_follow_the_rules(make_rules):
    raws = [line(channel=" FAX "), line(channel="web")]
    default = make_rules()
    with_fax = CleaningRules(default.pseudonym_key, frozenset({"fax"}), "USD", {}, 4096)
    for rules, expected in ((default, ["rejected", "cleaned"]), (with_fax, ["cleaned", "rejected"]),
                            (default, ["rejected", "cleaned"])):
        assert [kind for kind, *_ in assert_same(raws, rules)] == expected


def test_the_caches_stay_bounded(make_rules, monkeypatch):
    monkeypatch.setattr(batch_cleaning, "CACHE_LIMIT", 8)
    monkeypatch.setattr(batch_cleaning, "_PSEUDONYMS", {})
    monkeypatch.setattr(batch_cleaning, "_NORMALIZED", {name: {} for name in batch_cleaning._NORMALIZED})
    rules = make_rules()
    raws = [line(account_id=f"acct-{i}", merchant_id=f"m-{i}", merchant_category=f"cat {i % 11}",
                 country=["us", "GB", " de"][i % 3]) for i in range(100)]
    assert_same(raws, rules)
    assert_same(raws, rules)  # again, with what the caches kept
    assert len(batch_cleaning._PSEUDONYMS[rules.pseudonym_key]) <= 8
    assert all(len(cache) <= 8 for cache in batch_cleaning._NORMALIZED.values())
    for index in range(40):
        clean_batch(raws[:1], CleaningRules(b"key-%d" % index, rules.channels, "USD", {}, 4096))
    assert len(batch_cleaning._PSEUDONYMS) <= batch_cleaning.PSEUDONYM_KEYS_LIMIT
