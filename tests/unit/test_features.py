"""FeatureEncoder and Standardizer (udfs/features.py)."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import zlib
from datetime import datetime, timedelta, timezone

import pytest

from tests.records import Categorical, Numeric
from udfs.cleaning import MissingPolicy, Rejected
from udfs.features import FeatureEncoder, Standardizer

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


NUMERIC = (Numeric("amount", log=True, standardize=True), Numeric("features.score"),
           Numeric("features.count", standardize=True))
CATEGORICAL = (Categorical("channel", "one_hot", ("web", "pos", "atm", "mobile")),
               Categorical("country", "hashed", buckets=8))

EXPECTED_NAMES = (
    ["log_amount", "score", "count"]
    + ["channel=web", "channel=pos", "channel=atm", "channel=mobile"]
    + [f"country#{b}" for b in range(8)]
    + ["hour_of_day_sin", "hour_of_day_cos"]
    + [f"day_of_week={d}" for d in range(7)]
)


def dead_letter_all(field: str) -> MissingPolicy:
    return MissingPolicy(False)


def make_encoder(hour="cyclic", day="one_hot", numeric=NUMERIC, categorical=CATEGORICAL,
                 missing_policy=dead_letter_all) -> FeatureEncoder:
    return FeatureEncoder(numeric, categorical, hour, day, missing_policy)


def txn(**changes) -> dict:
    """A cleaned transaction (the output of `clean`)."""
    base = {
        "txn_id": "t-1", "event_time": 1_767_225_600_000, "account_id": "0" * 32, "merchant_id": None,
        "merchant_category": "grocery", "country": "US", "channel": "web", "amount": 12.5,
        "currency": "USD", "features": {"score": 0.25, "count": 3}, "is_fraud": 0,
    }
    base.update(changes)
    return base


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def dense(encoder: FeatureEncoder, transaction: dict) -> list[float]:
    """The encoded sparse vector written out in full: one float per name, 0.0 where not listed."""
    vector = [0.0] * len(encoder.names)
    for i, v in zip(*encoder.encode(transaction)):
        vector[i] = v
    return vector


def slots(encoder: FeatureEncoder, vector: list[float], prefix: str) -> dict[str, float]:
    return {name: value for name, value in zip(encoder.names, vector) if name.startswith(prefix)}


# ---------------------------------------------------------------- layout


def test_names_list_every_feature_in_order():
    assert list(make_encoder().names) == EXPECTED_NAMES


def test_vector_has_one_value_per_name():
    encoder = make_encoder()
    indices, values = encoder.encode(txn())
    assert len(encoder.names) == 3 + 4 + 8 + 2 + 7
    assert len(indices) == len(values)
    assert all(0 <= i < len(encoder.names) for i in indices)
    assert len(dense(encoder, txn())) == len(encoder.names)


def test_time_encoding_none_adds_no_features():
    encoder = make_encoder(hour="none", day="none")
    assert not any(name.startswith(("hour_of_day", "day_of_week")) for name in encoder.names)
    assert len(encoder.names) == 3 + 4 + 8
    assert all(0 <= i < 3 + 4 + 8 for i in encoder.encode(txn())[0])


def test_one_hot_time_encodings_name_every_hour_and_day():
    names = make_encoder(hour="one_hot", day="one_hot").names
    assert [n for n in names if n.startswith("hour_of_day")] == [f"hour_of_day={h}" for h in range(24)]
    assert [n for n in names if n.startswith("day_of_week")] == [f"day_of_week={d}" for d in range(7)]


def test_standardized_positions_are_those_of_standardized_numeric_specs():
    assert make_encoder().standardized == (0, 2)


# ---------------------------------------------------------------- categoricals


@pytest.mark.parametrize("channel", ["web", "pos", "atm", "mobile"])
def test_one_hot_sets_only_the_value_position(channel):
    encoder = make_encoder()
    got = slots(encoder, dense(encoder, txn(channel=channel)), "channel=")
    assert got == {name: (1.0 if name == f"channel={channel}" else 0.0) for name in got}


@pytest.mark.parametrize("channel", ["telex", "WEB", None])
def test_one_hot_gives_zeros_for_values_outside_the_vocabulary(channel):
    encoder = make_encoder()
    assert set(slots(encoder, dense(encoder, txn(channel=channel)), "channel=").values()) == {0.0}


def test_one_hot_vocabulary_is_normalized_like_cleaned_values():
    encoder = make_encoder(categorical=(Categorical("channel", "one_hot", (" WEB", "Pos ")),
                                        Categorical("country", "one_hot", ("gb", " de "))))
    assert list(encoder.names[3:]) == ["channel=web", "channel=pos", "country=GB", "country=DE",
                                       "hour_of_day_sin", "hour_of_day_cos"] + [f"day_of_week={d}" for d in range(7)]
    vector = dense(encoder, txn(channel="pos", country="GB"))
    assert vector[encoder.names.index("channel=pos")] == 1.0
    assert vector[encoder.names.index("country=GB")] == 1.0


@pytest.mark.parametrize("country", ["US", "GB", "DE", "FR", "NG", "SG", "ZZ"])
def test_hashed_sets_exactly_one_bucket_in_range(country):
    encoder = make_encoder()
    got = slots(encoder, dense(encoder, txn(country=country)), "country#")
    assert len(got) == 8
    assert sorted(got.values()) == [0.0] * 7 + [1.0]


HASH_PROBE = """
import json, sys
from udfs.features import FeatureEncoder
from udfs.cleaning import MissingPolicy
from types import SimpleNamespace as S
enc = FeatureEncoder([], [S(field="country", encoding="hashed", vocabulary=(), buckets=8)], "none", "none",
                     lambda f: MissingPolicy(False))
out = {}
for c in json.loads(sys.argv[1]):
    v = [0.0] * len(enc.names)
    for i, x in zip(*enc.encode({"txn_id": "t", "event_time": 0, "country": c, "features": {}})):
        v[i] = x
    out[c] = v.index(1.0)
print(json.dumps(out))
"""


def test_hashed_bucket_is_the_same_in_a_process_with_another_hash_seed():
    countries = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "BR", "IN", "NG", "SG"]
    here = {c: zlib.crc32(c.encode("utf-8")) % 8 for c in countries}  # the documented bucket
    for seed in ("0", "12345"):
        result = subprocess.run([sys.executable, "-c", HASH_PROBE, json.dumps(countries)],
                                env={**os.environ, "PYTHONHASHSEED": seed},
                                capture_output=True, text=True, check=True, timeout=60)
        assert json.loads(result.stdout) == here
    assert len(set(here.values())) > 1  # the buckets do depend on the value


# ---------------------------------------------------------------- time


TIMES = [
    datetime(2026, 3, 5, 17, 30, 12, tzinfo=timezone.utc),  # a Thursday
    datetime(2026, 1, 4, 0, 0, 0, tzinfo=timezone.utc),  # a Sunday, midnight
    datetime(2024, 2, 29, 23, 59, 59, 999_000, tzinfo=timezone.utc),  # leap day, last millisecond
    datetime(1970, 1, 1, 0, 0, 0, tzinfo=timezone.utc),
    datetime(2025, 12, 29, 6, 0, 0, tzinfo=timezone.utc),  # a Monday
]


@pytest.mark.parametrize("moment", TIMES, ids=str)
def test_one_hot_time_marks_the_utc_hour_and_weekday(moment):
    encoder = make_encoder(hour="one_hot", day="one_hot")
    vector = dense(encoder, txn(event_time=epoch_ms(moment)))
    hours = slots(encoder, vector, "hour_of_day=")
    days = slots(encoder, vector, "day_of_week=")
    assert hours == {f"hour_of_day={h}": (1.0 if h == moment.hour else 0.0) for h in range(24)}
    assert days == {f"day_of_week={d}": (1.0 if d == moment.weekday() else 0.0) for d in range(7)}


@pytest.mark.parametrize("moment", TIMES, ids=str)
def test_cyclic_time_is_sin_and_cos_of_the_utc_hour_and_weekday_angle(moment):
    encoder = make_encoder(hour="cyclic", day="cyclic")
    vector = dense(encoder, txn(event_time=epoch_ms(moment)))
    got = dict(zip(encoder.names, vector))
    hour_angle = 2 * math.pi * moment.hour / 24
    day_angle = 2 * math.pi * moment.weekday() / 7
    assert got["hour_of_day_sin"] == pytest.approx(math.sin(hour_angle), abs=1e-12)
    assert got["hour_of_day_cos"] == pytest.approx(math.cos(hour_angle), abs=1e-12)
    assert got["day_of_week_sin"] == pytest.approx(math.sin(day_angle), abs=1e-12)
    assert got["day_of_week_cos"] == pytest.approx(math.cos(day_angle), abs=1e-12)


# ---------------------------------------------------------------- numeric


@pytest.mark.parametrize("amount", [0.0, 1.0, 99.0, 12.5, 1e12])
def test_log_features_are_log1p(amount):
    vector = dense(make_encoder(), txn(amount=amount))
    assert vector[0] == pytest.approx(math.log(1.0 + amount), rel=1e-12)


def test_plain_numeric_features_are_the_values_as_floats():
    encoder = make_encoder()
    vector = dense(encoder, txn(features={"score": 0.75, "count": 12}))
    assert vector[1:3] == [0.75, 12.0]
    assert all(isinstance(v, float) for v in encoder.encode(txn(features={"score": 0.75, "count": 12}))[1])


def test_log_feature_below_minus_one_is_rejected():
    encoder = make_encoder(numeric=(Numeric("features.score", log=True),))
    with pytest.raises(Rejected) as info:
        encoder.encode(txn(features={"score": -1}))
    assert info.value.stage == "features"


def test_missing_feature_is_rejected_at_stage_features_with_the_txn_id():
    with pytest.raises(Rejected) as info:
        make_encoder().encode(txn(features={"score": 0.5}))
    assert info.value.stage == "features"
    assert "count" in info.value.reason
    assert info.value.txn_id == "t-1"


@pytest.mark.parametrize("features", [{"score": 0.5}, {"score": 0.5, "count": None}])
def test_missing_feature_is_imputed_per_policy(features):
    policies = {"features.count": MissingPolicy(True, 7)}

    def policy(field):
        return policies.get(field, MissingPolicy(False))

    vector = dense(make_encoder(missing_policy=policy), txn(features=features))
    assert vector[1:3] == [0.5, 7.0]


@pytest.mark.parametrize("value", [
    "n/a", "3", True, False, [1], {"v": 1}, float("nan"), float("inf"), float("-inf"), 1e13, -1e13, 1e300,
])
def test_unusable_feature_values_are_rejected_at_stage_features(value):
    with pytest.raises(Rejected) as info:
        make_encoder().encode(txn(features={"score": value, "count": 1}))
    assert info.value.stage == "features"
    assert info.value.txn_id == "t-1"


@pytest.mark.parametrize("value", [1e12, -1e12])
def test_feature_values_of_magnitude_1e12_are_accepted(value):
    assert dense(make_encoder(), txn(features={"score": value, "count": 1}))[1] == value


def test_amount_over_1e12_is_rejected_at_stage_features():
    with pytest.raises(Rejected) as info:
        make_encoder().encode(txn(amount=2e12))
    assert info.value.stage == "features"


# ---------------------------------------------------------------- Standardizer


def test_standardizer_gives_zero_for_the_first_value():
    out = Standardizer([0, 1]).transform([123.4, -5.0, 9.0])
    assert out == [0.0, 0.0, 9.0]


def test_standardizer_matches_statistics_after_every_value():
    rng = random.Random(11)
    standardizer = Standardizer([0, 2])
    seen_a: list[float] = []
    seen_c: list[float] = []
    for _ in range(500):
        vector = [rng.gauss(50, 20), rng.random(), rng.expovariate(0.1)]
        seen_a.append(vector[0])
        seen_c.append(vector[2])
        out = standardizer.transform(vector)
        assert out[1] == vector[1]  # not a standardized position
        for position, seen in ((0, seen_a), (2, seen_c)):
            if len(seen) == 1:
                expected = 0.0
            else:
                expected = (seen[-1] - statistics.mean(seen)) / math.sqrt(statistics.pvariance(seen))
            assert out[position] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert standardizer.count == 500
    assert standardizer.mean[0] == pytest.approx(statistics.mean(seen_a), rel=1e-12)
    assert standardizer.m2[1] / standardizer.count == pytest.approx(statistics.pvariance(seen_c), rel=1e-9)


def test_standardizer_gives_zero_for_constant_values():
    standardizer = Standardizer([0])
    assert [standardizer.transform([4.0])[0] for _ in range(5)] == [0.0] * 5


def test_standardizer_does_not_modify_its_input():
    vector = [3.0, 4.0]
    standardizer = Standardizer([0, 1])
    standardizer.transform([1.0, 1.0])
    standardizer.transform(vector)
    assert vector == [3.0, 4.0]


def test_standardizer_without_positions_returns_the_vector_and_keeps_no_count():
    standardizer = Standardizer([])
    assert standardizer.transform([1.0, 2.0]) == [1.0, 2.0]
    assert standardizer.count == 0




def test_one_hot_currency_marks_the_cleaned_currency():
    encoder = make_encoder(numeric=(), categorical=(Categorical("currency", "one_hot", ("USD", "EUR")),),
                           hour="none", day="none")
    assert dense(encoder, txn(currency="EUR")) == [0.0, 1.0]


def test_one_hot_merchant_id_marks_a_mixed_case_id():
    encoder = make_encoder(numeric=(), categorical=(Categorical("merchant_id", "one_hot", ("M-Groc-001",)),),
                           hour="none", day="none")
    assert dense(encoder, txn(merchant_id="M-Groc-001")) == [1.0]


def test_one_hot_vocabulary_that_repeats_after_normalization_is_refused():
    with pytest.raises(ValueError, match="channel.vocabulary"):
        make_encoder(numeric=(), hour="none", day="none",
                     categorical=(Categorical("channel", "one_hot", ("web", "WEB", "pos")),
                                  Categorical("country", "one_hot", ("US", "GB"))))


# ---------------------------------------------------------------- sparse layout


def groups_of(names: tuple[str, ...], n_numeric: int) -> dict[str, range]:
    """Index range of each feature group, read off the names: the numeric features, each
    categorical field, hour of day, day of week."""
    groups: dict[str, list[int]] = {"numeric": list(range(n_numeric))}
    for i, name in enumerate(names[n_numeric:], start=n_numeric):
        group = name.split("=")[0].split("#")[0].removesuffix("_sin").removesuffix("_cos")
        groups.setdefault(group, []).append(i)
    spans = {}
    for group, members in groups.items():
        span = range(members[0], members[-1] + 1)
        assert members == list(span), group  # a group's names are contiguous
        spans[group] = span
    return spans


def random_txn(rng: random.Random) -> dict:
    return txn(
        channel=rng.choice(["web", "pos", "atm", "mobile", "telex", None]),
        country=rng.choice(["US", "GB", "DE", "FR", "NG", "SG", "ZZ", None]),
        amount=rng.choice([0.0, rng.uniform(0, 5000)]),
        features={"score": rng.choice([0.0, rng.uniform(-3, 3)]), "count": rng.randint(0, 40)},
        event_time=rng.randint(-10**12, 4 * 10**12),
    )


@pytest.mark.parametrize("hour, day", [("cyclic", "one_hot"), ("one_hot", "cyclic"), ("none", "none"),
                                       ("one_hot", "one_hot"), ("cyclic", "cyclic")])
def test_sparse_indices_are_unique_sorted_per_group_and_in_range(hour, day):
    encoder = make_encoder(hour=hour, day=day)
    groups = groups_of(encoder.names, len(NUMERIC))
    assert set(groups) == {"numeric", "channel", "country"} | ({"hour_of_day"} if hour != "none" else set()) \
        | ({"day_of_week"} if day != "none" else set())
    rng = random.Random(f"{hour}-{day}")
    for _ in range(300):
        indices, values = encoder.encode(random_txn(rng))
        assert len(indices) == len(values)
        assert all(type(i) is int and 0 <= i < len(encoder.names) for i in indices)
        assert len(set(indices)) == len(indices)
        for group, span in groups.items():
            mine = [i for i in indices if i in span]
            assert mine == sorted(mine), group


def test_numeric_features_come_first_in_configured_order():
    encoder = make_encoder()
    indices, values = encoder.encode(txn(amount=99.0, features={"score": -0.5, "count": 4}))
    assert indices[:3] == [0, 1, 2]
    assert values[:3] == [math.log(100.0), -0.5, 4.0]


def test_numeric_features_are_listed_even_when_zero():
    indices, values = make_encoder().encode(txn(amount=0.0, features={"score": 0.0, "count": 0}))
    assert indices[:3] == [0, 1, 2]
    assert values[:3] == [0.0, 0.0, 0.0]


def test_sparse_vector_of_a_known_transaction():
    encoder = make_encoder()  # hour cyclic, day one-hot
    # 2026-01-01T00:00:00Z is a Thursday (weekday 3), hour 0: sin 0, cos 1.
    indices, values = encoder.encode(txn(channel="atm", country="US", amount=12.5,
                                         features={"score": 0.25, "count": 3}, event_time=1_767_225_600_000))
    us_bucket = zlib.crc32(b"US") % 8
    assert indices == [0, 1, 2, EXPECTED_NAMES.index("channel=atm"), EXPECTED_NAMES.index(f"country#{us_bucket}"),
                       EXPECTED_NAMES.index("hour_of_day_sin"), EXPECTED_NAMES.index("hour_of_day_cos"),
                       EXPECTED_NAMES.index("day_of_week=3")]
    assert values == [math.log1p(12.5), 0.25, 3.0, 1.0, 1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("channel, country", [("telex", "US"), (None, "US"), ("web", None), (None, None)])
def test_categorical_zeros_are_not_listed(channel, country):
    encoder = make_encoder(hour="none", day="none")
    indices, values = encoder.encode(txn(channel=channel, country=country))
    listed = [encoder.names[i] for i in indices[3:]]
    expected = ([f"channel={channel}"] if channel == "web" else []) \
        + ([f"country#{zlib.crc32(country.encode()) % 8}"] if country else [])
    assert listed == expected
    assert values[3:] == [1.0] * len(expected)


def test_one_hot_time_lists_exactly_one_hour_and_one_day():
    encoder = make_encoder(hour="one_hot", day="one_hot", categorical=())
    moment = datetime(2026, 3, 5, 17, 30, tzinfo=timezone.utc)  # a Thursday
    indices, values = encoder.encode(txn(event_time=epoch_ms(moment)))
    assert [encoder.names[i] for i in indices[3:]] == ["hour_of_day=17", "day_of_week=3"]
    assert values[3:] == [1.0, 1.0]


def test_dense_form_has_one_in_each_one_hot_group_and_numeric_values_elsewhere():
    encoder = make_encoder(hour="one_hot", day="one_hot")
    rng = random.Random(4)
    for _ in range(100):
        t = random_txn(rng)
        vector = dense(encoder, t)
        moment = EPOCH + timedelta(milliseconds=t["event_time"])
        assert slots(encoder, vector, "hour_of_day=") == {
            f"hour_of_day={h}": float(h == moment.hour) for h in range(24)}
        assert slots(encoder, vector, "day_of_week=") == {
            f"day_of_week={d}": float(d == moment.weekday()) for d in range(7)}
        assert sum(slots(encoder, vector, "country#").values()) == (0.0 if t["country"] is None else 1.0)
        assert sum(slots(encoder, vector, "channel=").values()) == float(t["channel"] in ("web", "pos", "atm", "mobile"))
