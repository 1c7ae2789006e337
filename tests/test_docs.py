"""The README, CHANGELOG.md and docs/ link only to files and headings that exist."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
FENCED = re.compile(r"^```.*?^```", flags=re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", FENCED.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    text = FENCED.sub("", page.read_text())
    return {anchor(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def relative_links(page: pathlib.Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"[a-z]+:", target)]


def test_the_pages_are_found():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    assert {"README.md", "CHANGELOG.md", "docs/usage.md", "docs/experiments.md",
            "docs/results.md", "docs/performance.md", "docs/method.md",
            "docs/design.md"} <= names
    assert sum(len(relative_links(page)) for page in PAGES) > 50  # it did read links


def test_the_anchor_rule_is_githubs():
    assert anchor("Networks, optimizer and data (`cb_keras.paper.models`)") == \
        "networks-optimizer-and-data-cb_keraspapermodels"
    assert anchor("3. Auto-tune: architecture search") == "3-auto-tune-architecture-search"
    assert anchor("The papers' optimizer (`bench_main_job --part optimizers`)") == \
        "the-papers-optimizer-bench_main_job---part-optimizers"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no file {linked.relative_to(ROOT)})")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target} (no heading #{fragment} in {linked.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)} links to what does not exist: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_code_blocks_are_tested_or_marked_as_not_runnable(page):
    """A Python example is fenced ```python (the tests run it) or ```text / ```console."""
    fences = re.findall(r"^```(\w*)$", page.read_text(), flags=re.M)
    untested = [fence for fence in fences if fence in {"py", "python3", "pycon"}]
    assert not untested, f"{page.relative_to(ROOT)}: fence as ```python (runs in the tests) " \
        f"or ```text/```console (does not), not {untested}"


def test_docs_named_in_code_and_flagfiles_exist():
    """Docstrings, messages and flagfile headers point to docs/ pages and headings that exist."""
    sources = sorted([*ROOT.glob("flags/*.cfg"), *ROOT.glob("cb_keras/**/*.py"),
                      *ROOT.glob("experiments/**/*.py"), *ROOT.glob("benchmarks/*.py")])
    named = [(source, target) for source in sources
             for target in re.findall(r"\bdocs/[\w.]+\.md(?:#[\w-]+)?", source.read_text())]
    assert any(source.suffix == ".cfg" for source, _ in named)  # it did read the headers
    broken = []
    for source, target in named:
        path, _, fragment = target.partition("#")
        if not (ROOT / path).exists() or (fragment and fragment not in anchors(ROOT / path)):
            broken.append(f"{source.relative_to(ROOT)}: {target}")
    assert not broken, f"these point to docs that do not exist: {broken}"
