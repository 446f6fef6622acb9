"""The label contract and its cleaning (udfs/labels.py), the outcome rule (udfs/label_outcomes.py),
the label-stream generator (udfs/label_generator.py), the lines to and from LabelRouter.java
(udfs/wire.py) and the feature log (udfs/feature_log.py)."""

import json
import random
import struct
from collections import Counter

import numpy as np
import pytest

from udfs.cleaning import Rejected, epoch_millis
from udfs.compiled_model import ModelTable
from udfs.feature_log import FeatureLog, expiry_of, log_id_of, log_position, where
from udfs.generator import GeneratorSettings, generate
from udfs.label_generator import MALFORMED_LABEL_KINDS, LabelStreamSettings, generate_labels, malformed_label
from udfs.label_outcomes import (
    APPLIED,
    CONTRADICTING,
    DUPLICATE,
    EXPIRED,
    HOLD,
    LATE,
    OUTCOMES,
    UNKNOWN,
    label_disposition,
    label_outcome,
    outcome_reason,
    routed_outcome,
)
from udfs.labels import Label, read_label
from udfs.model import AdaGrad, Ftrl, LogisticRegression, Sgd
from udfs.scoring import ModelScorer
from udfs.wire import RoutedLabel, read_routed_label, routed_label_line

CAP = 65_536
MINUTE = 60_000


def label_bytes(**fields) -> bytes:
    return json.dumps(fields).encode("utf-8")


@pytest.mark.parametrize("fields, expected", [
    ({"txn_id": "t-1", "is_fraud": 1, "label_time": 1_767_225_600_000}, Label("t-1", 1, 1_767_225_600_000, None)),
    ({"txn_id": "t-1", "is_fraud": 0, "label_time": 1_767_225_600_000.0, "source": "review"},
     Label("t-1", 0, 1_767_225_600_000, "review")),
    ({"txn_id": "  t  1 ", "is_fraud": 1, "label_time": "2026-01-01T00:00:00Z", "source": " charge  back "},
     Label("t 1", 1, 1_767_225_600_000, "charge back")),
    ({"txn_id": "t-1", "is_fraud": 1, "label_time": "2026-01-01T02:00:00.250+02:00"},
     Label("t-1", 1, 1_767_225_600_250, None)),
    ({"txn_id": 42, "is_fraud": 0, "label_time": 5, "source": None, "extra": [1, 2]}, Label("42", 0, 5, None)),
])
def test_valid_labels_are_read_and_normalized(fields, expected):
    assert read_label(label_bytes(**fields), CAP) == expected


@pytest.mark.parametrize("raw, stage, reason, txn_id", [
    (b"", "label-decode", "empty record", None),
    (b"\xff{}", "label-decode", "not valid UTF-8: byte 0xff at offset 0", None),
    (b"x" * 70, "label-decode", "record is 70 bytes, over the 64-byte limit", None),
    (b'{"txn_id": "t"', "label-parse", "not valid JSON", None),
    (b'["t", 1]', "label-parse", "expected a JSON object, got list", None),
    (label_bytes(is_fraud=1, label_time=5), "label-clean", "txn_id is missing", None),
    (label_bytes(txn_id=" ", is_fraud=1, label_time=5), "label-clean", "txn_id must be a non-empty string", None),
    (label_bytes(txn_id=1.5, is_fraud=1, label_time=5), "label-clean", "txn_id must be a non-empty string", None),
    # An array or object shows only its type: it may hold an account id (found by the property tests).
    (label_bytes(txn_id={"account_id": "ZQXW"}, is_fraud=1, label_time=5), "label-clean",
     "txn_id must be a non-empty string, got object", None),
    (label_bytes(txn_id="t", is_fraud=[{"account_id": "ZQXW"}], label_time=5), "label-clean",
     "is_fraud must be 0 or 1, got array", "t"),
    (label_bytes(txn_id="t", label_time=5), "label-clean", "is_fraud is missing", "t"),
    (label_bytes(txn_id="t", is_fraud=True, label_time=5), "label-clean", "is_fraud must be 0 or 1, got True", "t"),
    (label_bytes(txn_id="t", is_fraud=2, label_time=5), "label-clean", "is_fraud must be 0 or 1, got 2", "t"),
    (label_bytes(txn_id="t", is_fraud="1", label_time=5), "label-clean", "is_fraud must be 0 or 1, got '1'", "t"),
    (label_bytes(txn_id="t", is_fraud=1), "label-clean", "label_time is missing", "t"),
    (label_bytes(txn_id="t", is_fraud=1, label_time="2026-01-01T10:00:00"), "label-clean",
     "label_time '2026-01-01T10:00:00' has no time zone", "t"),
    (label_bytes(txn_id="t", is_fraud=1, label_time=-5), "label-clean", "label_time -5 is outside 1970..9999", "t"),
    (label_bytes(txn_id="t", is_fraud=1, label_time=False), "label-clean",
     "label_time must be epoch milliseconds or ISO-8601, got boolean", "t"),
    (label_bytes(txn_id="t", is_fraud=1, label_time=5, source=7), "label-clean",
     "source must be a string, got number", "t"),
    (label_bytes(txn_id="t", is_fraud=1, label_time=5, source="s" * 65), "label-clean",
     "source is 65 characters, over 64", "t"),
])
def test_unusable_labels_are_rejected_with_stage_reason_and_txn_id(raw, stage, reason, txn_id):
    with pytest.raises(Rejected) as rejected:
        read_label(raw, 64 if reason.startswith("record is") else CAP)
    assert (rejected.value.stage, rejected.value.txn_id) == (stage, txn_id)
    assert rejected.value.reason.startswith(reason)
    assert "\n" not in rejected.value.reason
    assert "ZQXW" not in rejected.value.reason  # the account id some of these labels hold


TTL = 10 * MINUTE


@pytest.mark.parametrize("label_delay, applied, is_fraud, outcome", [
    (MINUTE, None, 1, APPLIED),
    (TTL, None, 0, APPLIED),  # exactly at the TTL is still in time
    (TTL + 1, None, 1, EXPIRED),
    (-MINUTE, None, 1, APPLIED),  # a label stamped before its transaction is not expired
    (MINUTE, 1, 1, DUPLICATE),
    (MINUTE, 0, 0, DUPLICATE),
    (MINUTE, 1, 0, CONTRADICTING),
    (MINUTE, 0, 1, CONTRADICTING),
    (TTL + 1, 1, 1, EXPIRED),  # expired whatever came before
])
def test_label_outcome(label_delay, applied, is_fraud, outcome):
    event_time = 1_767_225_600_000
    label = Label("t", is_fraud, event_time + label_delay, None)
    assert label_outcome(event_time, applied, label, TTL) == outcome


def test_each_dead_lettered_outcome_has_its_own_one_line_reason():
    label = Label("t", 0, 2_000, None)
    reasons = {outcome: outcome_reason(outcome, label, 1_000, 1, 500, 60_000)
               for outcome in (DUPLICATE, CONTRADICTING, EXPIRED, UNKNOWN)}
    assert len(set(reasons.values())) == 4
    assert all("\n" not in reason and reason.startswith(outcome + ":") for outcome, reason in reasons.items())
    assert "1000 ms after" in reasons[EXPIRED] and "labels.ttl_ms 500" in reasons[EXPIRED]
    assert "labels.unknown_wait_ms 60000" in reasons[UNKNOWN]
    with pytest.raises(ValueError):
        outcome_reason(APPLIED, label, 1_000, None, 500, 60_000)


def transactions(records: int, **overrides) -> list[bytes]:
    return list(generate(GeneratorSettings(records=records, seed=5, **overrides)))


def truths(lines: list[bytes]) -> dict[str, tuple[int, int | None]]:
    """txn_id -> (event_time, is_fraud) of the generated transactions (all valid, epoch-ms or ISO)."""
    found = {}
    for line in lines:
        record = json.loads(line)
        found[record["txn_id"]] = (epoch_millis("event_time", record["event_time"]), record["is_fraud"])
    return found


def read_all(lines: list[bytes]) -> list[Label]:
    return [read_label(line, CAP) for line in lines]


def test_generated_labels_are_in_label_time_order_within_their_delays_and_tell_the_truth():
    lines = transactions(3_000)
    truth = truths(lines)
    settings = LabelStreamSettings(min_delay_ms=MINUTE, max_delay_ms=5 * MINUTE, never_share=0.1,
                                   duplicate_share=0.05, contradicting_share=0.05, unknown_share=0.02)
    labels = read_all(list(generate_labels(lines, settings)))
    assert [label.label_time for label in labels] == sorted(label.label_time for label in labels)
    by_txn: dict[str, list[Label]] = {}
    for label in labels:
        by_txn.setdefault(label.txn_id, []).append(label)
    unknown = [txn_id for txn_id in by_txn if txn_id not in truth]
    seconds = Counter()
    for txn_id, own in by_txn.items():
        if txn_id in unknown:
            assert len(own) == 1
            continue
        event_time, is_fraud = truth[txn_id]
        first, *rest = own
        assert first.is_fraud == is_fraud  # the first label is the truth
        assert first.source == ("chargeback" if is_fraud else "review")
        assert MINUTE <= first.label_time - event_time <= 5 * MINUTE
        assert len(rest) <= 1
        for second in rest:
            assert MINUTE <= second.label_time - first.label_time <= 5 * MINUTE
            seconds[DUPLICATE if second.is_fraud == first.is_fraud else CONTRADICTING] += 1
    labelled = [txn_id for txn_id, (_, is_fraud) in truth.items() if is_fraud is not None]
    assert not {txn_id for txn_id, (_, is_fraud) in truth.items() if is_fraud is None} & by_txn.keys()
    # Shares as asked, within a binomial allowance of four standard deviations.
    for count, share in ((len(labelled) - (len(by_txn) - len(unknown)), 0.1), (seconds[DUPLICATE], 0.045),
                         (seconds[CONTRADICTING], 0.045), (len(unknown), 0.02)):
        expected = share * len(labelled)
        assert abs(count - expected) <= 4 * (expected * (1 - share)) ** 0.5 + 1, (count, expected)


def test_label_streams_are_reproducible_and_depend_on_the_seed():
    lines = transactions(500)
    settings = LabelStreamSettings(min_delay_ms=MINUTE, max_delay_ms=MINUTE * 60 * 24, iso_time_share=0.5)
    first = list(generate_labels(lines, settings))
    assert first == list(generate_labels(lines, settings))
    assert first != list(generate_labels(lines, LabelStreamSettings(seed=12, min_delay_ms=MINUTE,
                                                                    max_delay_ms=MINUTE * 60 * 24)))
    assert any(b'"label_time":"2026-' in line for line in first)  # ISO-8601 label times are exercised


def test_every_share_at_its_extremes():
    lines = transactions(300, unlabelled_share=0.0)

    def labels(**shares) -> list[Label]:
        return read_all(list(generate_labels(lines, LabelStreamSettings(unknown_share=0, **shares))))

    assert Counter(Counter(label.txn_id for label in labels(never_share=0, duplicate_share=1)).values()) == {2: 300}
    assert not labels(never_share=1)
    flipped = labels(never_share=0, duplicate_share=0, contradicting_share=1)
    assert len(flipped) == 600
    assert all({label.is_fraud for label in flipped if label.txn_id == txn_id} == {0, 1}
               for txn_id in {label.txn_id for label in flipped})


def test_malformed_labels_are_all_unreadable_and_cover_every_kind():
    lines = transactions(400)
    broken = list(generate_labels(lines, LabelStreamSettings(malformed_share=1.0, never_share=0)))
    stages = Counter()
    for line in broken:
        with pytest.raises(Rejected) as rejected:
            read_label(line, CAP)
        stages[rejected.value.stage] += 1
    assert set(stages) == {"label-decode", "label-parse", "label-clean"}
    rng = random.Random(1)
    good = {"txn_id": "t", "is_fraud": 1, "label_time": 5, "source": "chargeback"}
    for kind in MALFORMED_LABEL_KINDS:
        for _ in range(20):  # every variant a kind draws
            with pytest.raises(Rejected):
                read_label(malformed_label(kind, good, rng), CAP)
    with pytest.raises(ValueError, match="unknown malformed label kind"):
        malformed_label("sideways", good, rng)


def test_malformed_transactions_get_a_label_exactly_when_they_carry_txn_id_event_time_and_label():
    lines = transactions(2_000, malformed_share=0.3)
    labels = read_all(list(generate_labels(lines, LabelStreamSettings(never_share=0, unknown_share=0))))
    labelled = set()
    for line in lines:
        try:
            record = json.loads(line)
            event_time_readable = epoch_millis("event_time", record["event_time"]) >= 0
        except (ValueError, TypeError, KeyError, Rejected):
            continue
        if (event_time_readable and isinstance(record.get("txn_id"), str) and record["txn_id"].strip()
                and record.get("is_fraud") in (0, 1) and not isinstance(record.get("is_fraud"), bool)):
            labelled.add(record["txn_id"])
    assert {label.txn_id for label in labels} == labelled
    assert len(labelled) > 1_000


# ---------------------------------------------------------------- what the job passes along


def routed(history=(), known=True, is_fraud=1, label_time=2_000, event_time=1_000) -> RoutedLabel:
    return RoutedLabel(3, known, Label("t 1", is_fraud, label_time, "review"), event_time if known else -1,
                       tuple(history), "99~2~ab~0:1" if known else "")


def test_routed_labels_round_trip_through_the_routers_line_format():
    for message in (routed(), routed(history=[(0, 1_000), (1, 1_500)]), routed(known=False),
                    routed()._replace(label=Label("t", 0, 5, None))):
        assert read_routed_label(routed_label_line(message)) == message


@pytest.mark.parametrize("history, is_fraud, label_time, expected", [
    ((), 1, 2_000, (APPLIED, None)),
    (((1, 1_500),), 1, 2_000, (DUPLICATE, 1)),
    (((1, 1_500),), 0, 2_000, (CONTRADICTING, 1)),
    (((0, 1_000),), 1, 2_000, (CONTRADICTING, 0)),  # an inline label comes first, at its event time
    (((1, 99_000),), 0, 2_000, (APPLIED, None)),  # the earlier label was expired, so this one applies
    (((1, 99_000), (0, 1_500)), 0, 3_000, (DUPLICATE, 0)),
    ((), 1, 1_000 + TTL + 1, (EXPIRED, None)),
    (((1, 1_500),), 0, 1_000 + TTL + 1, (EXPIRED, 1)),
])
def test_a_routed_labels_outcome_follows_its_history(history, is_fraud, label_time, expected):
    history = tuple((y, t if t != 99_000 else 1_000 + TTL + 5) for y, t in history)
    assert routed_outcome(routed(history, is_fraud=is_fraud, label_time=label_time), TTL) == expected


def test_a_label_without_a_transaction_is_unknown():
    assert routed_outcome(routed(known=False), TTL) == (UNKNOWN, None)


EXPIRY = 50_000  # the event time (ms) at which a routed label's feature log expires


@pytest.mark.parametrize("log_present, watermark, expected", [
    (True, 0, APPLIED),  # its features are logged: learn now
    (True, EXPIRY + 10, APPLIED),  # a log still at hand is used, whatever the watermark says
    (False, -2**63, HOLD),  # no watermark yet: its batch can still come
    (False, EXPIRY - 1, HOLD),  # the label overtook its batch, which is still on its way
    (False, EXPIRY, LATE),  # the log has expired (its timer fired at EXPIRY)
    (False, EXPIRY + 1, LATE),
])
def test_an_applied_label_is_learned_held_or_late_by_its_log_and_the_watermark(log_present, watermark, expected):
    assert label_disposition(APPLIED, log_present, watermark, EXPIRY) == expected


@pytest.mark.parametrize("outcome", [DUPLICATE, CONTRADICTING, EXPIRED, UNKNOWN])
@pytest.mark.parametrize("log_present, watermark", [(True, 0), (False, 0), (False, EXPIRY)])
def test_a_label_not_applied_keeps_its_outcome_whatever_its_log(outcome, log_present, watermark):
    assert label_disposition(outcome, log_present, watermark, EXPIRY) == outcome


def test_held_is_not_an_outcome_and_late_has_a_reason():
    assert HOLD not in OUTCOMES
    assert outcome_reason(LATE, Label("t", 1, 5, None), 1, None, TTL, 1_000).startswith("late: ")


def test_log_ids_carry_expiry_and_size_and_positions_round_trip():
    log_id = log_id_of(1_767_225_600_000 + TTL, 37, "ab12", 5)
    assert expiry_of(log_id) == (1_767_225_600_000 + TTL, 37)
    assert log_position(where(log_id, 36)) == (log_id, 36)
    assert log_id != log_id_of(1_767_225_600_000 + TTL, 37, "ab12", 6)


def test_feature_logs_round_trip_and_cost_what_they_say():
    # 0.1 is not a float32: it comes back as the nearest one.
    log = FeatureLog(["grocery", "clé"], np.array([5, 7], np.int64), np.array([0.25, 0.5]),
                     np.array([0, 3, 4], np.int64), np.array([0, 2, 9, 1], np.int32), np.array([1.5, -2.0, 0.1, 0.0]))
    again = FeatureLog.from_bytes(log.to_bytes())
    assert again.model_keys == log.model_keys
    assert again.event_times.tolist() == [5, 7] and again.scores.tolist() == [0.25, 0.5]
    assert again.indptr.tolist() == [0, 3, 4]
    assert [a.tolist() for a in again.entries(0)] == [[0, 2, 9], [1.5, -2.0, float(np.float32(0.1))]]
    assert float(np.float32(0.1)) != 0.1 and abs(float(np.float32(0.1)) - 0.1) < 0.1 * 6e-8
    assert [a.tolist() for a in again.entries(1)] == [[1], [0.0]]
    assert again.entries(0)[1].dtype == np.float64
    header = 10
    assert len(log.to_bytes()) == header + 4 + 20 * 2 + 6 * 4 + len("grocery\nclé".encode())
    # An index of 65,536 or more takes 4 bytes.
    wide = FeatureLog(["k"], np.array([5]), np.array([0.5]), np.array([0, 2]), np.array([3, 70_000]), np.array([1.0, 2.0]))
    assert FeatureLog.from_bytes(wide.to_bytes()).entries(0)[0].tolist() == [3, 70_000]
    assert len(wide.to_bytes()) == header + 4 + 20 + 8 * 2 + 1
    assert FeatureLog.from_bytes(FeatureLog([], *(np.zeros(0, t) for t in (np.int64, np.float64)),
                                            np.zeros(1, np.int64), np.zeros(0, np.int32),
                                            np.zeros(0)).to_bytes()).model_keys == []


def test_a_version_1_feature_log_from_an_older_savepoint_reads_as_it_was_written():
    # Version 1's layout, written by hand: version, records, entries (<BII), then int64 event
    # times, float64 scores, int64 ends, int32 indices, float64 values, the keys joined by \n.
    version_1 = b"".join((struct.pack("<BII", 1, 2, 4), np.array([5, 7], "<i8").tobytes(),
                          np.array([0.25, 0.5], "<f8").tobytes(), np.array([0, 3, 4], "<i8").tobytes(),
                          np.array([0, 2, 9, 1], "<i4").tobytes(), np.array([1.5, -2.0, 0.1, 0.0], "<f8").tobytes(),
                          "grocery\nclé".encode()))
    log = FeatureLog.from_bytes(version_1)
    assert log.model_keys == ["grocery", "clé"]
    assert log.event_times.tolist() == [5, 7] and log.scores.tolist() == [0.25, 0.5]
    assert [a.tolist() for a in log.entries(0)] == [[0, 2, 9], [1.5, -2.0, 0.1]]  # float64, exactly
    assert [a.tolist() for a in log.entries(1)] == [[1], [0.0]]
    with pytest.raises(ValueError, match="version 3"):
        FeatureLog.from_bytes(b"\x03" + version_1[1:])


@pytest.mark.parametrize("optimizer", [Sgd(0.05), Sgd(0.2, "inverse_scaling", 0.5, l2=0.01), AdaGrad(0.1, l2=0.01),
                                       Ftrl(0.2, beta=0.5, l1=0.05, l2=0.5)],
                         ids=["sgd", "sgd-inverse-scaling-l2", "adagrad", "ftrl"])
def test_learning_from_a_logged_vector_is_the_reference_models_step(optimizer):
    rng = random.Random(3)
    table = ModelTable(6, (), optimizer=optimizer, initial_bias=-1.0)
    reference = LogisticRegression(6, bias=-1.0)
    row = table.add("k")
    last_learned = -1
    for step in range(300):
        indices = sorted(rng.sample(range(6), rng.randint(1, 6)))
        values = [rng.gauss(0, 2) for _ in indices]
        p = reference.predict_proba(indices, values)
        label = rng.randint(0, 1)
        if step == 150:
            values[0] = 1e300  # a step this large is discarded by the guard in both
            p = reference.predict_proba(indices, values)
            label = 0 if p >= 0.5 else 1
        expected = reference.learn(indices, values, label, p, optimizer)
        assert table.learn_logged(row, np.array(indices, np.int32), np.array(values), label, 10 + step) == expected
        last_learned = 10 + step if expected else last_learned
        assert table.updates[row] == reference.updates and table.rejected[row] == reference.rejected_updates
        assert abs(table.bias[row] - reference.bias) <= 1e-12 * max(1.0, abs(reference.bias))
        assert np.allclose(table.weights[row], reference.weights, rtol=1e-12, atol=1e-12)
        assert table.accumulators[row].shape == (len(reference.accumulators), 7)
        assert np.allclose(table.accumulators[row], np.reshape(reference.accumulators, (-1, 7)), rtol=1e-12, atol=1e-12)
    assert reference.rejected_updates == 1
    assert table.last_event_time[row] == last_learned


@pytest.mark.parametrize("optimizer", [Sgd(0.05), Sgd(0.2, "inverse_scaling", 0.5, l2=0.01), AdaGrad(0.1, l2=0.01),
                                       Ftrl(0.2, beta=0.5, l1=0.05, l2=0.5)],
                         ids=["sgd", "sgd-inverse-scaling-l2", "adagrad", "ftrl"])
def test_labels_learned_in_one_compiled_call_are_the_reference_models_steps_in_their_order(optimizer):
    rng = random.Random(4)
    scorer = ModelScorer([f"f{i}" for i in range(6)], (), optimizer, snapshot_every=7, top_reasons=3, initial_bias=-1.0)
    table = scorer.new_table()
    references = {key: LogisticRegression(6, bias=-1.0) for key in "ab"}
    rows = {key: table.add(key) for key in "ab"}
    keys, ends, all_indices, all_values, labels, expected, expected_snapshots = [], [0], [], [], [], [], []
    for step in range(200):
        key = rng.choice("ab")
        indices = sorted(rng.sample(range(6), rng.randint(1, 6)))
        values = [rng.gauss(0, 2) for _ in indices]
        reference = references[key]
        if step == 100:
            values[0] = 1e300  # discarded by the guard
        p = reference.predict_proba(indices, values)
        label = rng.randint(0, 1) if step != 100 else int(p < 0.5)
        before = reference.updates
        stepped = reference.learn(indices, values, label, p, optimizer)
        expected.append((before, stepped))
        if stepped and reference.updates % 7 == 0:
            expected_snapshots.append((key, reference.updates, reference.bias, list(reference.weights)))
        keys.append(key)
        ends.append(ends[-1] + len(indices))
        all_indices += indices
        all_values += values
        labels.append(label)
    log = FeatureLog(keys, np.arange(200), np.zeros(200), np.array(ends), np.array(all_indices), np.array(all_values))
    model_keys, updates_before, learned, snapshots = scorer.learn_logged_columns(
        table, [(log, r) for r in range(200)], labels, range(1000, 1200))
    assert model_keys == keys
    assert list(zip(updates_before.tolist(), learned.tolist())) == expected
    assert learned.tolist().count(False) == references["a"].rejected_updates + references["b"].rejected_updates == 1
    for key, reference in references.items():
        assert table.updates[rows[key]] == reference.updates
        assert table.last_event_time[rows[key]] == 1000 + max(r for r, k in enumerate(keys) if k == key
                                                              and expected[r][1])
        assert abs(table.bias[rows[key]] - reference.bias) <= 1e-12 * max(1.0, abs(reference.bias))
        assert np.allclose(table.weights[rows[key]], reference.weights, rtol=1e-12, atol=1e-12)
    taken = [json.loads(line) for line in snapshots]
    assert len(taken) > 5
    assert [(s["model_key"], s["model_updates"]) for s in taken] == [(k, u) for k, u, _, _ in expected_snapshots]
    for snapshot, (_, _, bias, weights) in zip(taken, expected_snapshots):
        assert snapshot["bias"] == pytest.approx(bias, rel=1e-12, abs=1e-12)
        assert list(snapshot["weights"].values()) == pytest.approx(weights, rel=1e-12, abs=1e-12)
