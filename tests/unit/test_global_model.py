"""The data-parallel global model (udfs/global_model.py): statistics, partials, the aggregator held
to the sequential reference and to a textbook mini-batch implementation, versions and messages."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from udfs.global_model import (
    Aggregator,
    Example,
    GlobalModel,
    GlobalSettings,
    GradientPartial,
    Statistics,
    VersionHolder,
    compute_partial,
    train_sequential,
)
from udfs.model import AdaGrad, Ftrl, Sgd

NAMES = ("amount", "age", "count", "flag", "cat=a", "cat=b", "cat=c", "hour_sin", "hour_cos")
POSITIONS = (0, 1, 2)  # amount, age, count are standardized; flag is raw


def example(rng: random.Random, label_share: float = 0.9) -> Example:
    """A record like the encoder's (sparse: values[k] is feature indices[k]'s): 4 numeric values
    first (always present), one of three categories, the cyclic hour; a label most of the time."""
    category = rng.randrange(3)
    hour = rng.random() * 2 * math.pi
    indices = [0, 1, 2, 3, 4 + category, 7, 8]
    values = [rng.lognormvariate(3, 1), rng.uniform(0, 3000), float(rng.randrange(20)), float(rng.random() < 0.2),
              1.0, math.sin(hour), math.cos(hour)]
    risk = 0.8 * (values[0] > 40) + 1.5 * values[3] + (category == 2) - 2.0
    label = int(rng.random() < 1 / (1 + math.exp(-risk))) if rng.random() < label_share else None
    return Example(indices, values, label)


def dense(e: Example) -> list[float]:
    row = [0.0] * len(NAMES)
    for i, v in zip(e.indices, e.values):
        row[i] = v
    return row


def minibatches(seed: int, batches: int, size: int) -> list[list[Example]]:
    rng = random.Random(seed)
    return [[example(rng) for _ in range(size)] for _ in range(batches)]


def deal(batch: list[Example], instances: int) -> list[list[Example]]:
    """The mini-batch dealt round-robin to the instances."""
    return [batch[i::instances] for i in range(instances)]


def aggregated_versions(batches: list[list[Example]], instances: int, optimizer) -> list[GlobalModel]:
    """Each mini-batch split over the instances, each computing its partial against the version it
    holds, the aggregator publishing, every instance applying the new version."""
    start = GlobalModel.initial(NAMES, POSITIONS, initial_bias=-1.0)
    aggregator = Aggregator(start, optimizer, instances=instances)
    holders = [VersionHolder(start) for _ in range(instances)]
    versions = []
    for number, batch in enumerate(batches):
        published = None
        for instance, share in reversed(list(enumerate(deal(batch, instances)))):  # arrival order differs
            published = aggregator.add(compute_partial(holders[instance].model, share, instance), now_ms=number)
            if instance != 0:
                assert published is None  # not before every instance has sent its share
        assert published is not None and published.version == number + 1
        assert all(holder.offer(published) for holder in holders)
        versions.append(published)
    return versions


def parameters(model: GlobalModel) -> tuple:
    r = model.regression
    return r.weights, r.bias, r.updates, r.rejected_updates, getattr(r, "accumulators", None)


def assert_same_model(a: GlobalModel, b: GlobalModel, tolerance: float) -> None:
    assert a.version == b.version
    assert a.regression.bias == pytest.approx(b.regression.bias, abs=tolerance)
    assert a.regression.weights == pytest.approx(b.regression.weights, abs=tolerance)
    assert a.statistics.count == b.statistics.count
    assert a.statistics.mean == pytest.approx(b.statistics.mean, rel=tolerance)
    assert a.statistics.m2 == pytest.approx(b.statistics.m2, rel=tolerance)


# ---------------------------------------------------------------- statistics


def test_merged_statistics_equal_one_pass_over_all_records_and_numpy():
    rng = random.Random(5)
    rows = [example(rng).values for _ in range(1000)]
    parts = [rows[:1], rows[1:300], rows[300:300], rows[300:]]  # a single record and an empty part too
    merged = Statistics.empty(len(POSITIONS))
    for part in parts:
        merged = merged.merged(Statistics.of(part, POSITIONS))
    one_pass = Statistics.of(rows, POSITIONS)
    matrix = np.array(rows)[:, POSITIONS]
    assert merged.count == one_pass.count == 1000
    assert merged.mean == pytest.approx(one_pass.mean, rel=1e-12)
    assert merged.m2 == pytest.approx(one_pass.m2, rel=1e-9)
    assert merged.mean == pytest.approx(matrix.mean(axis=0).tolist(), rel=1e-12)
    assert merged.m2 == pytest.approx((matrix.var(axis=0) * 1000).tolist(), rel=1e-9)


def test_standardizing_needs_two_records_and_a_feature_that_varied():
    values = [10.0, 5.0, 3.0, 1.0]  # the numeric features come first, so positions index the values
    assert Statistics.of([values], POSITIONS).standardize(values, POSITIONS) == [0.0, 0.0, 0.0, 1.0]
    stats = Statistics.of([[2.0, 5.0, 0.0, 0.0], [4.0, 5.0, 0.0, 0.0]], POSITIONS)  # features 1 and 2 constant
    # (10 - 3) / 1; a feature that never varied contributes nothing, even at a new value (3 after 0s)
    assert stats.standardize(values, POSITIONS) == [7.0, 0.0, 0.0, 1.0]


# ---------------------------------------------------------------- aggregation


OPTIMIZERS = [Sgd(0.5), Sgd(0.3, "inverse_scaling", 0.5, l2=0.01), AdaGrad(0.1, l2=0.01), Ftrl(0.2, 1.0, 0.001, 0.01)]
OPTIMIZER_IDS = ["sgd", "sgd-inverse-scaling-l2", "adagrad", "ftrl"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=OPTIMIZER_IDS)
@pytest.mark.parametrize("instances", [1, 2, 3, 5])
def test_aggregated_versions_equal_the_sequential_reference_on_the_union_minibatches(optimizer, instances):
    batches = minibatches(seed=instances, batches=30, size=40)
    aggregated = aggregated_versions(batches, instances, optimizer)
    sequential = train_sequential(GlobalModel.initial(NAMES, POSITIONS, initial_bias=-1.0), batches, optimizer)
    assert len(aggregated) == len(sequential) == 30
    for a, s in zip(aggregated, sequential):
        assert_same_model(a, s, 1e-9)
    assert aggregated[-1].labelled_records == sum(e.label is not None for e in batches[-1])
    assert aggregated[-1].partials == instances
    assert max(map(abs, aggregated[-1].regression.weights)) > 0.05  # it learned something


def textbook_minibatch_sgd(batches: list[list[Example]], rate: float, l2: float, initial_bias: float):
    """Mini-batch logistic regression written from the maths, in numpy: features standardized by
    the mean and population std of every raw value seen in EARLIER mini-batches (0 before two),
    gradient = mean over the labelled records of (p - y) x, w <- w (1 - rate l2) - rate g."""
    w = np.zeros(len(NAMES))
    b = initial_bias
    seen: list[list[float]] = []
    history = []
    for batch in batches:
        x = np.array([dense(e) for e in batch])
        if len(seen) >= 2:
            past = np.array(seen)[:, POSITIONS]
            std = past.std(axis=0)
            x[:, POSITIONS] = (x[:, POSITIONS] - past.mean(axis=0)) / np.where(std > 0, std, 1.0)
        else:
            x[:, POSITIONS] = 0.0
        labelled = np.array([e.label is not None for e in batch])
        y = np.array([e.label or 0 for e in batch])[labelled]
        p = 1 / (1 + np.exp(-(x[labelled] @ w + b)))
        gradient = (p - y) @ x[labelled] / labelled.sum()
        w = w * (1 - rate * l2) - rate * gradient
        b = b - rate * (p - y).mean()
        seen += [dense(e) for e in batch]
        history.append((w.copy(), b))
    return history


def test_the_sequential_reference_is_textbook_minibatch_gradient_descent():
    batches = minibatches(seed=11, batches=25, size=60)
    versions = train_sequential(GlobalModel.initial(NAMES, POSITIONS, initial_bias=-1.0), batches, Sgd(0.4, l2=0.02))
    for version, (w, b) in zip(versions, textbook_minibatch_sgd(batches, 0.4, 0.02, -1.0)):
        assert version.regression.weights == pytest.approx(w.tolist(), abs=1e-9)
        assert version.regression.bias == pytest.approx(b, abs=1e-9)


def test_a_round_without_labelled_records_publishes_a_heartbeat_with_the_same_parameters():
    start = train_sequential(GlobalModel.initial(NAMES, POSITIONS), minibatches(2, 3, 30), Sgd(0.5))[-1]
    aggregator = Aggregator(start, Sgd(0.5), instances=2)
    rng = random.Random(1)
    unlabelled = [example(rng, label_share=0.0) for _ in range(4)]
    assert aggregator.add(compute_partial(start, unlabelled[:2], 0), 7) is None
    heartbeat = aggregator.add(compute_partial(start, [], 1), 7)
    assert heartbeat.version == start.version + 1 and heartbeat.labelled_records == 0
    assert heartbeat.regression.weights == start.regression.weights
    assert heartbeat.regression.bias == start.regression.bias
    assert heartbeat.statistics.count == start.statistics.count + 2


# ---------------------------------------------------------------- staleness


def trained_aggregator(max_staleness: int, cadence_records: int = 30) -> tuple[Aggregator, list[GlobalModel]]:
    """An asynchronous aggregator (2 instances) that has published versions 1..3."""
    aggregator = Aggregator(GlobalModel.initial(NAMES, POSITIONS), Sgd(0.5), instances=2,
                            max_staleness=max_staleness, cadence_records=cadence_records)
    history = [aggregator.model]
    for batch in minibatches(seed=3, batches=3, size=40):
        published = aggregator.add(compute_partial(aggregator.model, batch, 0), 0)
        assert published is not None
        history.append(published)
    return aggregator, history


def test_a_partial_older_than_max_staleness_is_dropped_and_counted_and_changes_no_weight():
    aggregator, history = trained_aggregator(max_staleness=1)
    batch = minibatches(seed=9, batches=1, size=40)[0]
    stale = compute_partial(history[1], batch, 1)  # version 1 while the aggregator is at 3
    assert aggregator.add(stale, 0) is None
    assert (aggregator.dropped_stale, aggregator.dropped_stale_records) == (1, stale.labelled)
    fresh = compute_partial(history[3], batch, 0)
    published = aggregator.add(fresh, 0)
    reference, _ = trained_aggregator(max_staleness=1)
    expected = reference.add(fresh, 0)
    assert published.regression.weights == expected.regression.weights
    assert published.regression.bias == expected.regression.bias
    # ... but its statistics (which do not depend on a version) are kept
    assert published.statistics.count == expected.statistics.count + len(batch)


def test_a_partial_within_max_staleness_is_applied():
    aggregator, history = trained_aggregator(max_staleness=1)
    batch = minibatches(seed=9, batches=1, size=40)[0]
    published = aggregator.add(compute_partial(history[2], batch, 1), 0)  # one version old
    assert aggregator.dropped_stale == 0
    assert published.version == 4 and published.labelled_records == sum(e.label is not None for e in batch)
    assert published.regression.weights != history[3].regression.weights


def test_with_staleness_0_a_partial_of_the_previous_version_is_dropped():
    aggregator = Aggregator(GlobalModel.initial(NAMES, POSITIONS), Sgd(0.5), instances=1)
    batch = minibatches(seed=4, batches=1, size=20)[0]
    start = aggregator.model
    assert aggregator.add(compute_partial(start, batch, 0), 0).version == 1
    assert aggregator.add(compute_partial(start, batch, 0), 0) is None
    assert aggregator.dropped_stale == 1 and aggregator.model.version == 1


def test_a_partial_from_a_version_the_aggregator_never_published_is_refused():
    aggregator, history = trained_aggregator(max_staleness=1)
    future = compute_partial(history[3], [], 0)
    future.base_version = 7
    with pytest.raises(ValueError, match="newer than the aggregator's 3"):
        aggregator.add(future, 0)
    with pytest.raises(ValueError, match="instances are 0..1"):
        aggregator.add(compute_partial(history[3], [], 2), 0)


def test_the_time_cadence_publishes_what_is_pending_once_cadence_ms_passed():
    aggregator = Aggregator(GlobalModel.initial(NAMES, POSITIONS), Sgd(0.5), instances=2, max_staleness=2,
                            cadence_records=10_000, cadence_ms=1000)
    batch = minibatches(seed=6, batches=1, size=20)[0]
    assert aggregator.add(compute_partial(aggregator.model, batch, 0), 100) is None  # far below 10,000 records
    assert aggregator.tick(999) is None
    published = aggregator.tick(1000)
    assert published.version == 1 and published.created_at == 1000
    assert aggregator.tick(5000) is None  # nothing pending


# ---------------------------------------------------------------- versions and messages


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_a_version_survives_its_message_exactly(optimizer):
    version = train_sequential(GlobalModel.initial(NAMES, POSITIONS, -2.0), minibatches(8, 5, 50), optimizer,
                               now_ms=1_767_300_000_000)[-1]
    version.partials = 3
    message = version.to_message()
    again = GlobalModel.from_message(message, NAMES)
    assert again.to_message() == message
    assert parameters(again) == parameters(version)
    assert (again.statistics, again.positions, again.feature_names) == (version.statistics, POSITIONS, NAMES)
    assert (again.version, again.created_at, again.partials) == (5, 1_767_300_000_000, 3)
    assert again.regression.optimizer_kind == optimizer.kind
    assert all(any(values) for values in again.regression.accumulators)  # AdaGrad's and FTRL's were carried


def test_a_message_of_another_schema_or_feature_layout_is_refused():
    message = GlobalModel.initial(NAMES, POSITIONS).to_message()
    with pytest.raises(ValueError, match="features differ"):
        GlobalModel.from_message(message, NAMES[:-1])
    with pytest.raises(ValueError, match="message version 9 is not supported"):
        GlobalModel.from_message(message.replace(b'"schema_version":1', b'"schema_version":9'), NAMES)


def test_an_instance_never_applies_an_older_or_the_same_version():
    versions = train_sequential(GlobalModel.initial(NAMES, POSITIONS), minibatches(1, 4, 30), Sgd(0.5))
    holder = VersionHolder(versions[1])
    assert not holder.offer(versions[0])
    assert not holder.offer(GlobalModel.from_message(versions[1].to_message(), NAMES))  # a replay
    assert holder.model is versions[1]
    assert holder.offer(versions[3])  # a skipped version is fine: the newest wins
    assert not holder.offer(versions[2])
    assert holder.model.version == 4


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("changes, message", [
    ({"cadence_records": 0}, "model.global.cadence_records: must be an integer >= 1, got 0"),
    ({"cadence_ms": -5}, "model.global.cadence_ms: must be null or an integer >= 1"),
    ({"max_staleness": 1.5}, "model.global.max_staleness: must be an integer >= 0"),
    ({"learning_rate": 0}, "model.global.learning_rate: must be null or a number in"),
    ({"l2": -1.0}, "model.global.l2: must be a finite number >= 0"),
])
def test_global_settings_refuse_bad_values_in_one_line(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        GlobalSettings(**changes)


def test_the_global_optimizer_takes_the_global_rate_and_l2():
    assert GlobalSettings(learning_rate=0.5, l2=0.1).optimizer_for(Sgd(0.01, l2=0.2)) == Sgd(0.5, l2=0.1)
    assert GlobalSettings().optimizer_for(Sgd(0.01, l2=0.2)) == Sgd(0.01, l2=0.0)
    assert GlobalSettings(learning_rate=0.5).optimizer_for(AdaGrad(0.1, l2=0.3)) == AdaGrad(0.5)
    assert GlobalSettings(learning_rate=0.5).optimizer_for(Ftrl(0.1, 2.0, l1=0.01)) == Ftrl(0.5, 2.0, l1=0.01)


def test_a_partial_and_the_aggregator_state_survive_their_bytes_and_publish_the_same_version():
    aggregator, history = trained_aggregator(max_staleness=1)
    aggregator.cadence_records = 100  # from here on, two partials are pending before a version
    batches = minibatches(seed=12, batches=2, size=60)
    stale = compute_partial(history[1], batches[0], 1)
    pending = compute_partial(history[3], batches[0], 0)
    assert GradientPartial.from_bytes(pending.to_bytes()) == pending
    assert aggregator.add(stale, 0) is None and aggregator.add(pending, 0) is None  # dropped; pending
    restored = Aggregator.from_bytes(aggregator.to_bytes(), NAMES, Sgd(0.5), 2, 1, 100, None)
    assert restored.to_bytes() == aggregator.to_bytes()
    last = compute_partial(history[3], batches[1], 1)
    published, again = aggregator.add(last, 9), restored.add(last, 9)
    assert again.to_message() == published.to_message()
    assert (again.version, again.partials, restored.dropped_stale) == (4, 2, 1)
