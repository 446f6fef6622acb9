"""What `riskstream status` prints of the job's metrics (streaming.ops.local_cluster.metric_figures), from REST
API answers as a real session cluster gave them (Flink 2.2.1, the scoring job at parallelism 2 on
3,000 generated records; tests/integration/test_job_metrics.py reads them from a running job)."""

from __future__ import annotations

import json

import pytest

from streaming.ops.rest import metric_figures

# GET /jobs/<id>/vertices/<vid>/subtasks/metrics?get=...&agg=sum of both Python vertices, with
# some of Flink's own metrics beside the job's (listed by the same endpoint without `get`).
SUMS = {
    "decode-parse-clean-features.riskstream.records_read": 3000.0,
    "decode-parse-clean-features.riskstream.stage.parse.dead_lettered": 41.0,
    "decode-parse-clean-features.riskstream.stage.decode.dead_lettered": 22.0,
    "decode-parse-clean-features.riskstream.stage.clean.dead_lettered": 74.0,
    "decode-parse-clean-features.riskstream.stage.features.dead_lettered": 11.0,
    "decode-parse-clean-features.numRecordsIn": 12.0,
    "score-and-learn.riskstream.scored": 2852.0,
    "score-and-learn.riskstream.model_keys": 20.0,
    "score-and-learn.riskstream.recent_log_loss_micro": 750996.0,
    "score-and-learn.riskstream.recent_labelled": 2000.0,
    "numRecordsOut": 40.0,
}
# GET /jobs/<id>/vertices/<vid>/subtasks/<i>/metrics?get=... of the scoring vertex, by short name.
SUBTASKS = [{"recent_log_loss_micro": 450533.0, "recent_labelled": 1000.0},
            {"recent_log_loss_micro": 300463.0, "recent_labelled": 1000.0}]


def test_status_prints_the_jobs_counters_summed_and_the_pooled_recent_log_loss():
    figures = metric_figures(SUMS, SUBTASKS)
    assert figures == {
        "records_read": 3000,
        "scored": 2852,
        "dead_lettered": {"decode": 22, "parse": 41, "clean": 74, "features": 11, "total": 148},
        "model_keys": 20,
        "recent_log_loss": 0.375498,  # (0.450533 + 0.300463) / 2: both over 1,000 labelled records
        "recent_labelled": 2000,
    }
    # The order a reader follows a record in, in the JSON `riskstream status` prints.
    assert list(json.loads(json.dumps(figures))) == ["records_read", "scored", "dead_lettered", "model_keys",
                                                     "recent_log_loss", "recent_labelled"]


def test_the_recent_log_loss_weighs_each_subtask_by_its_labelled_records():
    figures = metric_figures({}, [{"recent_log_loss_micro": 400000.0, "recent_labelled": 300.0},
                                  {"recent_log_loss_micro": 100000.0, "recent_labelled": 100.0},
                                  {"recent_log_loss_micro": 0.0, "recent_labelled": 0.0}])  # no figure yet
    assert figures == {"recent_log_loss": pytest.approx((0.4 * 300 + 0.1 * 100) / 400, abs=1e-12),
                       "recent_labelled": 400}


def test_no_labelled_record_yet_gives_no_log_loss_rather_than_zero():
    assert metric_figures({}, [{"recent_log_loss_micro": 0.0, "recent_labelled": 0.0}] * 2) == {
        "recent_log_loss": None, "recent_labelled": 0}


def test_a_job_that_has_reported_nothing_yet_has_no_figures():
    assert metric_figures({"numRecordsIn": 5.0, "Source__transactions-source.numRecordsOut": 5.0}, []) == {}


def test_a_stage_or_counter_the_job_adds_later_is_printed_too():
    figures = metric_figures({"score-and-learn.riskstream.late": 7.0,
                              "decode-parse-clean-features.riskstream.stage.model.dead_lettered": 2.0,
                              "decode-parse-clean-features.riskstream.stage.decode.dead_lettered": 1.0}, [])
    assert figures == {"dead_lettered": {"decode": 1, "model": 2, "total": 3}, "late": 7}


def test_a_stage_whose_counter_has_not_reported_shows_zero_once_the_preparing_operator_reports():
    figures = metric_figures({"decode-parse-clean-features.riskstream.records_read": 10.0,
                              "decode-parse-clean-features.riskstream.stage.parse.dead_lettered": 2.0}, [])
    assert figures == {"records_read": 10,
                       "dead_lettered": {"decode": 0, "parse": 2, "clean": 0, "features": 0, "total": 2}}
