"""The `model.global` settings section and the `model.cold_start` / `model.blend` choices
(docs/configuration.md#model-global-model-cold-start-blending).

The allowed ranges and the defaults are udfs/global_model.py's (`GlobalSettings`): this section gives
the types, and its validator builds that class, whose one-line errors name the field
(`model.global.cadence_records: must be an integer >= 1, got 0`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from streaming.config.base import ConfigError, Section
from udfs.global_model import GlobalSettings

# A new key's model: zero weights and model.initial_bias, or a copy of the global version its shard holds.
ColdStart = Literal["zeros", "global"]
# The score: the key's model, the global model only, or the sum of both margins.
Blend = Literal["key", "global", "sum"]

_DEFAULTS = GlobalSettings()
# The output (a topic, or a folder under output.path) that carries the versions back to the shards.
VERSIONS_OUTPUT = "model-versions"


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


def versions_folder(settings) -> Path:
    """Where a run whose outputs are files writes the global model's versions and reads them back."""
    return Path(settings.output.path) / VERSIONS_OUTPUT


def check_no_earlier_versions(settings) -> None:
    """For a run that starts afresh (not from a savepoint or a checkpoint) with the global model and
    file outputs: raises ConfigError (one line) when its versions folder holds committed part
    files, an earlier run's versions, which its versions source would read as its own (their
    numbers clash). `riskstream run` moves an earlier run's outputs aside first."""
    if not settings.model.uses_global or settings.output.kind != "files":
        return
    folder = versions_folder(settings)
    if folder.is_dir() and any(not part.name.startswith(".") for part in folder.iterdir()):
        raise ConfigError(f"output.path: {folder} holds an earlier run's global model versions, which a new run "
                          f"would read as its own; move or delete that folder, or resume that run")
