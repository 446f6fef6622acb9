"""The producer's message key (`kafka_tools.partition_key`) against the model key the job scores
under (`TransactionReader.read`): all of a key's records must share a partition to keep their
order, so the two must agree on every record the job scores. Expected keys are written out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streaming.config import Settings, load_settings
from streaming.config.from_settings import cleaning_rules, transaction_reader
from streaming.ops.kafka_tools import partition_key
from tests.key_spellings import CURRENCY_OF_COUNTRY, respelled_lines
from tests.pseudonyms import hmac_pseudonym
from udfs.generator import CATEGORIES, COUNTRIES, GeneratorSettings
from udfs.records import ModelInput

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_PROFILE = PROJECT / "conf" / "local.yaml"
NOW = 1_767_300_000_000
MODEL_KEY_FIELDS = ("merchant_category", "account_id", "merchant_id", "country", "channel", "currency")
ABSENT = object()  # `line_with(field=ABSENT)` leaves the field out


def line_with(**changes) -> bytes:
    """A valid transaction line (local profile) with `changes`; ABSENT removes a field."""
    record = {
        "txn_id": "t-1", "event_time": 1_767_225_600_000, "account_id": "acct-42", "merchant_id": "m-1",
        "merchant_category": "grocery", "country": "GB", "channel": "pos", "amount": 42.0, "currency": "GBP",
        "is_fraud": 0,
        "features": {"txn_count_1h": 1, "txn_count_24h": 4, "amount_to_avg_ratio": 1.2,
                     "minutes_since_last_txn": 30.0, "distinct_merchants_24h": 2, "account_age_days": 400,
                     "failed_logins_24h": 0, "device_risk_score": 0.1, "distance_from_home_km": 3.5,
                     "new_device": 0},
    }
    record.update(changes)
    return json.dumps({name: value for name, value in record.items() if value is not ABSENT}).encode("utf-8")


def keyed_by(settings: Settings, field: str) -> Settings:
    return settings.model_copy(update={"model": settings.model.model_copy(update={"key": field})})


def message_and_model_key(settings: Settings, field: str, line: bytes) -> tuple[str | None, ModelInput | str]:
    """(the producer's message key, decoded; what the job makes of the line) when keyed by `field`."""
    settings = keyed_by(settings, field)
    key = partition_key(line, field, cleaning_rules(settings))
    return (key.decode("utf-8") if key is not None else None), transaction_reader(settings).read(line, {}, NOW)


@pytest.fixture
def settings_with(no_key_in_environment):
    def load(*overrides: str) -> Settings:
        return load_settings(LOCAL_PROFILE, list(overrides))
    return load


# ---------------------------------------------------------------- spellings of one key


@pytest.mark.parametrize("field, value, expected", [
    ("merchant_category", "grocery", "grocery"),
    ("merchant_category", " Grocery ", "grocery"),
    ("merchant_category", "GROCERY\n", "grocery"),
    ("merchant_category", "Online \t Retail", "online retail"),
    ("merchant_category", "online retail ", "online retail"),
    ("merchant_category", 7, "7"),
    ("merchant_id", 12345, "12345"),
    ("merchant_id", " 12345 ", "12345"),
    ("merchant_id", "\t12345\n", "12345"),
    ("merchant_id", "m-Groc-001", "m-Groc-001"),
    ("merchant_id", "  m-Groc-001 ", "m-Groc-001"),
    ("merchant_id", "m  groc\t1", "m groc 1"),
    ("country", "gb", "GB"),
    ("country", " Gb\t", "GB"),
    ("channel", "POS", "pos"),
    ("channel", " pos\n", "pos"),
    ("channel", "Web", "web"),
    ("currency", "gbp", "GBP"),
    ("currency", " GbP ", "GBP"),
])
def test_the_message_key_is_the_model_key_the_job_scores_under(local_settings, field, value, expected):
    key, prepared = message_and_model_key(local_settings, field, line_with(**{field: value}))
    assert isinstance(prepared, ModelInput), prepared
    assert prepared.model_key == expected
    assert key == expected


@pytest.mark.parametrize("spellings, expected", [
    (["acct-42", " acct-42", "acct-42\t ", "\nacct-42 "], "acct-42"),
    ([42, " 42 ", "42"], "42"),
    (["acct  42", "acct\t42", " acct 42 "], "acct 42"),
    (["ACCT-42", " ACCT-42 "], "ACCT-42"),  # case is kept: a different account from acct-42
])
def test_every_spelling_of_an_account_has_one_message_key_the_normalized_id(local_settings, spellings, expected):
    pseudonym = hmac_pseudonym(expected, local_settings.pseudonym_key())
    for spelling in spellings:
        key, prepared = message_and_model_key(local_settings, "account_id", line_with(account_id=spelling))
        assert key == expected, spelling
        assert prepared.model_key == pseudonym, spelling


# ---------------------------------------------------------------- missing and imputed values


@pytest.mark.parametrize("missing", [ABSENT, None])
def test_a_missing_currency_is_keyed_by_the_default_currency(settings_with, missing):
    for settings, expected in ((settings_with(), "USD"), (settings_with("cleaning.default_currency=EUR"), "EUR")):
        key, prepared = message_and_model_key(settings, "currency", line_with(currency=missing))
        assert (key, prepared.model_key) == (expected, expected)


@pytest.mark.parametrize("field, imputed, expected", [
    ("currency", "' chf '", "CHF"),
    ("merchant_category", "' Other  Goods '", "other goods"),
    ("merchant_id", "0", "0"),
    ("merchant_id", "' M-Unknown '", "M-Unknown"),
    ("country", "zz", "ZZ"),
    ("channel", "WEB", "web"),
])
@pytest.mark.parametrize("missing", [ABSENT, None])
def test_an_imputed_model_key_is_the_message_key(settings_with, field, imputed, expected, missing):
    settings = settings_with(f"cleaning.missing.{field}={{action: impute, value: {imputed}}}")
    key, prepared = message_and_model_key(settings, field, line_with(**{field: missing}))
    assert isinstance(prepared, ModelInput), prepared
    assert (key, prepared.model_key) == (expected, expected)


def test_an_imputed_account_is_keyed_by_the_imputed_id(settings_with):
    settings = settings_with("cleaning.missing.account_id={action: impute, value: ' anonymous '}")
    key, prepared = message_and_model_key(settings, "account_id", line_with(account_id=ABSENT))
    assert key == "anonymous"
    assert prepared.model_key == hmac_pseudonym("anonymous", settings.pseudonym_key())


@pytest.mark.parametrize("overrides", [(), ("cleaning.missing.merchant_id={action: impute, value: null}",)])
@pytest.mark.parametrize("missing", [ABSENT, None])
def test_a_missing_merchant_id_has_no_message_key_and_is_dead_lettered(settings_with, overrides, missing):
    key, prepared = message_and_model_key(settings_with(*overrides), "merchant_id", line_with(merchant_id=missing))
    assert key is None
    assert json.loads(prepared)["reason"] == "merchant_id is missing (it is the model key)"


# ---------------------------------------------------------------- records the job rejects


@pytest.mark.parametrize("field", MODEL_KEY_FIELDS)
@pytest.mark.parametrize("value", [True, False, "", "   ", 1.5, 12345.0, 10 ** 30, [1], {"name": "x"}])
def test_a_key_value_cleaning_rejects_has_no_message_key(local_settings, field, value):
    key, prepared = message_and_model_key(local_settings, field, line_with(**{field: value}))
    assert key is None
    assert json.loads(prepared)["stage"] == "clean"


@pytest.mark.parametrize("field", MODEL_KEY_FIELDS)
@pytest.mark.parametrize("line", [
    b"", b"  \n", b"\xff\xfe{}", line_with(merchant_category="x")[:-1] + b"\xc3\x28}",
    b"not json", b'{"merchant_category": "grocery"', b'{"amount": NaN, "merchant_category": "grocery"}',
    b"[1, 2]", b'"grocery"', b"3", b"null", b"[" * 5000, b'{"merchant_category": "\\ud800"}',
    b'{"merchant_category": "' + b"grocery " * 20_000 + b'"}',  # over the 64 KiB record cap
])
def test_a_line_the_job_cannot_read_has_no_message_key_and_nothing_crashes(local_settings, field, line):
    key, prepared = message_and_model_key(local_settings, field, line)
    assert key is None
    assert isinstance(prepared, str)


# ---------------------------------------------------------------- a whole stream


# The model keys of the respelled stream (tests/key_spellings.py) with ' Other ' imputed for a
# missing merchant_category and the local profile's default currency, USD, for a missing currency.
KEYS_OF_THE_RESPELLED_STREAM = {
    "merchant_category": {category.replace("_", " ") for category in CATEGORIES} | {"other"},
    "country": set(COUNTRIES),
    "channel": {"web", "pos", "atm", "mobile"},
    "currency": set(CURRENCY_OF_COUNTRY.values()) | {"EUR"},
}


@pytest.mark.parametrize("field", MODEL_KEY_FIELDS)
def test_on_a_respelled_stream_every_scored_record_has_its_model_key_as_message_key(settings_with, field):
    settings = keyed_by(settings_with("cleaning.missing.merchant_category={action: impute, value: ' Other '}"), field)
    rules = cleaning_rules(settings)
    preparer = transaction_reader(settings)
    spellings_of_key: dict[str, set[str]] = {}
    scored = 0
    for line in respelled_lines(GeneratorSettings(records=3000, seed=5, accounts=300, malformed_share=0.1)):
        key = partition_key(line, field, rules)
        prepared = preparer.read(line, {}, NOW)
        if key is None:
            assert isinstance(prepared, str), line
            continue
        if isinstance(prepared, ModelInput):
            scored += 1
            model_key = key.decode("utf-8")
            if field == "account_id":
                model_key = hmac_pseudonym(model_key, settings.pseudonym_key())
            assert prepared.model_key == model_key, line
            spelling = json.dumps(json.loads(line).get(field, "<absent>"))
            spellings_of_key.setdefault(model_key, set()).add(spelling)
    assert scored > 2000
    assert sum(len(spellings) > 1 for spellings in spellings_of_key.values()) >= 3  # channel has 4 keys
    if field in KEYS_OF_THE_RESPELLED_STREAM:  # however spelled, each value is one key, as cleaning writes it
        assert set(spellings_of_key) == KEYS_OF_THE_RESPELLED_STREAM[field]


def test_the_producer_cleans_with_the_rules_of_the_job(settings_with):
    settings = settings_with("cleaning.default_currency=EUR", "cleaning.missing.country={action: impute, value: fr}")
    assert cleaning_rules(settings) == transaction_reader(settings).rules
