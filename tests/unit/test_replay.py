"""Dead letters sent again: the pseudonym token a version 2 letter carries (accepted by both cleaners
only under the job's key, never hashed twice, never a way for a raw id to pass), which letters
`riskstream replay` selects, re-sends or refuses and why, and the command itself on files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import orjson
import pytest

from tests.cli import NOTHING_LISTENS, assert_one_line_failure, riskstream
from tests.pseudonyms import hmac_pseudonym, hmac_token, letter_bytes
from tests.records import VALID_RECORD
from udfs.batch_cleaning import clean_batch
from udfs.cleaning import CleaningRules, Rejected, clean, decode, parse
from udfs.reading import TransactionReader
from udfs.replay import (
    REFUSED_DUPLICATE,
    REFUSED_NEWLINE,
    REFUSED_OTHER_KEY,
    REFUSED_RAW_MISSING,
    REFUSED_TRUNCATED,
    REFUSED_UNREADABLE,
    REFUSED_VERSION_1,
    ReplayAccount,
    ReplayFilter,
    replay_decision,
)

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_KEY = b"local-development-key-not-secret"  # privacy.pseudonym_key of conf/local.yaml
ACCOUNT = "acct-0000042"


def line_with(**changes) -> bytes:
    record = copy.deepcopy(VALID_RECORD)
    record.update(changes)
    return json.dumps(record, separators=(",", ":")).encode()


def cleaned_by_both(raw: bytes, rules: CleaningRules) -> dict:
    """The record as `clean` cleans it, checked to be what the batch cleaner gives too."""
    reference = clean(parse(decode(raw, rules.max_record_bytes)), rules)
    assert clean_batch([raw], rules) == [reference]
    return reference


# ---------------------------------------------------------------- the pseudonym token


def test_a_token_of_the_key_is_taken_as_its_pseudonym_by_both_cleaners(rules):
    pseudonym = hmac_pseudonym(ACCOUNT, rules.pseudonym_key)
    token = hmac_token(pseudonym, rules.pseudonym_key)
    assert cleaned_by_both(line_with(account_id=ACCOUNT), rules)["account_id"] == pseudonym
    assert cleaned_by_both(line_with(account_id=token), rules)["account_id"] == pseudonym  # not hashed twice
    assert cleaned_by_both(line_with(account_id=f"  {token} "), rules)["account_id"] == pseudonym


@pytest.mark.parametrize("forge", [
    lambda token: token[:-1] + ("0" if token[-1] != "0" else "1"),  # the MAC changed
    lambda token: token.replace("rs-pseudonym:v1:", "rs-pseudonym:v1:0", 1)[:-1],  # the pseudonym changed
    lambda token: token.upper().replace("RS-PSEUDONYM:V1:", "rs-pseudonym:v1:"),  # upper-case hex
    lambda token: token.rsplit(":", 1)[0],  # no MAC
    lambda token: token + "0",  # one digit more
    lambda token: "x" + token,
], ids=["mac", "pseudonym", "upper-case", "no-mac", "longer", "prefixed"])
def test_a_forged_token_is_hashed_as_a_raw_id(rules, forge):
    forged = forge(hmac_token(hmac_pseudonym(ACCOUNT, rules.pseudonym_key), rules.pseudonym_key))
    assert cleaned_by_both(line_with(account_id=forged), rules)["account_id"] \
        == hmac_pseudonym(forged, rules.pseudonym_key)


def test_a_token_of_another_key_is_hashed_as_a_raw_id(rules):
    other = hmac_token(hmac_pseudonym(ACCOUNT, b"an-earlier-key"), b"an-earlier-key")
    assert cleaned_by_both(line_with(account_id=other), rules)["account_id"] \
        == hmac_pseudonym(other, rules.pseudonym_key)


def test_a_raw_id_never_passes_as_a_pseudonym(rules):
    """A raw id that looks like a pseudonym, or claims to be one, is hashed all the same."""
    for raw_id in (ACCOUNT, "0123456789abcdef0123456789abcdef", "rs-pseudonym:v1:" + ACCOUNT,
                   f"rs-pseudonym:v1:{'0' * 32}:{'0' * 32}"):
        assert cleaned_by_both(line_with(account_id=raw_id), rules)["account_id"] \
            == hmac_pseudonym(raw_id, rules.pseudonym_key), raw_id


def test_a_dead_letter_sent_again_is_cleaned_as_its_record_would_be(local_reader):
    """Round trip: a record dead-lettered for its channel, its letter's bytes cleaned once the
    channel is allowed: the same transaction as the original record gives, pseudonym included."""
    raw = line_with(channel="fax")
    letter = json.loads(local_reader.read(raw, {}, 0))
    assert letter["stage"] == "clean" and ACCOUNT.encode() not in letter_bytes(letter)
    rules = local_reader.rules
    fixed = CleaningRules(rules.pseudonym_key, rules.channels | {"fax"}, rules.default_currency, rules.missing,
                          rules.max_record_bytes)
    assert cleaned_by_both(letter_bytes(letter), fixed) == cleaned_by_both(raw, fixed)
    assert cleaned_by_both(letter_bytes(letter), fixed)["account_id"] == hmac_pseudonym(ACCOUNT, rules.pseudonym_key)


# ---------------------------------------------------------------- which letters are re-sent


def letter_of(reader: TransactionReader, raw: bytes, stage: str = "clean", reason: str = "channel 'fax' is not one of",
              received_at: int = 1_000) -> dict:
    return json.loads(reader.dead_letter(raw, Rejected(stage, reason, "t-0001"), {}, received_at))


def test_a_version_2_letter_is_re_sent_as_its_redacted_bytes(local_reader):
    raw = line_with(channel="fax", merchant_category="caf\u00e9").replace("\u00e9".encode(), b"\xe9")
    letter = letter_of(local_reader, raw)
    token = hmac_token(hmac_pseudonym(ACCOUNT, LOCAL_KEY), LOCAL_KEY)
    assert replay_decision(letter, LOCAL_KEY, one_record_per_line=True) \
        == (raw.replace(ACCOUNT.encode(), token.encode()), None)


def test_a_letter_without_an_account_id_is_re_sent(local_reader):
    raw = b'{"txn_id":"t-1","amount":-1}'
    assert replay_decision(letter_of(local_reader, raw), LOCAL_KEY, True) == (raw, None)


def test_refusals(local_reader):
    good = letter_of(local_reader, line_with(channel="fax"))
    oversize = letter_of(local_reader, line_with(memo="x" * 70_000))
    assert oversize["truncated"] is True
    v1 = {"schema_version": 1, "raw": '{"txn_id":"t-1"}', "stage": "clean", "reason": "r", "source": {},
          "txn_id": "t-1", "received_at": 1}
    dedup = {"schema_version": 2, "stage": "dedup", "reason": "txn_id t-1 was scored at ...", "txn_id": "t-1",
             "received_at": 1}
    no_raw = {key: value for key, value in good.items() if key != "raw_base64"}
    not_base64 = dict(good, raw_base64="not base64!")
    cases = [(v1, REFUSED_VERSION_1), (dedup, REFUSED_DUPLICATE), (dict(dedup, raw_base64=good["raw_base64"],
                                                                        truncated=False), REFUSED_DUPLICATE),
             (oversize, REFUSED_TRUNCATED), (no_raw, REFUSED_RAW_MISSING), (not_base64, REFUSED_RAW_MISSING),
             (dict(good, truncated=None), REFUSED_TRUNCATED)]
    for letter, reason in cases:
        assert replay_decision(letter, LOCAL_KEY, True) == (None, reason), letter


def test_a_letter_written_under_another_key_is_refused(local_reader):
    letter = letter_of(local_reader, line_with(channel="fax"))
    assert replay_decision(letter, LOCAL_KEY, True)[1] is None
    assert replay_decision(letter, b"the-rotated-key", True) == (None, REFUSED_OTHER_KEY)


def test_a_record_holding_a_newline_is_refused_for_a_file_only(local_reader):
    raw = b'{"txn_id":"t-1",\n"amount":-1}'
    letter = letter_of(local_reader, raw)
    assert replay_decision(letter, LOCAL_KEY, one_record_per_line=True) == (None, REFUSED_NEWLINE)
    assert replay_decision(letter, LOCAL_KEY, one_record_per_line=False) == (raw, None)


def test_filters():
    letter = {"stage": "clean", "reason": "channel 'fax' is not one of atm, mobile", "received_at": 2_000}
    assert ReplayFilter().selects(letter)
    assert ReplayFilter(stage="clean").selects(letter) and not ReplayFilter(stage="parse").selects(letter)
    assert ReplayFilter(reason="CHANNEL 'FAX'").selects(letter) and not ReplayFilter(reason="telex").selects(letter)
    assert ReplayFilter(since_ms=2_000).selects(letter) and not ReplayFilter(since_ms=2_001).selects(letter)
    assert ReplayFilter(until_ms=2_001).selects(letter) and not ReplayFilter(until_ms=2_000).selects(letter)
    assert not ReplayFilter(since_ms=0).selects({"stage": "clean"})  # no received_at: not in any range
    assert not ReplayFilter(stage="clean", reason="telex").selects(letter)


def test_the_accounting_lines():
    account = ReplayAccount(read=10, selected=7, resent=4)
    account.refused.update({REFUSED_TRUNCATED: 1, REFUSED_OTHER_KEY: 2})
    assert account.reconciled
    lines = account.lines("out/dead-letters", "replay.jsonl")
    assert lines[0] == ("replay: read 10 dead letters from out/dead-letters, selected 7 = re-sent 4 to "
                        "replay.jsonl + refused 3")
    assert lines[1:] == [f"  refused 2  {REFUSED_OTHER_KEY}", f"  refused 1  {REFUSED_TRUNCATED}"]
    account.resent = 5
    assert not account.reconciled


# ---------------------------------------------------------------- the command, on files


def dead_letters_folder(folder: Path, reader: TransactionReader) -> tuple[Path, list[bytes]]:
    """A dead-letters/ folder as a run leaves it: two committed part files and an in-progress one
    (hidden, to be skipped); returns it and the bytes the command must re-send, in order."""
    redacted = []
    committed = []
    for i, channel in enumerate(("fax", "telex", "fax")):
        raw = line_with(txn_id=f"r-{i}", channel=channel)
        letter = reader.dead_letter(raw, Rejected("clean", f"channel {channel!r} is not one of ...", f"r-{i}"), {},
                                    1_000 + i)
        committed.append(letter)
        if channel == "fax":
            redacted.append(raw.replace(ACCOUNT.encode(), hmac_token(hmac_pseudonym(ACCOUNT, LOCAL_KEY),
                                                                      LOCAL_KEY).encode()))
    oversize = reader.dead_letter(line_with(txn_id="r-big", memo="x" * 70_000),
                                  Rejected("decode", "record is ... over the 65536-byte limit"), {}, 1_010)
    v1 = orjson.dumps({"schema_version": 1, "raw": "{}", "stage": "clean", "reason": "channel 'fax' is not one of",
                       "source": {}, "txn_id": None, "received_at": 1_020}).decode()
    letters = folder / "out" / "dead-letters"
    letters.mkdir(parents=True)
    (letters / "part-a-0").write_text("\n".join([committed[0], committed[1], oversize]) + "\n")
    (letters / "part-b-0").write_text("\n".join([committed[2], v1, "not json"]) + "\n")
    (letters / ".part-c-0.inprogress").write_text(committed[0] + "\n")
    return folder / "out", redacted


def test_replay_writes_the_selected_records_to_a_file_and_accounts_for_each(tmp_path, local_reader):
    out, redacted = dead_letters_folder(tmp_path, local_reader)
    done = riskstream("replay", "--from", str(out), "--to", "replay.jsonl", "--reason", "FAX", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "replay.jsonl").read_bytes() == b"".join(record + b"\n" for record in redacted)
    lines = done.stdout.strip().splitlines()
    # read: 6 committed lines; selected: the two fax letters, the v1 letter, and the unreadable line.
    assert lines[0] == f"replay: read 6 dead letters from {out}, selected 4 = re-sent 2 to replay.jsonl + refused 2"
    assert sorted(lines[1:]) == sorted([f"  refused 1  {REFUSED_VERSION_1}", f"  refused 1  {REFUSED_UNREADABLE}"])


def test_replay_of_a_stage_and_a_time_range(tmp_path, local_reader):
    out, _ = dead_letters_folder(tmp_path, local_reader)
    done = riskstream("replay", "--from", str(out / "dead-letters"), "--to", "r.jsonl", "--stage", "decode",
                      "--since", "1000", "--until", "1970-01-01T00:00:01.011Z", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.jsonl").read_bytes() == b""
    assert done.stdout.splitlines() == [
        f"replay: read 6 dead letters from {out / 'dead-letters'}, selected 2 = re-sent 0 to r.jsonl + refused 2",
        f"  refused 1  {REFUSED_TRUNCATED}", f"  refused 1  {REFUSED_UNREADABLE}"]


def test_replay_bad_input_ends_in_one_line(tmp_path, local_reader):
    out, _ = dead_letters_folder(tmp_path, local_reader)
    assert_one_line_failure(riskstream("replay", "--from", str(tmp_path / "ouy"), "--to", "r.jsonl", cwd=tmp_path),
                            2, "replay --from", "does not exist", "dead-letters/ folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_failure(riskstream("replay", "--from", "empty", "--to", "r.jsonl", cwd=tmp_path),
                            2, "holds no committed part files")
    # A run's output folder whose run dead-lettered nothing: its other outputs are not read as letters.
    (tmp_path / "clean-run" / "scores").mkdir(parents=True)
    (tmp_path / "clean-run" / "scores" / "part-0").write_text('{"txn_id": "t1"}\n')
    (tmp_path / "clean-run" / "run.json").write_text("{\n}\n")
    assert_one_line_failure(riskstream("replay", "--from", "clean-run", "--to", "r.jsonl", cwd=tmp_path),
                            2, "no dead-letters/", "dead-lettered nothing")
    assert_one_line_failure(riskstream("replay", "--from", str(out), "--to", str(tmp_path), cwd=tmp_path),
                            2, "replay --to", "is a folder")
    assert_one_line_failure(riskstream("replay", "--from", str(out), "--to", "r.jsonl", "--since", "yesterday",
                                       cwd=tmp_path), 2, "replay --since", "ISO-8601")
    assert_one_line_failure(riskstream("replay", "--from", str(out), "--to", "kafka:replayed", "--set",
                                       f"kafka.bootstrap_servers={NOTHING_LISTENS}", cwd=tmp_path, timeout_s=60),
                            3, "no Kafka broker answers", "make kafka-up")
    assert not (tmp_path / "r.jsonl").exists()
