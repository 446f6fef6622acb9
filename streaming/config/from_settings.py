"""Builds the record logic of `udfs/` from a job's settings. No Flink import, so single-process
tools (the benchmark's baselines, tests) use exactly the objects the job uses."""

from __future__ import annotations

from streaming.config import Settings
from udfs.analytics import Windowing, WindowSpec
from udfs.cleaning import CleaningRules, MissingPolicy
from udfs.features import FeatureEncoder
from udfs.model import Sgd
from udfs.reading import TransactionReader
from udfs.scoring import ModelScorer


def transaction_reader(settings: Settings) -> TransactionReader:
    rules = cleaning_rules(settings)
    return TransactionReader(rules, feature_encoder(settings, rules), settings.model.key,
                          settings.cleaning.dead_letter_raw_bytes)


def cleaning_rules(settings: Settings) -> CleaningRules:
    """The job's cleaning rules; `riskstream produce` derives message keys with the same ones."""
    cleaning = settings.cleaning
    return CleaningRules(
        pseudonym_key=settings.pseudonym_key(),
        channels=frozenset(cleaning.channels),
        default_currency=cleaning.default_currency,
        missing={name: MissingPolicy(p.action == "impute", p.value) for name, p in cleaning.missing.items()},
        max_record_bytes=cleaning.max_record_bytes,
    )


def feature_encoder(settings: Settings, rules: CleaningRules) -> FeatureEncoder:
    features = settings.features
    return FeatureEncoder(features.numeric, features.categorical, features.time.hour_of_day,
                          features.time.day_of_week, rules.policy)


def model_scorer(settings: Settings, encoder: FeatureEncoder) -> ModelScorer:
    model = settings.model
    sgd = Sgd(model.learning_rate, model.schedule, model.power_t, model.l2)
    return ModelScorer(encoder.names, encoder.standardized, sgd, model.snapshot_every, model.top_reasons)


def window_specs(settings: Settings) -> list[WindowSpec]:
    """The analytics windows, in the order configured (tumbling: slide = size)."""
    return [WindowSpec(window.size_ms, window.slide_ms or window.size_ms) for window in settings.analytics.windows]


def windowing(settings: Settings) -> Windowing:
    """The windows the job computes when analytics is enabled."""
    analytics = settings.analytics
    return Windowing(tuple(window_specs(settings)), tuple(analytics.group_by), analytics.allowed_lateness_ms)
