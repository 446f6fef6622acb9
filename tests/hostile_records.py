"""Hostile input for the property tests (tests/unit/test_properties.py) and for hostile runs of the
whole job: Hypothesis strategies of raw transaction and label records, from arbitrary bytes to
near-valid records with every field mutated, and `leaks`, which finds a raw account id in any
output text.

Every account id these strategies write contains `SECRET_MARKER` (a string id, or a string nested
in a list or an object under an account_id key) or is an integer from `SECRET_INTEGERS`; no other
value they write contains either, so an output that shows one leaked an id. The near-valid
records start from tests/records.py's VALID_RECORD with the local profile's features
(`BASE_TRANSACTION`), so that most of them reach cleaning and the features, and a mutation or two
makes them fail somewhere.

A record is built as (key, value) pairs, so that a key can repeat, and written by `dump_pairs`
with keys and strings spelled in any way JSON allows (\\u escapes, ASCII or not); `Literal`
values are JSON text written as they are (NaN, Infinity, 1e400, deep nesting); `wrapped` then
changes the bytes (BOMs, UTF-16, NULs, a cut, padding to exactly a size cap).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, NamedTuple

from hypothesis import strategies as st

from tests.records import VALID_RECORD
from udfs.cleaning import MAX_EVENT_TIME_MS

# In every string account id the strategies write, and in no other value (case-insensitive).
SECRET_MARKER = "Qx9Secret"
# Integer account ids: 9_081_726_354_000 .. 9_081_726_354_999, found as their decimal text.
SECRET_INTEGER_BASE = 9_081_726_354_000
SECRET_INTEGERS = re.compile(r"9081726354\d{3}")

# VALID_RECORD with a value for each of the local profile's numeric features (conf/local.yaml).
BASE_TRANSACTION: dict[str, Any] = {
    **VALID_RECORD,
    "features": {"txn_count_1h": 1, "txn_count_24h": 0, "amount_to_avg_ratio": 1.3124, "minutes_since_last_txn": 6.9,
                 "distinct_merchants_24h": 3, "account_age_days": 1772, "failed_logins_24h": 0,
                 "device_risk_score": 0.4265, "distance_from_home_km": 4.0, "new_device": 0},
}
BASE_LABEL: dict[str, Any] = {"txn_id": "t-0001", "is_fraud": 1, "label_time": 1_767_229_200_000,
                              "source": "chargeback"}


class Literal(NamedTuple):
    """JSON text written as it is (which need not be valid JSON)."""

    text: str


class Pairs(NamedTuple):
    """A JSON object whose keys may repeat, as (key, value) pairs in order."""

    pairs: tuple[tuple[str, Any], ...]


# ---------------------------------------------------------------- writing


def dump_pairs(pairs: Any, rng: random.Random, escape: float) -> str:
    """An object from (key, value) pairs: each key and string spelled by `spell`."""
    return "{" + ",".join(spell(key, rng, escape) + ":" + dump(value, rng, escape) for key, value in pairs) + "}"


def dump(value: Any, rng: random.Random, escape: float) -> str:
    """JSON text of `value` (dicts, lists, `Pairs`, `Literal`s, scalars; NaN and infinities as the
    literals NaN, Infinity and -Infinity, which no JSON parser takes)."""
    if isinstance(value, Literal):
        return value.text
    if isinstance(value, Pairs):
        return dump_pairs(value.pairs, rng, escape)
    if isinstance(value, dict):
        return dump_pairs(list(value.items()), rng, escape)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dump(inner, rng, escape) for inner in value) + "]"
    if isinstance(value, str):
        return spell(value, rng, escape)
    return json.dumps(value)


def spell(text: str, rng: random.Random, escape: float) -> str:
    """`text` as a JSON string: each ASCII letter, digit or `_` written as a \\u escape (upper or
    lower case hex) with probability `escape`, other characters as json.dumps writes them, escaped
    to ASCII or not (a lone surrogate: \\udXXX, or its bytes when not escaped)."""
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char == "_") and rng.random() < escape:
            out.append("\\u" + format(ord(char), rng.choice(["04x", "04X"])))
        else:
            out.append(json.dumps(char, ensure_ascii=rng.random() < 0.5)[1:-1])
    return '"' + "".join(out) + '"'


def encoded(text: str) -> bytes:
    """UTF-8 bytes of `text`, a lone surrogate as its three bytes (not valid UTF-8)."""
    return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- values

# Characters of every kind cleaning meets: controls (str.split's and float()'s whitespace differ
# on \x1c..\x1f), NUL, surrogates, right-to-left marks, emoji, combining marks, odd spaces,
# non-ASCII digits, letters whose case mapping is odd.
_ODD_CHARACTERS = ("\x00", "\x01", "\x1c", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "\u3000", "\ufeff", "\ud800",
                   "\udfff", "\u202e", "\u200f", "\U0001f600", "\u0301", "\u0663", "\uff11", "\u0130", "\u00df",
                   "\ufb03", "\t", "\n", "\r", "\\", '"', "/")
odd_text = st.text(st.one_of(st.sampled_from(_ODD_CHARACTERS), st.characters(), st.characters(codec="ascii")),
                   max_size=12)

# Numbers at the edges of floats and of the parsers: NaN and infinities as JSON literals, 1e400
# (over a double), 5e-324, -0.0, integers past 2**63 and 2**64, leading zeros, a bare exponent.
_NUMBER_LITERALS = ("NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e308", "5e-324", "2e-324", "-0.0",
                    "0.0", "-0", "1E+2", "01", "1.", ".5", "+1", "0x10", str(2**63), str(2**64), str(-(2**63) - 1),
                    str(10**30), "1" * 400)
number_literals = st.sampled_from(_NUMBER_LITERALS).map(Literal)
numbers = st.one_of(st.integers(), st.integers(-(2**70), 2**70), st.floats(), st.sampled_from(
    [0, 1, -1, 0.0, -0.0, 1e308, 5e-324, 1e12, 1e12 + 1, -1.0, -0.999, 2**63, 2**64, 2**64 + 1]))
# Numbers as text, which `amount` reads.
number_texts = st.one_of(
    numbers.map(str),
    st.sampled_from(["nan", "NaN", "inf", "-Infinity", "\x1c7", "7\x1f", " 12.5 ", "\t3\n", "1_000", "1e5",
                     "\u0663\u0661", "\uff11", "-0.0", "+1", "12,5", "", " ", "0x1A", "1e400"]),
    st.builds(lambda pad, number: pad + number + pad, st.sampled_from(["", " ", "\x1c", "\u3000", "\x85"]),
              st.floats(allow_nan=False).map(repr)))


def deep_nesting(depth: int) -> Literal:
    """Arrays nested `depth` deep (orjson refuses more than 1024 levels)."""
    return Literal("[" * depth + "]" * depth)


deeply_nested = st.sampled_from([200, 1000, 1023, 1024, 1025, 3000]).map(deep_nesting)

scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text, number_texts, number_literals)
hostile_values = st.one_of(
    scalars,
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
                 max_leaves=6),
    deeply_nested,
)


def _padded(values: st.SearchStrategy) -> st.SearchStrategy:
    """Strings of `values` in mixed case with whitespace around and inside."""
    return st.builds(lambda text, case, left, right: left + case(text) + right, values,
                     st.sampled_from([str, str.upper, str.lower, str.title]),
                     st.sampled_from(["", " ", "\t", "\u3000", "\x1c", "\n"]),
                     st.sampled_from(["", " ", "\r\n", "\xa0"]))


_iso_times = st.builds(
    lambda moment, suffix: moment.isoformat(timespec=suffix[0]) + suffix[1],
    st.datetimes(),
    st.sampled_from([("milliseconds", "Z"), ("seconds", "z"), ("milliseconds", "+00:00"), ("seconds", "-05:30"),
                     ("microseconds", ""), ("seconds", "+14:00"), ("seconds", " Z")]))

# Values a field may plausibly hold, near its contract and across its edges.
PLAUSIBLE: dict[str, st.SearchStrategy] = {
    "txn_id": st.one_of(_padded(st.sampled_from(["t-1", "t 2", "T-0001"])), st.integers(), odd_text),
    "event_time": st.one_of(st.integers(-(2**64), 2**64), st.integers(0, MAX_EVENT_TIME_MS + 1),
                            st.sampled_from([0, -1, MAX_EVENT_TIME_MS - 1, MAX_EVENT_TIME_MS, 1.5e12, 1e20]),
                            st.floats(), _iso_times),
    "merchant_id": st.one_of(_padded(st.sampled_from(["m-1", "m 2", "12"])), st.integers(), odd_text),
    "merchant_category": st.one_of(_padded(st.sampled_from(["grocery", "Online Retail", "travel"])), odd_text),
    "country": st.one_of(_padded(st.sampled_from(["us", "GB", "pl", "usa", "u", "\u0130t", "\uff35S"])), odd_text),
    "channel": st.one_of(_padded(st.sampled_from(["web", "pos", "atm", "mobile", "fax"])), odd_text),
    "amount": st.one_of(st.floats(-2, 2), st.sampled_from([-0.0, -1e-300, -5e-324, 0, -1, 1e308]), numbers,
                        number_texts, number_literals),
    "currency": st.one_of(_padded(st.sampled_from(["usd", "EUR", "eu", "euro", "\u0130SK"])), odd_text),
    "features": st.one_of(st.dictionaries(st.sampled_from(list(BASE_TRANSACTION["features"]) + ["", "x"]),
                                          st.one_of(numbers, number_literals, hostile_values), max_size=11),
                          st.builds(lambda base, name, value: {**base, name: value},
                                    st.just(BASE_TRANSACTION["features"]),
                                    st.sampled_from(list(BASE_TRANSACTION["features"])),
                                    st.one_of(numbers, number_literals, scalars))),
    "is_fraud": st.one_of(st.sampled_from([0, 1, None, 2, -1, True, False, 1.0, 0.0, "1", 2**64, 2**63]), numbers),
    "label_time": st.one_of(st.integers(-(2**64), 2**64), st.integers(0, MAX_EVENT_TIME_MS + 1), st.floats(),
                            _iso_times),
    "source": st.one_of(_padded(st.sampled_from(["chargeback", "review", "x" * 65])), odd_text),
}

# ---------------------------------------------------------------- account ids

secret_string_ids = st.builds(
    lambda number, before, after, left, right: f"{left}acct{before}{SECRET_MARKER}{number}{after}{right}",
    st.integers(0, 999), st.one_of(st.just("-"), odd_text), st.one_of(st.just(""), odd_text),
    st.sampled_from(["", " ", "\t", "\x1c", "\u3000"]), st.sampled_from(["", "  ", "\n", "\x85"]))
# Mostly strings, the contract's type (so that most records get past the account id).
_other_secret_ids = st.one_of(
    st.integers(0, 999).map(lambda number: SECRET_INTEGER_BASE + number),
    st.builds(lambda id_: [id_], secret_string_ids),
    st.builds(lambda id_: {"id": id_, "n": [1, 2]}, secret_string_ids),
)
secret_account_ids = st.integers(0, 4).flatmap(lambda draw: _other_secret_ids if draw == 0 else secret_string_ids)
# The ways a key can spell account_id: every \u escape is allowed in any letter, so `spell` does it.
ACCOUNT_ID_KEY = "account_id"


def nested_secret(id_: Any, container: str) -> Any:
    """An account id inside a value of another field, as an object's account_id at some depth."""
    inner = Pairs(((ACCOUNT_ID_KEY, id_),))
    return {"object": inner, "list": [1, inner], "deeper": {"a": [{"b": inner}]}}[container]


nested_secrets = st.builds(nested_secret, secret_account_ids, st.sampled_from(["object", "list", "deeper"]))

# ---------------------------------------------------------------- records


# Seeds of the spelling: a Random drawn from Hypothesis would record every character's choice,
# and a record's hundreds of them overrun the size of an example Hypothesis allows.
_seeds = st.integers(0, 2**32 - 1)


@st.composite
def _mutated_pairs(draw, base: dict[str, Any], fields: list[str], with_account: bool) -> list[tuple[str, Any]]:
    """`base` as (key, value) pairs, half of them with one field at a value near its contract
    (PLAUSIBLE), the others with up to three mutations of the kinds listed in the body."""
    pairs = list(base.items())
    if with_account:  # a secret in place of the base record's account id
        pairs = [(key, draw(secret_account_ids) if key == ACCOUNT_ID_KEY else value) for key, value in pairs]
    if draw(st.booleans()):  # half of them: one field at a value near its contract's edges
        field = draw(st.sampled_from(fields))
        value = draw(secret_account_ids if field == ACCOUNT_ID_KEY else PLAUSIBLE[field])
        return [(key, value if key == field else old) for key, old in pairs]
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        field = draw(st.sampled_from(fields))
        how = draw(st.sampled_from(["plausible"] * 4 + ["hostile", "drop", "duplicate", "duplicate-account",
                                                        "nested-account", "unknown", "deep"]))
        index = next((i for i, (key, _) in enumerate(pairs) if key == field), None)
        if how == "drop":
            pairs = [(key, value) for key, value in pairs if key != field]
            continue
        if how == "duplicate-account":  # the same key twice, with different ids (the last one counts)
            pairs.insert(draw(st.integers(0, len(pairs))), (ACCOUNT_ID_KEY, draw(secret_account_ids)))
            continue
        if how == "unknown":
            pairs.insert(draw(st.integers(0, len(pairs))), (draw(st.sampled_from(["memo", "Amount", "txn id", ""])),
                                                            draw(st.one_of(hostile_values, nested_secrets))))
            continue
        if field == ACCOUNT_ID_KEY and how in ("plausible", "hostile", "duplicate"):
            value = secret_account_ids  # every account id carries the marker, or a leak could not be seen
        else:
            value = {"plausible": PLAUSIBLE.get(field, hostile_values), "hostile": hostile_values, "duplicate":
                     st.one_of(PLAUSIBLE.get(field, hostile_values), hostile_values),
                     "nested-account": nested_secrets, "deep": deeply_nested}[how]
        new = (field, draw(value))
        if how == "duplicate" or index is None:
            pairs.insert(draw(st.integers(0, len(pairs))), new)
        else:
            pairs[index] = new
    return pairs


@st.composite
def wrapped(draw, text: str, max_record_bytes: int | None = None) -> bytes:
    """The bytes of a record's text, mostly as UTF-8, else changed: BOMs, UTF-16 or UTF-32, NULs
    and whitespace around it, a cut or a byte replaced, or padded with spaces (inside the object,
    or after it) to exactly `max_record_bytes` or one byte more."""
    raw = encoded(text)
    how = draw(st.sampled_from(["plain"] * 12 + ["bom", "utf-16", "utf-32", "around", "cut", "byte"]
                               + (["at-cap", "over-cap"] if max_record_bytes else [])))
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how in ("utf-16", "utf-32"):
        codec = draw(st.sampled_from([how, how + "-le", how + "-be"]))  # the bare codec writes a BOM
        return text.encode(codec, "surrogatepass")
    if how == "around":
        return (draw(st.sampled_from([b"", b" ", b"\x00", b"\n", b"\xef\xbb\xbf"])) + raw
                + draw(st.sampled_from([b"", b"\x00", b" \r\n", b"x", b"}", b"\xff"])))
    if how == "cut":
        return raw[:draw(st.integers(0, len(raw)))]
    if how == "byte":
        # Not shortly before an account id: a byte replaced in its key makes it a key of another
        # name, whose value no redaction owes a pseudonym.
        at = draw(st.integers(0, max(len(raw) - 1, 0)).filter(
            lambda at: leaks(raw[at:at + 200].decode("utf-8", "replace")) is None))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\x00", b"}", b'"', b"\\", b"\xc3"])) + raw[at + 1:]
    if how in ("at-cap", "over-cap"):
        size = max_record_bytes + (how == "over-cap")
        padding = b" " * max(size - len(raw), 0)
        return raw[:-1] + padding + raw[-1:] if draw(st.booleans()) and raw.endswith(b"}") else raw + padding
    return raw


@st.composite
def near_valid_transactions(draw, max_record_bytes: int | None = None) -> bytes:
    """A transaction's raw bytes: BASE_TRANSACTION with a secret account id and up to three
    mutations of any field (a new value near the contract or far from it, dropped, repeated, an
    account id nested in it, an unknown field, deep nesting), its keys and strings spelled in any
    JSON way, and its bytes changed by `wrapped` now and then."""
    pairs = draw(_mutated_pairs(BASE_TRANSACTION, list(BASE_TRANSACTION), with_account=True))
    text = dump_pairs(pairs, random.Random(draw(_seeds)), draw(st.sampled_from([0.0, 0.0, 0.1, 1.0])))
    return draw(wrapped(text, max_record_bytes))


@st.composite
def near_valid_labels(draw, max_record_bytes: int | None = None) -> bytes:
    """A label's raw bytes: BASE_LABEL, sometimes with a secret account id, mutated as
    `near_valid_transactions` mutates a transaction."""
    base = dict(BASE_LABEL)
    if draw(st.booleans()):
        base[ACCOUNT_ID_KEY] = "acct"
    pairs = draw(_mutated_pairs(base, list(BASE_LABEL), with_account=True))
    text = dump_pairs(pairs, random.Random(draw(_seeds)), draw(st.sampled_from([0.0, 0.0, 0.1, 1.0])))
    return draw(wrapped(text, max_record_bytes))


# Bytes of no structure, and text made of JSON's own characters.
arbitrary_bytes = st.binary(max_size=300)
json_like_bytes = st.text(st.sampled_from('{}[]":,.-+eE0123456789 \\ufnatrlsNIaiy_cd\x00\ufeff'), max_size=80).map(
    encoded)


def transactions(max_record_bytes: int | None = None) -> st.SearchStrategy[bytes]:
    """Any raw transaction record, near-valid most of the time."""
    # (one_of would count the same strategy given twice once; flatmap weighs 8 : 1 : 1.)
    return st.integers(0, 9).flatmap(lambda kind: near_valid_transactions(max_record_bytes) if kind < 8
                                     else arbitrary_bytes if kind == 8 else json_like_bytes)


def labels(max_record_bytes: int | None = None) -> st.SearchStrategy[bytes]:
    """Any raw label record, near-valid most of the time."""
    return st.integers(0, 9).flatmap(lambda kind: near_valid_labels(max_record_bytes) if kind < 8
                                     else arbitrary_bytes if kind == 8 else json_like_bytes)


# ---------------------------------------------------------------- finding a leaked id

_UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def leaks(text: str) -> str | None:
    """The raw account id `text` shows (an output's text, or a field of one), else None: the
    marker of a string id or an integer id, found after reading its \\u escapes and dropping the
    NULs of UTF-16 or UTF-32 text, in any case."""
    plain = _UNICODE_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), text.replace("\x00", "")).replace(
        "\x00", "")
    if SECRET_MARKER.lower() in plain.lower():
        return SECRET_MARKER
    found = SECRET_INTEGERS.search(plain)
    return found.group(0) if found else None
