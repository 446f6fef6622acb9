"""What every part of the configuration shares: the project's own folders and default profiles, the
errors a configuration raises, and the frozen base of every settings section."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from immutabledict import immutabledict
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WrapSerializer

PSEUDONYM_KEY_ENV = "RISKSTREAM_PSEUDONYM_KEY"
# What `riskstream config show` prints in place of a secret (pydantic's own mask of a SecretStr).
SECRET_MASK = "**********"

# The project's own files (built jars, shipped profiles, Flink's configuration of the local
# cluster) are found from this package, so every command works from any folder.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILES = {"local": PROJECT_ROOT / "conf" / "local.yaml", "kafka": PROJECT_ROOT / "conf" / "kafka.yaml",
                    "cluster": PROJECT_ROOT / "conf" / "cluster.yaml"}
# A profile that every command takes instead of its default (the docker-compose stack's containers
# set it to conf/compose.yaml); --config still wins.
PROFILE_ENV = "RISKSTREAM_PROFILE"


def profile_from_environment() -> Path | None:
    """The profile RISKSTREAM_PROFILE names, or None when it is unset or empty."""
    named = os.environ.get(PROFILE_ENV)
    return Path(named) if named else None

# Fields of a cleaned transaction a model can be keyed by (all strings after cleaning).
ModelKeyField = Literal["merchant_category", "account_id", "merchant_id", "country", "channel", "currency"]


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line naming the field."""


class ServiceUnreachable(RuntimeError):
    """A Kafka broker or Flink cluster the command needs does not answer; the message is one line
    naming its address and how to start it."""


class Section(BaseModel):
    """A settings section: unknown keys are refused and nothing changes after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_Key = TypeVar("_Key")
_Value = TypeVar("_Value")

# A mapping setting that cannot change after loading, as `frozen=True` promises for the rest:
# validated as a dict, then made an immutabledict (assigning to it raises TypeError), defaults
# included; it dumps as a plain dict. Not types.MappingProxyType: that cannot be deep-copied or
# pickled, and pydantic deep-copies the section defaults (`kafka: KafkaSettings = KafkaSettings()`).
ReadOnlyMapping = Annotated[
    Mapping[_Key, _Value],
    AfterValidator(lambda mapping: immutabledict(mapping)),
    WrapSerializer(lambda mapping, to_dict: to_dict(dict(mapping))),
    Field(validate_default=True),
]


