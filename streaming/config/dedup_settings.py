"""The dedup section of the configuration (streaming/config/settings.py)."""

from __future__ import annotations

from pydantic import Field

from streaming.config.base import Section

DAY_MS = 86_400_000


class DedupSettings(Section):
    """De-duplication by txn_id (udfs/dedup.py, docs/dedup.md): a transaction whose txn_id was
    scored under the same model key less than `horizon_ms` of event time before the watermark is a
    redelivery, dead-lettered with stage `dedup`; each scored txn_id is kept in state until the
    watermark passes its event time plus `horizon_ms`. 0 turns it off."""

    horizon_ms: int = Field(default=DAY_MS, ge=0)

    @property
    def enabled(self) -> bool:
        return self.horizon_ms > 0
