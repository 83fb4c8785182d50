"""The README's architecture section names every module of the package, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spooler"


def architecture_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Architecture")
    return readme[start : readme.index("\n## ", start + 1)]


def test_the_architecture_section_names_every_module() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "_version"}
    named = set(re.findall(r"`(_?[a-z][a-z_]*)`", architecture_section()))
    assert modules - named == set()


def test_the_module_table_names_only_modules_that_exist() -> None:
    first_cells = re.findall(r"^\| (`.+?`(?:, `.+?`)*) \|", architecture_section(), re.M)
    assert first_cells, "the module table is gone"
    for cell in first_cells:
        for name in re.findall(r"`([^`]+)`", cell):
            assert (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir(), name
