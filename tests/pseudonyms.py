"""The account pseudonym as the data contract defines it, computed here with `hmac` rather than by
`udfs.cleaning.pseudonymize`, so that tests expecting a pseudonym in an output do not take it from
the code that wrote the output."""

from __future__ import annotations

import hashlib
import hmac


def hmac_pseudonym(account_id: str, key: bytes) -> str:
    """The first 32 hex digits of HMAC-SHA256 of `account_id` (UTF-8) under `key`. Cleaning first
    collapses runs of whitespace in the id, so give an id as cleaning leaves it."""
    return hmac.new(key, account_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
