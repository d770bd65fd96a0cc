"""The guides' Python examples run, and print what the guides say they print.

Each Markdown file's ```python blocks run in order in one namespace, like a session. A
block followed directly by a ```text block must print exactly that text. A block
preceded by ``<!-- doc-test: skip ... -->`` is not run (it needs another package).
"""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- doc-test: skip[^>]*-->\s*)?```(\w+)\n(.*?)\n[ ]*```", re.S)
DOCUMENTS = [
    "docs/language.md",
    "docs/engine.md",
    "docs/handoff.md",
    "docs/mockweb.md",
    "docs/simulation.md",
    "docs/pnml.md",
    "docs/simulation-whatif.md",
    "docs/jobs.md",
    "README.md",
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_examples_run_and_print_what_the_text_says(document: str) -> None:
    text = (ROOT / document).read_text()
    blocks = list(BLOCK.finditer(text))
    namespace: dict[str, object] = {"__name__": "__doc__"}
    ran = 0
    for i, block in enumerate(blocks):
        skipped, language, code = block.group(1) is not None, block.group(2), block.group(3)
        if language != "python" or skipped:
            continue
        line = text[: block.start()].count("\n") + 1
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            source = textwrap.dedent(code) + "\n"
            # dont_inherit: this module's `from __future__ import annotations` must not
            # turn the examples' annotations into strings.
            exec(compile(source, f"{document}:{line}", "exec", dont_inherit=True), namespace)
        ran += 1
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        if (
            following is not None
            and following.group(2) == "text"
            and not text[block.end() : following.start()].strip()
        ):
            expected = textwrap.dedent(following.group(3)) + "\n"
            assert printed.getvalue() == expected, f"{document}:{line} printed otherwise"
    assert ran > 0, f"{document} has no runnable example"


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CITED_PATH = re.compile(
    r"`((?:nets|router|shard|cluster|bench|tests|deploy|docs)/[\w/.]+\.(?:py|md|toml|yml|yaml))`"
)


def test_every_relative_link_and_cited_path_in_the_docs_exists() -> None:
    """A moved module or a renamed doc must not leave a dead link or path behind."""
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    dead = []
    for document in documents:
        text = document.read_text()
        for target in LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (document.parent / target).exists():
                dead.append(f"{document.relative_to(ROOT)}: link {target}")
        # Backquoted repository paths, e.g. `cluster/sdk/runner.py`.
        dead += [
            f"{document.relative_to(ROOT)}: path {path}"
            for path in CITED_PATH.findall(text)
            if not (ROOT / path).exists()
        ]
    assert dead == [], "\n".join(dead)
