"""A deterministic, seeded generator of realistic payment transactions (pure Python).

Merchant categories and accounts are skewed (Zipf-like), amounts are lognormal per category, ten
behavioural features describe the account's recent activity, and `is_fraud` is drawn from a hidden
logistic model over those fields (a few percent positive). Optionally the hidden model changes
abruptly at a point in the stream (`drift_at`), and a share of records is malformed in one of
`MALFORMED_KINDS`. The same arguments always give the same bytes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

CATEGORIES = (
    "grocery", "restaurants", "fuel", "online_retail", "utilities", "pharmacy", "clothing", "entertainment",
    "travel", "electronics", "subscriptions", "home_improvement", "healthcare", "automotive", "education",
    "money_transfer", "gaming", "jewelry", "gift_cards", "crypto_exchange",
)
# ln of a typical amount per category, and the category's share of the hidden model's log-odds.
_CATEGORY_LOG_AMOUNT = {c: math.log(v) for c, v in zip(CATEGORIES, (
    45, 30, 55, 70, 90, 25, 60, 40, 420, 350, 15, 130, 110, 160, 300, 250, 35, 600, 80, 500))}
_CATEGORY_RISK = dict(zip(CATEGORIES, (
    -0.8, -0.6, -0.5, 0.3, -1.0, -0.7, 0.0, -0.2, 0.4, 0.8, -0.3, -0.1, -0.6, 0.0, -0.4, 1.0, 0.6, 1.1, 1.3, 1.5)))
COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "BR", "IN", "NG", "SG")
_COUNTRY_WEIGHTS = (40, 12, 10, 8, 6, 6, 4, 3, 4, 3, 2, 2)
CHANNELS = ("web", "pos", "atm", "mobile")
_CHANNEL_WEIGHTS = (35, 45, 5, 15)
_CHANNEL_RISK = {"web": 0.5, "pos": -0.4, "atm": 0.2, "mobile": 0.3}
FEATURE_NAMES = (
    "txn_count_1h", "txn_count_24h", "amount_to_avg_ratio", "minutes_since_last_txn", "distinct_merchants_24h",
    "account_age_days", "failed_logins_24h", "device_risk_score", "distance_from_home_km", "new_device",
)
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

MALFORMED_KINDS = (
    "truncated_json", "not_an_object", "nan_literal", "infinity_string", "wrong_type", "negative_amount",
    "missing_field", "missing_txn_id", "unknown_channel", "bad_label", "bad_event_time", "bad_feature",
    "invalid_utf8", "empty_line", "oversize",
)
# Oversize lines are large: keep them rare so a big stream stays a sensible size.
_KIND_WEIGHTS = tuple(0.05 if kind == "oversize" else 1.0 for kind in MALFORMED_KINDS)


@dataclass(frozen=True)
class GeneratorSettings:
    """What `generate` writes; ValueError on a value outside its range, naming the field
    ("malformed_share: must be in [0, 1) (got 5)")."""

    records: int  # at least 1
    seed: int = 7
    accounts: int = 50_000  # at least 1
    malformed_share: float = 0.0  # share of records replaced by a malformed one, in [0, 1)
    unlabelled_share: float = 0.02  # share of valid records without a label ("score only"), in [0, 1]
    drift_at: float | None = None  # position in (0, 1) where the hidden model changes, or None
    # Mean event time between transactions (exponential gaps, whole milliseconds), in (0, 1e6]: the
    # stream spans about records * mean_gap_ms of event time (20,000 records: 33 minutes at 100 ms).
    mean_gap_ms: float = 100.0
    iso_time_share: float = 0.1  # share of event times written as ISO-8601 strings, in [0, 1]
    oversize_bytes: int = 100_000  # size of an oversize line, at least 1; above the default 64 KiB cap

    def __post_init__(self) -> None:
        check_ranges(self, (
            ("records", self.records >= 1, ">= 1"),
            ("accounts", self.accounts >= 1, ">= 1"),
            ("malformed_share", 0 <= self.malformed_share < 1, "in [0, 1)"),
            ("unlabelled_share", 0 <= self.unlabelled_share <= 1, "in [0, 1]"),
            ("drift_at", self.drift_at is None or 0 < self.drift_at < 1, "in (0, 1)"),
            ("mean_gap_ms", 0 < self.mean_gap_ms <= 1e6, "in (0, 1e6]"),
            ("iso_time_share", 0 <= self.iso_time_share <= 1, "in [0, 1]"),
            ("oversize_bytes", self.oversize_bytes >= 1, ">= 1")))


def check_ranges(settings: object, checks: tuple[tuple[str, bool, str], ...]) -> None:
    """Raises ValueError for the first (field, valid, allowed) check that fails:
    "<field>: must be <allowed> (got <value>)"."""
    for field, valid, allowed in checks:
        if not valid:
            raise ValueError(f"{field}: must be {allowed} (got {getattr(settings, field)})")


def generate(settings: GeneratorSettings) -> Iterator[bytes]:
    """Yields `settings.records` lines (bytes, no newline)."""
    for _, line in generate_with_kinds(settings):
        yield line


def generate_with_kinds(settings: GeneratorSettings) -> Iterator[tuple[str | None, bytes]]:
    """Yields (malformed kind or None, line) pairs; the lines are those of `generate`. The first
    malformed records go through every kind once, so even a short stream has each kind."""
    rng = random.Random(settings.seed)
    category_weights = [1 / (rank + 1) ** 1.1 for rank in range(len(CATEGORIES))]
    first_drifted = drift_index(settings)
    event_time = START_MS
    malformed_seen = 0
    for index in range(settings.records):
        event_time += int(rng.expovariate(1 / settings.mean_gap_ms))
        drifted = first_drifted is not None and index >= first_drifted
        record = _transaction(rng, index, event_time, category_weights, settings, drifted)
        if rng.random() < settings.malformed_share:
            if malformed_seen < len(MALFORMED_KINDS):
                kind = MALFORMED_KINDS[malformed_seen]
            else:
                kind = rng.choices(MALFORMED_KINDS, _KIND_WEIGHTS)[0]
            malformed_seen += 1
            yield kind, malformed(kind, record, rng, settings.oversize_bytes)
        else:
            yield None, _dumps(record)


def drift_index(settings: GeneratorSettings) -> int | None:
    """The index (from 0) of the first record drawn from the changed hidden model; None without drift."""
    return int(settings.drift_at * settings.records) if settings.drift_at else None


def _transaction(rng: random.Random, index: int, event_time: int, category_weights: list[float],
                 settings: GeneratorSettings, drifted: bool) -> dict[str, Any]:
    category = rng.choices(CATEGORIES, category_weights)[0]
    channel = rng.choices(CHANNELS, _CHANNEL_WEIGHTS)[0]
    country = rng.choices(COUNTRIES, _COUNTRY_WEIGHTS)[0]
    account = int(settings.accounts * rng.random() ** 2.5)  # a few accounts are very active
    amount = round(math.exp(rng.gauss(_CATEGORY_LOG_AMOUNT[category], 0.9)), 2)
    features = {
        "txn_count_1h": min(40, int(rng.expovariate(0.8))),
        "txn_count_24h": min(200, int(rng.expovariate(0.12))),
        "amount_to_avg_ratio": round(min(50.0, math.exp(rng.gauss(0.0, 0.6))), 4),
        "minutes_since_last_txn": round(min(10080.0, rng.expovariate(1 / 240)), 2),
        "distinct_merchants_24h": min(30, int(rng.expovariate(0.5))),
        "account_age_days": rng.randint(0, 3650),
        "failed_logins_24h": min(10, int(rng.expovariate(2.5))),
        "device_risk_score": round(rng.betavariate(1.2, 6.0), 4),
        "distance_from_home_km": round(min(20000.0, math.exp(rng.gauss(2.0, 1.6))), 1),
        "new_device": 1 if rng.random() < 0.08 else 0,
    }
    hour = (event_time // 3_600_000) % 24
    logit = _hidden_log_odds(category, channel, amount, features, hour, drifted)
    label: int | None = 1 if rng.random() < 1 / (1 + math.exp(-logit)) else 0
    if rng.random() < settings.unlabelled_share:
        label = None
    moment: int | str = event_time
    if rng.random() < settings.iso_time_share:
        moment = datetime.fromtimestamp(event_time / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    record = {
        "txn_id": f"t{settings.seed}-{index:09d}",
        "event_time": moment,
        "account_id": f"acct-{account:07d}",
        "merchant_id": f"m-{category[:4]}-{rng.randint(0, 499):03d}",
        "merchant_category": category,
        "country": country,
        "channel": channel,
        "amount": amount,
        "currency": "USD" if country == "US" else "EUR",
        "features": features,
        "is_fraud": label,
    }
    return record


def _hidden_log_odds(category: str, channel: str, amount: float, f: dict[str, Any], hour: int,
                     drifted: bool) -> float:
    """The generating model's log-odds of fraud; `drifted` switches to a different pattern."""
    night = 1.0 if hour < 6 else 0.0
    if not drifted:
        return (-5.1 + _CATEGORY_RISK[category] + _CHANNEL_RISK[channel]
                + 0.35 * (math.log1p(amount) - 4.0) + 0.25 * f["txn_count_1h"] + 0.9 * math.log(f["amount_to_avg_ratio"])
                + 0.55 * f["failed_logins_24h"] + 4.0 * f["device_risk_score"] + 0.25 * math.log1p(f["distance_from_home_km"])
                + 1.2 * f["new_device"] - 0.0004 * f["account_age_days"] + 0.6 * night)
    # After the drift, fraud moves to new, low-value card testing on young accounts.
    return (-3.8 - 0.5 * _CATEGORY_RISK[category] + _CHANNEL_RISK[channel]
            - 0.45 * (math.log1p(amount) - 4.0) + 0.12 * f["distinct_merchants_24h"] + 0.35 * f["txn_count_1h"]
            + 1.0 * f["device_risk_score"] - 0.0012 * f["account_age_days"] + 1.5 * f["new_device"])


def _dumps(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


def malformed(kind: str, record: dict[str, Any], rng: random.Random, oversize_bytes: int = 100_000) -> bytes:
    """`record` broken in the way `kind` (one of MALFORMED_KINDS) names, as one line of bytes."""
    broken = json.loads(json.dumps(record))
    if kind == "truncated_json":
        text = _dumps(record)
        return text[: rng.randint(10, len(text) - 10)]
    if kind == "not_an_object":
        return json.dumps([record["txn_id"], record["amount"]]).encode("utf-8")
    if kind == "nan_literal":
        broken["amount"] = float("nan")  # json.dumps writes the non-JSON literal NaN
        return json.dumps(broken).encode("utf-8")
    if kind == "infinity_string":
        broken["amount"] = rng.choice(["Infinity", "-Infinity", "NaN", "1e999"])
    elif kind == "wrong_type":
        field, value = rng.choice([("amount", [12.5]), ("merchant_category", {"name": "grocery"}),
                                   ("event_time", True), ("amount", "twelve")])
        broken[field] = value
    elif kind == "negative_amount":
        broken["amount"] = -abs(record["amount"]) - 0.01
    elif kind == "missing_field":
        del broken[rng.choice(["event_time", "account_id", "merchant_category", "country", "channel", "amount"])]
    elif kind == "missing_txn_id":
        if rng.random() < 0.5:
            del broken["txn_id"]
        else:
            broken["txn_id"] = rng.choice(["", "   ", None, 12.5])
    elif kind == "unknown_channel":
        broken["channel"] = rng.choice(["carrier_pigeon", "fax", "telex"])
    elif kind == "bad_label":
        broken["is_fraud"] = rng.choice([2, -1, "yes", 0.5, True])
    elif kind == "bad_event_time":
        broken["event_time"] = rng.choice(["yesterday", "2026-01-01T10:00:00", "2026-13-45T00:00:00Z", -5])
    elif kind == "bad_feature":
        broken["features"][rng.choice(FEATURE_NAMES)] = rng.choice(["n/a", None, [1], 1e300])
    elif kind == "invalid_utf8":
        text = _dumps(broken)
        cut = text.index(b'"merchant_category":"') + len(b'"merchant_category":"')
        return text[:cut] + rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xe2\x82"]) + text[cut:]
    elif kind == "empty_line":
        return rng.choice([b"", b"   ", b"\t"])
    elif kind == "oversize":
        broken["memo"] = "x" * oversize_bytes
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; allowed: {', '.join(MALFORMED_KINDS)}")
    return _dumps(broken)
