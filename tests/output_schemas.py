"""Checking the job's output lines against their published JSON Schemas (schemas/<output>/v<N>.json,
draft 2020-12), for both tiers: a line is checked against the schema of its own `schema_version`,
so that a later version (e.g. schemas/dead-letters/v2.json) is checked by adding its file."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator

import orjson
from jsonschema import Draft202012Validator

from streaming.reporting.outputs import OUTPUTS, committed_parts

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
# The inputs' schemas: what the job reads, not what it writes.
INPUTS = ("transactions", "labels")
# kafka.<field> -> the output written to that topic (the same name as its folder under output.path).
OUTPUT_TOPICS = {"scores_topic": "scores", "dead_letters_topic": "dead-letters", "snapshots_topic": "model-snapshots",
                 "analytics_topic": "analytics", "late_topic": "late", "learning_topic": "learning",
                 "label_dead_letters_topic": "label-dead-letters", "drift_topic": "drift",
                 "model_versions_topic": "model-versions", "repeated_ids_topic": "repeated-ids"}


def schema_path(name: str, version: int) -> Path:
    """schemas/<name>/v<version>.json, for an output (a folder name of OUTPUTS) or an input (INPUTS)."""
    return SCHEMAS / name / f"v{version}.json"


@functools.cache
def validator(name: str, version: int) -> Draft202012Validator:
    """The validator of schemas/<name>/v<version>.json; fails when there is no such schema."""
    path = schema_path(name, version)
    assert path.is_file(), f"{name}: no schema for schema_version {version} ({path} does not exist)"
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(inlined(schema, schema.get("$defs", {})))


def inlined(node: Any, definitions: dict[str, Any]) -> Any:
    """`node` with each local reference `{"$ref": "#/$defs/<name>", ...}` replaced by a copy of the
    definition (merged with the keywords beside the reference): the same schema, for schemas that do
    not refer to themselves, checked about twice as fast (jsonschema resolves a reference on every use)."""
    if isinstance(node, dict):
        reference = node.get("$ref", "")
        if reference.startswith("#/$defs/"):
            beside = {key: value for key, value in node.items() if key != "$ref"}
            return {**inlined(definitions[reference.removeprefix("#/$defs/")], definitions), **inlined(beside, definitions)}
        return {key: inlined(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [inlined(value, definitions) for value in node]
    return node


def violations(name: str, line: bytes | str | dict[str, Any], version: int | None = None) -> list[str]:
    """Why `line` (one output line, as text or parsed) is not valid against the schema of `name` for
    its `schema_version` (or for `version` when given: an input has none): one message per error,
    none when it is valid."""
    record = orjson.loads(line) if isinstance(line, (bytes, str)) else line
    if version is None:
        if not isinstance(record, dict) or type(record.get("schema_version")) is not int:
            return [f"no integer schema_version in {record!r:.200}"]
        version = record["schema_version"]
    return [f"{'/'.join(map(str, error.absolute_path)) or '(line)'}: {error.message:.300}"
            for error in validator(name, version).iter_errors(record)]


def assert_lines_valid(name: str, lines: Iterable[bytes | str | dict[str, Any]], where: str = "") -> int:
    """Fails, naming the first few bad lines and why, unless every line of output `name` is valid
    against its version's schema; returns how many lines were checked."""
    bad, checked = [], 0
    for number, line in enumerate(lines, 1):
        checked += 1
        errors = violations(name, line)
        if errors:
            bad.append(f"{name}{where} line {number}: {'; '.join(errors[:3])}\n    {str(line)[:300]}")
    assert not bad, f"{len(bad)} of {checked} {name} lines do not match their schema:\n" + "\n".join(bad[:5])
    return checked


def part_lines(folder: Path) -> Iterator[bytes]:
    """The non-empty lines of a FileSink folder's committed part files (in-progress ones may still change)."""
    for part in committed_parts(folder):
        yield from (line for line in part.read_bytes().splitlines() if line.strip())


def assert_output_dir_valid(path: Path, skip: Collection[str] = ()) -> dict[str, int]:
    """Checks every committed line of every output folder (a folder named as one of OUTPUTS) under
    `path` (an output.path, or any folder above some) but those in `skip` (paths as text): returns
    lines checked per folder checked."""
    checked = {}
    for folder, subfolders, _ in os.walk(path):
        for name in sorted(set(subfolders) & set(OUTPUTS)):
            output = Path(folder) / name
            if str(output) in skip:
                continue
            checked[str(output)] = assert_lines_valid(name, part_lines(output), f" ({output})")
    return checked


def output_of_topic(settings: Any, topic: str) -> str | None:
    """The output written to Kafka topic `topic` under `settings` (None: not an output topic, e.g.
    the transactions or labels topic, whose lines tests make malformed on purpose)."""
    for field, name in OUTPUT_TOPICS.items():
        if getattr(settings.kafka, field) == topic:
            return name
    return None
