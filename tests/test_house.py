"""The house's own rules, checked on the source tree (docs/design.md): every module says what it
is for, and nothing a user reads cites a page or a history they cannot see."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "fastviz").rglob("*.py")) + sorted((ROOT / "kernels").glob("*.py"))
READ_BY_USERS = MODULES + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_says_what_it_is_for(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.split()) >= 4, f"{path.relative_to(ROOT)}: no module docstring"


def test_nothing_cites_an_outside_page_or_the_projects_history():
    # "DESIGN rule" pointed at a page outside the repository; "the seed's" and "issue N" are
    # the project's history, not the user's.
    pattern = re.compile(r"DESIGN rule|DESIGN\.md|\bseed's\b|\(issue \d+|issue \d+'s|\bwave \d\b")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in READ_BY_USERS
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)
