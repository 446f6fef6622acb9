"""Test data shared by the unit tests: a valid transaction and the feature specs encoders are built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A complete, valid transaction as a source would deliver it (before cleaning).
VALID_RECORD: dict[str, Any] = {
    "txn_id": "t-0001",
    "event_time": 1_767_225_600_000,
    "account_id": "acct-0000042",
    "merchant_id": "m-groc-001",
    "merchant_category": "grocery",
    "country": "US",
    "channel": "web",
    "amount": 12.5,
    "currency": "USD",
    "features": {"score": 0.25, "count": 3},
    "is_fraud": 0,
}


@dataclass(frozen=True)
class Numeric:
    """A numeric feature spec, as the configuration gives FeatureEncoder."""

    field: str
    log: bool = False
    standardize: bool = False


@dataclass(frozen=True)
class Categorical:
    """A categorical feature spec, as the configuration gives FeatureEncoder."""

    field: str
    encoding: str
    vocabulary: tuple[str, ...] = ()
    buckets: int = 0
