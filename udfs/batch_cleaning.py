"""Cleaning of a batch of raw records: `clean_batch` gives each record the outcome of the
per-record `clean(parse(decode(raw, rules.max_record_bytes)), rules)` (udfs/cleaning.py), several
times faster for valid records.

Why it is exact. A record is parsed in one of two ways, then cleaned in one of two ways:

- Parsing. If the record is at most `max_record_bytes` long and valid UTF-8 (as `decode` checks),
  msgspec decodes it into `_Shape`. `_Shape` only takes an object whose keys are all contract
  fields, with values msgspec reads exactly as orjson (the reference parser) does, so its values
  are those `parse` would give:
  * unknown keys are an error, because msgspec skips their values without checking them as
    orjson does (it accepts 1e400 or invalid UTF-8 there, orjson does not);
  * an integer must fit in an int64: outside [-2**63, 2**64) orjson returns a float and msgspec
    an int (and msgspec takes no bound past int64, so 2**63 .. 2**64-1 are sent away too);
  * `features` must be an object of scalars, so no value is nested deeper (orjson has a depth
    limit; msgspec reads nothing deep here);
  * for everything else both agree, as the tests check: a duplicate key keeps its last value, an
    escaped key is the key it spells, floats are rounded correctly (1e-400 is 0.0), and lone
    surrogates, raw control characters, NaN, Infinity, 1e400, a BOM, leading zeros and trailing
    garbage are errors in both.
  A record msgspec does not take this way is parsed by the reference `decode` and `parse`, and a
  `Rejected` from them is its outcome.
- Cleaning. `_fast_cleaner` checks the eleven contract values with `clean`'s rules. It accepts
  only values of an exact type it handles (str, int, float, dict, None; never a bool or a
  subclass), uses `clean`'s own helpers (`_normalized_text`, `epoch_millis`, `_amount`,
  `account_pseudonym`, the code patterns, `rules.policy`) or repeats their one-line checks, so what
  it returns is what `clean` returns. Anything else (a field missing without an imputing policy,
  another type, an invalid value, any exception) makes it return None, and `clean` itself then
  cleans the record parsed by `parse`: every `Rejected` comes from the reference code, with its
  stage, reason and txn_id, and so does any other exception the reference raises.

Normalized categorical values and pseudonyms are cached: accounts repeat a lot, and a pseudonym
is an HMAC. The caches map a raw string (per pseudonym key for pseudonyms) to what the reference
helpers return for it; each is cleared when it reaches `CACHE_LIMIT` entries, and all pseudonym
caches when a key beyond `PSEUDONYM_KEYS_LIMIT` comes.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Sequence

import msgspec

from udfs.cleaning import (
    COUNTRY_CODE,
    CURRENCY_CODE,
    MAX_EVENT_TIME_MS,
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    CleaningRules,
    Rejected,
    _amount,
    _normalized_text,
    account_pseudonym,
    clean,
    decode,
    epoch_millis,
    parse,
)

# The contract fields in the order of `_Shape` and of `clean`'s missing-value checks.
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
CACHE_LIMIT = 100_000  # entries per cache
PSEUDONYM_KEYS_LIMIT = 4  # pseudonym keys with a cache (a job has one)

# orjson reads an integer outside [-2**63, 2**64) as a float, msgspec as an int; msgspec only
# takes bounds that fit in an int64, so it rejects every integer from 2**63 on (and the reference
# parses those records).
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Scalar = _Int64 | float | str | bool | None


class _Shape(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The contract fields of a record whose values msgspec reads as orjson does; absent is null."""

    txn_id: str | None = None
    event_time: _Int64 | float | str | None = None
    account_id: str | None = None
    merchant_category: str | None = None
    country: str | None = None
    channel: str | None = None
    amount: _Int64 | float | str | None = None
    merchant_id: str | None = None
    currency: str | None = None
    features: dict[str, _Scalar] | None = None
    is_fraud: _Int64 | None = None


assert _Shape.__struct_fields__ == FIELDS
_decode_shape = msgspec.json.Decoder(_Shape).decode
_values_of = msgspec.structs.astuple

# field -> raw string -> what `_normalized_text(field, raw)` returns, or None where it raises
# (or, for country and currency, where the code does not match).
_NORMALIZED: dict[str, dict[str, str | None]] = {
    name: {} for name in ("merchant_id", "merchant_category", "country", "channel", "currency")}
# pseudonym key -> raw account_id string -> its pseudonym (None where `clean` rejects the id): the
# key is part of the cache's key also because a token verifies under one key only.
_PSEUDONYMS: dict[bytes, dict[str, str | None]] = {}


def clean_batch(raws: Sequence[bytes], rules: CleaningRules) -> list[dict[str, Any] | Rejected]:
    """For each raw record, what clean(parse(decode(raw, rules.max_record_bytes)), rules) returns,
    or the Rejected it raises (same stage, same reason text, same txn_id)."""
    fast_clean = _fast_cleaner(rules)
    max_bytes = rules.max_record_bytes
    decode_shape = _decode_shape
    results: list[dict[str, Any] | Rejected] = []
    append = results.append
    for raw in raws:
        if len(raw) <= max_bytes and (raw.isascii() or _is_utf8(raw)):
            try:
                shape = decode_shape(raw)
            except Exception:  # noqa: BLE001 - not the common shape
                append(_reference(raw, rules, fast_clean))
                continue
            # The values of a `_Shape` are those `parse` gives: if they do not pass, `clean` decides.
            append(fast_clean(shape) or _reference(raw, rules, None))
        else:
            append(_reference(raw, rules, fast_clean))
    return results


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _reference(raw: bytes, rules: CleaningRules,
               fast_clean: Callable[[_Shape], dict[str, Any] | None] | None) -> dict[str, Any] | Rejected:
    """The reference outcome: `decode` and `parse`, then `fast_clean` on the parsed values if
    given, and `clean` where that is not given or not certain."""
    try:
        record = parse(decode(raw, rules.max_record_bytes))
        if fast_clean is not None:
            cleaned = fast_clean(_Shape(*map(record.get, FIELDS)))  # Struct() takes values as they are
            if cleaned is not None:
                return cleaned
        return clean(record, rules)
    except Rejected as rejected:
        return rejected


def _fast_cleaner(rules: CleaningRules) -> Callable[[_Shape], dict[str, Any] | None]:
    """`clean` under `rules` for the common case, on the values of a `_Shape`: the cleaned
    transaction, or None where it is not certain to agree with `clean`."""
    policies = tuple(rules.policy(name) for name in FIELDS)
    channels = rules.channels
    key = rules.pseudonym_key
    pseudonyms = _PSEUDONYMS.get(key)
    if pseudonyms is None:
        if len(_PSEUDONYMS) >= PSEUDONYM_KEYS_LIMIT:
            _PSEUDONYMS.clear()
        pseudonyms = _PSEUDONYMS[key] = {}
    categories = _NORMALIZED["merchant_category"]
    countries = _NORMALIZED["country"]
    channel_names = _NORMALIZED["channel"]
    merchant_ids = _NORMALIZED["merchant_id"]
    currencies = _NORMALIZED["currency"]
    inf = math.inf

    def imputed(shape: _Shape) -> list[Any] | None:
        """The values of `shape` with each null replaced as `_present_or_policy` does; None where
        a policy dead-letters the record."""
        values = list(_values_of(shape))
        for index, value in enumerate(values):
            if value is None:
                policy = policies[index]
                if not policy.impute:
                    return None
                values[index] = policy.value
        return values

    def fast_clean(shape: _Shape) -> dict[str, Any] | None:
        try:
            txn_id = shape.txn_id
            event_time = shape.event_time
            account_id = shape.account_id
            category = shape.merchant_category
            country = shape.country
            channel = shape.channel
            amount = shape.amount
            merchant_id = shape.merchant_id
            currency = shape.currency
            features = shape.features
            is_fraud = shape.is_fraud
            if (txn_id is None or event_time is None or account_id is None or category is None or country is None
                    or channel is None or amount is None or merchant_id is None or currency is None
                    or features is None or is_fraud is None):
                values = imputed(shape)
                if values is None:
                    return None
                txn_id, event_time, account_id, category, country, channel, amount, merchant_id, currency, \
                    features, is_fraud = values

            # txn_id: `_text` of a str.
            if type(txn_id) is not str:
                return None
            txn_id = " ".join(txn_id.split())
            if not txn_id:
                return None
            # event_time: `epoch_millis`, written out for an int.
            if type(event_time) is int:
                if not 0 <= event_time < MAX_EVENT_TIME_MS:
                    return None
            elif type(event_time) is float or type(event_time) is str:
                event_time = epoch_millis("event_time", event_time)
            else:
                return None
            # amount: `_amount`, written out for a float (NaN fails both comparisons).
            if type(amount) is float:
                if not 0.0 <= amount < inf:
                    return None
            elif type(amount) is int or type(amount) is str:
                amount = _amount(amount)
            else:
                return None
            # Categorical fields: `_normalized_text` and `clean`'s check of the field, from a cache
            # (only str keys, so a hit is an equal str) or else from `_normalized`.
            try:
                account_id = pseudonyms[account_id]
            except KeyError:
                account_id = _pseudonym(pseudonyms, key, account_id)
            try:
                category = categories[category]
            except KeyError:
                category = _normalized(categories, "merchant_category", category)
            try:
                country = countries[country]
            except KeyError:
                country = _normalized(countries, "country", country)
            try:
                channel = channel_names[channel]
            except KeyError:
                channel = _normalized(channel_names, "channel", channel)
            if account_id is None or category is None or country is None or channel not in channels:
                return None
            if merchant_id is not None:
                try:
                    merchant_id = merchant_ids[merchant_id]
                except KeyError:
                    merchant_id = _normalized(merchant_ids, "merchant_id", merchant_id)
                if merchant_id is None:
                    return None
            if currency is not None:
                try:
                    currency = currencies[currency]
                except KeyError:
                    currency = _normalized(currencies, "currency", currency)
                if currency is None:
                    return None
            if features is None:
                features = {}
            elif type(features) is dict:
                features = features or {}
            else:
                return None
            if is_fraud is not None and not (type(is_fraud) is int and (is_fraud == 0 or is_fraud == 1)):
                return None
        except Exception:  # noqa: BLE001 - `clean` decides, and raises what it raises
            return None
        return {
            "txn_id": txn_id,
            "event_time": event_time,
            "account_id": account_id,
            "merchant_id": merchant_id,
            "merchant_category": category,
            "country": country,
            "channel": channel,
            "amount": amount,
            "currency": currency,
            "features": features,
            "is_fraud": is_fraud,
        }

    return fast_clean


def _normalized(cache: dict[str, str | None], field: str, value: Any) -> str | None:
    """What `_normalized_text(field, value)` returns for a str `value` that `clean` accepts in
    `field` (a country or currency code must match), else None; remembered in `cache` (the
    caller looked there first). Channels are checked by the caller: the allowed set belongs to
    the rules."""
    if type(value) is not str:
        return None
    try:
        text: str | None = _normalized_text(field, value)
    except Rejected:
        text = None
    if text is not None and field == "country" and not COUNTRY_CODE.match(text):
        text = None
    if text is not None and field == "currency" and not CURRENCY_CODE.match(text):
        text = None
    _remember(cache, value, text)
    return text


def _pseudonym(cache: dict[str, str | None], key: bytes, value: Any) -> str | None:
    """The pseudonym `clean` gives the account_id `value` (a str) under `key`, else None;
    remembered in `cache` (the caller looked there first)."""
    if type(value) is not str:
        return None
    # `clean` rejects an id that is empty once whitespace is collapsed, and gives the collapsed id
    # to `account_pseudonym`, which collapses it again (twice is once) before it looks for a token.
    pseudonym = account_pseudonym(value, key) if value.split() else None
    _remember(cache, value, pseudonym)
    return pseudonym


def _remember(cache: dict[str, str | None], key: str, value: str | None) -> None:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value
