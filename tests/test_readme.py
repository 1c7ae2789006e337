"""The examples of the README and docs/ run and print what they say; CI runs the test command."""

import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Pages whose ```python blocks are runnable examples; a block that cannot run
# offline in seconds is fenced as ```text or ```console instead.
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
PYTHON_BLOCKS = [(page, number, block) for page in PAGES
                 for number, block in enumerate(
                     re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S))]


def expected_output(block: str) -> list[str]:
    """The trailing `# ...` comment lines of a block: what its prints must show."""
    lines = block.rstrip("\n").splitlines()
    tail = []
    while lines and lines[-1].startswith("# "):
        tail.insert(0, lines.pop()[2:])
    return tail


@pytest.mark.parametrize("page, number, block", PYTHON_BLOCKS,
                         ids=[f"{page}-block{number}" for page, number, _ in PYTHON_BLOCKS])
def test_python_example_runs(page, number, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, f"{page} (block {number})", "exec"), {"__name__": "__readme__"})
    printed = [line for line in out.getvalue().splitlines() if line.strip()]
    expected = expected_output(block)
    if expected:  # a block without trailing "# output" lines must just run
        assert printed[-len(expected):] == expected


def test_readme_and_usage_have_examples():
    pages = {page for page, _, _ in PYTHON_BLOCKS}
    assert {"README.md", "docs/usage.md"} <= pages, f"runnable examples only in {pages}"


def test_readme_is_a_front_door():
    lines = len(README.splitlines())
    assert lines <= 250, f"README.md has {lines} lines; move details to docs/ (at most 250)"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^    (python3 -m venv .*pytest.*)$", README, flags=re.M)
    assert len(commands) == 1, "README must show exactly one test command"
    assert commands[0] in (ROOT / ".ci" / "run").read_text()


def _project_text_files():
    """The project's own text files: no virtual environment, VCS or build output.

    Walks the tree instead of asking git, so it also works in a copy of the
    repository without ``.git`` (as ``.ci/run`` makes).
    """
    skip = {".git", ".venv", "__pycache__", "build", "dist", "runs", ".pytest_cache"}
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(part in skip or part.endswith(".egg-info") for part in parts):
            continue
        if path.is_file() and (path.suffix in {".py", ".cfg", ".md", ".toml", ".txt"}
                               or parts[0] == ".ci"):
            yield path


def test_project_reads_and_cites_nothing_outside_its_tree():
    """No file of the project points at the workspace beside the clone."""
    forbidden = re.compile("|".join(map(re.escape, [
        "../" + "shared", "SPEC" + " §", "DESIGN" + ".md", "shared/" + "fixtures"])))
    hits = [f"{path.relative_to(ROOT)}:{number}" for path in _project_text_files()
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if forbidden.search(line)]
    assert len(list(_project_text_files())) > 50  # it did look at the project
    assert not hits, f"these lines cite or read files outside the repository: {hits}"
