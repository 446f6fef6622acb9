"""Which dead letters `riskstream replay` sends again, and its accounting (pure Python, no Flink).

A dead letter is selected by the filters (`ReplayFilter`); a selected letter is either re-sent (its
original bytes, redacted: `raw_base64` of a version 2 letter) or refused with one of the reasons
below (`replay_decision`). Accounting: selected = re-sent + refused (`ReplayAccount`).
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from udfs.cleaning import account_id_values, token_pseudonym

# Why a selected dead letter is not sent again; the replay's table counts each.
REFUSED_DUPLICATE = "stage dedup: a duplicate is never sent again"
REFUSED_VERSION_1 = "schema_version 1: its raw is not the exact bytes (non-UTF-8 bytes escaped, ids replaced)"
REFUSED_RAW_MISSING = "no raw bytes in the letter"
REFUSED_TRUNCATED = "cut at the size cap (cleaning.max_record_bytes): only its first bytes were kept"
REFUSED_OTHER_KEY = ("an account_id is not a pseudonym token of the current key: written under an earlier "
                     "pseudonymization key, the raw id is gone")
REFUSED_NEWLINE = "holds a newline byte, which a file of one record per line cannot carry; replay it to a topic"
REFUSED_UNREADABLE = "not a dead letter (not a JSON object)"

DEDUP_STAGE = "dedup"


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead letters a replay selects: all of these that are given (None: any).

    stage: the letter's stage, exactly; reason: text the reason contains, case-insensitive;
    since_ms / until_ms: the letter's `received_at` (when the job dead-lettered it, epoch ms) is
    >= since_ms and < until_ms."""

    stage: str | None = None
    reason: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def selects(self, letter: dict[str, Any]) -> bool:
        """Whether `letter` (a parsed dead letter of any version) passes every filter given; a
        letter without the field a filter reads does not pass it."""
        if self.stage is not None and letter.get("stage") != self.stage:
            return False
        if self.reason is not None and self.reason.casefold() not in str(letter.get("reason", "")).casefold():
            return False
        if self.since_ms is not None or self.until_ms is not None:
            received_at = letter.get("received_at")
            if not isinstance(received_at, int) or isinstance(received_at, bool):
                return False
            if self.since_ms is not None and received_at < self.since_ms:
                return False
            if self.until_ms is not None and received_at >= self.until_ms:
                return False
        return True


def replay_decision(letter: dict[str, Any], key: bytes, one_record_per_line: bool) -> tuple[bytes | None, str | None]:
    """(the bytes to send again, None) or (None, why not) for a selected dead letter, under the
    pseudonymization `key` of the job that will read them; `one_record_per_line`: they go to a
    file, where a newline would split the record.

    Refused: stage dedup (a duplicate is never re-sent); version 1 (its `raw` is text, not the
    bytes); no `raw_base64` (or one that is not base64); `truncated`; any account_id value that is
    not a pseudonym token verifying under `key` (written under an earlier key: the job would hash
    the token as if it were an id, and the account's true pseudonym cannot be recovered)."""
    if letter.get("stage") == DEDUP_STAGE:
        return None, REFUSED_DUPLICATE
    encoded = letter.get("raw_base64")
    if not isinstance(encoded, str):
        return None, REFUSED_VERSION_1 if letter.get("schema_version") == 1 and "raw" in letter else REFUSED_RAW_MISSING
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return None, REFUSED_RAW_MISSING
    if letter.get("truncated") is not False:  # version 2 always says; anything else is not known to be whole
        return None, REFUSED_TRUNCATED
    if any(token_pseudonym(value, key) is None for value in account_id_values(raw)):
        return None, REFUSED_OTHER_KEY
    if one_record_per_line and b"\n" in raw:
        return None, REFUSED_NEWLINE
    return raw, None


@dataclass
class ReplayAccount:
    """A replay's accounting: letters read, selected by the filters, re-sent, and refused by reason.
    selected = resent + sum(refused.values()) once every selected letter was decided and sent."""

    read: int = 0
    selected: int = 0
    resent: int = 0
    refused: Counter = field(default_factory=Counter)

    @property
    def reconciled(self) -> bool:
        return self.selected == self.resent + sum(self.refused.values())

    def lines(self, origin: str, target: str) -> list[str]:
        """The summary line, then the refusals' table (count, reason), most frequent first."""
        refused = sum(self.refused.values())
        summary = (f"replay: read {self.read:,} dead letters from {origin}, selected {self.selected:,} = "
                   f"re-sent {self.resent:,} to {target} + refused {refused:,}")
        if not self.refused:
            return [summary]
        width = max(len(f"{count:,}") for count in self.refused.values())
        table = [f"  refused {count:>{width},}  {reason}" for reason, count in self.refused.most_common()]
        return [summary, *table]
