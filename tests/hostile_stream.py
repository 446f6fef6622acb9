"""A hostile stream of transactions for job-level runs (issue 30: tests/integration/test_hostile_run.py
in CI, tests/hostile/ for 100,000 records with `make hostile`), and the checks that the job's outputs
reconcile with it record by record.

About half the records are malformed: every kind of udfs/generator.py (expected as
tests/integration/test_accounting.py's EXPECTED says), and the kinds of EXTRA_KINDS: documents nested
10,000 deep, documents over the size cap and exactly at it, NaN and Infinity, BOMs, NULs, duplicate
and escaped keys, invalid UTF-8 in an account id, wrong types, unknown channels. Some are duplicates
of earlier records: redeliveries of a recent or of any earlier scored record (its bytes again, or
its txn_id respelled), dead-lettered with stage `dedup` (docs/dedup.md); malformed records again,
dead-lettered again as the first time; and a scored record's txn_id under another model key, scored
and reported on the `repeated-ids` output.

Each record carries what must become of it, stated here from the data contract (docs/contracts.md,
docs/dedup.md), not taken from the job: scored (under which txn_id and model key), or dead-lettered
at a stage with a reason matching a pattern. The same seed always gives the same records.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable, Iterable

from tests.integration.test_accounting import EXPECTED as GENERATOR_EXPECTED
from udfs.generator import MALFORMED_KINDS, GeneratorSettings, generate_with_kinds, malformed

MAX_RECORD_BYTES = 65_536  # cleaning.max_record_bytes of the profiles the runs use (conf/local.yaml)
HORIZON_MS = 86_400_000  # the dedup.horizon_ms the runs set: a day, longer than any stream here spans
DEEP = 10_000  # nesting levels of the deep documents, ten times orjson's limit (1,024)
SHALLOW = 500  # nesting levels of a deep but acceptable unknown field

NOT_JSON = r"^not valid JSON"
OVER_CAP = rf"^record is \d+ bytes, over the {MAX_RECORD_BYTES}-byte limit$"
# The reason of a redelivery's dead letter (docs/dedup.md): the first delivery's event time and position.
DEDUP_REASON = re.compile(
    rf"^txn_id already scored under this model key within dedup\.horizon_ms \({HORIZON_MS}\): first delivery "
    r"event_time \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \((?P<event_time>\d+)\) from (?P<first>.+)$")

# kind -> (stage or None when the record must be scored, a pattern its one-line reason must match).
EXTRA_KINDS: dict[str, tuple[str | None, str | None]] = {
    # Scored: hostile but valid.
    "at_cap": (None, None),  # a valid record padded to exactly MAX_RECORD_BYTES bytes
    "nested_unknown_field": (None, None),  # an unknown field nested SHALLOW deep
    "duplicate_key_last_valid": (None, None),  # "amount" twice, the last one valid (JSON: the last wins)
    "duplicate_account_key": (None, None),  # "account_id" twice: the last one is the account
    "escaped_account_key": (None, None),  # "\u0061ccount\u005fid": the key it spells is account_id
    "escaped_nul_in_value": (None, None),  # "\u0000" in merchant_id: a string may hold it
    "bom_in_value": (None, None),  # U+FEFF inside merchant_id
    "carriage_return": (None, None),  # the line ends in \r, which is JSON whitespace
    "integer_txn_id": (None, None),  # txn_id a JSON integer: the contract takes a string or an integer
    # Dead-lettered at decode.
    "over_cap_by_one": ("decode", rf"^record is {MAX_RECORD_BYTES + 1} bytes, over the {MAX_RECORD_BYTES}-byte limit$"),
    "huge": ("decode", OVER_CAP),  # 100 to 600 KB, under Kafka's 1 MiB message cap
    "invalid_utf8_in_account": ("decode", r"^not valid UTF-8"),
    # Dead-lettered at parse.
    "deep_array": ("parse", NOT_JSON),
    "deep_object": ("parse", NOT_JSON),
    "deep_in_record": ("parse", NOT_JSON),
    "bare_nan_or_infinity": ("parse", NOT_JSON),
    "huge_number": ("parse", NOT_JSON),  # 1e400 is not a finite double
    "leading_bom": ("parse", NOT_JSON),  # a BOM before the object is not JSON
    "raw_nul_in_string": ("parse", NOT_JSON),  # a control character in a string
    "nul_after_object": ("parse", NOT_JSON),
    "lone_surrogate": ("parse", NOT_JSON),
    "scalar_document": ("parse", r"^expected a JSON object, got (int|str|bool|NoneType|float)$"),
    # Dead-lettered at clean.
    "empty_object": ("clean", r"^txn_id is missing$"),
    "duplicate_key_last_bad": ("clean", r"^amount is negative"),
    "escaped_account_key_bad": ("clean", r"^amount is negative"),
    "txn_id_wrong_type": ("clean", r"^txn_id must be a string, got (array|object|boolean|number)$"),
    "country_wrong_type": ("clean", r"^country ('44' is not an ISO-3166 alpha-2 code|must be a string, got (array|object|boolean))$"),
    "features_not_object": ("clean", r"^features must be an object"),
    "channel_unknown_or_empty": ("clean", r"^channel ('[^']*' is not one of [a-z, ]+|is empty)$"),
}
# Duplicates, by what they repeat (see the module's docstring).
DUPLICATE_KINDS = ("redelivery", "respelled_redelivery", "distant_redelivery", "other_key_repeat", "malformed_again")

# A slot's kind: "valid" (a generator record as it is), a generator malformed kind, an extra kind or a
# duplicate, with these weights. Heavy kinds are rare: 100,000 records are some 100 MB.
_HEAVY = {"at_cap": 0.1, "over_cap_by_one": 0.1, "huge": 0.01, "oversize": 0.05, "deep_object": 0.15,
          "deep_array": 0.15, "deep_in_record": 0.15}
# With these weights about 44% of the records are to be scored (the valid ones, the hostile but
# valid kinds and the other-key repeats), and 56% dead-lettered.
_WEIGHTS = {"valid": 18.48,
            **{kind: _HEAVY.get(kind, 1.0) for kind in MALFORMED_KINDS},
            **{kind: _HEAVY.get(kind, 0.5) for kind in EXTRA_KINDS},
            "redelivery": 4.0, "respelled_redelivery": 1.0, "distant_redelivery": 1.0, "other_key_repeat": 0.5, "malformed_again": 1.0}
ALL_KINDS = tuple(_WEIGHTS)
# A duplicate repeats one of the last this many records (about 10 s of event time); a distant
# redelivery any earlier scored one (a partition replayed from far back, still within the horizon), so
# that many first deliveries are checkpointed long before their redelivery comes, across a kill.
REDELIVERY_DISTANCE = 100
# What a duplicate may repeat: scored records as the generator writes them, or light malformed ones.
_REPEATABLE_MALFORMED = tuple(kind for kind in (*MALFORMED_KINDS, *EXTRA_KINDS)
                              if kind not in _HEAVY and (GENERATOR_EXPECTED.get(kind) or EXTRA_KINDS.get(kind))[0])


@dataclass(frozen=True)
class Hostile:
    """One record of the stream and what must become of it."""

    kind: str  # "valid", a MALFORMED_KINDS or EXTRA_KINDS name, or a DUPLICATE_KINDS name
    line: bytes  # without a line ending
    stage: str | None  # None: scored; else the stage of its dead letter
    reason: str | None  # a pattern the dead letter's reason must match (None when scored)
    txn_id: str | None  # the txn_id of its score or dead letter (None: the letter carries none)
    model_key: str | None  # the model key of its score (None unless scored)
    account: str | None = None  # the account id (as cleaning reads it) whose pseudonym a score carries
    first: int | None = None  # for a redelivery or other-key repeat: the index of the record it repeats
    event_time_ms: int | None = None  # cleaned event time (epoch ms) of a scored record


def hostile_stream(records: int, seed: int) -> list[Hostile]:
    """`records` records (at least twice as many as ALL_KINDS, so that every kind appears: the first
    slots alternate a valid record and each kind in turn, then kinds are drawn by weight), built from udfs/generator.py's transactions of
    `seed` (txn_ids t<seed>-<index>)."""
    assert records >= 2 * len(ALL_KINDS), f"at least {2 * len(ALL_KINDS)} records, so that each kind appears"
    rng = random.Random(seed)
    base = generate_with_kinds(GeneratorSettings(records=records, seed=seed, malformed_share=0.0))
    stream: list[Hostile] = []
    scored_plain: list[int] = []  # indices of "valid" records, which duplicates repeat
    repeatable_malformed: list[int] = []
    repeated_under_other_key: set[int] = set()  # originals already repeated under another key
    weights = [_WEIGHTS[kind] for kind in ALL_KINDS]
    for index, (_, line) in enumerate(base):
        # The first slots alternate: a valid record (for duplicates to repeat), then each kind in turn.
        if index < 2 * len(ALL_KINDS):
            kind = "valid" if index % 2 == 0 else ALL_KINDS[index // 2]
        else:
            kind = rng.choices(ALL_KINDS, weights)[0]
        record = json.loads(line)
        # The last 40 valid records cover the last REDELIVERY_DISTANCE slots (about 35% are valid).
        recent = [i for i in scored_plain[-40:] if i >= len(stream) - REDELIVERY_DISTANCE]
        if kind == "distant_redelivery":
            if scored_plain:
                stream.append(_redelivery(stream, rng.choice(scored_plain), kind))
                continue
            kind = "valid"
        if kind in ("redelivery", "respelled_redelivery"):
            if recent:
                stream.append(_redelivery(stream, rng.choice(recent), kind))
                continue
            kind = "valid"
        if kind == "other_key_repeat":
            candidates = [i for i in recent if i not in repeated_under_other_key]
            if candidates:
                first = rng.choice(candidates)
                repeated_under_other_key.add(first)
                stream.append(_other_key_repeat(stream[first], first))
                continue
            kind = "valid"
        if kind == "malformed_again":
            candidates = [i for i in repeatable_malformed[-40:] if i >= len(stream) - REDELIVERY_DISTANCE]
            if candidates:
                again = stream[rng.choice(candidates)]
                stream.append(Hostile("malformed_again", again.line, again.stage, again.reason, again.txn_id, None))
                continue
            kind = "valid"
        if kind == "valid":
            scored_plain.append(len(stream))
            stream.append(_scored("valid", line, record))
            continue
        hostile = _malformed(kind, record, rng) if kind in MALFORMED_KINDS else _extra(kind, record, rng)
        if kind in _REPEATABLE_MALFORMED:
            repeatable_malformed.append(len(stream))
        stream.append(hostile)
    return stream


def _dumps(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


def _event_time_ms(value: int | str) -> int:
    """The generator's event time (epoch ms, or ISO-8601 with a zone) as epoch milliseconds."""
    if isinstance(value, int):
        return value
    return round(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def _scored(kind: str, line: bytes, record: dict[str, Any], txn_id: str | None = None) -> Hostile:
    """A record that must be scored: under its txn_id (or `txn_id`) and its merchant category (the
    runs' model key, as the generator writes it: normalized), with the pseudonym of its account_id."""
    return Hostile(kind, line, None, None, txn_id or record["txn_id"], record["merchant_category"],
                   account=record["account_id"], event_time_ms=_event_time_ms(record["event_time"]))


def _padded(record: dict[str, Any], size: int) -> bytes:
    """`record` with an unknown field "memo" of x's making the line exactly `size` bytes."""
    padded = dict(record, memo="")
    padded["memo"] = "x" * (size - len(_dumps(padded)))
    line = _dumps(padded)
    assert len(line) == size
    return line


def _with_value(record: dict[str, Any], field: str, text: bytes) -> bytes:
    """`record` as a line with `field`'s value written as the raw bytes `text` (which JSON may not allow)."""
    line = _dumps(dict(record, **{field: "__VALUE__"}))
    return line.replace(b'"__VALUE__"', text)


def _malformed(kind: str, record: dict[str, Any], rng: random.Random) -> Hostile:
    """A generator malformed kind, expected as tests/integration/test_accounting.py expects it."""
    stage, reason = GENERATOR_EXPECTED[kind]
    line = malformed(kind, record, rng, oversize_bytes=70_000)
    unreadable = kind in ("invalid_utf8", "empty_line", "oversize", "truncated_json", "not_an_object", "nan_literal")
    txn_id = None if unreadable or kind == "missing_txn_id" else record["txn_id"]
    return Hostile(kind, line, stage, reason, txn_id, None)


def _extra(kind: str, record: dict[str, Any], rng: random.Random) -> Hostile:
    """An EXTRA_KINDS record made from the valid `record`."""
    stage, reason = EXTRA_KINDS[kind]
    line = _dumps(record)
    txn_id: str | None = record["txn_id"]
    negative = dict(record, amount=-abs(record["amount"]) - 0.01)
    if kind == "at_cap":
        line = _padded(record, MAX_RECORD_BYTES)
    elif kind == "over_cap_by_one":
        line = _padded(record, MAX_RECORD_BYTES + 1)
    elif kind == "huge":
        line = _padded(record, rng.randint(100_000, 600_000))
    elif kind == "nested_unknown_field":
        line = _with_value(record, "memo", b"[" * SHALLOW + b"]" * SHALLOW)
    elif kind == "deep_in_record":
        line = _with_value(record, "memo", b"[" * DEEP + b"]" * DEEP)
    elif kind == "deep_array":
        line = b"[" * DEEP + b"]" * DEEP
    elif kind == "deep_object":
        line = b'{"a":' * DEEP + b"1" + b"}" * DEEP
    elif kind == "invalid_utf8_in_account":
        line = line.replace(b'"account_id":"acct-', b'"account_id":"acct-\xff')
    elif kind == "bare_nan_or_infinity":
        line = _with_value(record, "amount", rng.choice([b"NaN", b"Infinity", b"-Infinity"]))
    elif kind == "huge_number":
        line = _with_value(record, "amount", rng.choice([b"1e400", b"-1e400"]))
    elif kind == "leading_bom":
        line = b"\xef\xbb\xbf" + line
    elif kind == "raw_nul_in_string":
        line = line.replace(b'"merchant_id":"m-', b'"merchant_id":"m-\x00')
    elif kind == "nul_after_object":
        line += b"\x00"
    elif kind == "lone_surrogate":
        line = _with_value(record, "merchant_id", b'"m-\\ud800"')
    elif kind == "scalar_document":
        line = rng.choice([b"42", b'"a string"', b"true", b"null", b"1.5"])
    elif kind == "empty_object":
        line = b"{}"
        txn_id = None
    elif kind == "duplicate_key_last_valid":
        line = b'{"amount":-5,' + line[1:]
    elif kind == "duplicate_key_last_bad":
        line = line[:-1] + b',"amount":-5}'
    elif kind == "duplicate_account_key":
        line = b'{"account_id":"acct-9999999",' + line[1:]
    elif kind == "escaped_account_key":
        line = line.replace(b'"account_id"', b'"\\u0061ccount\\u005fid"')
    elif kind == "escaped_account_key_bad":
        line = _dumps(negative).replace(b'"account_id"', b'"\\u0061ccount\\u005fid"')
    elif kind == "escaped_nul_in_value":
        line = _dumps(dict(record, merchant_id=record["merchant_id"] + "\u0000"))
    elif kind == "bom_in_value":
        line = line.replace(b'"merchant_id":"', b'"merchant_id":"\xef\xbb\xbf')
    elif kind == "carriage_return":
        line += b"\r"
    elif kind == "integer_txn_id":
        number = int(record["txn_id"].split("-")[1]) + 10**12  # unique in the stream, like the original
        line = _dumps(dict(record, txn_id=number))
        txn_id = str(number)
    elif kind == "txn_id_wrong_type":
        line = _dumps(dict(record, txn_id=rng.choice([["t"], {"id": 1}, True, 12.5])))
        txn_id = None
    elif kind == "country_wrong_type":
        line = _dumps(dict(record, country=rng.choice([44, ["US"], {"code": "US"}, True])))
    elif kind == "features_not_object":
        line = _dumps(dict(record, features=rng.choice([[1, 2], "n/a", 3])))
    elif kind == "channel_unknown_or_empty":
        line = _dumps(dict(record, channel=rng.choice(["", "   ", "sms", "w\u00e9b", "WEB-2"])))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if stage is None:
        return _scored(kind, line, record, txn_id)
    if stage in ("decode", "parse"):
        txn_id = None  # nothing was read from the record
    return Hostile(kind, line, stage, reason, txn_id, None)


def _redelivery(stream: list[Hostile], first: int, kind: str) -> Hostile:
    """The scored record `stream[first]` delivered again: its bytes, or (respelled) the same
    transaction written differently, its txn_id padded with whitespace that cleaning removes."""
    original = stream[first]
    line = original.line
    if kind == "respelled_redelivery":
        record = json.loads(line)
        line = json.dumps(dict(record, txn_id=f"  {record['txn_id']} ")).encode("utf-8")
    return Hostile(kind, line, "dedup", DEDUP_REASON.pattern, original.txn_id, None, first=first)


def _other_key_repeat(original: Hostile, first: int) -> Hostile:
    """The txn_id of the scored `original` on another transaction, under another merchant category."""
    record = json.loads(original.line)
    record["merchant_category"] = "gift_cards" if record["merchant_category"] != "gift_cards" else "fuel"
    return replace(_scored("other_key_repeat", _dumps(record), record), first=first)


def outcome_counts(stream: Iterable[Hostile]) -> Counter:
    """(stage or "scored", kind) -> records: what the stream should give, for a report."""
    return Counter((hostile.stage or "scored", hostile.kind) for hostile in stream)


def reconcile(stream: list[Hostile], scores: list[dict[str, Any]], dead_letters: list[dict[str, Any]],
              reports: list[dict[str, Any]], position_of_source: Callable[[dict[str, Any]], int],
              position_of_text: Callable[[str], int], pseudonym_of: Callable[[str], str]) -> Counter:
    """Checks the committed outputs of a run on `stream` record by record, and returns the counts
    per (stage or "scored", kind) the outputs show (equal to `outcome_counts(stream)` once it passes).

    `position_of_source`: the index in `stream` of the record a dead letter's or report's `source`
    names; `position_of_text`: the same for a source as a dedup reason words it ("file F line N",
    "topic T partition P offset O"); `pseudonym_of`: an account id's pseudonym under the run's key."""
    assert len(scores) + len(dead_letters) == len(stream), (
        f"read {len(stream)} != scored {len(scores)} + dead-lettered {len(dead_letters)}")
    seen: dict[int, dict[str, Any]] = {}
    actual: Counter = Counter()
    for letter in dead_letters:
        position = position_of_source(letter["source"])
        assert position not in seen, f"record {position} dead-lettered twice: {seen[position]}, {letter}"
        seen[position] = letter
        expected = stream[position]
        what = f"record {position} ({expected.kind}): {letter['stage']}: {letter['reason'][:300]}"
        assert expected.stage is not None, f"{what}: it should have been scored"
        assert letter["stage"] == expected.stage, f"{what}: expected stage {expected.stage}"
        assert re.search(expected.reason, letter["reason"]), f"{what}: expected a reason matching {expected.reason}"
        assert "\n" not in letter["reason"], what
        assert letter["txn_id"] == expected.txn_id, f"{what}: txn_id {letter['txn_id']!r}, expected {expected.txn_id!r}"
        if expected.stage == "dedup":
            match = DEDUP_REASON.match(letter["reason"])
            assert position_of_text(match["first"]) == expected.first, f"{what}: the first delivery is {expected.first}"
            assert int(match["event_time"]) == stream[expected.first].event_time_ms, what
        actual[(letter["stage"], expected.kind)] += 1
    missing = [(i, h.kind, h.stage) for i, h in enumerate(stream) if h.stage is not None and i not in seen]
    assert not missing, f"{len(missing)} records should have been dead-lettered; the first: {missing[:10]}"

    expected_scores = Counter((h.txn_id, h.model_key, pseudonym_of(h.account)) for h in stream if h.stage is None)
    scored = Counter((score["txn_id"], score["model_key"], score["account"]) for score in scores)
    assert scored == expected_scores, (f"scores differ: unexpected {list((scored - expected_scores).items())[:10]}, "
                                       f"missing {list((expected_scores - scored).items())[:10]}")
    kinds = {(h.txn_id, h.model_key): h.kind for h in stream if h.stage is None}
    for score in scores:
        actual[("scored", kinds[(score["txn_id"], score["model_key"])])] += 1

    # Each txn_id scored under two model keys is reported once, naming both records.
    repeats = {h.txn_id: (i, h) for i, h in enumerate(stream) if h.kind == "other_key_repeat"}
    reported, expected_reports = Counter(report["txn_id"] for report in reports), Counter(list(repeats))
    assert reported == expected_reports, (
        f"repeated-ids: unexpected {[r for r in reports if reported[r['txn_id']] != expected_reports[r['txn_id']]][:3]}, "
        f"missing {[(repeats[t][0], repeats[t][1].first) for t in expected_reports - reported][:5]}")
    for report in reports:
        position, repeat = repeats[report["txn_id"]]
        first = stream[repeat.first]
        assert {report["first"]["model_key"], report["repeat"]["model_key"]} == {first.model_key, repeat.model_key}
        assert {position_of_source(report["first"]["source"]), position_of_source(report["repeat"]["source"])} == {
            repeat.first, position}, report
    assert actual == outcome_counts(stream)
    return actual


def assert_no_account_id(outputs: Iterable[bytes], what: str) -> int:
    """Fails if any output line (bytes) holds a raw account id of the stream ("acct-..."), in the
    line or in the redacted bytes of a dead letter; returns how many lines were checked."""
    from tests.pseudonyms import letter_bytes

    checked = 0
    for line in outputs:
        assert b"cct-" not in line, f"a raw account id in {what}: {line[:300]!r}"
        value = json.loads(line)
        if isinstance(value, dict) and value.get("raw_base64"):
            assert b"cct-" not in letter_bytes(value), f"a raw account id in a dead letter's bytes in {what}"
        checked += 1
    return checked


def summary_table(counts: Counter) -> str:
    """Counts per (stage, kind) as aligned text lines, stages in pipeline order, for a run's report."""
    order = {"scored": 0, "decode": 1, "parse": 2, "clean": 3, "features": 4, "dedup": 5}
    lines = []
    for stage in sorted({stage for stage, _ in counts}, key=lambda s: order.get(s, 9)):
        kinds = {kind: n for (s, kind), n in counts.items() if s == stage}
        lines.append(f"{stage:9} {sum(kinds.values()):7}  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    return "\n".join(lines)
