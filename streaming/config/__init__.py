"""The one configuration object of a Riskstream job, loaded from a YAML profile in `conf/`.

Every setting is validated when the job starts: an unknown key, a wrong type, an impossible value or
settings that contradict one another raise `ConfigError` with one line naming the field and what is
allowed. Once loaded, nothing in it can be changed (mappings included). Overrides come from
`--set dotted.key=value` on the command line (values are read as YAML scalars) and, for secrets, from
the environment (`RISKSTREAM_PSEUDONYM_KEY`). docs/configuration.md describes every setting.

base.py: shared folders, errors and the frozen section base; endpoints.py: sources, outputs and
Kafka; settings.py: the other sections and `Settings`; loading.py: `load_settings`.
"""

from streaming.config.base import (
                                   DEFAULT_PROFILES,
                                   PROFILE_ENV,
                                   PROJECT_ROOT,
                                   PSEUDONYM_KEY_ENV,
                                   SECRET_MASK,
                                   ConfigError,
                                   ServiceUnreachable,
                                   profile_from_environment,
)
from streaming.config.endpoints import KafkaSettings, LabelSourceSettings, OutputSettings, SourceSettings
from streaming.config.loading import load_settings, settings_as_profile
from streaming.config.settings import MissingValue, RestartSettings, Settings

__all__ = ["DEFAULT_PROFILES", "PROFILE_ENV", "PROJECT_ROOT", "PSEUDONYM_KEY_ENV", "SECRET_MASK", "ConfigError",
           "ServiceUnreachable", "profile_from_environment", "KafkaSettings", "LabelSourceSettings", "OutputSettings",
           "SourceSettings", "load_settings", "settings_as_profile", "MissingValue", "RestartSettings", "Settings"]
