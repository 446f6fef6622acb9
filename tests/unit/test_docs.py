"""The documents hold together: every relative link in README.md, CONTRIBUTING.md and docs/*.md
reaches a file that exists (and, with #anchor, a heading of that file, by GitHub's anchor rules); the
README names the paths a newcomer looks for first, and each exists; the README stays a front page;
and the README's "Commands" block, which tests/integration/test_cli_run.py runs as written, is the
one docs/operations.md explains."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

PROJECT = Path(__file__).resolve().parents[2]

# The paths the README must name, each of which must exist (issue 25). When one of these files
# moves, change it here and in the README.
README_PATHS = (
    "streaming/job/scoring.py",  # the scoring operator
    "udfs/cleaning.py",  # the cleaning rules
    "udfs/model.py",  # the model
    "docs/configuration.md",  # the configuration reference
    "docs/contracts.md",  # the data contracts
)

# The documents whose links are checked (docs/*.md: every page there, whatever its name).
TOP_DOCUMENTS = ("README.md", "CONTRIBUTING.md")

# The README is a front page; the rest lives in docs/.
README_MAX_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) or [text](<target> "title"); images (![alt](target)) are links too.
INLINE_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def documents() -> list[Path]:
    return [PROJECT / name for name in TOP_DOCUMENTS] + sorted((PROJECT / "docs").glob("*.md"))


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence and (fenced is None or fence.group(1) == fenced):
            fenced = fence.group(1) if fenced is None else None
            continue
        if fenced is None:
            lines.append((number, line))
    return lines


def heading_text(markdown: str) -> str:
    """A heading's text as rendered: code spans as their content, links as their text, no emphasis."""
    text = INLINE_CODE.sub(lambda m: m.group(2).strip(), markdown)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its rendered text lower case, every character that is not a
    letter, digit, underscore, hyphen or space removed, spaces as hyphens."""
    text = heading_text(heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated anchor gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        heading = HEADING.match(line)
        if not heading:
            continue
        anchor = github_anchor(heading.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link of a Markdown file, outside code."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        targets = [match.group(1) for match in INLINE_LINK.finditer(line)]
        reference = REFERENCE_LINK.match(line)
        if reference:
            targets.append(reference.group(1))
        found += [(number, target.strip("<>")) for target in targets]
    return found


def link_problems(path: Path, root: Path) -> list[str]:
    """One line per relative link of `path` whose file (inside `root`) or #anchor does not exist."""
    problems = []
    for number, target in links(path):
        if SCHEME.match(target):
            continue  # a web address: not checked here
        where = f"{path.relative_to(root)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not linked.is_relative_to(root.resolve()):
            problems.append(f"{where}: outside the project")
        elif not linked.exists():
            problems.append(f"{where}: no such file")
        elif anchor and linked.suffix == ".md" and unquote(anchor).lower() not in anchors(linked):
            problems.append(f"{where}: no heading with anchor #{anchor} in {linked.relative_to(root.resolve())}")
        elif anchor and linked.suffix != ".md":
            problems.append(f"{where}: an anchor into a file that is not Markdown")
    return problems


def commands_block(text: str) -> list[str]:
    """The lines of the first ```sh block of the "Commands" section (as test_cli_run reads it)."""
    section = text.split("\n## Commands\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("heading, anchor", [
    ("Session cluster (`flink run`)", "session-cluster-flink-run"),
    ("The job's metrics", "the-jobs-metrics"),
    ("`riskstream status`", "riskstream-status"),
    ("Building where Docker Hub is not reachable, or behind a TLS-inspecting gateway",
     "building-where-docker-hub-is-not-reachable-or-behind-a-tls-inspecting-gateway"),
    ("Labels: **later** than their [transactions](contracts.md)", "labels-later-than-their-transactions"),
    ("snake_case_name and 2 numbers", "snake_case_name-and-2-numbers"),
])
def test_anchors_follow_githubs_rules(heading, anchor):
    assert github_anchor(heading) == anchor


def test_the_link_check_finds_missing_files_and_headings(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Same\n\n## Same\n\n```sh\n# not a heading\n```\n")
    (tmp_path / "code.py").write_text("")
    page = tmp_path / "README.md"
    page.write_text("\n".join([
        "[ok](docs/a.md) [ok](docs/a.md#same-1) [ok](#top) [web](https://example.com/x.md)",
        "[missing](docs/b.md) [no heading](docs/a.md#other) [second repeat](docs/a.md#same-2)",
        "[code anchor](code.py#L1) [escape](../outside.md) `[in code](nowhere.md)`",
        "```", "[in a block](nowhere.md)", "```",
        "# Top",
        "[ref]: docs/c.md",
    ]))
    problems = link_problems(page, tmp_path)
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "docs/b.md: no such file",
        "docs/a.md#other: no heading with anchor #other in docs/a.md",
        "docs/a.md#same-2: no heading with anchor #same-2 in docs/a.md",
        "code.py#L1: an anchor into a file that is not Markdown",
        "../outside.md: outside the project",
        "docs/c.md: no such file",
    ], problems
    assert anchors(tmp_path / "docs" / "a.md") == {"a-page", "same", "same-1"}


def test_every_relative_link_resolves():
    pages = documents()
    assert (PROJECT / "docs").is_dir() and len(pages) > len(TOP_DOCUMENTS)
    problems = [problem for page in pages for problem in link_problems(page, PROJECT)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", README_PATHS)
def test_the_readme_names_the_path_and_it_exists(path):
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    assert path in readme, f"the README does not name {path}"
    assert (PROJECT / path).is_file(), f"the README names {path}, which does not exist"


def test_the_readme_is_a_front_page():
    lines = (PROJECT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_commands_the_readme_runs_are_the_ones_operations_explains():
    # tests/integration/test_cli_run.py runs the README's block as written; docs/operations.md
    # explains each command of it, so the two must not drift apart.
    readme = commands_block((PROJECT / "README.md").read_text(encoding="utf-8"))
    operations = commands_block((PROJECT / "docs" / "operations.md").read_text(encoding="utf-8"))
    assert [command.split()[:2] for command in readme] == [
        [".venv/bin/riskstream", "generate"], [".venv/bin/riskstream", "run"], [".venv/bin/riskstream", "model"],
        [".venv/bin/riskstream", "report"]]
    assert readme == operations


# A path into the project's own environment through its parent folder by name (../main/.venv/...):
# it works only in a checkout whose folder has that name.
CHECKOUT_BY_NAME = re.compile(r"\.\./[^/\s\"'$]+/\.venv\b")


def test_no_command_in_the_docs_assumes_the_checkouts_folder_name():
    problems = []
    for page in documents():
        text = page.read_text(encoding="utf-8")
        prose = {number for number, _ in prose_lines(text)}
        for number, line in enumerate(text.splitlines(), 1):
            if number not in prose and CHECKOUT_BY_NAME.search(line):
                problems.append(f"{page.relative_to(PROJECT)}:{number}: {line.strip()}")
    assert not problems, "\n".join(problems)
