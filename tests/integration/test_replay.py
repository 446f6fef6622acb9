"""Dead letters replayed after a configuration fix: a run whose configuration dead-letters some
records, `riskstream replay` of those letters, and a run of the fixed configuration on what it
re-sent: scores for exactly the replayed records, no raw account id anywhere, and the accounting of
each run and of the replay adds up. Also a replay to a Kafka topic, read back."""

from __future__ import annotations

import json
import re
from pathlib import Path

from streaming.cli import main
from tests.integration.conftest import PROJECT
from tests.pseudonyms import hmac_pseudonym, hmac_token, letter_bytes
from udfs.generator import GeneratorSettings, generate

# The fixed configuration imputes a missing country; the first run's (the local profile's) has no
# such policy, so it dead-letters every record without one at stage clean.
FIX = "cleaning.missing={country: {action: impute, value: US}}"
SUMMARY = re.compile(r"^replay: read (\d+) dead letters from .*, selected (\d+) = re-sent (\d+) to .* \+ refused (\d+)$")


def input_lines() -> tuple[list[bytes], set[str]]:
    """400 generated transactions, every tenth without a country, and a record that is not UTF-8
    (dead-lettered at stage decode, so not selected by --stage clean); and the txn_ids without a
    country."""
    lines, without_country = [], set()
    for number, line in enumerate(generate(GeneratorSettings(records=400, seed=31))):
        if number % 10 == 3:
            record = json.loads(line)
            del record["country"]
            without_country.add(record["txn_id"])
            line = json.dumps(record, separators=(",", ":")).encode()
        lines.append(line)
    lines.append(b'{"txn_id":"not-utf8","account_id":"acct-7777777","merchant_category":"caf\xe9"}')
    return lines, without_country


def raw_account_ids(lines: list[bytes]) -> set[bytes]:
    return set(re.findall(rb"acct-\d{7}", b"\n".join(lines)))


def assert_no_raw_id_in(folder: Path, ids: set[bytes]) -> None:
    """No raw account id in any file under `folder`, nor in any dead letter's decoded bytes."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        contents = [data]
        if "dead-letters" in path.parts:
            contents += [letter_bytes(json.loads(line)) for line in data.splitlines() if line.strip()]
        for content in contents:
            assert not any(account in content for account in ids), path


def test_dead_letters_replayed_after_a_fix_are_scored_exactly_once(tmp_path, scoring_job, capsys):
    lines, without_country = input_lines()
    ids = raw_account_ids(lines)
    assert len(ids) > 100

    first = scoring_job(tmp_path / "first", lines)
    first_out = Path(first.settings.output.path)
    assert first.job_run.records_read == len(lines) == len(first.scores) + len(first.dead_letters)
    assert {letter["txn_id"] for letter in first.dead_letters if letter["stage"] == "clean"} == without_country
    assert {letter["reason"] for letter in first.dead_letters if letter["stage"] == "clean"} == {"country is missing"}
    assert [letter["stage"] for letter in first.dead_letters if letter["stage"] != "clean"] == ["decode"]

    replayed = tmp_path / "replay.jsonl"
    assert main(["replay", "--config", str(PROJECT / "conf" / "local.yaml"), "--from", str(first_out), "--to", str(replayed),
                 "--stage", "clean", "--reason", "country"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    read, selected, resent, refused = map(int, SUMMARY.match(printed[0]).groups())
    assert (read, selected, resent, refused) == (len(first.dead_letters), len(without_country), len(without_country), 0)
    assert len(printed) == 1  # nothing refused: no table
    records = replayed.read_bytes().splitlines()
    assert len(records) == resent

    # The re-sent bytes are the original records, each account id as its token.
    key = first.settings.pseudonym_key()
    originals = {json.loads(line)["txn_id"]: line for line in lines[:-1]}
    for record in records:
        original = originals[json.loads(record)["txn_id"]]
        account = json.loads(original)["account_id"]
        assert record == original.replace(account.encode(), hmac_token(hmac_pseudonym(account, key), key).encode())

    second = scoring_job(tmp_path / "second", records, FIX)
    assert second.job_run.records_read == len(records) == len(second.scores) + len(second.dead_letters)
    assert second.dead_letters == []
    assert sorted(score["txn_id"] for score in second.scores) == sorted(without_country)
    # Each account keeps its pseudonym through the replay (the token is not hashed again).
    assert {score["txn_id"]: score["account"] for score in second.scores} == {
        txn_id: hmac_pseudonym(json.loads(originals[txn_id])["account_id"], key) for txn_id in without_country}

    assert_no_raw_id_in(first_out, ids)
    assert_no_raw_id_in(Path(second.settings.output.path), ids)
    assert not any(account in replayed.read_bytes() for account in ids)


def test_replay_to_a_kafka_topic(tmp_path, kafka_settings, kafka_isolation, capsys):
    """Dead letters written by the profile's reader (no job needed) replayed to the transactions
    topic, read back: the redacted bytes, keyed as `produce` keys them."""
    from streaming.config.from_settings import transaction_reader
    from streaming.ops import kafka_tools
    from udfs.cleaning import Rejected

    reader = transaction_reader(kafka_settings)
    lines, _ = input_lines()
    expected = []
    letters = tmp_path / "dead-letters"
    letters.mkdir()
    with (letters / "part-0-0").open("w") as part:
        for line in lines[:40]:
            txn_id = json.loads(line)["txn_id"]
            letter = reader.dead_letter(line, Rejected("clean", "country is missing", txn_id), {}, 1)
            part.write(letter + "\n")
            expected.append(letter_bytes(json.loads(letter)))
    kafka_tools.create_topics(kafka_settings)
    topic = kafka_settings.kafka.transactions_topic
    overrides = [argument for override in kafka_isolation for argument in ("--set", override)]
    assert main(["replay", "--config", str(PROJECT / "conf" / "kafka.yaml"), *overrides, "--from", str(letters),
                 "--to", f"kafka:{topic}"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert SUMMARY.match(printed[0]).groups() == ("40", "40", "40", "0")
    sent = [(key, value) for _, _, key, value in kafka_tools.tail(kafka_settings, topic, idle_timeout_s=10,
                                                                  until_end=True)]
    assert sorted(value for _, value in sent) == sorted(expected)
    assert not any(account in value for _, value in sent for account in raw_account_ids(lines))
    # Keyed as `produce` keys a record: by its model key (merchant_category in the profile).
    assert sorted(key for key, _ in sent) == sorted(json.loads(value)["merchant_category"].encode() for value in expected)
