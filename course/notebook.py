"""Reading a submission notebook and choosing the cells that grading executes.

A notebook becomes a module by executing its setup cells (read-only nbgrader cells) and its solution cells
(nbgrader `solution: true`), in notebook order. Demo cells (no nbgrader metadata) are skipped, so a training
loop in a demo cell never runs at grading time. Everything here runs on the trusted side: it only parses JSON,
it never executes the student's code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

# Above this size a submission is not read at all (a notebook with its outputs cleared is a few hundred kB).
MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024

# IPython-only syntax at the start of a line: magics (%name, %%name) and shell escapes (!cmd). Not `% n` or
# `!= b`: Black starts continuation lines with the operator, and those lines are Python.
_IPYTHON_LINE = re.compile(r"^\s*(%%?[A-Za-z_]|!(?!=))")


class NotebookError(Exception):
    """The submission notebook cannot be read; the message names the file and says what is wrong."""


@dataclass(frozen=True)
class CodeCell:
    """A code cell chosen for grading. `label` names it in feedback: its nbgrader grade_id, else its position."""

    label: str
    source: str
    index: int


@dataclass
class GradingCells:
    cells: list[CodeCell]
    notes: list[str] = field(default_factory=list)  # shown with the results, e.g. "metadata was lost"


def read_notebook(path: Path) -> dict:
    """Parse a notebook file (nbformat 4, or older versions converted to 4) with precise error messages.

    Plain JSON parsing on purpose: importing nbformat's validator costs about two seconds per grading run,
    so nbformat is only imported to convert notebooks older than version 4.
    """
    if not path.is_file():
        raise NotebookError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise NotebookError(f"{path}: the file is empty (was the notebook saved?)")
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(
            f"{path}: the file is {size / 2**20:.0f} MB, more than the {MAX_NOTEBOOK_BYTES // 2**20} MB limit; "
            "clear the outputs (Edit > Clear Outputs of All Cells) and save again"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotebookError(f"{path}: not UTF-8 text (byte {exc.start}); notebooks are always saved as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookError(
            f"{path}: not a valid notebook file: JSON error at line {exc.lineno}, column {exc.colno} ({exc.msg})"
        ) from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise NotebookError(f"{path}: valid JSON but not a Jupyter notebook (no 'cells')")
    version = data.get("nbformat")
    if not isinstance(version, int) or version < 4:
        try:
            import nbformat

            data = nbformat.reads(text, as_version=4)
        except Exception as exc:  # nbformat raises several unrelated types for broken documents
            raise NotebookError(
                f"{path}: notebook format {version!r} could not be converted to version 4 "
                f"({type(exc).__name__}: {exc}); open it in Jupyter and save it again"
            ) from None
    cells = data.get("cells")
    if not isinstance(cells, list) or not all(isinstance(cell, dict) for cell in cells):
        raise NotebookError(f"{path}: not a readable Jupyter notebook ('cells' is not a list of cells)")
    return data


def grading_cells(notebook: dict) -> GradingCells:
    """The code cells grading executes, in order: setup (locked) cells and solution cells."""
    code_cells = [(i, c) for i, c in enumerate(notebook["cells"]) if c.get("cell_type") == "code"]
    any_metadata = any(_nbgrader_metadata(c) is not None for _, c in code_cells)
    notes: list[str] = []
    chosen: list[CodeCell] = []
    for index, cell in code_cells:
        meta = _nbgrader_metadata(cell)
        if any_metadata:
            if meta is None:
                continue  # a demo cell
            is_solution = bool(meta.get("solution"))
            is_setup = bool(meta.get("locked")) and not meta.get("grade")
            if not (is_solution or is_setup):
                continue  # a test cell: nbgrader's business, not ours
            label = str(meta.get("grade_id") or f"cell {index + 1}")
        else:
            label = f"cell {index + 1}"
        chosen.append(CodeCell(label=label, source=_python_only(_source_text(cell)), index=index))
    if not any_metadata and code_cells:
        notes.append(
            "The notebook's cells have lost their nbgrader metadata (was the code pasted into a new notebook?); "
            "all code cells were run, demo cells included. Work in the notebook you were given."
        )
    return GradingCells(cells=chosen, notes=notes)


def grade_ids(notebook: dict) -> set[str]:
    """nbgrader grade_ids present in a notebook (used to recognise which assignment it belongs to)."""
    ids = set()
    for cell in notebook["cells"]:
        meta = _nbgrader_metadata(cell)
        if meta is not None and meta.get("grade_id"):
            ids.add(str(meta["grade_id"]))
    return ids


def _nbgrader_metadata(cell: dict) -> dict | None:
    metadata = cell.get("metadata")
    nbgrader = metadata.get("nbgrader") if isinstance(metadata, dict) else None
    return nbgrader if isinstance(nbgrader, dict) else None


def _source_text(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


# Cell magics whose body is still Python (only their first line is dropped); any other cell magic
# (%%bash, %%writefile, %%html, ...) makes the whole cell non-Python, so the whole cell is skipped.
_PYTHON_CELL_MAGICS = ("%%time", "%%timeit", "%%capture")


def _python_only(source: str) -> str:
    """Comment out IPython magics and shell escapes, which plain Python cannot execute."""
    first = source.lstrip().split("\n", 1)[0].strip()
    if first.startswith("%%") and first.split()[0] not in _PYTHON_CELL_MAGICS:
        return "\n".join("# (skipped at grading) " + line for line in source.splitlines())
    return "\n".join(
        "# (skipped at grading) " + line if _IPYTHON_LINE.match(line) else line for line in source.splitlines()
    )
