"""The docs stay true (issue 16): every make target, management command, command-line verb,
repository path and link that README.md, AGENTS.md, CONTRIBUTING.md and docs/ quote exists, and
none points outside the repository. No database: it reads files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.management import get_commands

from brokers.client.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "AGENTS.md",
        ROOT / "CONTRIBUTING.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)
# Paths that exist only after a command the docs name (generated, or local data).
GENERATED = re.compile(
    r"^(var|\.venv|test-artifacts|control)(/|$)|_pb2(_grpc)?\.pyi?$|^protos/\*|\*|<|\{"
)
# Top-level entries of the repository: a quoted token is a path when it starts with one.
TOP = {p.name for p in ROOT.iterdir() if not p.name.startswith(".git")} | {".ci"}


def _code_spans(text: str) -> list[str]:
    """Inline code and the lines of fenced code blocks."""
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        # A comment in a shell block is prose ("# make sure ...").
        spans += [re.sub(r"(^|\s)#.*", "", line) for line in block.splitlines()]
    return spans


def _targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z_-]+):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_make_target_the_docs_quote_exists(doc: Path) -> None:
    targets = _targets()
    quoted = {
        t
        for span in _code_spans(doc.read_text())
        for t in re.findall(r"\bmake ([a-z][\w-]*)", span)
    }
    assert quoted - targets == set()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_the_docs_quote_exists(doc: Path) -> None:
    commands = set(get_commands())
    missing = []
    for span in _code_spans(doc.read_text()):
        for name in re.findall(r"manage\.py ([a-z_]+)", span):
            if name not in commands:
                missing.append(f"manage.py {name}")
        for verb in re.findall(r"^\s*(?:\$ )?interconnect (?:--\S+ \S+ )*([a-z]+)", span):
            if verb not in COMMANDS:
                missing.append(f"interconnect {verb}")
    assert missing == []


def _paths(text: str) -> set[str]:
    out = set()
    for span in _code_spans(text):
        for token in re.split(r"[\s,;()=\"']+", span):
            token = token.rstrip(".:").split(":")[0]
            if "/" not in token or token.split("/")[0] not in TOP or "://" in token:
                continue
            if GENERATED.search(token):
                continue
            out.add(token)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_the_docs_quote_exists(doc: Path) -> None:
    missing = sorted(p for p in _paths(doc.read_text()) if not (ROOT / p).exists())
    assert missing == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_stays_inside_the_repository_and_exists(doc: Path) -> None:
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            bad.append(target)
    assert bad == []
    assert "../shared" not in doc.read_text()


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    linked = set(re.findall(r"docs/([\w.-]+\.md)", readme))
    assert pages - linked == set()


def test_the_checks_catch_what_they_are_meant_to() -> None:
    """The adversary: a renamed target, path or command would be caught."""
    assert "no-such-target" not in _targets()
    assert _paths("`brokers/no_such_module.py` and `registry/services.py`") == {
        "brokers/no_such_module.py",
        "registry/services.py",
    }
    assert _paths("`var/interconnect.sqlite3` `protos/agent_pb2.py`") == set()
