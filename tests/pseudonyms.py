"""The account pseudonym as the data contract defines it, computed here with `hmac` rather than by
`udfs.cleaning.pseudonymize`, so that tests expecting a pseudonym in an output do not take it from
the code that wrote the output."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any, Callable


def hmac_pseudonym(account_id: str, key: bytes) -> str:
    """The first 32 hex digits of HMAC-SHA256 of `account_id` (UTF-8) under `key`. Cleaning first
    collapses runs of whitespace in the id, so give an id as cleaning leaves it."""
    return hmac.new(key, account_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def pseudonymized(original: Any, redacted: Any, pseudonym_of: Callable[[str], str]) -> int:
    """Checks that `redacted` is `original` with each account_id value replaced by its pseudonym
    (objects as ("object", pairs), so duplicated keys are all seen); returns how many were."""
    if isinstance(original, tuple):
        assert isinstance(redacted, tuple) and [k for k, _ in redacted[1]] == [k for k, _ in original[1]]
        count = 0
        for (key, value), (_, redacted_value) in zip(original[1], redacted[1]):
            if key == "account_id":
                assert re.fullmatch("[0-9a-f]{32}", redacted_value)
                if isinstance(value, str):
                    assert redacted_value == pseudonym_of(value)
                count += 1
            else:
                count += pseudonymized(value, redacted_value, pseudonym_of)
        return count
    if isinstance(original, list):
        assert isinstance(redacted, list) and len(redacted) == len(original)
        return sum(pseudonymized(o, r, pseudonym_of) for o, r in zip(original, redacted))
    assert redacted == original
    return 0


def as_pairs(text: str | bytes) -> Any:
    """JSON with objects as ("object", [(key, value), ...]), so duplicated keys are all kept."""
    return json.loads(text, object_pairs_hook=lambda pairs: ("object", pairs))


def hmac_token(pseudonym: str, key: bytes) -> str:
    """The pseudonym token a version 2 dead letter's bytes carry in place of an account id, as
    docs/contracts.md defines it: "rs-pseudonym:v1:<pseudonym>:<MAC>", the MAC being the first 32
    hex digits of HMAC-SHA256 under `key` of byte 0xff, "rs-pseudonym:v1:" and the pseudonym."""
    mac = hmac.new(key, b"\xffrs-pseudonym:v1:" + pseudonym.encode("ascii"), hashlib.sha256).hexdigest()[:32]
    return f"rs-pseudonym:v1:{pseudonym}:{mac}"


def letter_bytes(letter: dict[str, Any]) -> bytes:
    """The redacted bytes of a version 2 dead letter (its `raw_base64`, strictly decoded)."""
    return base64.b64decode(letter["raw_base64"], validate=True)
