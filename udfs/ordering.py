"""Putting bundles back in the order they were made (pure Python).

When bundles are spread over several parallel workers, the batches of one shard can arrive out of
order. Every bundle of a sequenced stream has a number (RecordBundler.java writes it in the
bundle's header, udfs.wire.split_bundle_header reads it) and every worker sends each shard one
batch per bundle, even an empty one, so a shard sees every number of every stream and can release
batches strictly in order.
"""

from __future__ import annotations

from typing import Any, Hashable


class BundleSequencer:
    """Releases numbered batches per (shard, stream) in number order, starting at 0.

    A stream is one run of one bundling operator; a restarted job starts new streams, so nothing
    waits for a number that will never come. Holds only batches that arrived early; with aligned
    checkpoints none is waiting when a checkpoint is taken (every earlier bundle is before the
    barrier), so this needs no Flink state.
    """

    def __init__(self) -> None:
        self._next: dict[tuple[Hashable, str], int] = {}
        self._early: dict[tuple[Hashable, str], dict[int, Any]] = {}

    def release(self, shard: Hashable, stream: str, seq: int, batch: Any) -> list[Any]:
        """The batches that are now in order, oldest first (possibly none, possibly several)."""
        key = (shard, stream)
        expected = self._next.get(key, 0)
        if seq != expected:
            self._early.setdefault(key, {})[seq] = batch
            return []
        released = [batch]
        expected += 1
        early = self._early.get(key)
        while early and expected in early:
            released.append(early.pop(expected))
            expected += 1
        self._next[key] = expected
        return released

    def waiting(self) -> int:
        """How many batches arrived early and are held."""
        return sum(len(early) for early in self._early.values())
