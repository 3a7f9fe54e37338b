"""Every python code block in the documents runs, and its assertions hold.

A document is split into sections at its ``## `` headings. The blocks of one section run in
order in one namespace, after the blocks that come before the first ``## `` heading (the
document's preamble, typically its imports). Each section is one test, so a failure names the
document and the section, and the traceback points at the markdown line; a document with no
``## `` section runs its preamble as one test.

These are the pages the documentation site shows (``mkdocs.yml``), so the code a reader sees is
the code that runs. The site puts the PyTorch, Flax Linen, Flax NNX and ``funcmod.nn`` versions
of a snippet side by side as content tabs (``=== "PyTorch"`` with the fenced block indented
under it); the parser reads indented fences too, and each tab's block runs in its place.

The blocks run under the test suite's strict JAX configuration (``tests/conftest.py``).
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # the documents put PyTorch next to Flax

from funcmod.tools.docsite import generated_pages  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    "README.md",
    "docs/index.md",
    "docs/getting-started.md",
    "docs/migration.md",
    "docs/claims.md",
    "docs/pitfalls.md",
    "docs/port.md",
]
RUN_TAGS = {"python"}  # the tag of every block that runs
# Tags that look like python but would be skipped: a block written with one fails the suite.
SUSPICIOUS_TAGS = {"py", "python3", "py3", "pycon", "ipython", "pytest"}
FENCE = re.compile(r"^( *)(```+|~~~+)\s*([\w+-]*)")  # indented: inside a tab or a list item
TAB = re.compile(r'^( *)=== "([^"]+)"')  # a content tab (pymdownx.tabbed)


@dataclass(frozen=True)
class Block:
    doc: str
    section: str
    line: int  # 1-based line of the first line of code
    tag: str
    code: str
    tab: str = ""  # the title of the content tab the block sits in, if any


def parse(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with their section, tab and line number.

    A fence may be indented (under a ``=== "Tab"`` line or a list item); its code is read
    without that indentation, and a code line indented less than the fence is an error.
    """
    blocks: list[Block] = []
    section, tab = "", ""
    fence: str | None = None
    indent, tag, start, lines = "", "", 0, []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if fence is None:
            m = FENCE.match(line)
            t = TAB.match(line)
            if m:
                indent, fence, tag = m.group(1), m.group(2), m.group(3).lower()
                start, lines = i + 1, []
            elif t:
                tab = t.group(2)
            elif line.startswith("## "):
                section, tab = line[3:].strip(), ""
            elif line.strip() and not line.startswith(" "):
                tab = ""  # unindented text ends a group of tabs
        elif line.strip() == fence and line.startswith(indent):
            code = "\n".join(lines)
            blocks.append(Block(str(path), section, start, tag, code, tab if indent else ""))
            fence = None
        else:
            if line.strip() and not line.startswith(indent):
                raise ValueError(f"{path.name}:{i}: code indented less than its fence")
            lines.append(line[len(indent) :])
    if fence is not None:
        raise ValueError(f"{path.name}:{start - 1}: unclosed code fence")
    return blocks


def _sections() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        path = ROOT / doc
        if not path.exists():  # reported by test_every_document_has_runnable_blocks
            continue
        seen = []
        for b in parse(path):
            if b.tag in RUN_TAGS and b.section not in seen:
                seen.append(b.section)
        # the preamble runs before every section; on its own only where there is none
        out += [(doc, s) for s in seen if s or seen == [""]]
    return out


def run_blocks(blocks: list[Block], module_name: str = "funcmod_docs") -> dict:
    """Run the blocks in order in the namespace of a fresh module; return the namespace.

    The module is registered in ``sys.modules`` while the blocks run, because classes defined
    in them (dataclasses, Flax modules) look their module up there.
    """
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module
    try:
        for b in blocks:
            # Pad with newlines so tracebacks give the block's line numbers in the markdown
            # file; dont_inherit keeps this file's `from __future__ import annotations` out.
            source = "\n" * (b.line - 1) + b.code
            exec(compile(source, b.doc, "exec", dont_inherit=True), vars(module))
    finally:
        del sys.modules[module_name]
    return vars(module)


def _slug(text: str) -> str:
    return re.sub(r"\W+", "-", text).strip("-")


@pytest.mark.parametrize(("doc", "section"), _sections(), ids=lambda v: _slug(v) or "preamble")
def test_section_runs(doc, section):
    blocks = [b for b in parse(ROOT / doc) if b.tag in RUN_TAGS]
    preamble = [b for b in blocks if not b.section]
    body = [b for b in blocks if b.section == section and section]
    run_blocks(preamble + body, f"funcmod_docs_{_slug(doc + '-' + section).replace('-', '_')}")


@pytest.mark.parametrize("doc", DOCS)
def test_every_document_has_runnable_blocks(doc):
    path = ROOT / doc
    assert path.exists(), f"{path} is missing"
    blocks = parse(path)
    assert any(b.tag in RUN_TAGS for b in blocks), f"{doc} has no python block"
    skipped = [f"{doc}:{b.line - 1} ```{b.tag}" for b in blocks if b.tag in SUSPICIOUS_TAGS]
    assert not skipped, f"python-like blocks that would not run (tag them python): {skipped}"
    headings = [
        line[3:].strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    ]
    duplicates = sorted({h for h in headings if headings.count(h) > 1})
    assert not duplicates, f"{doc}: sections share a heading, their blocks would mix: {duplicates}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_documents_point_at_existing_headings():
    anchors = {
        doc: {
            github_anchor(line.lstrip("#"))
            for line in (ROOT / doc).read_text(encoding="utf-8").splitlines()
            if line.startswith("#")
        }
        for doc in DOCS
    }
    broken = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md)?#([^)]+)\)", text):
            # a link's target is relative to the linking document's folder
            target = (Path(doc).parent / target).as_posix() if target else doc
            if target not in anchors or anchor not in anchors[target]:
                broken.append(f"{doc} -> {target}#{anchor}")
    # pages the site's build hook generates (the examples, the measured results)
    generated = {ROOT / "docs" / page for page in generated_pages()}
    for doc in DOCS:  # links to whole files
        text = (ROOT / doc).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([\w./-]+\.(?:md|py))\)", text):
            path = ROOT / Path(doc).parent / target
            if not path.exists() and path.resolve() not in generated:
                broken.append(f"{doc} -> {target}")
    assert not broken, f"links to missing headings: {broken}"


def test_parser_finds_sections_lines_and_tags(tmp_path):
    md = tmp_path / "x.md"
    md.write_text(
        "# T\n```python\nimport math\n```\n## A\ntext\n```python\nx = 1\ny = 2\n```\n"
        "## B\n```bash\nls\n```\n````python\nz = '```'\n````\n",
        encoding="utf-8",
    )
    blocks = parse(md)
    assert [(b.section, b.line, b.tag) for b in blocks] == [
        ("", 3, "python"),
        ("A", 8, "python"),
        ("B", 13, "bash"),
        ("B", 16, "python"),
    ]
    assert blocks[1].code == "x = 1\ny = 2"
    assert blocks[3].code == "z = '```'"


def test_a_failing_block_fails_with_its_markdown_line(tmp_path):
    md = tmp_path / "bad.md"
    md.write_text("## S\n\n```python\nx = 1\nassert x == 2, 'wrong'\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="wrong") as info:
        run_blocks([b for b in parse(md) if b.tag == "python"])
    assert info.traceback[-1].lineno + 1 == 5  # pytest's lineno is 0-based


def test_parser_reads_blocks_inside_content_tabs(tmp_path):
    md = tmp_path / "tabs.md"
    md.write_text(
        '## A\n\n=== "PyTorch"\n\n    ```python\n    t = 1\n    if t:\n        t = 2\n    ```\n\n'
        '=== "Flax NNX"\n\n    Some text.\n\n    ```python\n    n = 3\n    ```\n\n'
        "After the tabs.\n\n```python\nassert (t, n) == (2, 3)\n```\n",
        encoding="utf-8",
    )
    blocks = parse(md)
    assert [(b.tab, b.line, b.code) for b in blocks] == [
        ("PyTorch", 6, "t = 1\nif t:\n    t = 2"),
        ("Flax NNX", 16, "n = 3"),
        ("", 22, "assert (t, n) == (2, 3)"),
    ]
    run_blocks(blocks)  # the tabs' blocks run, in order, before the assertion under them


def test_a_failing_block_in_a_tab_fails_with_its_markdown_line(tmp_path):
    md = tmp_path / "bad_tab.md"
    md.write_text('## S\n\n=== "T"\n\n    ```python\n    assert False, "in tab"\n    ```\n')
    with pytest.raises(AssertionError, match="in tab") as info:
        run_blocks(parse(md))
    assert info.traceback[-1].lineno + 1 == 6


def test_code_indented_less_than_its_fence_is_an_error(tmp_path):
    md = tmp_path / "dedent.md"
    md.write_text('=== "T"\n\n    ```python\n  x = 1\n    ```\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"dedent\.md:4: code indented less than its fence"):
        parse(md)


def test_snippets_still_all_run():
    """The restructuring into tabs and pages lost no snippet: at least as many python blocks run
    as before it (47 in README.md, migration.md, claims.md and pitfalls.md), plus the new pages'."""
    counts = {doc: sum(b.tag in RUN_TAGS for b in parse(ROOT / doc)) for doc in DOCS}
    old = ("README.md", "docs/migration.md", "docs/claims.md", "docs/pitfalls.md")
    assert sum(counts[d] for d in old) >= 47, counts
    assert counts["docs/index.md"] >= 1 and counts["docs/getting-started.md"] >= 4, counts
    # every block runs in some test: in a section, or in the preamble every section runs after
    assert ("docs/index.md", "") in _sections()
