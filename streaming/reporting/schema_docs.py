"""The contract tables of docs/contracts.md, generated from the published JSON Schemas in schemas/.

docs/contracts.md keeps its prose; each table sits between a marker naming the schema it comes from
(optionally a JSON pointer into it, for a part such as a drift detector's statistics) and an end
marker:

    <!-- generated from schemas/scores/v1.json -->
    ...a link to the schema and its table, rewritten by this module...
    <!-- end generated -->

`python -m streaming.reporting.schema_docs` rewrites the tables in place (`make docs-contracts`);
with `--check` it only says whether they are current (exit 1 when not).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
CONTRACTS = PROJECT / "docs" / "contracts.md"
BLOCK = re.compile(r"(<!-- generated from (?P<source>[^ #]+)(?:#(?P<pointer>\S+))? -->\n)(?P<body>.*?)"
                   r"(<!-- end generated -->)", re.DOTALL)


def render(text: str, project: Path = PROJECT) -> str:
    """`text` (docs/contracts.md) with every generated block rewritten from its schema file
    (a path relative to `project`)."""
    def block(match: re.Match) -> str:
        schema = json.loads((project / match["source"]).read_text(encoding="utf-8"))
        part = resolve(schema, match["pointer"]) if match["pointer"] else schema
        link = f"Schema: [`{match['source']}`](../{match['source']})\n\n" if not match["pointer"] else ""
        return match.group(1) + link + table(schema, part) + match.group(5)
    return BLOCK.sub(block, text)


def resolve(schema: dict[str, Any], pointer: str) -> dict[str, Any]:
    """The part of `schema` at a JSON pointer such as `/$defs/page_hinkley_statistics`."""
    part: Any = schema
    for token in pointer.lstrip("/").split("/"):
        part = part[token.replace("~1", "/").replace("~0", "~")]
    return part


def table(schema: dict[str, Any], part: dict[str, Any]) -> str:
    """A Markdown table of `part`'s properties (field, type, notes: its description), in the
    schema's order; `schema` resolves `$ref`s."""
    rows = ["| field | type | notes |", "|---|---|---|"]
    for name, field in part.get("properties", {}).items():
        notes = escape(field.get("description", ""))
        rows.append(f"| `{name}` | {escape(type_text(schema, field))} | {notes} |")
    return "\n".join(rows) + "\n"


def escape(text: str) -> str:
    """Text fit for a Markdown table cell: a literal | escaped (unless already)."""
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def type_text(schema: dict[str, Any], field: dict[str, Any]) -> str:
    """A short reading of a property's JSON Schema: its types, values and ranges."""
    if "$ref" in field:
        return type_text(schema, {**resolve(schema, field["$ref"].removeprefix("#")),
                                  **{k: v for k, v in field.items() if k not in ("$ref", "description")}})
    if "const" in field:
        return f"always {value_text(field['const'])}"
    if "enum" in field:
        return alternatives([value_text(value) for value in field["enum"]])
    if "anyOf" in field or "oneOf" in field:
        return alternatives([type_text(schema, option) for option in field.get("anyOf", field.get("oneOf"))])
    types = field.get("type", "any")
    types = types if isinstance(types, list) else [types]
    return alternatives([one_type(schema, kind, field) for kind in types])


def one_type(schema: dict[str, Any], kind: str, field: dict[str, Any]) -> str:
    if kind in ("integer", "number"):
        return kind + range_text(field)
    if kind == "string":
        if "maxLength" in field:
            return f"string, at most {field['maxLength']} characters"
        return "string"
    if kind == "array":
        items = field.get("items", {})
        return "list of " + (fields_text(items) if "properties" in items else type_text(schema, items))
    if kind == "object":
        if "properties" in field:
            return fields_text(field)
        if isinstance(field.get("additionalProperties"), dict):
            return "object of name → " + type_text(schema, field["additionalProperties"])
        if field.get("maxProperties") == 0:
            return "`{}`"
        return "object"
    return kind


def fields_text(field: dict[str, Any]) -> str:
    return "`{" + ", ".join(field["properties"]) + "}`"


# The last epoch millisecond of 9999-12-31, the largest event or label time the job takes.
LAST_EPOCH_MS = 253_402_300_799_999


def range_text(field: dict[str, Any]) -> str:
    if field.get("minimum") == 0 and field.get("maximum") == LAST_EPOCH_MS:
        return ", epoch ms from 1970 to 9999"
    low, high = field.get("minimum", field.get("exclusiveMinimum")), field.get("maximum", field.get("exclusiveMaximum"))
    if low is not None and high is not None:
        left = "(" if "exclusiveMinimum" in field else "["
        right = ")" if "exclusiveMaximum" in field else "]"
        return f" in {left}{number_text(low)}, {number_text(high)}{right}"
    if low is not None:
        return f" {'>' if 'exclusiveMinimum' in field else '≥'} {number_text(low)}"
    if high is not None:
        return f" {'<' if 'exclusiveMaximum' in field else '≤'} {number_text(high)}"
    return ""


def number_text(value: float) -> str:
    """1, 0.5, 1e12 (not 1e+12 nor 1000000000000.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e6:
        return f"{value:.0e}".replace("e+", "e")
    return f"{value:g}" if isinstance(value, float) else str(value)


def value_text(value: Any) -> str:
    """null, 0, `text`, `true`."""
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return f"`{json.dumps(value) if isinstance(value, bool) else value}`"


def alternatives(texts: list[str]) -> str:
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rewrite docs/contracts.md's tables from schemas/")
    parser.add_argument("--check", action="store_true", help="only check that the tables are current (exit 1 if not)")
    args = parser.parse_args(argv)
    text = CONTRACTS.read_text(encoding="utf-8")
    generated = render(text)
    if args.check:
        if generated != text:
            print(f"{CONTRACTS} differs from what schemas/ give: run `make docs-contracts`", file=sys.stderr)
            return 1
        return 0
    if generated != text:
        CONTRACTS.write_text(generated, encoding="utf-8")
        print(f"rewrote the tables of {CONTRACTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
