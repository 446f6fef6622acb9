"""The per-stage profile of `make bench`: where a record's time goes, in one Python process, on the
job's own code and profile, over the benchmark's file, in batches of 1,000 records as the job's
bundles. Stages, in µs per record entering them:

  decode_parse_clean   bytes to cleaned transactions, or dead letters' reasons (clean_batch)
  features             cleaned transactions to a columnar batch of sparse vectors (encode_batch)
  model                standardize, score, top reasons, learn (ModelScorer.assess_columns, compiled)
  output               the scores' JSON lines (ModelScorer.score_lines)

Each stage is timed with perf_counter_ns around its call. Dead letters are not written here; the
job's share of framework work (moving records between the JVM and the Python workers, bundling,
sinks, checkpoints) is its CPU per record minus the sum of these stages.
"""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path

from streaming.config import load_settings
from streaming.config.from_settings import model_scorer, transaction_reader
from streaming.reporting.outputs import file_records
from udfs.batch_cleaning import clean_batch
from udfs.cleaning import Rejected
from udfs.wire import RecordBatch

BATCH = 1_000


def stage_profile(profile: Path, data: Path, key: str, limit: int = 200_000) -> dict[str, float]:
    """µs per record of each stage over the first `limit` records of `data`, keyed by `key`."""
    settings = load_settings(profile, [f"model.key={key}"])
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    table = scorer.new_table()
    spent = {"decode_parse_clean": 0, "features": 0, "model": 0, "output": 0}
    entered = {"decode_parse_clean": 0, "features": 0, "model": 0, "output": 0}
    clock = time.perf_counter_ns
    now_ms = time.time_ns() // 1_000_000
    raws = list(islice(file_records(data), limit))
    for start in range(0, len(raws), BATCH):
        chunk = raws[start:start + BATCH]
        entered["decode_parse_clean"] += len(chunk)
        started = clock()
        txns = [txn for txn in clean_batch(chunk, reader.rules)
                if not isinstance(txn, Rejected) and txn[reader.model_key_field] is not None]
        cleaned = clock()
        entered["features"] += len(txns)
        encoded, _ = reader.encoder.encode_batch(txns)
        batch = RecordBatch.of_encoded(txns, encoded, reader.model_key_field)
        featured = clock()
        entered["model"] += len(batch)
        entered["output"] += len(batch)
        assessed = scorer.assess_columns(batch, table)
        modelled = clock()
        scorer.score_lines(batch, assessed, now_ms)
        spent["decode_parse_clean"] += cleaned - started
        spent["features"] += featured - cleaned
        spent["model"] += modelled - featured
        spent["output"] += clock() - modelled
    return {stage: spent[stage] / entered[stage] / 1000 if entered[stage] else 0.0 for stage in spent}
