"""Numbered bundles come back in order, per shard and stream, whatever order they arrive in."""

from __future__ import annotations

import random

import pytest

from udfs.ordering import BundleSequencer
from udfs.wire import split_bundle_header


def test_a_bundle_header_is_split_from_its_records():
    assert split_bundle_header("#0-9f3a:17\nfile:1:/a\tx\nfile:2:/a\ty") == ("0-9f3a", 17, "file:1:/a\tx\nfile:2:/a\ty")


def test_a_bundle_without_header_is_all_records():
    assert split_bundle_header("file:1:/a\t#not a header") == (None, None, "file:1:/a\t#not a header")


@pytest.mark.parametrize("seed", range(20))
def test_batches_are_released_in_number_order_per_shard_and_stream(seed):
    rng = random.Random(seed)
    sent = [(shard, stream, seq) for stream in ("0-a", "1-b") for seq in range(30) for shard in range(3)]
    arrivals = sent[:]
    rng.shuffle(arrivals)
    sequencer = BundleSequencer()
    released = {}
    for shard, stream, seq in arrivals:
        for batch in sequencer.release(shard, stream, seq, (shard, stream, seq)):
            released.setdefault((batch[0], batch[1]), []).append(batch[2])
    assert released == {(shard, stream): list(range(30)) for shard in range(3) for stream in ("0-a", "1-b")}
    assert sequencer.waiting() == 0


def test_an_early_batch_waits_for_the_missing_one():
    sequencer = BundleSequencer()
    assert sequencer.release(0, "s", 1, "second") == []
    assert sequencer.release(0, "s", 2, "third") == []
    assert sequencer.waiting() == 2
    assert sequencer.release(0, "s", 0, "first") == ["first", "second", "third"]
    assert sequencer.waiting() == 0


def test_a_new_stream_starts_at_zero_whatever_an_old_one_reached():
    sequencer = BundleSequencer()
    for seq in range(5):
        sequencer.release(0, "0-old", seq, seq)
    assert sequencer.release(0, "0-new", 0, "restarted") == ["restarted"]
