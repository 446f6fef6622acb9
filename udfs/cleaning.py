"""Decoding, parsing and cleaning of raw transaction records (pure Python, no Flink).

A record travels `decode` (bytes -> text) -> `parse` (text -> JSON object) -> `clean` (object ->
validated, normalized transaction). Each step either returns its result or raises `Rejected` with
the stage and a one-line reason; the caller turns that into a dead letter. `account_id` is replaced by
its pseudonym during cleaning, and `redact_account_id` does the same to raw text before it is
written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

import orjson

SCHEMA_VERSION = 1

# The transaction contract (shared/DESIGN.md). Required fields are dead-lettered when missing
# unless a missing-value policy says otherwise.
REQUIRED_FIELDS = ("txn_id", "event_time", "account_id", "merchant_category", "country", "channel", "amount")
OPTIONAL_FIELDS = ("merchant_id", "currency", "features", "is_fraud")
CONTRACT_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)

# Event times outside [1970-01-01, 10000-01-01) are not plausible epoch milliseconds.
MAX_EVENT_TIME_MS = 253_402_300_800_000

_WHITESPACE = re.compile(r"\s+")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# A JSON string value (possibly cut off by truncation) or a number after an "account_id" key.
_ACCOUNT_ID_IN_TEXT = re.compile(r'("account_id"\s*:\s*)("(?:[^"\\]|\\.)*(?:"|$)|-?\d+(?:\.\d+)?)')


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
    """A stable pseudonym for an account: hex HMAC-SHA256 under `key`, 32 characters."""
    return hmac.new(key, account_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def redact_account_id(text: str, key: bytes) -> str:
    """`text` with every JSON `"account_id": value` replaced by the value's pseudonym.

    Works on truncated or otherwise broken JSON too, so a dead letter never carries a real account.
    """

    def replace(match: re.Match[str]) -> str:
        value = match.group(2)
        if value.startswith('"'):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:  # cut off: pseudonymize the fragment
                value = value[1:]
        return f'{match.group(1)}"{pseudonymize(str(value), key)}"'

    return _ACCOUNT_ID_IN_TEXT.sub(replace, text)


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

    Output fields: txn_id (str), event_time (int, epoch ms), account_id (pseudonym), merchant_id
    (str | None), merchant_category (lower case), country (ISO alpha-2), channel (one of the
    configured channels), amount (finite float >= 0), currency (ISO-4217), features (dict of name ->
    raw value, checked later), is_fraud (0, 1 or None).
    """
    txn_id = _txn_id(record.get("txn_id"))
    try:
        values = {name: _present_or_policy(record, name, rules) for name in REQUIRED_FIELDS + OPTIONAL_FIELDS}
        account = _text("account_id", values["account_id"])
        currency = _text("currency", values["currency"]).upper() if values["currency"] is not None else None
        if currency is not None and not _CURRENCY.match(currency):
            raise Rejected("clean", f"currency {currency!r} is not an ISO-4217 code")
        country = _text("country", values["country"]).upper()
        if not _COUNTRY.match(country):
            raise Rejected("clean", f"country {country!r} is not an ISO-3166 alpha-2 code")
        channel = _text("channel", values["channel"]).lower()
        if channel not in rules.channels:
            allowed = ", ".join(sorted(rules.channels))
            raise Rejected("clean", f"channel {channel!r} is not one of {allowed}")
        features = values["features"]
        if features is not None and not isinstance(features, dict):
            raise Rejected("clean", f"features must be an object, got {type(features).__name__}")
        merchant_id = values["merchant_id"]
        return {
            "txn_id": _text("txn_id", values["txn_id"]),
            "event_time": _event_time(values["event_time"]),
            "account_id": pseudonymize(account, rules.pseudonym_key),
            "merchant_id": _text("merchant_id", merchant_id) if merchant_id is not None else None,
            "merchant_category": _category(values["merchant_category"]),
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
    text = _WHITESPACE.sub(" ", str(value)).strip()
    if not text:
        raise Rejected("clean", f"{name} is empty")
    return text


def _category(value: Any) -> str:
    return _text("merchant_category", value).lower()


def _amount(value: Any) -> float:
    if isinstance(value, bool):
        raise Rejected("clean", "amount must be a number, got boolean")
    if isinstance(value, str):
        try:
            amount = float(value.strip())
        except ValueError:
            raise Rejected("clean", f"amount {value[:40]!r} is not a number") from None
    elif isinstance(value, (int, float)):
        amount = float(value)
    else:
        raise Rejected("clean", f"amount must be a number, got {_json_type(value)}")
    if not math.isfinite(amount):
        raise Rejected("clean", f"amount is not finite ({amount})")
    if amount < 0:
        raise Rejected("clean", f"amount is negative ({amount})")
    return amount


def _event_time(value: Any) -> int:
    if isinstance(value, bool):
        raise Rejected("clean", "event_time must be epoch milliseconds or ISO-8601, got boolean")
    if isinstance(value, int):
        millis = value
    elif isinstance(value, float) and value.is_integer():
        millis = int(value)
    elif isinstance(value, str):
        millis = _iso_millis(value.strip())
    else:
        raise Rejected("clean", f"event_time must be epoch milliseconds or ISO-8601, got {_json_type(value)}")
    if not 0 <= millis < MAX_EVENT_TIME_MS:
        raise Rejected("clean", f"event_time {millis} is outside 1970..9999")
    return millis


def _iso_millis(text: str) -> int:
    try:
        # Python 3.10 does not read a trailing "Z".
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise Rejected("clean", f"event_time {text[:40]!r} is not ISO-8601") from None
    if moment.tzinfo is None:
        raise Rejected("clean", f"event_time {text[:40]!r} has no time zone")
    return round(moment.timestamp() * 1000)


def _label(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    raise Rejected("clean", f"is_fraud must be 0, 1 or null, got {value!r:.40}")


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
