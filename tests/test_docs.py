"""Every ```python block in README.md and docs/*.md runs (blocks fenced ```python notest are shown only).

Blocks of one page share a namespace and run in order, like a reader pasting them into a session.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python[ \t]*(\w*)[ \t]*\n(.*?)^```", re.S | re.M)
# Pages whose snippets build real zoos or train: run with the slow tests.
SLOW_PAGES = {"zoos.md", "search.md", "lora.md", "selection.md", "pretrained.md", "equivariant.md"}


def _pages():
    for p in PAGES:
        if p.exists() and BLOCK.search(p.read_text()):
            marks = [pytest.mark.slow] if p.name in SLOW_PAGES else []
            yield pytest.param(p, id=p.name, marks=marks)


@pytest.mark.parametrize("page", list(_pages()), ids=lambda p: p.name)
def test_doc_snippets_run(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, m in enumerate(BLOCK.finditer(page.read_text())):
        if m.group(1) == "notest":
            continue
        code = compile(m.group(2), f"{page.name}[block {i}]", "exec")
        exec(code, namespace)
