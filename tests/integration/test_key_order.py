"""Per-key order in Kafka mode, end to end: for each model-key field, `riskstream produce` keys a
stream whose key values are spelled in many ways (tests/key_spellings.py), the job runs on it, and
every model key it scored was read from one partition of the transactions topic, in the order the
records were produced."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from streaming.config import MissingValue
from streaming.config.from_settings import transaction_reader
from streaming.ops import kafka_tools
from tests.key_spellings import respelled_lines
from tests.pseudonyms import hmac_pseudonym
from udfs.generator import GeneratorSettings
from udfs.records import ModelInput

RECORDS = 400
MODEL_KEY_FIELDS = ("merchant_category", "account_id", "merchant_id", "country", "channel", "currency")
# The key a record without the field is scored under, with this test's missing-value policies.
IMPUTED_KEY = {"merchant_category": "other", "merchant_id": "m-unknown", "currency": "USD"}


@pytest.mark.parametrize("field", MODEL_KEY_FIELDS)
def test_every_model_key_is_read_from_one_partition_in_production_order(tmp_path, kafka_settings, field):
    from streaming.job.run import run_job

    settings = kafka_settings.model_copy(update={
        "kafka": kafka_settings.kafka.model_copy(update={"bounded": True}),
        "checkpointing": kafka_settings.checkpointing.model_copy(
            update={"directory": str(tmp_path / "checkpoints"), "interval_ms": 1000}),
        "model": kafka_settings.model.model_copy(update={"key": field}),
        "cleaning": kafka_settings.cleaning.model_copy(update={"missing": {
            "merchant_category": MissingValue(action="impute", value=" Other "),
            "merchant_id": MissingValue(action="impute", value=" m-unknown "),
        }}),
    })
    kafka_tools.create_topics(settings)
    lines = respelled_lines(GeneratorSettings(records=RECORDS, seed=61, accounts=40, malformed_share=0.05))
    # At a rate, not at once: records with no message key stick to one partition for a few
    # milliseconds at a time, so a scored record produced without its key would show up elsewhere.
    assert kafka_tools.produce(settings, lines, total=len(lines), rate=1000, key_field=field) == RECORDS
    # How many scores to read: waiting for the topic to fall silent would cost seconds per read.
    reader = transaction_reader(settings)
    scored = sum(isinstance(reader.read(line, {}, 0), ModelInput) for line in lines)
    assert scored > 0.9 * RECORDS

    run_job(settings)

    scores = [json.loads(value) for _, _, _, value in
              kafka_tools.tail(settings, settings.kafka.scores_topic, max_records=scored, idle_timeout_s=20)]
    assert len(scores) == scored
    produced = list(kafka_tools.tail(settings, settings.kafka.transactions_topic, max_records=RECORDS, idle_timeout_s=8))
    assert len(produced) == RECORDS
    produced_as = {}  # txn_id -> (partition, offset, message key, the record's spelling of the field)
    for partition, offset, key, value in produced:
        try:
            record = json.loads(value)
        except ValueError:
            continue  # malformed: dead-lettered, not scored
        if isinstance(record, dict) and isinstance(record.get("txn_id"), str):
            produced_as[record["txn_id"]] = (partition, offset, key, json.dumps(record.get(field, "<absent>")))

    partitions_of_key = defaultdict(set)
    offsets_of_key = defaultdict(list)  # in the order the job scored them
    spellings_of_key = defaultdict(set)
    message_keys_of_key = defaultdict(set)
    for score in scores:
        model_key = score["model_key"]
        partition, offset, key, spelling = produced_as[score["txn_id"]]
        partitions_of_key[model_key].add(partition)
        offsets_of_key[model_key].append(offset)
        spellings_of_key[model_key].add(spelling)
        message_keys_of_key[model_key].add(key.decode("utf-8") if key is not None else None)

    split = {key: sorted(partitions) for key, partitions in partitions_of_key.items() if len(partitions) > 1}
    assert not split, f"model keys read from several partitions: {split}"
    for model_key, offsets in offsets_of_key.items():
        assert offsets == sorted(offsets), f"{model_key} was scored out of production order"
    pseudonym_key = settings.pseudonym_key()
    for model_key, message_keys in message_keys_of_key.items():
        assert None not in message_keys, f"a record scored under {model_key} was produced without a key"
        if field == "account_id":  # the message key is the account id, the model key its pseudonym
            message_keys = {hmac_pseudonym(key, pseudonym_key) for key in message_keys}
        assert message_keys == {model_key}
    assert len(set().union(*partitions_of_key.values())) > 1
    assert sum(len(spellings) > 1 for spellings in spellings_of_key.values()) >= 3
    if field == "merchant_id":  # an integer id and its text are one key
        assert any(any(s.isdigit() for s in spellings) and any(s.startswith('"') for s in spellings)
                   for spellings in spellings_of_key.values())
    if field in IMPUTED_KEY:
        assert {'"<absent>"', "null"} <= spellings_of_key[IMPUTED_KEY[field]]
