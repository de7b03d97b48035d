"""Reading a submission notebook (clear errors) and choosing the cells that grading executes."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from course import notebook as notebook_module
from course.notebook import MAX_NOTEBOOK_BYTES, NotebookError, grade_ids, grading_cells, read_notebook

# --------------------------------------------------------------------------------------------------------------
# Building notebooks


def code(source: str, nbgrader: dict | None = None, **metadata) -> dict:
    if nbgrader is not None:
        metadata["nbgrader"] = nbgrader
    return {"cell_type": "code", "metadata": metadata, "source": source, "outputs": [], "execution_count": None}


def markdown(source: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": source}


def setup(grade_id: str) -> dict:
    return {"grade_id": grade_id, "solution": False, "locked": True, "grade": False, "schema_version": 3}


def solution(grade_id: str) -> dict:
    return {"grade_id": grade_id, "solution": True, "locked": False, "grade": False, "schema_version": 3}


def test_cell(grade_id: str) -> dict:
    return {"grade_id": grade_id, "solution": False, "locked": True, "grade": True, "points": 1, "schema_version": 3}


test_cell.__test__ = False  # a helper, not a pytest test


def notebook(*cells: dict) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": list(cells)}


def write(tmp_path: Path, content, name: str = "submission.ipynb") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, indent=1), encoding="utf-8")
    return path


def read_error(path: Path) -> str:
    with pytest.raises(NotebookError) as info:
        read_notebook(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# --------------------------------------------------------------------------------------------------------------
# read_notebook


def test_reads_a_valid_notebook(tmp_path):
    nb = notebook(markdown("# Title"), code("x = 1", setup("setup")))
    data = read_notebook(write(tmp_path, nb))
    assert data["cells"][1]["source"] == "x = 1"
    assert data["nbformat"] == 4


def test_missing_file(tmp_path):
    assert "file not found" in read_error(tmp_path / "nope.ipynb")


def test_a_folder_is_not_a_notebook(tmp_path):
    assert "file not found" in read_error(tmp_path)


def test_empty_file(tmp_path):
    assert "the file is empty" in read_error(write(tmp_path, b""))


def test_not_utf8(tmp_path):
    raw = b'{"cells": [], "x": "caf\xe9"}'  # Latin-1, as an editor that guessed the encoding saves it
    message = read_error(write(tmp_path, raw))
    assert f"not UTF-8 text (byte {raw.index(0xE9)})" in message


def test_invalid_json_gives_line_and_column(tmp_path):
    text = json.dumps(notebook(code("x = 1")), indent=1)
    broken = text.replace('"x = 1"', '"x = 1",,', 1)  # what a bad merge or a hand edit leaves
    line = next(i for i, row in enumerate(broken.splitlines(), 1) if ",," in row)
    column = broken.splitlines()[line - 1].index(",,") + 2
    message = read_error(write(tmp_path, broken))
    assert "not a valid notebook file" in message
    assert f"JSON error at line {line}, column {column}" in message


def test_truncated_json(tmp_path):
    text = json.dumps(notebook(code("x = 1")), indent=1)
    assert "JSON error at line" in read_error(write(tmp_path, text[: len(text) // 2]))


@pytest.mark.parametrize("content", [{"name": "not a notebook"}, [1, 2, 3], "just a string", 42],
                         ids=["dict", "list", "string", "number"])
def test_valid_json_that_is_not_a_notebook(tmp_path, content):
    assert "valid JSON but not a Jupyter notebook" in read_error(write(tmp_path, json.dumps(content)))


@pytest.mark.parametrize("cells", [{"0": {"cell_type": "code"}}, ["x = 1"], [code("x = 1"), None], "cells"],
                         ids=["dict", "list-of-strings", "list-with-null", "string"])
def test_cells_not_a_list_of_cells(tmp_path, cells):
    nb = notebook()
    nb["cells"] = cells
    assert "'cells' is not a list of cells" in read_error(write(tmp_path, nb))


def test_too_large_file_is_not_read(tmp_path, monkeypatch):
    path = write(tmp_path, notebook(code("x = 1")))
    monkeypatch.setattr(notebook_module, "MAX_NOTEBOOK_BYTES", path.stat().st_size - 1)
    message = read_error(path)
    assert "more than the" in message
    assert "limit" in message
    assert "Clear Outputs" in message
    monkeypatch.setattr(notebook_module, "MAX_NOTEBOOK_BYTES", path.stat().st_size)  # at the limit: still read
    assert read_notebook(path)["cells"][0]["source"] == "x = 1"


def test_the_default_size_limit_is_generous():
    assert MAX_NOTEBOOK_BYTES >= 5 * 2**20


def make_v3_notebook() -> str:
    v3 = nbformat.v3
    cells = [
        v3.new_text_cell("markdown", source="# An old notebook"),
        v3.new_code_cell(input="def f(x):\n    return 2 * x", metadata={"nbgrader": solution("f")}),
        v3.new_code_cell(input="print(f(2))"),
    ]
    nb = v3.new_notebook(worksheets=[v3.new_worksheet(cells=cells)], metadata=v3.new_metadata(name="old"))
    return v3.writes_json(nb)


def test_nbformat_3_notebook_is_converted(tmp_path):
    text = make_v3_notebook()
    assert json.loads(text)["nbformat"] == 3
    assert "worksheets" in json.loads(text)
    data = read_notebook(write(tmp_path, text))
    assert data["nbformat"] == 4
    assert [c["cell_type"] for c in data["cells"]] == ["markdown", "code", "code"]
    selection = grading_cells(data)
    assert [c.label for c in selection.cells] == ["f"]
    assert selection.cells[0].source == "def f(x):\n    return 2 * x"
    assert selection.cells[0].index == 1
    assert selection.notes == []


def test_broken_old_notebook_is_a_notebook_error(tmp_path):
    message = read_error(write(tmp_path, json.dumps({"nbformat": 3, "worksheets": "nonsense"})))
    assert "could not be converted to version 4" in message


# --------------------------------------------------------------------------------------------------------------
# grading_cells on the repository's solution notebooks


@pytest.mark.parametrize("assignment_id", ["ch02_text_data", "ch03_attention"])
def test_solution_notebook_selects_setup_and_solution_cells(course, assignment_id):
    path = course.solution_notebook(course.assignment(assignment_id))
    nb = read_notebook(path)
    expected = []  # computed independently from the raw metadata
    for index, cell in enumerate(nb["cells"]):
        meta = cell.get("metadata", {}).get("nbgrader")
        # Read-only cells are setup, except the one that imports the public checks (never run at grading).
        setup = meta and meta.get("locked") and not meta.get("grade") and meta["grade_id"] != "import_checks"
        if cell["cell_type"] == "code" and meta and (meta.get("solution") or setup):
            expected.append((index, meta["grade_id"]))
    demo = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and "nbgrader" not in c["metadata"]]
    assert len(expected) >= 5
    assert demo

    selection = grading_cells(nb)
    assert [(c.index, c.label) for c in selection.cells] == expected
    assert selection.cells[0].label == "setup"
    assert not {c.index for c in selection.cells} & set(demo)
    assert selection.notes == []
    for cell in selection.cells:
        assert cell.source == "".join(nb["cells"][cell.index]["source"])
        compile(cell.source, cell.label, "exec")
    checks = {c["metadata"]["nbgrader"]["grade_id"] for c in nb["cells"]
              if c["metadata"].get("nbgrader", {}).get("grade")}
    assert grade_ids(nb) == {label for _, label in expected} | checks | {"import_checks"}


def test_demo_cells_are_skipped():
    nb = notebook(
        code("import torch", setup("setup")),
        code("for epoch in range(10**9):\n    train()"),  # a demo: must never run at grading
        code("def f():\n    return 1", solution("f")),
        code("print(f())"),
    )
    selection = grading_cells(nb)
    assert [(c.index, c.label) for c in selection.cells] == [(0, "setup"), (2, "f")]
    assert selection.notes == []


def test_grade_cells_are_excluded():
    nb = notebook(
        code("x = 1", setup("setup")),
        code("def f():\n    return x", solution("f")),
        code("assert f() == 1", test_cell("test_f")),
        code("assert f() == 1", {"grade_id": "test_g", "solution": False, "locked": False, "grade": True}),
    )
    assert [c.label for c in grading_cells(nb).cells] == ["setup", "f"]


def test_manually_graded_answer_cells_are_solution_cells():
    metadata = {"grade_id": "f", "solution": True, "locked": False, "grade": True, "points": 2}
    nb = notebook(code("def f(): ...", metadata))
    assert [c.label for c in grading_cells(nb).cells] == ["f"]


def test_markdown_cells_are_never_selected():
    nb = notebook(
        {"cell_type": "markdown", "metadata": {"nbgrader": solution("answer_text")}, "source": "My answer"},
        code("def f(): ...", solution("f")),
        {"cell_type": "raw", "metadata": {}, "source": "raw"},
    )
    assert [c.label for c in grading_cells(nb).cells] == ["f"]


def test_cell_without_grade_id_is_labelled_by_position():
    nb = notebook(markdown("# x"), code("def f(): ...", {"solution": True}))
    assert [c.label for c in grading_cells(nb).cells] == ["cell 2"]


def test_ipython_magics_and_shell_escapes_are_commented_out():
    source = (
        "%matplotlib inline\n"
        "!pip install x\n"
        "  ! ls -la\n"
        "%%time\n"
        "import math\n"
        "def f(x):\n"
        "    return math.sqrt(x)\n"
    )
    nb = notebook(code("%load_ext autoreload\nimport torch", setup("setup")), code(source, solution("f")))
    cells = grading_cells(nb).cells
    assert cells[0].source == "# (skipped at grading) %load_ext autoreload\nimport torch"
    lines = cells[1].source.splitlines()
    assert lines[:4] == [
        "# (skipped at grading) %matplotlib inline",
        "# (skipped at grading) !pip install x",
        "# (skipped at grading)   ! ls -la",
        "# (skipped at grading) %%time",
    ]
    assert lines[4:] == source.splitlines()[4:]
    namespace: dict = {}
    exec(compile(cells[1].source, "f", "exec"), namespace)
    assert namespace["f"](9) == 3.0


def test_python_operators_at_the_start_of_a_line_are_kept():
    """Black puts binary operators first on continuation lines: `% n` and `!= x` there are Python, not IPython."""
    source = (
        "def f(a, b, n):\n"
        "    remainder = (\n"
        "        a\n"
        "        % n\n"
        "    )\n"
        "    return (\n"
        "        remainder\n"
        "        != b\n"
        "    )\n"
    )
    cell = grading_cells(notebook(code(source, solution("f")))).cells[0]
    assert cell.source == source.rstrip("\n")
    namespace: dict = {}
    exec(compile(cell.source, "f", "exec"), namespace)
    assert namespace["f"](7, 1, 3) is False


def test_source_as_list_of_lines():
    nb = notebook(code(["def f():\n", "    return 1\n"], solution("f")))
    assert grading_cells(nb).cells[0].source == "def f():\n    return 1"


def test_without_nbgrader_metadata_all_code_cells_run_with_a_note():
    nb = notebook(markdown("# pasted"), code("x = 1"), markdown("text"), code("%time y = x + 1\nz = 2"))
    selection = grading_cells(nb)
    assert [(c.index, c.label) for c in selection.cells] == [(1, "cell 2"), (3, "cell 4")]
    assert selection.cells[1].source == "# (skipped at grading) %time y = x + 1\nz = 2"
    assert len(selection.notes) == 1
    assert "lost their nbgrader metadata" in selection.notes[0]


def test_notebook_without_code_cells_has_no_cells_and_no_note():
    selection = grading_cells(notebook(markdown("# empty")))
    assert selection.cells == []
    assert selection.notes == []


@pytest.mark.parametrize("metadata", [None, [], "nbgrader", 3, {"nbgrader": None}, {"nbgrader": "solution"},
                                      {"nbgrader": ["solution"]}])
def test_cells_with_malformed_metadata_do_not_crash(metadata):
    odd = {"cell_type": "code", "metadata": metadata, "source": "y = 2"}
    nb = notebook(code("x = 1", setup("setup")), odd, code("def f(): ...", solution("f")))
    selection = grading_cells(nb)
    assert [c.label for c in selection.cells] == ["setup", "f"]  # the odd cell counts as a demo cell
    assert grade_ids(nb) == {"setup", "f"}

    alone = grading_cells(notebook(odd, code("z = 3")))  # no usable nbgrader metadata anywhere: fallback
    assert [c.label for c in alone.cells] == ["cell 1", "cell 2"]
    assert alone.notes


def test_cell_without_metadata_or_source_key():
    nb = notebook({"cell_type": "code"}, code("def f(): ...", solution("f")))
    assert [c.label for c in grading_cells(nb).cells] == ["f"]
    fallback = grading_cells(notebook({"cell_type": "code"}))
    assert [(c.label, c.source) for c in fallback.cells] == [("cell 1", "")]


def test_grade_ids():
    nb = notebook(
        code("import torch", setup("setup")),
        code("def f(): ...", solution("f")),
        code("assert f()", test_cell("test_f")),
        code("print(1)"),
        code("x = 1", {"solution": True}),  # no grade_id
        markdown("# text"),
    )
    assert grade_ids(nb) == {"setup", "f", "test_f"}
    assert grade_ids(notebook(code("x = 1"))) == set()


def test_non_python_cell_magics_skip_the_whole_cell():
    notebook = {"cells": [
        {"cell_type": "code", "metadata": {}, "source": "%%bash\necho hi\nls -la"},
        {"cell_type": "code", "metadata": {}, "source": "%%time\nx = 1 + 1"},
    ]}
    bash, timed = grading_cells(notebook).cells
    compile(bash.source, "bash", "exec")
    assert "echo hi" in bash.source
    assert all(line.startswith("#") for line in bash.source.splitlines())
    assert timed.source.splitlines()[1] == "x = 1 + 1"
    assert timed.source.startswith("#")
