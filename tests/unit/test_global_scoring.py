"""The global model's protocol in the job (udfs/global_scoring.py), without Flink: shards that score,
keep examples and send partials, an aggregator's rounds, and versions that come back late."""

from __future__ import annotations

import math
import random

import numpy as np
import orjson
import pytest

from udfs.global_columns import Pending, partial_of
from udfs.global_model import (
    Aggregator,
    Example,
    GlobalModel,
    GradientPartial,
    Statistics,
    compute_partial,
    train_sequential,
)
from udfs.global_scoring import (
    GlobalPart,
    Rounds,
    ShardGlobal,
    final_message,
    is_final,
    partial_bytes,
    read_partial,
    segment_bytes,
    share_of,
)
from udfs.model import AdaGrad, Sgd
from udfs.records import ModelInput, ScoreContext
from udfs.scoring import ModelScorer
from udfs.wire import RecordBatch

NAMES = ("amount", "velocity", "channel=web", "channel=pos")
POSITIONS = (0, 1)
CONTEXT = ScoreContext("fuel", "US", "web", 1.0, "USD", "a")


def records(count: int, seed: int, unlabelled: float = 0.1) -> list[ModelInput]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        amount, velocity = rng.lognormvariate(3, 1), rng.random() * 5
        channel = rng.choice([2, 3])
        label = None if rng.random() < unlabelled else int(rng.random() < 1 / (1 + math.exp(3 - velocity)))
        out.append(ModelInput("k", f"t{n}", n, label, [0, 1, channel], [amount, velocity, 1.0], CONTEXT))
    return out


def example(record: ModelInput) -> Example:
    return Example(record.indices, record.values, record.label)


def rounds_of(by_shard: dict[int, list[ModelInput]], published: list[bytes]) -> list[list[Example]]:
    """The mini-batch of each published version after the first, as its `records_by_shard` says:
    each shard's next records in arrival order, in shard order. Every record must be used once."""
    taken = dict.fromkeys(by_shard, 0)
    rounds = []
    for message in published[1:]:
        batch = []
        for shard, count in sorted((int(s), n) for s, n in orjson.loads(message)["records_by_shard"].items()):
            batch += [example(r) for r in by_shard[shard][taken[shard]:taken[shard] + count]]
            taken[shard] += count
        rounds.append(batch)
    assert taken == {shard: len(rs) for shard, rs in by_shard.items()}
    return rounds


def run_protocol(by_shard: dict[int, list[ModelInput]], max_staleness: int, cadence: int, optimizer, seed: int,
                 batch_size: int = 7) -> tuple[list[bytes], list[list[int]]]:
    """Shards score their records in batches in a random interleaving; each version reaches each
    shard after a random delay (in steps), as through Kafka. Returns the published messages and the
    version each batch was scored with."""
    rng = random.Random(seed)
    shards = len(by_shard)
    part = GlobalPart(NAMES, POSITIONS, 0.0, max_staleness, share_of(cadence, shards))
    rounds = Rounds(Aggregator(GlobalModel.initial(NAMES, POSITIONS), optimizer, shards, max_staleness, cadence))
    state = {shard: part.new_shard() for shard in by_shard}
    position = dict.fromkeys(by_shard, 0)
    in_flight: list[tuple[int, int, bytes]] = []  # (due step, shard, message)
    published: list[bytes] = []
    held_at_scoring: list[int] = []
    step = 0

    def to_aggregator(partials):
        for data in partials:
            for message in rounds.add(data, step):
                published.append(message)
                for shard in by_shard:
                    in_flight.append((step + rng.randint(1, 6), shard, message))

    while not (published and is_final(published[-1])):
        step += 1
        assert step < 100_000, "the protocol did not end"
        for due, shard, message in [f for f in in_flight if f[0] <= step]:
            in_flight.remove((due, shard, message))
            part.offer(state[shard], message)
            to_aggregator(part.partials(state[shard], shard))
        shard = rng.choice(list(by_shard))
        held = state[shard]
        start = position[shard]
        if start < len(by_shard[shard]):
            batch = RecordBatch.of(by_shard[shard][start:start + batch_size])
            position[shard] = start + len(batch)
            held_at_scoring.append(held.held.version)
            part.add(held, batch, learn_labels=True)
            to_aggregator(part.partials(held, shard))
        elif not held.ended:
            held.ended = True
            to_aggregator(part.partials(held, shard))
    return published, held_at_scoring


def dealt(count: int, shards: int, seed: int) -> dict[int, list[ModelInput]]:
    rng = random.Random(seed + 1)
    by_shard: dict[int, list[ModelInput]] = {shard: [] for shard in range(shards)}
    for record in records(count, seed):
        by_shard[rng.randrange(shards)].append(record)
    return by_shard


@pytest.mark.parametrize("optimizer", [Sgd(0.5), AdaGrad(0.3)], ids=["sgd", "adagrad"])
@pytest.mark.parametrize("shards, cadence, seed", [(1, 50, 1), (3, 60, 2), (5, 40, 3)])
def test_synchronous_rounds_equal_the_sequential_reference(optimizer, shards, cadence, seed):
    by_shard = dealt(1500, shards, seed)
    published, _ = run_protocol(by_shard, 0, cadence, optimizer, seed)
    versions = [GlobalModel.from_message(message, NAMES) for message in published]
    assert [v.version for v in versions] == list(range(len(versions)))
    reference = train_sequential(GlobalModel.initial(NAMES, POSITIONS), rounds_of(by_shard, published), optimizer)
    assert len(reference) == len(versions) - 1 >= 5
    for expected, got in zip(reference, versions[1:]):
        assert got.regression.weights == pytest.approx(expected.regression.weights, abs=1e-12)
        assert got.regression.bias == pytest.approx(expected.regression.bias, abs=1e-12)
        assert got.statistics.count == expected.statistics.count
        assert got.statistics.mean == pytest.approx(expected.statistics.mean, rel=1e-12)
    assert is_final(published[-1]) and not any(is_final(m) for m in published[:-1])
    assert sum(v.labelled_records for v in versions) == sum(r.label is not None for rs in by_shard.values() for r in rs)


def test_asynchronous_rounds_apply_only_partials_within_the_staleness_and_end():
    by_shard = dealt(2000, 4, 9)
    published, held = run_protocol(by_shard, 2, 40, Sgd(0.5), 9)
    versions = [GlobalModel.from_message(message, NAMES) for message in published]
    assert [v.version for v in versions] == list(range(len(versions)))
    assert is_final(published[-1])
    assert len(versions) > 10 and max(held) > 0
    for message in published[1:]:
        oldest = orjson.loads(message)["oldest_base_version"]
        assert oldest is None or 0 <= orjson.loads(message)["version"] - 1 - oldest <= 2
    # Every statistic reached the final version, whether or not its gradient was stale.
    assert versions[-1].statistics.count == sum(len(rs) for rs in by_shard.values())


def test_a_stale_partial_is_dropped_not_applied():
    model = GlobalModel.initial(NAMES, POSITIONS)
    rounds = Rounds(Aggregator(model, Sgd(0.5), 1, max_staleness=1, cadence_records=1))
    part = GlobalPart(NAMES, POSITIONS, 0.0, 1, 1)
    shard = part.new_shard()
    labelled = [r for r in records(20, 4) if r.label is not None]
    part.add(shard, RecordBatch.of(labelled[:3]), True)
    sent = part.partials(shard, 0)  # three partials against version 0
    published = [m for data in sent for m in rounds.add(data, 0)]
    # Version 0 announced, then 1 and 2; the third partial (base 0) is 2 versions old: dropped.
    assert [GlobalModel.from_message(m, NAMES).version for m in published] == [0, 1, 2]
    assert [orjson.loads(m).get("oldest_base_version") for m in published] == [None, 0, 0]
    # The next version's message counts the dropped partial's labelled record.
    assert part.offer(shard, published[-1])
    part.add(shard, RecordBatch.of(labelled[3:4]), True)
    [later] = [m for data in part.partials(shard, 0) for m in rounds.add(data, 0)]
    assert orjson.loads(later)["dropped_stale_records"] == 1
    assert rounds.aggregator.dropped_stale == 1 and rounds.aggregator.pending == []


def test_margins_equal_the_global_model_one_record_at_a_time():
    stats = Statistics.of([r.values for r in records(50, 5)], POSITIONS)
    model = GlobalModel.initial(NAMES, POSITIONS)
    model.statistics = stats
    model.regression.weights = [0.3, -1.2, 0.5, 0.25]
    model.regression.bias = -0.7
    batch_records = records(40, 6)
    batch = RecordBatch.of(batch_records)
    part = GlobalPart(NAMES, POSITIONS, 0.0, 0, 10)
    margins = part.margins(model, batch)
    for margin, record in zip(margins, batch_records):
        assert 1 / (1 + math.exp(-margin)) == pytest.approx(model.predict_proba(record.indices, record.values), abs=1e-12)
    scorer = ModelScorer(NAMES, POSITIONS, Sgd(0.1), snapshot_every=1000, top_reasons=2)
    assessed = part.scored(model, batch, scorer.assess_columns(batch, scorer.new_table()))
    first = batch_records[0]
    x = model.standardize(first.values)
    contributions = sorted(((model.regression.weights[i] * v, i) for i, v in zip(first.indices, x)),
                           key=lambda c: -abs(c[0]))[:2]
    assert assessed.reason_index[0].tolist() == [i for _, i in contributions]
    assert assessed.reason_value[0] == pytest.approx([c for c, _ in contributions], abs=1e-12)
    assert assessed.probability == pytest.approx(1 / (1 + np.exp(-margins)), abs=1e-15)


def test_with_fewer_than_two_records_counted_the_standardized_features_count_for_nothing():
    model = GlobalModel.initial(NAMES, POSITIONS)
    model.regression.weights = [5.0, 5.0, 1.0, 0.0]
    batch = RecordBatch.of(records(3, 7))
    margins = GlobalPart(NAMES, POSITIONS, 0.0, 0, 10).margins(model, batch)
    assert margins.tolist() == [1.0 if r.indices[2] == 2 else 0.0 for r in records(3, 7)]


def test_state_and_edge_bytes_round_trip():
    # The operator's bookkeeping (streaming/job/global_versions.py GlobalShards), a dict as its map state.
    part = GlobalPart(NAMES, POSITIONS, 0.0, 1, 4)
    shard = part.new_shard()
    stored: dict[int, bytes] = {}
    cases = set()  # (sent, segments used up, one used in part)
    kept = records(40, 8)
    for start in range(0, 40, 7):
        batch = RecordBatch.of(kept[start:start + 7])
        part.add(shard, batch, True)
        stored[shard.added(len(batch))] = segment_bytes(shard.pending.split(len(shard.pending) - len(batch))[1])
        sent = part.partials(shard, 0)
        gone, rest = shard.settle()
        for number in gone:
            del stored[number]
        if rest is not None:
            stored[rest[0]] = segment_bytes(rest[1])
        assert sorted(stored) == [number for number, _ in shard.segments]
        assert sum(records for _, records in shard.segments) == len(shard.pending)
        cases.add((bool(sent), bool(gone), rest is not None))
        again = ShardGlobal.from_bytes(shard.to_bytes(), shard.held_message, [stored[n] for n, _ in shard.segments],
                                       NAMES)
        assert again.to_bytes() == shard.to_bytes() and again.pending.plain() == shard.pending.plain()
    assert again.held.to_message() == shard.held.to_message()
    assert {(True, True, True), (True, False, True)} <= cases
    partial = GradientPartial(2, 4, 3, {0: 0.5, 3: -1.0}, 0.25, Statistics(3, [1.0, 2.0], [0.5, 0.1]))
    assert read_partial(partial_bytes(partial, True)) == (partial, True)
    assert read_partial(partial_bytes(partial, False))[1] is False
    rounds = Rounds(Aggregator(GlobalModel.initial(NAMES, POSITIONS), Sgd(0.1), 3), {1}, True, False)
    restored = Rounds.from_bytes(rounds.to_bytes(), rounds.aggregator)
    assert restored.to_bytes() == rounds.to_bytes()
    final = final_message(GlobalModel.initial(NAMES, POSITIONS))
    assert orjson.loads(final)["final"] is True and is_final(final)
    assert GlobalModel.from_message(final, NAMES).version == 0


def test_an_overdue_shard_sends_what_it_has_once_per_version():
    part = GlobalPart(NAMES, POSITIONS, 0.0, 0, share=10, cadence_ms=100)
    shard = part.new_shard()
    labelled = [r for r in records(30, 11) if r.label is not None][:3]
    part.add(shard, RecordBatch.of(labelled), True)
    assert part.partials(shard, 0) == []  # fewer than its share: it waits
    [sent] = part.overdue(shard, 0)
    partial, last = read_partial(sent)
    assert (partial.labelled, partial.base_version, last) == (3, 0, False) and len(shard.pending) == 0
    assert part.overdue(shard, 0) == []  # once per version it holds
    shard.held = GlobalModel(NAMES, POSITIONS, shard.held.regression, shard.held.statistics, version=1)
    [empty] = part.overdue(shard, 0)  # nothing to send, but the round must not wait for it
    assert read_partial(empty)[0].labelled == 0
    asynchronous = GlobalPart(NAMES, POSITIONS, 0.0, 1, share=10, cadence_ms=100)
    assert asynchronous.overdue(asynchronous.new_shard(), 0) == []  # the aggregator's timer does it there


def test_a_feature_that_never_varied_counts_for_nothing_as_in_the_global_model():
    constant = [ModelInput("k", f"t{n}", n, 1, [0, 1, 2], [5.0, float(n), 1.0], CONTEXT) for n in range(4)]
    model = GlobalModel.initial(NAMES, POSITIONS)
    model.statistics = Statistics.of([r.values for r in constant], POSITIONS)
    model.regression.weights = [2.0, 0.5, 1.0, 0.0]
    probe = [ModelInput("k", "p", 0, 1, [0, 1, 2], [3000.0, 2.0, 1.0], CONTEXT)]
    [margin] = GlobalPart(NAMES, POSITIONS, 0.0, 0, 10).margins(model, RecordBatch.of(probe))
    assert 1 / (1 + math.exp(-margin)) == pytest.approx(model.predict_proba(probe[0].indices, probe[0].values), abs=1e-15)
    assert model.standardize(probe[0].values)[0] == 0.0


@pytest.mark.parametrize("seed, positions", [(1, POSITIONS), (2, (1,)), (3, (0, 1))])
def test_a_partial_over_columns_equals_the_one_record_at_a_time_partial(seed, positions):
    model = GlobalModel.initial(NAMES, positions)
    model.statistics = Statistics.of([r.values for r in records(30, seed + 10)], positions)
    model.regression.weights = [0.4, -0.8, 0.3, -0.1]
    model.regression.bias = -0.2
    model.version = 3
    kept = records(200, seed)
    pending = Pending.empty()
    for start in range(0, len(kept), 37):  # kept batch by batch, as a shard does
        batch = RecordBatch.of(kept[start:start + 37])
        pending = pending.appended(batch.indptr, batch.indices, batch.values, batch.labels)
    head, tail = pending.split(120)
    assert len(head) == 120 and len(tail) == 80
    for part_records, columns in ((kept[:120], head), (kept[120:], tail)):
        expected = compute_partial(model, [example(r) for r in part_records], 2)
        got = partial_of(model, columns, 2)
        assert (got.instance, got.base_version, got.labelled) == (2, 3, expected.labelled)
        assert got.gradient.keys() == expected.gradient.keys()
        assert list(got.gradient.values()) == pytest.approx([expected.gradient[i] for i in got.gradient], abs=1e-12)
        assert got.bias_gradient == pytest.approx(expected.bias_gradient, abs=1e-12)
        assert got.statistics.count == expected.statistics.count
        assert got.statistics.mean == pytest.approx(expected.statistics.mean, rel=1e-12)
        assert got.statistics.m2 == pytest.approx(expected.statistics.m2, rel=1e-12)
    labelled_positions = [n for n, r in enumerate(kept) if r.label is not None]
    assert pending.cut(5) == labelled_positions[4] + 1
    assert pending.cut(len(labelled_positions) + 1) is None


def test_a_partial_of_no_record_is_empty():
    partial = partial_of(GlobalModel.initial(NAMES, POSITIONS), Pending.empty(), 1)
    assert (partial.labelled, partial.gradient, partial.bias_gradient, partial.statistics.count) == (0, {}, 0.0, 0)


def test_a_label_from_the_stream_adds_to_the_gradient_not_to_the_statistics():
    model = GlobalModel.initial(NAMES, POSITIONS)
    model.statistics = Statistics.of([r.values for r in records(30, 21)], POSITIONS)
    scored = [r._replace(label=None) for r in records(10, 22)]
    batch = RecordBatch.of(scored)
    pending = Pending.empty().appended(batch.indptr, batch.indices, batch.values, batch.labels)
    later = RecordBatch.of([scored[3]._replace(label=1), scored[7]._replace(label=0)])
    pending = pending.appended(later.indptr, later.indices, later.values, later.labels, counted=False)
    got = partial_of(model, pending, 0)
    gradient_only = compute_partial(model, [example(scored[3]._replace(label=1)), example(scored[7]._replace(label=0))])
    statistics_only = compute_partial(model, [example(r) for r in scored])
    assert got.labelled == 2 and got.statistics.count == 10
    assert got.bias_gradient == pytest.approx(gradient_only.bias_gradient, abs=1e-12)
    assert got.gradient == pytest.approx(gradient_only.gradient, abs=1e-12)
    assert got.statistics.mean == pytest.approx(statistics_only.statistics.mean, rel=1e-12)


@pytest.mark.parametrize("max_staleness", [0, 2])
def test_a_run_without_records_ends_with_version_zero_then_a_final_one(max_staleness):
    """No shard ever scores a record, so none sends a partial: at the end of its input the
    aggregator announces version 0 (Rounds.ended); every shard, its input ended, answers with an
    empty last partial, and the version after them is final. Once announced, `ended` adds nothing."""
    shards = 3
    part = GlobalPart(NAMES, POSITIONS, 0.0, max_staleness, share_of(10, shards))
    rounds = Rounds(Aggregator(GlobalModel.initial(NAMES, POSITIONS), Sgd(0.1), shards, max_staleness, 10))
    published = rounds.ended()
    assert [GlobalModel.from_message(m, NAMES).version for m in published] == [0]
    for shard in range(shards):
        held = part.new_shard()
        held.ended = True
        part.offer(held, published[0])
        for partial in part.partials(held, shard):
            published += rounds.add(partial, 0)
    assert is_final(published[-1]) and not any(is_final(m) for m in published[:-1])
    assert orjson.loads(published[-1])["labelled_records"] == 0
    assert rounds.finished and rounds.ended() == []
