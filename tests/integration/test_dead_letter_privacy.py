"""Through the real job, a real account id never reaches an output, however the record spells its
account_id key or the id itself, and however the record is broken."""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson

from tests.pseudonyms import as_pairs, hmac_pseudonym, hmac_token, letter_bytes, pseudonymized

SECRET = "QZXJ-WKVH-YQZX"  # upper-case letters no output writes otherwise
FEATURES = {"txn_count_1h": 1, "txn_count_24h": 3, "amount_to_avg_ratio": 1.2, "minutes_since_last_txn": 7.5,
            "distinct_merchants_24h": 2, "account_age_days": 400, "failed_logins_24h": 0,
            "device_risk_score": 0.1, "distance_from_home_km": 4.0, "new_device": 0}


def u_escaped(text: str, upper: bool = False, every: int = 1) -> str:
    """`text` with every `every`-th character (from the first) as a JSON \\uXXXX escape."""
    return "".join((f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}") if i % every == 0 else c
                   for i, c in enumerate(text))


def any_spelling(text: str) -> re.Pattern:
    """Matches the bytes of `text` with each character literal or \\u-escaped in either hex case,
    behind any number of backslashes (an escape inside `raw` is written as \\\\uXXXX in a file)."""
    return re.compile(b"".join(b"(?:" + re.escape(c.encode()) + rb"|\\+u(?i:" + f"{ord(c):04x}".encode() + b"))"
                               for c in text))


BASE64_FIELD = re.compile(rb'"raw_base64":"[A-Za-z0-9+/=]*"')

# The whole id, and every three characters of it (what a cut could leave).
SECRET_PATTERNS = [any_spelling(SECRET)] + [any_spelling(SECRET[i:i + 3]) for i in range(len(SECRET) - 2)]

PLAIN_KEY = '"account_id"'
KEYS = [PLAIN_KEY, '"account\\u005fid"', '"account\\u005Fid"', '"\\u0061ccount_id"',
        '"' + u_escaped("account_id", upper=True) + '"', '"' + u_escaped("account_id") + '"']
IDS = ['"' + SECRET + '"', '"' + u_escaped(SECRET, every=3) + '"', '"' + u_escaped(SECRET, upper=True, every=2) + '"',
       '"' + u_escaped(SECRET) + '"']


def line(i: int, members: list[str], **changes) -> bytes:
    """A transaction as one JSON line, with `members` (JSON text, e.g. an account_id member in some
    spelling) first; valid unless `members` or `changes` make it not."""
    record = {"txn_id": f"p-{i:03d}", "event_time": 1_767_225_600_000 + 1000 * i, "merchant_category": "grocery",
              "country": "US", "channel": "web", "amount": 10.0 + i, "currency": "USD", "features": FEATURES,
              "is_fraud": i % 2}
    record.update(changes)
    body = json.dumps(record, separators=(",", ":"))
    return ("{" + "".join(member + "," for member in members) + body[1:]).encode()


KEPT_BYTES = 1024  # cleaning.dead_letter_raw_bytes in conf/local.yaml


def privacy_records() -> tuple[list[bytes], set[int]]:
    """(lines, the 1-based numbers of the lines the job must dead-letter)."""
    valid = [line(i, [key + ":" + IDS[i % len(IDS)]]) for i, key in enumerate(KEYS)]
    valid += [
        line(6, [PLAIN_KEY + ":" + IDS[1], '"account\\u005fid" : ' + IDS[2]]),  # duplicated
        line(7, ['"meta":{"account\\u005fid":' + IDS[0] + ',"list":[{"\\u0061ccount_id":' + IDS[3] + '}]}',
                 '"\\u0061ccount_id":' + IDS[0]]),  # nested
    ]
    valid += [line(i, [KEYS[i % len(KEYS)] + ":" + IDS[i % len(IDS)]]) for i in range(8, 20)]

    cut_from = line(20, ['"account\\u005fid":' + IDS[1]]).decode()
    key_end = len('{"account\\u005fid"')
    invalid = [
        line(30, [KEYS[1] + ":" + IDS[0]], amount=-1),  # clean
        line(31, [KEYS[3] + ":" + IDS[1]], channel="fax"),  # clean
        line(32, ['"meta":{"account\\u005fid":' + IDS[2] + '}', '"list":[{"\\u0061ccount_id":' + IDS[0] + '}]',
                  PLAIN_KEY + ":" + IDS[3], KEYS[2] + ":" + IDS[1]], amount=-1),  # nested and duplicated
        line(33, [KEYS[4] + ':{"id":' + IDS[0] + "}"]),  # clean: not a string
        line(34, [KEYS[1] + ":[" + IDS[2] + "]"]),  # clean: not a string
        line(35, [KEYS[1] + ":" + IDS[0], '"amount":NaN']),  # parse
        cut_from[:key_end - 3].encode(),  # cut inside the key's escape
        cut_from[:key_end].encode(),  # cut right after the key
        cut_from[:key_end + 1].encode(),  # ... after its colon
        cut_from[:key_end + 2 + len("\\u0051ZX")].encode(),  # ... inside the id
        cut_from[:cut_from.index("\\u004a") + 3].encode(),  # ... inside an escape of the id
        cut_from[:key_end + 2 + len(IDS[1])].encode(),  # ... after the id
        line(36, [KEYS[3] + ":" + IDS[0]], memo="\u00e9" * 40_000),  # oversize
        line(37, ['"memo":"' + "x" * (KEPT_BYTES - len('{"memo":"",' + KEYS[5] + ':"QZXJ')) + '"', KEYS[5] + ":" + IDS[0]],
             pad="y" * 70_000),  # oversize, the kept 1024 bytes end inside the id
        line(38, [KEYS[1] + ":" + IDS[0]], merchant_category="caf\udce9").replace(b"\\udce9", b"\xe9"),  # not UTF-8
        line(39, [KEYS[2] + ':"QZXJ\\udcff' + SECRET[4:] + '"']).replace(b"\\udcff", b"\xff"),  # not UTF-8 in the id
    ]
    lines = valid + invalid
    return lines, set(range(len(valid) + 1, len(lines) + 1))


INPUT_FILE = "privacy.jsonl"  # this test's file in the shared run (conftest.shared_run)


def test_no_output_carries_a_real_account_id_in_any_spelling(shared_run):
    """Every file the shared run wrote (its model snapshots at every update) is searched: the other
    tests' inputs only add records that carry no such id."""
    lines, dead_lettered = privacy_records()
    assert shared_run.inputs[INPUT_FILE] == lines
    assert sum(bool(SECRET_PATTERNS[0].search(raw)) for raw in lines) > 25  # the premise: the id is in the input
    assert sum(SECRET.encode() in raw for raw in lines) < 20  # ... often in another spelling

    outputs = shared_run.outputs
    assert outputs.settings.cleaning.dead_letter_raw_bytes == KEPT_BYTES
    assert outputs.settings.model.snapshot_every == 1

    letters = shared_run.dead_letters_of(INPUT_FILE)
    assert {letter["source"]["line"] for letter in letters} == dead_lettered
    assert len(letters) == len(dead_lettered)
    assert {score["txn_id"] for score in outputs.scores if score["txn_id"].startswith("p-")} \
        == {f"p-{i:03d}" for i in range(20)}
    assert any(snapshot["model_key"] == "grocery" for snapshot in outputs.snapshots)

    written = [path for path in Path(outputs.settings.output.path).rglob("*") if path.is_file()]
    # Analytics are on in the profile; late lines only when a record came late.
    folders = {path.relative_to(outputs.settings.output.path).parts[0] for path in written}
    assert {"scores", "dead-letters", "model-snapshots", "analytics"} <= folders \
        <= {"scores", "dead-letters", "model-snapshots", "analytics", "late"}
    for path in written:
        data = path.read_bytes()
        contents = [data]
        if path.relative_to(outputs.settings.output.path).parts[0] == "dead-letters":
            # A dead letter's bytes are base64 in the file, where a search for three letters of the
            # id could hit by chance: they are searched decoded, and the rest of the line apart.
            contents = [BASE64_FIELD.sub(b"", data)] + [letter_bytes(orjson.loads(line))
                                                        for line in data.splitlines() if line.strip()]
        for content in contents:
            for pattern in SECRET_PATTERNS:
                assert not pattern.search(content), f"{path}: {pattern.search(content).group()!r}"

    key = outputs.settings.pseudonym_key()
    checked = 0
    for letter in letters:
        raw = lines[letter["source"]["line"] - 1]
        if "raw_bytes" in letter:
            continue  # oversize: only a prefix is kept
        try:
            orjson.loads(raw)  # complete JSON, as the job reads it
        except orjson.JSONDecodeError:
            continue
        assert pseudonymized(as_pairs(raw), as_pairs(letter["raw"]), lambda v: hmac_pseudonym(v, key)) > 0
        # The bytes: each id as the token of its pseudonym (a token is no 32-hex pseudonym, so its
        # pseudonym is taken out to compare).
        tokens = re.compile(r'"rs-pseudonym:v1:([0-9a-f]{32}):[0-9a-f]{32}"')
        for match in tokens.finditer(letter_bytes(letter).decode()):
            assert match.group() == '"' + hmac_token(match.group(1), key) + '"'
        as_pseudonyms = tokens.sub(lambda match: '"' + match.group(1) + '"', letter_bytes(letter).decode())
        assert pseudonymized(as_pairs(raw), as_pairs(as_pseudonyms), lambda v: hmac_pseudonym(v, key)) > 0
        checked += 1
    assert checked == 5
