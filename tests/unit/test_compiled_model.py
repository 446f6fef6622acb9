"""The compiled batch model (udfs/compiled_model.py, ModelScorer.score_columns) against the
pure-Python reference (udfs/model.py, tests.reference.pipeline.score_batch), and the columnar batch format."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from tests.reference.pipeline import score_batch
from udfs.compiled_model import ModelTable
from udfs.model import STATE_HEADER_V1, AdaGrad, Ftrl, KeyModel, Sgd, read_state
from udfs.records import ModelInput, ScoreContext
from udfs.scoring import ModelScorer
from udfs.wire import RecordBatch, pack_shard_batch, unpack_shard_batch

NOW = 1_767_300_000_000
N_FEATURES = 12
NAMES = tuple(f"f{i}" for i in range(N_FEATURES))
TOLERANCE = 1e-12


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


def random_stream(seed: int, records: int, keys: int, dense: bool, n_numeric: int = 4,
                  huge_every: int = 0, huge: tuple[float, ...] = (1e12, -1e12, 9e11)) -> list[ModelInput]:
    """Records of `keys` keys: numeric features first (always present, as the encoder gives them),
    then a random subset (sparse) or all (dense) of the others; labels 0, 1 or none."""
    rng = random.Random(seed)
    stream = []
    for r in range(records):
        indices = list(range(n_numeric))
        values = [rng.choice([rng.gauss(0, 3), rng.uniform(0, 1e4), 0.0]) for _ in indices]
        others = range(n_numeric, N_FEATURES)
        chosen = list(others) if dense else sorted(rng.sample(others, rng.randint(0, len(others))))
        indices += chosen
        values += [rng.choice([1.0, rng.uniform(-1, 1)]) for _ in chosen]
        if huge_every and r % huge_every == 0:
            values[0] = rng.choice(huge)  # pushes an update past the guard
        label = rng.choice([0, 1, None])
        context = ScoreContext(rng.choice(["fuel", "travel"]), rng.choice(["DE", "US"]), rng.choice(["web", "pos"]), rng.uniform(0, 1e4),
                               rng.choice(["EUR", "USD"]), f"a{rng.randrange(3 * keys)}")
        stream.append(ModelInput(f"k{rng.randrange(keys)}", f"t{r}", 1_700_000_000_000 + r, label, indices, values,
                                 context))
    return stream


def reference_run(scorer: ModelScorer, stream: list[ModelInput]):
    models: dict[str, KeyModel] = {}
    scores, snapshots = score_batch(scorer, stream, models, lambda key: None, NOW)
    return [orjson.loads(line) for line in scores], [orjson.loads(str(line)) for line in snapshots], models


def compiled_run(scorer: ModelScorer, stream: list[ModelInput], batch_size: int):
    table = scorer.new_table()
    scores, snapshots = [], []
    for start in range(0, len(stream), batch_size):
        batch = RecordBatch.from_bytes(RecordBatch.of(stream[start:start + batch_size]).to_bytes())
        lines, batch_snapshots, _ = scorer.score_columns(batch, table, NOW)
        scores += [orjson.loads(line) for line in lines]
        snapshots += [orjson.loads(str(line)) for line in batch_snapshots]
    return scores, snapshots, table


def assert_same_score(ours: dict, reference: dict) -> None:
    assert {k: v for k, v in ours.items() if k not in ("score", "reasons")} == \
        {k: v for k, v in reference.items() if k not in ("score", "reasons")}
    assert close(ours["score"], reference["score"]), (ours, reference)
    assert [r["feature"] for r in ours["reasons"]] == [r["feature"] for r in reference["reasons"]], (ours, reference)
    for mine, theirs in zip(ours["reasons"], reference["reasons"]):
        assert close(mine["contribution"], theirs["contribution"])


def assert_same_model(table: ModelTable, row: int, reference: KeyModel) -> None:
    ours = read_state(table.to_bytes(row))
    theirs = read_state(reference.to_bytes())
    for field in ("positions", "count", "updates", "rejected_updates", "last_event_time"):
        assert list(np.atleast_1d(getattr(ours, field))) == list(np.atleast_1d(getattr(theirs, field))), field
    for field in ("mean", "m2", "weights"):
        assert all(close(a, b) for a, b in zip(getattr(ours, field), getattr(theirs, field))), field
    assert close(ours.bias, theirs.bias)
    assert ours.optimizer_kind == theirs.optimizer_kind
    assert len(ours.accumulators) == len(theirs.accumulators)
    for mine, reference in zip(ours.accumulators, theirs.accumulators):
        assert len(mine) == len(reference) and all(close(a, b) for a, b in zip(mine, reference))


CASES = {
    "sparse": dict(dense=False, optimizer=Sgd(0.05), standardized=(0, 1, 2, 3)),
    "dense": dict(dense=True, optimizer=Sgd(0.05), standardized=(0, 1, 2, 3)),
    "l2": dict(dense=False, optimizer=Sgd(0.05, l2=0.01), standardized=(0, 1, 2, 3)),
    "no-standardization": dict(dense=False, optimizer=Sgd(0.001), standardized=()),
    "some-standardized": dict(dense=True, optimizer=Sgd(0.05, "inverse_scaling", 0.5), standardized=(1, 3)),
    "inverse-scaling-l2": dict(dense=True, optimizer=Sgd(0.3, "inverse_scaling", 0.25, l2=0.1), standardized=(0, 2)),
    "non-finite-guard": dict(dense=False, optimizer=Sgd(1e3), standardized=(), huge_every=7),
    "non-finite-guard-l2": dict(dense=True, optimizer=Sgd(1e3, l2=0.5), standardized=(), huge_every=5),
    "initial-bias": dict(dense=False, optimizer=Sgd(0.05), standardized=(0, 1, 2, 3), initial_bias=-3.5),
    "adagrad": dict(dense=False, optimizer=AdaGrad(0.1), standardized=(0, 1, 2, 3)),
    "adagrad-dense-l2": dict(dense=True, optimizer=AdaGrad(0.5, eps=1e-4, l2=0.05), standardized=(1, 3),
                             initial_bias=-2.0),
    "adagrad-raw": dict(dense=False, optimizer=AdaGrad(0.05), standardized=()),
    "ftrl": dict(dense=False, optimizer=Ftrl(0.1), standardized=(0, 1, 2, 3)),
    "ftrl-l1-l2": dict(dense=True, optimizer=Ftrl(0.3, beta=0.5, l1=0.5, l2=1.0), standardized=(0, 2),
                       initial_bias=-3.0),
    "ftrl-raw": dict(dense=False, optimizer=Ftrl(0.05, l1=2.0), standardized=()),
    "non-finite-guard-adagrad": dict(dense=False, optimizer=AdaGrad(1.0, l2=0.1), standardized=(), huge_every=7,
                                     huge=(1e300, -1e300, 1e160)),
    "non-finite-guard-ftrl": dict(dense=True, optimizer=Ftrl(1.0, l1=0.1, l2=0.1), standardized=(), huge_every=5,
                                  huge=(1e300, -1e300, 1e170)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("batch_size", [1, 37, 5000])
def test_compiled_model_matches_the_reference_on_random_streams(case, batch_size):
    options = CASES[case]
    scorer = ModelScorer(NAMES, options["standardized"], options["optimizer"], snapshot_every=25, top_reasons=3,
                         initial_bias=options.get("initial_bias", 0.0))
    stream = random_stream(list(CASES).index(case), 1500, keys=7, dense=options["dense"],
                           huge_every=options.get("huge_every", 0), huge=options.get("huge", (1e12, -1e12, 9e11)))
    ref_scores, ref_snapshots, ref_models = reference_run(scorer, stream)
    scores, snapshots, table = compiled_run(scorer, stream, batch_size)
    assert len(scores) == len(ref_scores)
    for ours, reference in zip(scores, ref_scores):
        assert_same_score(ours, reference)
    assert [s["model_key"] for s in snapshots] == [s["model_key"] for s in ref_snapshots]
    assert [s["model_updates"] for s in snapshots] == [s["model_updates"] for s in ref_snapshots]
    assert all(close(a["bias"], b["bias"]) for a, b in zip(snapshots, ref_snapshots))
    assert [s["optimizer"] for s in snapshots] == [s["optimizer"] for s in ref_snapshots]
    assert sorted(table.rows) == sorted(ref_models)
    for key, reference in ref_models.items():
        assert_same_model(table, table.rows[key], reference)
    if case.startswith("non-finite"):
        assert sum(model.model.rejected_updates for model in ref_models.values()) > 0  # the guard was exercised
    if "l1" in case or case == "ftrl-raw":  # L1 holds some weights at exactly 0
        assert any(w == 0.0 for model in ref_models.values() for w in model.model.weights)


@pytest.mark.parametrize("standardized", [(), (0, 2, 3)])
def test_each_records_standardized_values_are_those_the_reference_model_saw(standardized):
    scorer = ModelScorer(NAMES, standardized, Sgd(0.05), snapshot_every=1000, top_reasons=2)
    stream = random_stream(11, 400, keys=3, dense=False)
    reference = {}
    seen = []
    for record in stream:  # what ModelScorer.assess gives the model: the standardizer's transform
        key_model = reference.setdefault(record.model_key, scorer.new_model())
        seen.append(key_model.standardizer.transform(record.values))
    table = scorer.new_table()
    for start in range(0, len(stream), 64):
        batch = RecordBatch.of(stream[start:start + 64])
        standardized_values = scorer.assess_columns(batch, table).standardized
        for r, values in enumerate(seen[start:start + 64]):
            ours = standardized_values[batch.indptr[r]:batch.indptr[r + 1]].tolist()
            assert len(ours) == len(values) and all(close(a, b) for a, b in zip(ours, values)), (start + r, ours, values)


def test_snapshots_are_taken_at_the_update_that_reaches_snapshot_every():
    scorer = ModelScorer(NAMES, (0, 1), Sgd(0.05), snapshot_every=3, top_reasons=2)
    stream = [r._replace(label=1) for r in random_stream(5, 12, keys=1, dense=True)]
    _, snapshots, _ = compiled_run(scorer, stream, batch_size=12)
    assert [s["model_updates"] for s in snapshots] == [3, 6, 9, 12]
    assert [s["event_time"] for s in snapshots] == [stream[i].event_time for i in (2, 5, 8, 11)]


def test_models_resume_from_state_bytes_in_a_new_table():
    scorer = ModelScorer(NAMES, (0, 1, 2, 3), Sgd(0.05), snapshot_every=1000, top_reasons=3)
    stream = random_stream(11, 600, keys=4, dense=False)
    whole, _, whole_table = compiled_run(scorer, stream, batch_size=600)
    first = scorer.new_table()
    scorer.score_columns(RecordBatch.of(stream[:300]), first, NOW)
    resumed = scorer.new_table()
    for key, row in first.rows.items():
        resumed.add(key, first.to_bytes(row))
    lines, _, _ = scorer.score_columns(RecordBatch.of(stream[300:]), resumed, NOW)
    assert [orjson.loads(line) for line in lines] == whole[300:]
    assert {k: resumed.to_bytes(r) for k, r in resumed.rows.items()} == \
        {k: whole_table.to_bytes(r) for k, r in whole_table.rows.items()}


def test_score_columns_reports_the_rows_it_changed_and_grows_the_table():
    scorer = ModelScorer(NAMES, (), Sgd(0.05), snapshot_every=1000, top_reasons=1)
    table = ModelTable(N_FEATURES, (), capacity=1)
    stream = random_stream(3, 200, keys=150, dense=False)
    _, _, changed = scorer.score_columns(RecordBatch.of(stream), table, NOW)
    assert len(table) == len({r.model_key for r in stream})
    assert changed == sorted(table.rows[r.model_key] for r in {r.model_key: r for r in stream}.values())


def test_table_state_is_what_the_reference_writes_and_reads():
    reference = KeyModel(N_FEATURES, (0, 2, 3))
    scorer = ModelScorer(NAMES, (0, 2, 3), Sgd(0.1), snapshot_every=1000, top_reasons=3)
    score_batch(scorer, random_stream(2, 50, keys=1, dense=True), {"k0": reference}, lambda key: None, NOW)
    table = scorer.new_table()
    row = table.add("k0", reference.to_bytes())
    assert table.to_bytes(row) == reference.to_bytes()
    assert KeyModel.from_bytes(table.to_bytes(row)).to_bytes() == reference.to_bytes()


def version_1_bytes(key_model: KeyModel) -> bytes:
    """The state format of the previous release, written independently of udfs.model."""
    s, m = key_model.standardizer, key_model.model
    header = STATE_HEADER_V1.pack(1, len(m.weights), len(s.positions), m.updates, m.rejected_updates,
                                  key_model.last_event_time, s.count, m.bias)
    return (header + np.array(s.positions, np.int32).tobytes()
            + np.array(list(m.weights) + list(s.mean) + list(s.m2), np.float64).tobytes())


@pytest.mark.parametrize("standardized", [(0, 2, 3), (1,), ()])
def test_version_1_state_is_migrated_on_load(standardized):
    reference = KeyModel(N_FEATURES, standardized)
    scorer = ModelScorer(NAMES, standardized, Sgd(0.1), snapshot_every=1000, top_reasons=3)
    score_batch(scorer, random_stream(4, 40, keys=1, dense=True), {"k0": reference}, lambda key: None, NOW)
    old = version_1_bytes(reference)
    assert old[0] == 1 and old != reference.to_bytes()
    assert KeyModel.from_bytes(old).to_bytes() == reference.to_bytes()
    table = scorer.new_table()
    assert table.to_bytes(table.add("k0", old)) == reference.to_bytes()


def test_table_refuses_state_of_another_feature_layout():
    state = KeyModel(N_FEATURES, (0, 1)).to_bytes()
    with pytest.raises(ValueError, match="standardized"):
        ModelTable(N_FEATURES, (0, 2)).add("k", state)
    with pytest.raises(ValueError, match="features"):
        ModelTable(N_FEATURES + 1, (0, 1)).add("k", state)


def test_state_is_under_a_kilobyte_a_key_at_the_benchmark_layout():
    assert len(KeyModel(88, range(10)).to_bytes()) <= 1024


@pytest.mark.parametrize("records", [0, 1, 40])
def test_record_batch_round_trips_through_bytes_and_take(records):
    stream = random_stream(9, records, keys=5, dense=False)
    batch = RecordBatch.of(stream)
    again = RecordBatch.from_bytes(batch.to_bytes())
    assert again.records() == stream
    rows = np.arange(0, records, 3)
    assert batch.take(rows).records() == [stream[r] for r in rows]
    stream_name, seq, unpacked, log_id = unpack_shard_batch(pack_shard_batch("s-1", 7, batch))
    assert (stream_name, seq, unpacked.records(), log_id) == ("s-1", 7, stream, None)
    assert unpack_shard_batch(pack_shard_batch(None, None, batch))[:2] == (None, None)
    stream_name, seq, unpacked, log_id = unpack_shard_batch(pack_shard_batch(None, None, batch, "wörker-3"))
    assert (stream_name, seq, unpacked.records(), log_id) == (None, None, stream, "wörker-3")


def test_record_batch_keeps_unusual_text():
    stream = [ModelInput("clé ü", "t\ud800x", 5, 1, [0], [1.0], ScoreContext("électronique", "DE", "wéb", 0.5, "EUR", "a\ud800")),
              ModelInput("k", "", 6, None, [], [], ScoreContext("", "", "", 0.0, "", ""))]
    assert RecordBatch.from_bytes(RecordBatch.of(stream).to_bytes()).records() == stream
