"""Builds the record logic of `udfs/` from a job's settings. No Flink import, so single-process
tools (the benchmark's baselines, tests) use exactly the objects the job uses."""

from __future__ import annotations

from streaming.config import Settings
from udfs.analytics import Windowing, WindowSpec
from udfs.cleaning import CleaningRules, MissingPolicy
from udfs.features import FeatureEncoder
from udfs.global_model import Aggregator, GlobalModel
from udfs.global_scoring import GlobalPart, Rounds, share_of
from udfs.model import AdaGrad, Ftrl, Optimizer, Sgd
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


def optimizer(settings: Settings) -> Optimizer:
    """The model's optimizer (model.optimizer and its settings)."""
    model = settings.model
    if model.optimizer == "adagrad":
        return AdaGrad(model.learning_rate, l2=model.l2)
    if model.optimizer == "ftrl":
        ftrl = model.ftrl
        return Ftrl(ftrl.alpha, ftrl.beta, ftrl.l1, ftrl.l2)
    return Sgd(model.learning_rate, model.schedule, model.power_t, model.l2)


def model_scorer(settings: Settings, encoder: FeatureEncoder) -> ModelScorer:
    model = settings.model
    return ModelScorer(encoder.names, encoder.standardized, optimizer(settings), model.snapshot_every,
                       model.top_reasons, model.initial_bias, model.blend, model.cold_start)


def window_specs(settings: Settings) -> list[WindowSpec]:
    """The analytics windows, in the order configured (tumbling: slide = size)."""
    return [WindowSpec(window.size_ms, window.slide_ms or window.size_ms) for window in settings.analytics.windows]


def windowing(settings: Settings) -> Windowing:
    """The windows the job computes when analytics is enabled."""
    analytics = settings.analytics
    return Windowing(tuple(window_specs(settings)), tuple(analytics.group_by), analytics.allowed_lateness_ms)


def global_part(settings: Settings, scorer: ModelScorer) -> GlobalPart:
    """The scoring operator's part of the global model (udfs/global_scoring.py)."""
    shards = settings.performance.shards
    training = settings.model.global_.global_settings()
    return GlobalPart(scorer.feature_names, scorer.standardized, settings.model.initial_bias, training.max_staleness,
                      share_of(training.cadence_records, shards), training.cadence_ms, settings.model.blend)


def global_rounds(settings: Settings, scorer: ModelScorer) -> Rounds:
    """The aggregator's logic: one instance per shard, the global model trained as model.global says."""
    training = settings.model.global_.global_settings()
    model = GlobalModel.initial(scorer.feature_names, scorer.standardized, settings.model.initial_bias)
    return Rounds(Aggregator(model, training.optimizer_for(scorer.optimizer), settings.performance.shards,
                             training.max_staleness, training.cadence_records, training.cadence_ms))
