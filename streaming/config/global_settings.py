"""The `model.global` settings section and the `model.cold_start` / `model.blend` choices
(docs/configuration.md#model-global-model-cold-start-blending).

The allowed ranges and the defaults are udfs/global_model.py's (`GlobalSettings`): this section gives
the types, and its validator builds that class, whose one-line errors name the field
(`model.global.cadence_records: must be an integer >= 1, got 0`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from streaming.config.base import ConfigError, Section
from udfs.global_model import GlobalSettings

# A new key's model: zero weights and model.initial_bias, or a copy of the global version its shard holds.
ColdStart = Literal["zeros", "global"]
# The score: the key's model, the global model only, or the sum of both margins.
Blend = Literal["key", "global", "sum"]

_DEFAULTS = GlobalSettings()


class GlobalModelSection(Section):
    cadence_records: int = _DEFAULTS.cadence_records
    cadence_ms: int | None = _DEFAULTS.cadence_ms
    max_staleness: int = _DEFAULTS.max_staleness
    learning_rate: float | None = _DEFAULTS.learning_rate
    l2: float = _DEFAULTS.l2

    @model_validator(mode="after")
    def _possible(self) -> "GlobalModelSection":
        self.global_settings()  # raises ValueError naming the field
        return self

    def global_settings(self) -> GlobalSettings:
        """The settings udfs.global_model's Aggregator and the job's shards take."""
        return GlobalSettings(**self.model_dump())


def check_global_model(settings) -> None:
    """Raises ConfigError (one line, naming the field) when the job cannot run the global model as
    configured (docs/configuration.md)."""
    model = settings.model
    if not model.uses_global:
        return
    field = (f"model.blend: {model.blend}" if model.blend != "key" else f"model.cold_start: {model.cold_start}"
             if model.cold_start != "zeros" else f"model.on_drift: {model.on_drift}")
    if settings.output.kind != "kafka":
        raise ConfigError(f"{field} needs output.kind kafka: the global model's versions travel through "
                          f"kafka.model_versions_topic (a bounded file run with the global model needs a broker too)")
