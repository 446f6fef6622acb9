"""Decoding, parsing and cleaning of raw transaction records (pure Python, no Flink).

A record travels `decode` (bytes -> text) -> `parse` (text -> JSON object) -> `clean` (object ->
validated, normalized transaction). Each step either returns its result or raises `Rejected` with
the stage and a one-line reason; the caller turns that into a dead letter. `account_id` is replaced by
its pseudonym during cleaning; `redact_account_id` does the same to raw text, and
`redact_account_id_bytes` replaces it by a pseudonym token (`pseudonym_token`) in raw bytes, before
either is written anywhere. `clean` takes a token that verifies under its key as the pseudonym it
carries, so a dead letter's bytes sent again are not hashed twice.
"""

from __future__ import annotations

import hmac
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping

import orjson

SCHEMA_VERSION = 1

# The transaction contract (README, "Data contracts"). Required fields are dead-lettered when missing
# unless a missing-value policy says otherwise.
REQUIRED_FIELDS = ("txn_id", "event_time", "account_id", "merchant_category", "country", "channel", "amount")
OPTIONAL_FIELDS = ("merchant_id", "currency", "features", "is_fraud")
CONTRACT_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)

# Event times outside [1970-01-01, 10000-01-01) are not plausible epoch milliseconds.
MAX_EVENT_TIME_MS = 253_402_300_800_000

COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")
CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")
# A number as JSON writes it, or a word float() reads as non-finite; anything else is not a number
# (float() alone would also take "1_000" and " 12 ").
_NUMBER_TEXT = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$", re.IGNORECASE)


def _json_spellings(char: str) -> str:
    r"""A regex matching every way a JSON string can spell `char` (an ASCII letter, digit or
    underscore): the character itself, or `\u` and its four hex digits in either case. The short
    escapes (\" \\ \/ \b \f \n \r \t) and surrogate pairs spell other characters only."""
    # NULs may come between the characters of an escape too (see _ACCOUNT_ID_KEY).
    hex_digits = r"\x00*".join(f"{ord(char):04x}")
    return "(?:" + re.escape(char) + r"|\\\x00*u\x00*(?i:" + hex_digits + "))"


# A key that decodes to account_id, however it is spelled, with the whitespace and colon after it;
# the value starts where a match ends. The closing quote follows a letter or a hex digit, never a
# backslash, so it really ends a string, and a string followed by a colon is a key: in valid JSON
# this finds exactly the account_id keys, at any depth. Text that merely says account_id inside a
# string value does not match, because its quotes are escaped: "note":"\"account_id\":\"x\"" is
# left as it is (the parser does not read it as an account_id, and clean does not pseudonymize it).
# Only in broken JSON, or after a key ending in an escaped quote ("x\"account_id":), can a match
# start at a quote that does not open an account_id key; its value is redacted all the same, which
# errs on the side of privacy and costs nothing for valid records.
#
# Each character may also have NULs before it: text in UTF-16 or UTF-32 (its ASCII characters with
# NUL bytes beside them, as a dead letter's raw text shows it) spells the same key, and its id
# must not reach a dead letter either. Valid JSON holds no raw NUL, so this changes nothing for it.
_ACCOUNT_ID_KEY = re.compile(r"\x00*".join(['"'] + [_json_spellings(char) for char in "account_id"] + ['"'])
                             + r"[ \t\r\n\x00]*:[ \t\r\n\x00]*")


class Rejected(Exception):
    """A record that cannot be used: `stage` is decode / parse / clean / features / model."""

    def __init__(self, stage: str, reason: str, txn_id: str | None = None):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.txn_id = txn_id


@dataclass(frozen=True)
class MissingPolicy:
    """Absent or null field: `impute` uses `value`; otherwise the record is dead-lettered."""

    impute: bool
    value: Any = None


@dataclass(frozen=True)
class CleaningRules:
    """What `clean` accepts; built once from configuration."""

    pseudonym_key: bytes
    channels: frozenset[str]
    default_currency: str
    missing: Mapping[str, MissingPolicy]
    max_record_bytes: int

    def policy(self, field: str) -> MissingPolicy:
        """The missing-value policy for a contract field or `features.<name>`."""
        if field in self.missing:
            return self.missing[field]
        if field == "currency":
            return MissingPolicy(True, self.default_currency)
        if field in ("merchant_id", "is_fraud", "features"):
            return MissingPolicy(True, None)
        return MissingPolicy(False)


def pseudonymize(account_id: str, key: bytes) -> str:
    """A stable pseudonym for an account: hex HMAC-SHA256 of the whitespace-normalized id under
    `key`, 32 characters."""
    return hmac.digest(key, _collapse_whitespace(account_id).encode("utf-8"), "sha256").hex()[:32]


# A pseudonym as a dead letter's bytes carry it in place of an account id (docs/contracts.md, "Dead
# letters"): "rs-pseudonym:v1:<pseudonym>:<MAC>", the MAC proving that the job holding the key wrote
# it, so that a record sent again is not hashed twice and a record cannot make its own id pass as a
# pseudonym. Both parts are 32 lower-case hex digits.
PSEUDONYM_TOKEN_PREFIX = "rs-pseudonym:v1:"
_PSEUDONYM_TOKEN = re.compile(re.escape(PSEUDONYM_TOKEN_PREFIX) + r"([0-9a-f]{32}):([0-9a-f]{32})")
# The MAC's message starts with byte 0xff, which no UTF-8 text holds, so `pseudonymize` never hashes
# it: the pseudonyms the job publishes (scores, model keys) reveal no token's MAC.
_TOKEN_MAC_DOMAIN = b"\xff" + PSEUDONYM_TOKEN_PREFIX.encode("ascii")


def _token_mac(pseudonym: str, key: bytes) -> str:
    return hmac.digest(key, _TOKEN_MAC_DOMAIN + pseudonym.encode("ascii"), "sha256").hex()[:32]


def pseudonym_token(pseudonym: str, key: bytes) -> str:
    """The token of `pseudonym` (32 hex digits, from `pseudonymize` under `key`):
    "rs-pseudonym:v1:<pseudonym>:<MAC>", 81 characters; the MAC is the first 32 hex digits of
    HMAC-SHA256 under `key` of byte 0xff, the prefix and the pseudonym."""
    return f"{PSEUDONYM_TOKEN_PREFIX}{pseudonym}:{_token_mac(pseudonym, key)}"


def token_pseudonym(text: str, key: bytes) -> str | None:
    """The pseudonym `text` carries if it is exactly a `pseudonym_token` whose MAC verifies under
    `key`; None otherwise (any other text, a forged token, a token made under another key)."""
    match = _PSEUDONYM_TOKEN.fullmatch(text)
    if match is None or not hmac.compare_digest(match.group(2), _token_mac(match.group(1), key)):
        return None
    return match.group(1)


def account_pseudonym(account_id: str, key: bytes) -> str:
    """The pseudonym `clean` stores for an account id (whitespace-normalized first): the one a
    token verifying under `key` carries (never hashed again), else `pseudonymize(account_id, key)`
    (a forged or other-key token included: it is hashed like any raw id)."""
    text = _collapse_whitespace(account_id)
    carried = token_pseudonym(text, key)
    return carried if carried is not None else pseudonymize(text, key)


# How each categorical field is normalized: inner whitespace collapsed, ends stripped, then
# the field's case rule. Used by `clean` and by one-hot vocabularies, so both agree.
_CASE = {"merchant_category": str.lower, "channel": str.lower, "country": str.upper, "currency": str.upper}


def _collapse_whitespace(text: str) -> str:
    """Runs of whitespace as one space, none at the ends."""
    return " ".join(text.split())


def normalize_categorical(field: str, value: str) -> str:
    """`value` as `clean` stores it in `field` (e.g. ' Grocery ' -> 'grocery', ' us' -> 'US')."""
    text = _collapse_whitespace(value)
    case = _CASE.get(field)
    return case(text) if case else text


def model_key_of(record: Mapping[str, Any], field: str, rules: CleaningRules) -> str | None:
    """The model key of a parsed record when the job is keyed by `field` (one of merchant_category,
    account_id, merchant_id, country, channel, currency), derived as `clean` derives that field: the
    record's value, or the missing-value policy's when it is absent or null, then `_normalized_text`.

    For every record `clean` accepts, this equals the cleaned `field`, except for account_id, where
    it is the normalized id before pseudonymization (the producer keys messages with it and holds
    no secret). None when the policy imputes null (the job then dead-letters the record). Raises
    `Rejected` (stage `clean`) for a value `clean` rejects: missing without a policy, neither a
    string nor an integer, or empty.
    """
    value = _present_or_policy(record, field, rules)
    return None if value is None else _normalized_text(field, value)


def _normalized_text(field: str, value: Any) -> str:
    """A categorical field's value as `clean` stores it: a string or an integer (not a boolean),
    not empty, normalized by `normalize_categorical`."""
    return normalize_categorical(field, _text(field, value))


def redact_account_id(text: str, key: bytes) -> str:
    r"""`text` with the value of every key that decodes to `account_id` replaced by the JSON string of
    its pseudonym (`account_pseudonym`: a token verifying under `key` gives the pseudonym it
    carries), and every other character left as it is.

    `text` is a record as a dead letter's preview shows it: any JSON, or text that does not parse,
    cut off anywhere, or holding `\xNN` escapes for bytes that were not UTF-8. Keys are found in any
    spelling (`account\u005fid`, `\u0061ccount_id`, ...) and at any depth (see `_ACCOUNT_ID_KEY`);
    values of any type are replaced, up to where they end or the end of the text (see
    `_json_value_end`), so no part of an id survives a cut. What is hashed: a string value decoded
    (as `clean` hashes it), any other valid value as written, and a value that does not parse (cut
    off, say) as written less its surrounding quotes. A text cut inside a key or before its colon
    holds no value yet and is left as it is.
    """
    return _replace_account_ids(text, lambda plain: f'"{account_pseudonym(plain, key)}"')


def redact_account_id_bytes(raw: bytes, key: bytes) -> bytes:
    r"""`raw` (any bytes: a record, maybe cut off, maybe not UTF-8) with the value of every key that
    decodes to `account_id` replaced by the JSON string of its `pseudonym_token` under `key`, and
    every other byte left as it is. Values are found, and hashed, as `redact_account_id` does, on
    the bytes decoded as UTF-8 with each invalid byte kept aside (surrogateescape) so that every
    byte outside the values comes back; a value holding such a byte is hashed with it written
    `\xNN`, as the preview shows it. A value that is a token of `key` stays that token: its
    pseudonym is never hashed again."""
    text = raw.decode("utf-8", "surrogateescape")
    redacted = _replace_account_ids(text, lambda plain: f'"{pseudonym_token(account_pseudonym(plain, key), key)}"')
    return redacted.encode("utf-8", "surrogateescape")


def account_id_values(raw: bytes) -> list[str]:
    """The value of every key that decodes to `account_id` in `raw` (any bytes), found as
    `redact_account_id_bytes` finds them, each as it would be hashed: a JSON string decoded, any
    other value as written."""
    values: list[str] = []
    for _, _, plain in _account_id_values(raw.decode("utf-8", "surrogateescape")):
        values.append(plain)
    return values


# A byte that was not UTF-8, as surrogateescape keeps it in text: U+DC80..U+DCFF for bytes 0x80..0xff.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _as_hex_escape(match: re.Match) -> str:
    return f"\\x{ord(match.group()) - 0xdc00:02x}"


def _replace_account_ids(text: str, replacement: Callable[[str], str]) -> str:
    """`text` with each account_id value (`_account_id_values`) replaced by `replacement(plain)`."""
    pieces = []
    position = 0
    for start, end, plain in _account_id_values(text):
        pieces.append(text[position:start])
        pieces.append(replacement(plain))
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _account_id_values(text: str) -> Iterator[tuple[int, int, str]]:
    r"""(start, end, plain) of each account_id value in `text`, in order, none inside another:
    where it is, and what is hashed for it (see `redact_account_id`). A lone surrogate (a byte that
    was not UTF-8, kept by surrogateescape) is hashed as `\xNN`, as the preview writes it."""
    position = 0
    for match in _ACCOUNT_ID_KEY.finditer(text):
        if match.start() < position:
            continue  # a key inside a value already replaced
        start = match.end()
        end = _json_value_end(text, start)
        value = text[start:end]
        try:
            decoded = orjson.loads(value)
            plain = decoded if isinstance(decoded, str) else value
        except orjson.JSONDecodeError:  # also a value holding a lone surrogate
            plain = value.strip('"')
        yield start, end, _ESCAPED_BYTE.sub(_as_hex_escape, plain)
        position = end


def _json_value_end(text: str, start: int) -> int:
    """Where the JSON value starting at `start` ends: at the first `,`, `]` or `}` outside its own
    strings and brackets, less the whitespace before it, or at the end of the text if it is cut off.

    For valid JSON that is exactly the value, whatever its type. In broken JSON a value runs on to
    such a delimiter rather than stopping early, so an id with a stray quote ("AC"CT") or unquoted
    with spaces (ACCT 42) is replaced whole.
    """
    depth = 0
    in_string = False
    i = start
    while i < len(text):
        char = text[i]
        if in_string:
            if char == "\\":
                i += 1  # whatever it escapes, even a quote, stays in the string
                while i < len(text) and text[i] == "\x00":
                    i += 1  # UTF-16 or UTF-32 text: NULs come between a backslash and what it escapes
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif depth == 0 and char in ",]}":
            break  # the value is over
        elif char in "]}":
            depth -= 1
        i += 1
    end = min(i, len(text))
    while end > start and text[end - 1] in " \t\r\n":
        end -= 1
    return end


def decode(raw: bytes, max_record_bytes: int) -> str:
    """UTF-8 text of one record; rejects empty, oversized and not-UTF-8 input (stage `decode`)."""
    if len(raw) > max_record_bytes:
        raise Rejected("decode", f"record is {len(raw)} bytes, over the {max_record_bytes}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected("decode", f"not valid UTF-8: byte 0x{raw[error.start]:02x} at offset {error.start}") from None
    if not text.strip():
        raise Rejected("decode", "empty record")
    return text


def parse(text: str) -> dict[str, Any]:
    """The JSON object in `text`; rejects invalid JSON (NaN and Infinity included) and non-objects."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise Rejected("parse", f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise Rejected("parse", f"expected a JSON object, got {type(value).__name__}")
    return value


def clean(record: Mapping[str, Any], rules: CleaningRules) -> dict[str, Any]:
    """A validated, normalized transaction from a parsed record, or `Rejected` at stage `clean`.

    Output fields: txn_id (str), event_time (int, epoch ms), account_id (pseudonym, `account_pseudonym`:
    a token verifying under the rules' key gives the one it carries), merchant_id
    (str | None), merchant_category (lower case), country (ISO alpha-2), channel (one of the
    configured channels), amount (finite float >= 0), currency (ISO-4217), features (dict of name ->
    raw value, checked later), is_fraud (0, 1 or None).
    """
    txn_id = _txn_id(record.get("txn_id"))
    try:
        values = {name: _present_or_policy(record, name, rules) for name in REQUIRED_FIELDS + OPTIONAL_FIELDS}
        # Each categorical field goes through `_normalized_text`, as in `model_key_of`, so that
        # the producer's message key and the job's model key agree.
        account = _normalized_text("account_id", values["account_id"])
        currency = _normalized_text("currency", values["currency"]) if values["currency"] is not None else None
        if currency is not None and not CURRENCY_CODE.match(currency):
            raise Rejected("clean", f"currency {currency!r} is not an ISO-4217 code")
        country = _normalized_text("country", values["country"])
        if not COUNTRY_CODE.match(country):
            raise Rejected("clean", f"country {country!r} is not an ISO-3166 alpha-2 code")
        channel = _normalized_text("channel", values["channel"])
        if channel not in rules.channels:
            allowed = ", ".join(sorted(rules.channels))
            raise Rejected("clean", f"channel {channel!r} is not one of {allowed}")
        features = values["features"]
        if features is not None and not isinstance(features, dict):
            raise Rejected("clean", f"features must be an object, got {type(features).__name__}")
        merchant_id = values["merchant_id"]
        return {
            "txn_id": _text("txn_id", values["txn_id"]),
            "event_time": epoch_millis("event_time", values["event_time"]),
            "account_id": account_pseudonym(account, rules.pseudonym_key),
            "merchant_id": _normalized_text("merchant_id", merchant_id) if merchant_id is not None else None,
            "merchant_category": _normalized_text("merchant_category", values["merchant_category"]),
            "country": country,
            "channel": channel,
            "amount": _amount(values["amount"]),
            "currency": currency,
            "features": features or {},
            "is_fraud": _label(values["is_fraud"]),
        }
    except Rejected as rejected:
        rejected.txn_id = txn_id
        raise


def _present_or_policy(record: Mapping[str, Any], name: str, rules: CleaningRules) -> Any:
    value = record.get(name)
    if value is not None:
        return value
    policy = rules.policy(name)
    if not policy.impute:
        raise Rejected("clean", f"{name} is missing")
    return policy.value


def _txn_id(value: Any) -> str | None:
    """The record's txn_id when it is usable, for dead letters; None otherwise."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _text(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Rejected("clean", f"{name} must be a string, got {_json_type(value)}")
    text = _collapse_whitespace(str(value))
    if not text:
        raise Rejected("clean", f"{name} is empty")
    return text


def _amount(value: Any) -> float:
    if isinstance(value, bool):
        raise Rejected("clean", "amount must be a number, got boolean")
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER_TEXT.match(text):
            raise Rejected("clean", f"amount {value[:40]!r} is not a number")
        # The stripped text: str.strip() removes characters float() does not take as whitespace
        # (\x1c..\x1f), and float("\x1c7") would raise ValueError out of the job.
        amount = float(text)
    elif isinstance(value, (int, float)):
        amount = float(value)
    else:
        raise Rejected("clean", f"amount must be a number, got {_json_type(value)}")
    if not math.isfinite(amount):
        raise Rejected("clean", f"amount is not finite ({amount})")
    if amount < 0:
        raise Rejected("clean", f"amount is negative ({amount})")
    return amount


def epoch_millis(name: str, value: Any) -> int:
    """A moment as epoch milliseconds in [1970, 10000): `value` is epoch ms (an integer, or a
    float without a fraction) or an ISO-8601 string with a time zone; `Rejected` (stage `clean`,
    naming the field `name`) otherwise."""
    if isinstance(value, bool):
        raise Rejected("clean", f"{name} must be epoch milliseconds or ISO-8601, got boolean")
    if isinstance(value, int):
        millis = value
    elif isinstance(value, float) and value.is_integer():
        millis = int(value)
    elif isinstance(value, str):
        millis = _iso_millis(name, value.strip())
    else:
        raise Rejected("clean", f"{name} must be epoch milliseconds or ISO-8601, got {_json_type(value)}")
    if not 0 <= millis < MAX_EVENT_TIME_MS:
        raise Rejected("clean", f"{name} {millis} is outside 1970..9999")
    return millis


def _iso_millis(name: str, text: str) -> int:
    try:
        # Python 3.10 does not read a trailing "Z".
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise Rejected("clean", f"{name} {text[:40]!r} is not ISO-8601") from None
    if moment.tzinfo is None:
        raise Rejected("clean", f"{name} {text[:40]!r} has no time zone")
    return round(moment.timestamp() * 1000)


def _label(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    raise Rejected("clean", f"is_fraud must be 0, 1 or null, got {shown(value)}")


def shown(value: Any) -> str:
    """`value` as a dead letter's reason may show it: a scalar's repr, at most 40 characters; of an
    array or an object only its JSON type, since it may hold an account_id at any depth (which
    only the dead letter's `raw` may show, pseudonymized) and be nested too deep for repr."""
    if isinstance(value, (list, dict)):
        return _json_type(value)
    return f"{value!r:.40}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
