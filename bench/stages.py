"""The per-stage profile of `make bench`: where a record's time goes, in one Python process, on the
job's own code and profile, over the benchmark's file. Stages, in µs per record entering them:

  decode_parse_clean   bytes to a cleaned transaction (udfs.cleaning), or a dead letter's reason
  features             the cleaned transaction to its sparse feature vector (udfs.features)
  model                standardize, score, top reasons, learn (ModelScorer.assess)
  output               the score's JSON line (ModelScorer.score_line)

Each stage is timed with perf_counter_ns around its call, so the timer's own cost (tens of ns) is
included. Dead letters are not written here; the job's share of framework work (moving records
between the JVM and the Python workers, bundling, sinks, checkpoints) is its CPU per record minus
the sum of these stages.
"""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path

from streaming.config import load_settings
from streaming.from_settings import model_scorer, transaction_reader
from streaming.outputs import file_records
from udfs.cleaning import Rejected, clean, decode, parse
from udfs.pipeline import ModelInput


def stage_profile(profile: Path, data: Path, key: str, limit: int = 200_000) -> dict[str, float]:
    """µs per record of each stage over the first `limit` records of `data`, keyed by `key`."""
    settings = load_settings(profile, [f"model.key={key}"])
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    rules, encoder = reader.rules, reader.encoder
    models = {}
    spent = {"decode_parse_clean": 0, "features": 0, "model": 0, "output": 0}
    entered = {"decode_parse_clean": 0, "features": 0, "model": 0, "output": 0}
    clock = time.perf_counter_ns
    now_ms = time.time_ns() // 1_000_000
    for raw in islice(file_records(data), limit):
        entered["decode_parse_clean"] += 1
        started = clock()
        try:
            txn = clean(parse(decode(raw, rules.max_record_bytes)), rules)
        except Rejected:
            spent["decode_parse_clean"] += clock() - started
            continue
        cleaned = clock()
        spent["decode_parse_clean"] += cleaned - started
        if txn[reader.model_key_field] is None:
            continue
        entered["features"] += 1
        try:
            indices, values = encoder.encode(txn)
        except Rejected:
            spent["features"] += clock() - cleaned
            continue
        encoded = clock()
        spent["features"] += encoded - cleaned
        record = ModelInput(txn[reader.model_key_field], txn["txn_id"], txn["event_time"], txn["is_fraud"],
                            indices, values)
        key_model = models.get(record.model_key) or models.setdefault(record.model_key, scorer.new_model())
        entered["model"] += 1
        entered["output"] += 1
        started = clock()
        assessment = scorer.assess(key_model, record)
        assessed = clock()
        scorer.score_line(record, assessment, now_ms)
        spent["model"] += assessed - started
        spent["output"] += clock() - assessed
    return {stage: spent[stage] / entered[stage] / 1000 if entered[stage] else 0.0 for stage in spent}
