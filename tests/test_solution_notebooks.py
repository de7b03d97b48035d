"""The solution notebooks are teaching notebooks that run top to bottom, offline, on a CPU in under a minute,
and follow the cell conventions that grading and nbgrader rely on.

The kernel runs with COURSE_QUICK=1: a notebook whose demos train for longer than the suite can afford reads it
(one visible line, `QUICK = os.environ.get("COURSE_QUICK") == "1"`) to shorten them; students, who do not set
it, get the full demos (each notebook under 3 minutes on a laptop CPU, measured by benchmarks/notebook_times.py).
"""

from __future__ import annotations

import ast
import json
import time

import nbformat
import pytest
from nbclient import NotebookClient

from course.notebook import CHECKS_IMPORT_ID
from reference.tiktoken_offline import seed_tiktoken_cache
from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "solutions").glob("*/*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_in_under_a_minute(path, tmp_path, monkeypatch):
    cache = seed_tiktoken_cache(tmp_path / "tiktoken")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))  # the kernel inherits it: nothing is downloaded
    monkeypatch.setenv("COURSE_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # plots are drawn, never shown
    notebook = nbformat.read(path, as_version=4)
    started = time.monotonic()
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(notebook, timeout=60, kernel_name="python3", resources=resources).execute()
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"{path.name} took {elapsed:.1f} s"
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cell_conventions(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    nbformat.validate(nbformat.from_dict(notebook))
    ids = []
    for cell in notebook["cells"]:
        text = "".join(cell["source"])
        meta = cell.get("metadata", {}).get("nbgrader")
        if cell["cell_type"] == "markdown":
            assert "BEGIN SOLUTION" not in text, "nbgrader also scans markdown for markers"
            continue
        assert cell.get("outputs") == [], "solutions are committed without outputs"
        assert cell.get("execution_count") is None, "solutions are committed without outputs"
        if meta is None:
            assert "BEGIN SOLUTION" not in text, "a demo cell holds no solution markers"
            continue
        ids.append(meta["grade_id"])
        assert meta["schema_version"] == 3
        if meta["grade"]:  # a check cell: one call into the public checks (tests/test_public_checks.py)
            assert text == f'check("{meta["grade_id"]}")'
            assert meta["locked"]
            assert not meta["solution"]
            continue
        if meta["solution"]:
            assert text.count("### BEGIN SOLUTION") == text.count("### END SOLUTION") >= 1
            # Definitions only: no statement at the top level that runs something (a print, a demo call); a
            # function may print (chapter 5's training loop reports its losses as the book's does).
            top_level_calls = [node for node in ast.parse(text).body
                               if isinstance(node, ast.Expr) and not isinstance(node.value, ast.Constant)]
            assert top_level_calls == [], "solution cells hold definitions only"
        else:
            assert meta["locked"]
            assert meta["grade_id"].startswith("setup") or meta["grade_id"] == CHECKS_IMPORT_ID
    assert len(ids) == len(set(ids)), "grade_ids are unique"
    assert ids[0] == "setup"
