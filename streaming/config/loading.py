"""Reading a profile: YAML files (with `extends`), `--set` overrides, paths made absolute, and
validation errors turned into one line naming the field."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from streaming.config.base import SECRET_MASK, ConfigError
from streaming.config.settings import Settings


def load_settings(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    """Loads and validates a profile; `overrides` are `dotted.key=value` strings applied on top.

    Relative file paths in a profile (every setting of PATH_SETTINGS) resolve against that profile
    file's folder (so a profile means the same from any folder); relative paths given in `overrides`
    resolve against the current folder, as paths on a command line do. All paths in the result are
    absolute.
    """
    raw = _read_profile(Path(path), ())
    for override in overrides:
        _apply_override(raw, override)
    _move_deprecated_settings(raw)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None
    settings.pseudonym_key()
    return _absolute_paths(settings, Path(path).resolve().parent)  # the defaults' relative paths


def settings_as_profile(settings: Settings) -> dict[str, Any]:
    """`settings` as a profile: every setting given (defaults included, paths absolute, no
    `extends`), which `load_settings` reads back to the same settings once its secrets are given
    again. Secrets are not in it: privacy.pseudonym_key is None (unset) and every kafka.properties
    value is SECRET_MASK, which `load_settings` refuses."""
    profile = settings.model_dump(mode="json", by_alias=True)
    profile["privacy"]["pseudonym_key"] = None
    profile["kafka"]["properties"] = {name: SECRET_MASK for name in settings.kafka.properties}
    if settings.model.optimizer != "ftrl":
        del profile["model"]["ftrl"]  # a profile may give model.ftrl only with the ftrl optimizer
    return profile


# Settings that moved, old place -> new place: accepted at the old place, with a one-line warning,
# for one release (until RENAMED_SETTINGS_UNTIL), then refused as unknown keys.
RENAMED_SETTINGS = {
    ("analytics", "out_of_orderness_ms"): ("event_time", "transactions", "out_of_orderness_ms"),
    ("analytics", "idleness_ms"): ("event_time", "transactions", "idleness_ms"),
    ("labels", "out_of_orderness_ms"): ("event_time", "labels", "out_of_orderness_ms"),
    ("labels", "idleness_ms"): ("event_time", "labels", "idleness_ms"),
}
RENAMED_SETTINGS_UNTIL = "0.3"


def _move_deprecated_settings(raw: dict[str, Any]) -> None:
    """Moves each setting of RENAMED_SETTINGS found at its old place to its new one, warning once
    per setting (one line on stderr through the `streaming.config` logger); ConfigError when the
    same setting is given at both places."""
    for old, new in RENAMED_SETTINGS.items():
        section = raw.get(old[0])
        if not isinstance(section, dict) or old[1] not in section:
            continue
        value = section.pop(old[1])
        old_name, new_name = ".".join(old), ".".join(new)
        target = raw
        for key in new[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{new_name}: {key} must be a mapping")
        if new[-1] in target:
            raise ConfigError(f"{old_name}: renamed to {new_name}, which is also given; keep only {new_name}")
        target[new[-1]] = value
        logging.getLogger("streaming.config").warning(
            "riskstream: warning: %s is deprecated; use %s (the old name is refused from version %s)",
            old_name, new_name, RENAMED_SETTINGS_UNTIL)


# The settings that are file paths, by their place in a profile -> whether it holds a list of paths.
# Every setting named path, paths, directory, *_directory or jars must be here
# (tests/unit/test_config.py checks the settings model against it).
PATH_SETTINGS = {("source", "paths"): True, ("source", "directory"): False,
                 ("labels", "source", "paths"): True, ("labels", "source", "directory"): False,
                 ("output", "path"): False,
                 ("checkpointing", "directory"): False, ("checkpointing", "savepoint_directory"): False,
                 ("flink", "jars"): True}


def _read_profile(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A profile's sections with its relative paths made absolute against its folder;
    `extends: other.yaml` (relative to the profile) starts from that profile, and sections given
    here are merged over it setting by setting."""
    if path.is_dir():
        raise ConfigError(f"config file {path}: is a folder; give a profile such as conf/local.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path}: {_yaml_problem(error)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: must be a mapping of sections")
    _resolve_paths(raw, path.resolve().parent)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    parent = (path.parent / str(base)).resolve()
    if parent in seen:
        raise ConfigError(f"config file {path}: extends: {base} extends this profile again")
    return _merged(_read_profile(parent, (*seen, path.resolve())), raw)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: what YAML found wrong, and where (1-based line and column)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"invalid YAML at {where}{problem}"


def _resolve_paths(raw: dict[str, Any], folder: Path, below: tuple[str, ...] = ()) -> None:
    """Makes the relative paths of PATH_SETTINGS in `raw` (those at or below the place `below`)
    absolute against `folder`, in place; values of the wrong type are left for validation to report."""
    for place, is_list in PATH_SETTINGS.items():
        if place[:len(below)] != below:
            continue
        values: Any = raw
        for name in place[:-1]:
            values = values.get(name) if isinstance(values, dict) else None
        name = place[-1]
        if not isinstance(values, dict) or name not in values:
            continue
        value = values[name]
        if is_list and isinstance(value, list):
            values[name] = [_absolute(item, folder) if isinstance(item, str) else item for item in value]
        elif not is_list and isinstance(value, str):
            values[name] = _absolute(value, folder)


def _absolute(path: str, folder: Path) -> str:
    return str((folder / Path(path).expanduser()).resolve())


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in over.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(name), dict)
        merged[name] = _merged(merged[name], value) if both_sections else value
    return merged


def _apply_override(raw: dict[str, Any], override: str) -> None:
    dotted, sep, text = override.partition("=")
    if not sep or not dotted:
        raise ConfigError(f"--set {override}: expected dotted.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {override}: {_yaml_problem(error)}") from None
    keys, annotation = _override_keys(dotted.split("."), isinstance(value, dict))
    if get_origin(annotation) is tuple and not isinstance(value, list):
        value = [value]  # a single value where a list is expected: a list of that one value
    *parents, leaf = keys
    node = raw
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override}: {name} is not a section")
    node[leaf] = value
    _resolve_paths(raw, Path.cwd(), tuple(keys))


def _override_keys(parts: list[str], value_is_mapping: bool) -> tuple[list[str], Any]:
    """The nested keys of the profile that a `--set` name stands for, and the type of the setting it
    names (None for a name that is not a setting: validation reports it). Below a mapping setting
    (kafka.properties, cleaning.missing) the rest of the name is one key, as its keys hold dots
    (security.protocol, features.txn_count_1h); in a mapping of sections (cleaning.missing), a last
    part that names a setting of the entry and is given a single value is that setting
    (cleaning.missing.features.txn_count_1h.action=impute)."""
    section: Any = Settings
    for index, part in enumerate(parts):
        fields = {info.alias or name: info for name, info in section.model_fields.items()}
        if part not in fields:
            return parts, None
        annotation, rest = fields[part].annotation, parts[index + 1:]
        if not rest:
            return parts, annotation
        if get_origin(annotation) is Mapping:
            entry = _section_in(get_args(annotation)[1])
            if entry is not None and len(rest) > 1 and rest[-1] in entry.model_fields and not value_is_mapping:
                return [*parts[:index + 1], ".".join(rest[:-1]), rest[-1]], entry.model_fields[rest[-1]].annotation
            return [*parts[:index + 1], ".".join(rest)], get_args(annotation)[1]
        section = _section_in(annotation)
        if section is None:
            return parts, None
    return parts, None


def _section_in(annotation: Any) -> type[BaseModel] | None:
    """The settings section a field's type holds (`LabelSourceSettings | None` holds one), or None."""
    candidates = (annotation, *getattr(annotation, "__args__", ()))
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_settings_at(first["loc"][:-1]))
        return f"{field}: unknown setting; allowed here: {allowed}"
    if message.startswith(field.split(".")[0]) or ":" in message.split(" ")[0]:
        return message  # a model validator already named the field
    if first["type"] in ("tuple_type", "list_type"):
        message = "must be a list, such as [a, b] in YAML (with --set, a single value is a list of one)"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{field}: {message}{shown}"


def _settings_at(location: tuple[Any, ...]) -> list[str]:
    """The setting names allowed in the section at `location` (list positions and the keys of
    mapping settings, such as the field in cleaning.missing.<field>, are skipped)."""
    section: Any = Settings
    parts = iter(location)
    for part in parts:
        if isinstance(part, int):
            continue
        # By the name a profile uses (model.global is the field global_, whose alias is "global").
        fields = {info.alias or name: info for name, info in section.model_fields.items()}
        annotation = fields[part].annotation
        if get_origin(annotation) is Mapping:
            next(parts, None)  # the key
        section = _section_in(annotation)
        if section is None:
            return []
    return [info.alias or name for name, info in section.model_fields.items()]


def _absolute_paths(settings: Settings, folder: Path) -> Settings:
    """`settings` with every path of PATH_SETTINGS that is still relative (a default) made absolute
    against `folder`."""
    for place, is_list in PATH_SETTINGS.items():
        settings = _with_absolute_path(settings, place, is_list, folder)
    return settings


def _with_absolute_path(section: BaseModel, place: tuple[str, ...], is_list: bool, folder: Path) -> BaseModel:
    name, *rest = place
    value = getattr(section, name)
    if not value:  # unset (labels.source, source.directory), or an empty list
        return section
    if rest:
        value = _with_absolute_path(value, tuple(rest), is_list, folder)
    else:
        value = tuple(_absolute(path, folder) for path in value) if is_list else _absolute(value, folder)
    return section.model_copy(update={name: value})
