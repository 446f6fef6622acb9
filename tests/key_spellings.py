"""Transactions whose model-key fields are spelled in several ways that cleaning reads as one value
(case, whitespace, integers and their text, absent or null for the imputed ones), for the tests of
per-key order in Kafka mode (tests/unit/test_model_key.py, tests/integration/test_key_order.py)."""

from __future__ import annotations

import json
import random
from typing import Any, Callable

from udfs.generator import CATEGORIES, GeneratorSettings, generate_with_kinds

# A country's own currency, so that a stream keyed by currency has more than two keys.
CURRENCY_OF_COUNTRY = {"US": "USD", "GB": "GBP", "PL": "PLN", "BR": "BRL", "IN": "INR", "NG": "NGN", "SG": "SGD"}


def respelled_lines(settings: GeneratorSettings) -> list[bytes]:
    """The generated stream with every valid record passed through `respelled` (seeded by
    `settings.seed`); malformed records are kept as generated."""
    rng = random.Random(settings.seed)
    return [line if kind is not None else json.dumps(respelled(json.loads(line), rng)).encode("utf-8")
            for kind, line in generate_with_kinds(settings)]


def respelled(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of a generated record with each model-key field spelled one of several ways:

    - merchant_category: underscores as spaces, in mixed case and whitespace ('online_retail' as
      ' Online  Retail'); absent or null in 1 of 20 records.
    - account_id: 'acct-0000042' in whitespace variants; for every third account the integer 42,
      as a number or as text in whitespace variants.
    - merchant_id: one of 3 per category: the second 'm-groc-001' in whitespace variants, the
      others an integer (12002 for the third of the 12th category) as a number or as text;
      absent or null in 1 of 20 records.
    - country, channel: mixed case and whitespace.
    - currency: the country's (CURRENCY_OF_COUNTRY, else EUR) in mixed case and whitespace;
      absent or null in 1 of 10 records.
    """
    spelled = dict(record)
    words = record["merchant_category"].split("_")
    spelled["merchant_category"] = _padded(rng, rng.choice([" ", "  ", "\t"]).join(_cased(rng, w) for w in words))

    account = int(record["account_id"].removeprefix("acct-"))
    spelled["account_id"] = _integer_or_text(rng, account) if account % 3 == 0 \
        else _padded(rng, record["account_id"])

    prefix, number = record["merchant_id"].rsplit("-", 1)
    merchant = int(number) % 3
    if merchant % 2 == 0:
        spelled["merchant_id"] = _integer_or_text(rng, 1000 * (CATEGORIES.index(record["merchant_category"]) + 1)
                                                  + merchant)
    else:
        spelled["merchant_id"] = _padded(rng, f"{prefix}-{merchant:03d}")

    spelled["country"] = _padded(rng, _cased(rng, record["country"]))
    spelled["channel"] = _padded(rng, _cased(rng, record["channel"]))
    spelled["currency"] = _padded(rng, _cased(rng, CURRENCY_OF_COUNTRY.get(record["country"], "EUR")))

    _sometimes_missing(rng, spelled, "merchant_category", 0.05)
    _sometimes_missing(rng, spelled, "merchant_id", 0.05)
    _sometimes_missing(rng, spelled, "currency", 0.1)
    return spelled


def _cased(rng: random.Random, text: str) -> str:
    change: Callable[[str], str] = rng.choice([str.lower, str.upper, str.title, lambda t: t])
    return change(text)


def _padded(rng: random.Random, text: str) -> str:
    return rng.choice(["", " ", "  ", "\t"]) + text + rng.choice(["", " ", "\n"])


def _integer_or_text(rng: random.Random, number: int) -> int | str:
    return rng.choice([number, str(number), _padded(rng, str(number))])


def _sometimes_missing(rng: random.Random, record: dict[str, Any], field: str, share: float) -> None:
    """Deletes `field` or sets it to null, each with probability share / 2."""
    draw = rng.random()
    if draw < share / 2:
        del record[field]
    elif draw < share:
        record[field] = None
