"""Write a submission notebook: the solution notebook with some cells edited, or the student release as is."""

from __future__ import annotations

import copy
import json
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def cell_by_id(notebook: dict, grade_id: str) -> dict:
    for cell in notebook["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id:
            return cell
    raise KeyError(f"no cell with grade_id {grade_id!r}")


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def with_edits(solution: Path, target: Path, *, replace: dict[str, list[tuple[str, str]]] | None = None,
               sources: dict[str, str] | None = None, grade_ids: dict[str, str] | None = None) -> Path:
    """Copy `solution` to `target`, applying exact text replacements or whole new sources per grade_id, then
    renaming grade_ids (old -> new).

    A replacement whose old text is not found raises, so a catalog entry never silently tests the solution.
    """
    notebook = copy.deepcopy(load(solution))
    for grade_id, pairs in (replace or {}).items():
        cell = cell_by_id(notebook, grade_id)
        text = source(cell)
        for old, new in pairs:
            if text.count(old) != 1:
                raise ValueError(f"{solution.name} cell {grade_id!r}: expected exactly one {old!r}, "
                                 f"found {text.count(old)}")
            text = text.replace(old, new)
        cell["source"] = text
    for grade_id, text in (sources or {}).items():
        cell_by_id(notebook, grade_id)["source"] = text
    for old, new in (grade_ids or {}).items():
        cell_by_id(notebook, old)["metadata"]["nbgrader"]["grade_id"] = new
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    return target
