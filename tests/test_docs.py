"""The README and docs: links that lead somewhere, and the README's first commands."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "baselines" / "README.md"]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {github_anchor(h) for h in re.findall(r"^#+ (.*)$", page.read_text(), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_leads_somewhere(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if fragment:
            assert fragment in anchors(linked), f"{page.name}: no heading #{fragment} in {linked.name}"


def test_the_readme_starts_with_the_first_command_alone_and_the_tests_in_a_block_of_their_own():
    blocks = [b.split("```", 1)[0].splitlines() for b in REPO.joinpath("README.md").read_text().split("```bash\n")[1:]]
    first, second = blocks[:2]
    assert len(first) == 1  # pasting the first block starts the sweep, never the tests
    assert first[0].startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && ")
    assert "python -m benchmark sweep " in first[0]
    assert second == ["python -m pytest"] and "\npython -m pytest\n" in REPO.joinpath(".ci", "run").read_text()


def test_the_package_docstring_names_every_module_once():
    import benchmark

    modules = {p.stem for p in (REPO / "benchmark").glob("*.py") if not p.stem.startswith("_")}
    listed = re.findall(r"^  (\w+) {2,}", benchmark.__doc__.split("The modules")[1], re.M)
    assert sorted(listed) == sorted(modules) and len(listed) == len(set(listed))


def test_the_accuracies_quoted_in_the_baselines_readme_are_those_of_the_baseline_files():
    import json

    folder = REPO / "experiments" / "baselines"
    quoted = re.findall(r"^\| `([\w-]+\.json)` \| (\w+)/(\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                        (folder / "README.md").read_text(), re.M)
    recorded = {}
    for path in sorted(folder.glob("*.json")):
        for row in json.loads(path.read_text())["rows"]:
            values = [row["metrics"][m]["value"] for m in ("val_top1", "test_top1", "test_top5")]
            recorded[(path.name, row["backbone"], row["strategy"])] = [f"{v:.4f}" for v in values]
    assert {(f, b, s): list(values) for f, b, s, *values in quoted} == recorded
