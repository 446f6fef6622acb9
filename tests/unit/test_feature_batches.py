"""FeatureEncoder.encode_batch (udfs/features.py): the same vectors and rejections as encode, record by record."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from tests.records import Categorical, Numeric
from udfs.cleaning import MissingPolicy, Rejected
from udfs.features import EncodedBatch, FeatureEncoder

TIME_ENCODINGS = ("one_hot", "cyclic", "none")
MAX_EVENT_TIME_MS = 253_402_300_800_000


NUMERIC = (
    Numeric("amount", log=True, standardize=True),
    Numeric("features.score"),
    Numeric("features.count", standardize=True),
    Numeric("features.ratio", log=True),
    Numeric("features.delta"),  # may be negative
    Numeric("features.imputed_int"),
    Numeric("features.imputed_float", log=True),
)
CATEGORICAL = (
    Categorical("channel", "one_hot", ("web", "pos", "atm", "mobile")),
    Categorical("country", "hashed", buckets=8),
    Categorical("merchant_category", "one_hot", ("grocery", "fuel", "travel")),
    Categorical("merchant_id", "hashed", buckets=5),
    Categorical("currency", "one_hot", ("USD", "EUR")),
)
# What a policy does with each feature when it is missing or null (anything else: dead-letter).
POLICIES = {"features.imputed_int": MissingPolicy(True, 7), "features.imputed_float": MissingPolicy(True, 0.5)}


def policy(field: str) -> MissingPolicy:
    return POLICIES.get(field, MissingPolicy(False))


def make_encoder(hour: str = "cyclic", day: str = "one_hot", numeric=NUMERIC, categorical=CATEGORICAL,
                 missing_policy=policy) -> FeatureEncoder:
    return FeatureEncoder(numeric, categorical, hour, day, missing_policy)


def txn(**changes) -> dict[str, Any]:
    """A cleaned transaction (the output of `clean`) that every encoder here accepts."""
    base = {
        "txn_id": "t-1", "event_time": 1_767_225_600_000, "account_id": "0" * 32, "merchant_id": "m-1",
        "merchant_category": "grocery", "country": "US", "channel": "web", "amount": 12.5, "currency": "USD",
        "features": {"score": 0.25, "count": 3, "ratio": 1.5, "delta": -2.0, "imputed_int": 1,
                     "imputed_float": 2.0},
        "is_fraud": 0,
    }
    base.update(changes)
    return base


def with_features(**changes) -> dict[str, Any]:
    """`txn()` with some features changed; a value of `MISSING` removes the feature."""
    features = txn()["features"]
    for name, value in changes.items():
        if value is MISSING:
            features.pop(name)
        else:
            features[name] = value
    return txn(features=features)


MISSING = object()


def magnitude(rng: random.Random, low: int = -300) -> float:
    """A positive float of any magnitude up to 1e12, sometimes an integer."""
    value = 10 ** rng.uniform(low, 12)
    return float(round(value)) if rng.random() < 0.2 else value


def random_number(rng: random.Random, *, negative: bool, above: float | None = None) -> float | int:
    """A valid numeric value: 0, -0.0, ints, floats across magnitudes, negative when allowed, and
    sometimes in (above, 0] when `above` is given (log features take values > -1)."""
    kind = rng.randrange(7)
    if kind == 0:
        return rng.choice([0, 0.0, -0.0, 1, 1e12, 1_000_000_000_000])
    if kind == 1:
        return rng.randint(0, 10**6)
    if kind == 2 and above is not None:
        return rng.uniform(above, 0.0) if rng.random() < 0.5 else above + 1e-12  # close to -1
    value = magnitude(rng)
    if negative and rng.random() < 0.5:
        value = -value
    return value


def random_valid_txn(rng: random.Random, i: int, absent_categoricals: bool = True,
                     missing_features: bool = True) -> dict[str, Any]:
    """A random cleaned transaction that every encoder here accepts."""
    features = {
        "score": random_number(rng, negative=True),
        "count": rng.randint(0, 40),
        "ratio": random_number(rng, negative=False, above=-1.0),
        "delta": random_number(rng, negative=True),
        "imputed_int": random_number(rng, negative=True),
        "imputed_float": random_number(rng, negative=False),
        "unused": rng.choice(["text", None, True]),  # not a configured feature: never read
    }
    if missing_features:
        for name in ("imputed_int", "imputed_float"):
            roll = rng.random()
            if roll < 0.2:
                del features[name]
            elif roll < 0.4:
                features[name] = None

    def categorical(values):
        return rng.choice(values + ([None] if absent_categoricals else []))

    return txn(
        txn_id=f"t-{i}",
        event_time=rng.choice([0, MAX_EVENT_TIME_MS - 1, rng.randrange(0, MAX_EVENT_TIME_MS),
                               rng.randint(-10**12, 4 * 10**12)]),
        amount=rng.choice([0.0, magnitude(rng), float(rng.randint(0, 10**5)), 1e12]),
        channel=categorical(["web", "pos", "atm", "mobile", "telex"]),
        country=categorical(["US", "GB", "DE", "FR", "NG", "SG", "ZZ", "ÄÖ"]),
        merchant_category=categorical(["grocery", "fuel", "travel", "gaming"]),
        merchant_id=categorical([f"m-{rng.randrange(50)}" for _ in range(3)]),
        currency=categorical(["USD", "EUR", "GBP"]),
        features=features,
    )


# Values `_numeric_value` refuses, and a feature that takes each (log: the feature is log1p'ed).
NOT_A_NUMBER = ["n/a", "3", True, False, [1], {"v": 1}, np.int64(3)]
OUT_OF_RANGE = [math.nan, math.inf, -math.inf, 1e13, -1e13, 1e300, -1.0000001e12, 2**63, -(2**64)]
BELOW_LOG_DOMAIN = [-1, -1.0, -1.5, -1e6]


def bad_txn(rng: random.Random, i: int) -> dict[str, Any]:
    """A random transaction that encode rejects, in one of the ways it can."""
    kind = rng.randrange(6)
    if kind == 0:
        changed = with_features(score=rng.choice(NOT_A_NUMBER + OUT_OF_RANGE))
    elif kind == 1:
        changed = with_features(ratio=rng.choice(BELOW_LOG_DOMAIN + OUT_OF_RANGE + NOT_A_NUMBER))
    elif kind == 2:
        changed = txn(amount=rng.choice([2e12, math.inf, math.nan, -1.0, None, "12.5", True]))
    elif kind == 3:
        changed = with_features(count=rng.choice([MISSING, None]))  # no policy: dead-lettered
    elif kind == 4:  # two bad features: the first one configured decides
        changed = with_features(score=rng.choice(NOT_A_NUMBER), delta=math.nan, count=MISSING)
    else:
        changed = txn(amount=rng.choice([-5.0, 1e15]), features={"score": "x"})
    changed["txn_id"] = f"bad-{i}"
    return changed


# ---------------------------------------------------------------- the check every test uses


def encode_each(encoder: FeatureEncoder, txns: list[dict[str, Any]]) -> list[tuple[list[int], list[float]] | Rejected]:
    out: list[tuple[list[int], list[float]] | Rejected] = []
    for t in txns:
        try:
            out.append(encoder.encode(t))
        except Rejected as rejected:
            out.append(rejected)
    return out


def bits(values) -> list[str]:
    """Floats as hex text, so that 0.0 and -0.0 differ and the last bit counts."""
    return [float(v).hex() for v in values]


def assert_batch_matches_encode(encoder: FeatureEncoder, txns: list[dict[str, Any]]) -> tuple[EncodedBatch, list]:
    """encode_batch gives, for each position, exactly what encode gives: the row (indices in order,
    values bit for bit) or the Rejected (stage, reason, txn_id)."""
    expected = encode_each(encoder, txns)
    batch, rejections = encoder.encode_batch(txns)
    assert isinstance(batch, EncodedBatch)
    assert batch.rows.dtype == np.int64 and batch.indptr.dtype == np.int64
    assert batch.indices.dtype == np.int32 and batch.values.dtype == np.float64
    assert batch.rows.ndim == batch.indptr.ndim == batch.indices.ndim == batch.values.ndim == 1
    assert len(batch.indptr) == len(batch.rows) + 1
    assert batch.indptr[0] == 0 and batch.indptr[-1] == len(batch.indices) == len(batch.values)
    assert np.all(np.diff(batch.indptr) >= 0)

    assert batch.rows.tolist() == [p for p, e in enumerate(expected) if not isinstance(e, Rejected)]
    assert [p for p, _ in rejections] == [p for p, e in enumerate(expected) if isinstance(e, Rejected)]
    for position, rejected in rejections:
        want = expected[position]
        assert isinstance(rejected, Rejected)
        assert (rejected.stage, rejected.reason, rejected.txn_id) == (want.stage, want.reason, want.txn_id)
    for r, position in enumerate(batch.rows.tolist()):
        indices, values = expected[position]
        start, end = batch.indptr[r], batch.indptr[r + 1]
        assert batch.indices[start:end].tolist() == indices, position
        assert bits(batch.values[start:end].tolist()) == bits(values), position
    return batch, rejections


# ---------------------------------------------------------------- valid records


@pytest.mark.parametrize("hour", TIME_ENCODINGS)
@pytest.mark.parametrize("day", TIME_ENCODINGS)
def test_random_valid_transactions_match_encode_for_every_time_encoding(hour, day):
    encoder = make_encoder(hour=hour, day=day)
    rng = random.Random(f"valid-{hour}-{day}")
    txns = [random_valid_txn(rng, i) for i in range(1500)]
    batch, rejections = assert_batch_matches_encode(encoder, txns)
    assert rejections == []
    assert batch.rows.tolist() == list(range(len(txns)))


@pytest.mark.parametrize("hour, day", [("one_hot", "one_hot"), ("cyclic", "cyclic"), ("none", "none")])
def test_valid_transactions_with_every_categorical_present_match_encode(hour, day):
    encoder = make_encoder(hour=hour, day=day)
    rng = random.Random(f"present-{hour}-{day}")
    txns = [random_valid_txn(rng, i, absent_categoricals=False, missing_features=False) for i in range(500)]
    batch, _ = assert_batch_matches_encode(encoder, txns)
    # one-hot vocabularies miss some values, so rows still differ in length
    assert len(set(np.diff(batch.indptr).tolist())) > 1


def test_rows_of_equal_length_when_every_categorical_is_listed():
    encoder = make_encoder(categorical=(Categorical("country", "hashed", buckets=3),))
    rng = random.Random(3)
    txns = [random_valid_txn(rng, i, absent_categoricals=False) for i in range(200)]
    batch, _ = assert_batch_matches_encode(encoder, txns)
    assert set(np.diff(batch.indptr).tolist()) == {len(NUMERIC) + 1 + 2 + 1}


def test_log1p_is_bit_equal_to_math_log1p():
    """numpy's log1p can differ from math.log1p in the last bit (it does for a few percent of values
    on AVX-512 builds); encode uses math.log1p."""
    encoder = make_encoder(numeric=(Numeric("amount", log=True), Numeric("features.ratio", log=True)),
                           categorical=(), hour="none", day="none")
    rng = random.Random(5)
    txns = [txn(amount=rng.choice([rng.uniform(0, 10), magnitude(rng, -20), round(rng.uniform(0, 5000), 2)]),
                features={"ratio": rng.uniform(-0.999999, 3.0)}) for _ in range(5000)]
    batch, _ = assert_batch_matches_encode(encoder, txns)
    expected = [math.log1p(t["amount"]) for t in txns]
    assert bits(batch.values[0::2].tolist()) == bits(expected)


@pytest.mark.parametrize("encoding", ["one_hot", "cyclic"])
def test_time_features_at_every_hour_and_weekday_match_encode(encoding):
    encoder = make_encoder(hour=encoding, day=encoding, categorical=())
    base = 1_767_225_600_000  # 2026-01-01T00:00Z
    txns = [txn(event_time=base + hour * 3_600_000 + day * 86_400_000 + offset)
            for day in range(7) for hour in range(24) for offset in (0, 3_599_999)]
    assert_batch_matches_encode(encoder, txns)


def test_negative_event_times_floor_like_python():
    encoder = make_encoder(hour="one_hot", day="cyclic")
    txns = [txn(event_time=t) for t in (-1, -3_600_000, -3_600_001, -86_400_000 * 3 - 1, -10**12)]
    assert_batch_matches_encode(encoder, txns)


@pytest.mark.parametrize("features", [{"imputed_float": None}, {"imputed_float": MISSING},
                                      {"imputed_int": None, "imputed_float": MISSING}])
def test_missing_features_are_imputed_per_policy(features):
    encoder = make_encoder()
    txns = [with_features(**features), txn()]
    batch, _ = assert_batch_matches_encode(encoder, txns)
    names = list(encoder.names)
    row = dict(zip(batch.indices[: batch.indptr[1]].tolist(), batch.values[: batch.indptr[1]].tolist()))
    if "imputed_float" in features:
        assert row[names.index("log_imputed_float")] == math.log1p(0.5)
    if "imputed_int" in features:
        assert row[names.index("imputed_int")] == 7.0


def test_numeric_subclasses_are_taken_as_encode_takes_them():
    encoder = make_encoder()
    txns = [with_features(score=np.float64(0.5)), with_features(score=np.int64(2)), with_features(delta=np.float64(-3))]
    batch, rejections = assert_batch_matches_encode(encoder, txns)
    assert batch.rows.tolist() == [0, 2]
    assert [p for p, _ in rejections] == [1]


def test_features_dict_subclass_is_read_with_get_and_left_unchanged():
    encoder = make_encoder()
    features = defaultdict(lambda: 99.0, txn()["features"])
    del features["imputed_int"]
    txns = [txn(features=features), txn()]
    assert_batch_matches_encode(encoder, txns)
    assert "imputed_int" not in features


def test_encoder_without_numeric_features_lists_categoricals_and_time_only():
    encoder = make_encoder(numeric=())
    rng = random.Random(8)
    txns = [random_valid_txn(rng, i) for i in range(300)]
    for t in txns[::2]:
        del t["features"]  # never read when no numeric feature is configured
    assert_batch_matches_encode(encoder, txns)


def test_encoder_with_one_feature_field():
    encoder = make_encoder(numeric=(Numeric("features.score", log=True),))
    rng = random.Random(9)
    txns = [with_features(score=random_number(rng, negative=False, above=-1.0)) for _ in range(300)]
    txns += [with_features(score=-2.0), with_features(score=MISSING), with_features(score="1")]
    rng.shuffle(txns)
    batch, rejections = assert_batch_matches_encode(encoder, txns)
    assert len(rejections) == 3


def test_encoder_with_no_features_at_all():
    encoder = make_encoder(numeric=(), categorical=(), hour="none", day="none")
    batch, rejections = assert_batch_matches_encode(encoder, [txn(), txn()])
    assert batch.indptr.tolist() == [0, 0, 0] and rejections == []


# ---------------------------------------------------------------- rejected records


@pytest.mark.parametrize("value", NOT_A_NUMBER + OUT_OF_RANGE, ids=repr)
def test_unusable_feature_values_are_rejected_like_encode(value):
    encoder = make_encoder()
    txns = [txn(), with_features(score=value), txn(txn_id="t-3")]
    batch, rejections = assert_batch_matches_encode(encoder, txns)
    assert batch.rows.tolist() == [0, 2]
    [(position, rejected)] = rejections
    assert position == 1 and rejected.stage == "features" and "score" in rejected.reason


@pytest.mark.parametrize("value", BELOW_LOG_DOMAIN + [math.nan, 2e12, "1", None, True])
def test_log_feature_outside_its_domain_is_rejected_like_encode(value):
    encoder = make_encoder()
    batch, rejections = assert_batch_matches_encode(encoder, [with_features(ratio=value), txn()])
    assert batch.rows.tolist() == [1]
    assert [p for p, _ in rejections] == [0] and "ratio" in rejections[0][1].reason


@pytest.mark.parametrize("amount", [2e12, math.inf, math.nan, None, "12.5", True, -1.0, -1e13])
def test_unusable_amount_is_rejected_like_encode(amount):
    encoder = make_encoder()
    _, rejections = assert_batch_matches_encode(encoder, [txn(amount=amount)])
    assert [p for p, _ in rejections] == [0] and "amount" in rejections[0][1].reason


@pytest.mark.parametrize("value", [MISSING, None])
def test_missing_feature_without_policy_is_rejected_like_encode(value):
    encoder = make_encoder()
    _, rejections = assert_batch_matches_encode(encoder, [with_features(count=value)])
    assert rejections[0][1].reason == "features.count is missing"


def test_imputed_value_that_is_not_a_number_is_rejected_like_encode():
    policies = {"features.count": MissingPolicy(True, "seven")}
    encoder = make_encoder(missing_policy=lambda field: policies.get(field, policy(field)))
    batch, rejections = assert_batch_matches_encode(encoder, [with_features(count=MISSING), txn()])
    assert batch.rows.tolist() == [1] and "must be a number, got str" in rejections[0][1].reason


@pytest.mark.parametrize("changes, named", [
    ({"score": "x", "count": MISSING}, "score"),
    ({"count": MISSING, "score": math.nan}, "score"),  # score comes first in the configuration
    ({"delta": math.inf, "count": None}, "count"),
    ({"ratio": -3.0, "delta": "x"}, "log_ratio"),
    ({"imputed_float": -2.0, "delta": 1e20}, "delta"),
])
def test_first_failing_numeric_feature_gives_the_reason(changes, named):
    encoder = make_encoder()
    _, rejections = assert_batch_matches_encode(encoder, [with_features(**changes)])
    assert named in rejections[0][1].reason.split(" ")[0]


def test_amount_is_checked_before_features_when_configured_first():
    encoder = make_encoder()
    _, rejections = assert_batch_matches_encode(encoder, [txn(amount=5e12, features={})])
    assert rejections[0][1].reason.startswith("log_amount is out of range")


def test_int_too_large_for_a_float_raises_as_encode_does():
    encoder = make_encoder()
    huge = with_features(score=10**400)
    with pytest.raises(OverflowError):
        encoder.encode(huge)
    with pytest.raises(OverflowError):
        encoder.encode_batch([txn(), huge])
    # a record already rejected by an earlier feature is rejected, as encode rejects it
    earlier = txn(amount=math.nan, features={**huge["features"]})
    assert_batch_matches_encode(encoder, [earlier, txn()])


# ---------------------------------------------------------------- batches


def test_empty_batch():
    batch, rejections = make_encoder().encode_batch([])
    assert rejections == []
    assert batch.rows.tolist() == [] and batch.indptr.tolist() == [0]
    assert batch.indices.tolist() == [] and batch.values.tolist() == []
    assert (batch.rows.dtype, batch.indptr.dtype, batch.indices.dtype, batch.values.dtype) == (
        np.int64, np.int64, np.int32, np.float64)


def test_batch_where_every_record_is_rejected():
    rng = random.Random(12)
    txns = [bad_txn(rng, i) for i in range(50)]
    batch, rejections = assert_batch_matches_encode(make_encoder(), txns)
    assert batch.rows.tolist() == [] and batch.indptr.tolist() == [0] and len(rejections) == 50
    assert batch.indices.dtype == np.int32 and batch.values.dtype == np.float64


@pytest.mark.parametrize("hour, day", [("cyclic", "one_hot"), ("one_hot", "cyclic"), ("none", "none")])
@pytest.mark.parametrize("seed", range(3))
def test_random_mixed_batches_match_encode(hour, day, seed):
    encoder = make_encoder(hour=hour, day=day)
    rng = random.Random(f"mixed-{hour}-{day}-{seed}")
    share = [0.01, 0.3, 0.9][seed]
    txns = [bad_txn(rng, i) if rng.random() < share else random_valid_txn(rng, i) for i in range(1000)]
    batch, rejections = assert_batch_matches_encode(encoder, txns)
    assert len(batch.rows) > 0 and len(rejections) > 0
    assert [r.txn_id for _, r in rejections] == [txns[p]["txn_id"] for p, _ in rejections]


@pytest.mark.parametrize("event_time", [True, 2**70, -(2**63) - 1])
def test_event_time_outside_the_contract_is_encoded_as_encode_does(event_time):
    encoder = make_encoder(hour="one_hot", day="cyclic")
    txns = [txn(), txn(event_time=event_time), with_features(score="x", count=None), txn(event_time=5)]
    assert_batch_matches_encode(encoder, txns)


def test_batch_of_a_sequence_that_is_not_a_list():
    encoder = make_encoder()
    rng = random.Random(13)
    txns = tuple(random_valid_txn(rng, i) for i in range(20)) + (with_features(score=None),)
    batch, rejections = encoder.encode_batch(txns)
    assert batch.rows.tolist() == list(range(20)) and [p for p, _ in rejections] == [20]


def test_encode_batch_does_not_modify_its_input():
    encoder = make_encoder()
    rng = random.Random(14)
    txns = [random_valid_txn(rng, i) if i % 3 else bad_txn(rng, i) for i in range(200)]
    before = repr(txns)
    encoder.encode_batch(txns)
    assert repr(txns) == before


@pytest.mark.parametrize("event_time", ["1767225600000", None, 1.5])
def test_event_time_of_another_type_fails_as_encode_does(event_time):
    encoder = make_encoder(hour="none", day="none")  # encode does the arithmetic all the same
    odd = txn(event_time=event_time)
    try:
        expected: Any = encoder.encode(odd)
    except Exception as error:  # noqa: BLE001 - whatever encode raises
        expected = type(error)
    if isinstance(expected, type):
        with pytest.raises(expected):
            encoder.encode_batch([txn(), odd])
    else:
        assert_batch_matches_encode(encoder, [txn(), odd])


@pytest.mark.parametrize("hour, day", [("cyclic", "one_hot"), ("one_hot", "cyclic")])
def test_valid_records_are_encoded_without_calling_encode(hour, day, monkeypatch):
    """Only rejected records go through encode (for its reason); valid ones, imputed features
    included, are encoded by the batch code itself."""
    encoder = make_encoder(hour=hour, day=day)
    rng = random.Random(f"direct-{hour}-{day}")
    txns = [random_valid_txn(rng, i) for i in range(300)]
    expected = encode_each(encoder, txns)
    assert any(t["features"].get("imputed_int") is None for t in txns)

    def refuse(_txn):
        raise AssertionError("encode_batch called encode for a valid record")

    monkeypatch.setattr(encoder, "encode", refuse)
    batch, rejections = encoder.encode_batch(txns)
    assert rejections == [] and len(batch.rows) == len(txns)
    flat_indices = [i for indices, _ in expected for i in indices]
    flat_values = [v for _, values in expected for v in values]
    assert batch.indices.tolist() == flat_indices and bits(batch.values.tolist()) == bits(flat_values)
