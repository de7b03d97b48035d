"""The catalogue of malformed submissions: files a student may hand in that are not a well-formed notebook.

Each entry writes one bad submission into a folder (derived from a solution notebook, so that everything the
entry does not break still earns its points) and says what grading must answer:

- `says`: test name -> phrases that test's message must contain. Those tests must score 0 (status "error" or
  "failed"); every other test of the assignment must pass. ALL stands for every test of the assignment.
- `unreadable`: the file cannot be parsed at all; every test then carries the same message,
  "Your notebook could not be graded: <file>: ...".
- `notes`: phrases that the report's notes must contain (a note is shown once, under the score table).

`write(folder)` returns the SUBMISSION to grade (a notebook, or a folder) as `course grade` receives it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from tests.submissions.build import cell_by_id, load, source

REPO = Path(__file__).resolve().parents[2]
CH02 = "ch02_text_data"  # the quicker assignment to grade
ALL = "*"  # in `says`: every test of the assignment

MISSING = "is not defined in your notebook"  # the message of a test whose function or class does not exist
DATASET_TESTS = ("test_dataset_windows", "test_dataset_short_texts")


@dataclass(frozen=True)
class Malformed:
    name: str
    assignment: str
    write: Callable[[Path], Path]
    says: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    unreadable: bool = False


# -- building blocks -------------------------------------------------------------------------------------------

def solution_path(assignment: str) -> Path:
    return REPO / "solutions" / assignment / f"{assignment}.ipynb"


def solution(assignment: str = CH02) -> dict:
    return copy.deepcopy(_solution(assignment))


@functools.cache
def _solution(assignment: str) -> dict:
    return load(solution_path(assignment))


def as_text(notebook: dict) -> str:
    """A notebook file's text, written the way Jupyter writes it (indent 1, one JSON line per source line)."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook["cells"] if isinstance(notebook["cells"], list) else []:
        if isinstance(cell.get("source"), str):
            cell["source"] = cell["source"].splitlines(keepends=True)
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def index_of(notebook: dict, grade_id: str) -> int:
    return notebook["cells"].index(cell_by_id(notebook, grade_id))


def notebook_name(assignment: str) -> str:
    return f"{assignment}.ipynb"


def file_writer(content: Callable[[], bytes | str | dict], assignment: str = CH02, name: str | None = None):
    """A `write` function: the bytes, text or notebook that `content()` returns, in a file named `name`."""

    def write(folder: Path) -> Path:
        path = folder / (name or notebook_name(assignment))
        data = content()
        if isinstance(data, dict):
            data = as_text(data)
        if isinstance(data, str):
            data = data.encode("utf-8")
        path.write_bytes(data)
        return path

    write.__name__ = f"write_{name or assignment}"
    return write


def edited(edit: Callable[[dict], None], assignment: str = CH02) -> Callable[[], dict]:
    """The solution notebook changed in place by `edit(notebook)`."""

    def content() -> dict:
        notebook = solution(assignment)
        edit(notebook)
        return notebook

    return content


def line_of(text: str, needle: str) -> int:
    """The line number (from 1) of the only line of `text` that contains `needle`."""
    lines = [number for number, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


# -- files that cannot be parsed ---------------------------------------------------------------------------------

def python_script() -> str:
    """What "Download as Python (.py)" gives, renamed to .ipynb."""
    cells = [source(c) for c in solution()["cells"] if c["cell_type"] == "code"]
    return "import re\n\n" + "\n\n# %%\n".join(cells) + "\n"


def html_page() -> str:
    """GitHub's web page showing the notebook, saved with the browser's "Save page as"."""
    return ('<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>ch02_text_data.ipynb</title>'
            '</head>\n<body><div class="notebook">...</div></body>\n</html>\n')


LATIN1_NAME = "Ren\u00e9e Dupr\u00e9"


@functools.cache
def latin1_bytes() -> bytes:
    """The solution with the student's name in its first cell, saved by an editor as Latin-1 instead of UTF-8."""
    notebook = solution()
    notebook["cells"][0]["source"] = f"Student: {LATIN1_NAME}\n\n" + source(notebook["cells"][0])
    return as_text(notebook).encode("latin-1")


def latin1_position() -> tuple[int, int]:
    raw = latin1_bytes()
    byte = raw.index(b"\xe9")
    return byte, raw.count(b"\n", 0, byte) + 1


def utf16_bytes() -> bytes:
    return as_text(solution()).encode("utf-16")  # with a byte-order mark, as Windows Notepad's "Unicode"


def truncated_text() -> str:
    text = as_text(solution())
    return text[: len(text) // 2]  # an upload or a save cut off halfway


CONFLICT_LINE = '    "def build_vocab(tokens, special_tokens=()):\\n",'


@functools.cache
def merge_conflict_text() -> str:
    """A `git merge` of two versions of the notebook that changed the same line, left unresolved."""
    lines = as_text(solution()).splitlines(keepends=True)
    (at,) = [i for i, line in enumerate(lines) if line.rstrip("\n") == CONFLICT_LINE]
    ours = lines[at]
    theirs = ours.replace("special_tokens=()", "special_tokens=None")
    lines[at:at + 1] = ["<<<<<<< HEAD\n", ours, "=======\n", theirs, ">>>>>>> origin/main\n"]
    return "".join(lines)


def merge_conflict_line() -> int:
    return line_of(merge_conflict_text(), "<<<<<<< HEAD")


def cells_only() -> str:
    """Only the notebook's list of cells (copied out of the file by hand)."""
    return json.dumps(solution()["cells"], indent=1)


def results_file() -> str:
    """The results of `course grade --json`, saved under the notebook's name."""
    return json.dumps({"assignment": CH02, "score": 16.0, "max_score": 16.0, "tests": []}, indent=2)


def cells_as_dict(notebook: dict) -> None:
    notebook["cells"] = {str(i): cell for i, cell in enumerate(notebook["cells"])}


def only_markdown(notebook: dict) -> None:
    notebook["cells"] = [c for c in notebook["cells"] if c["cell_type"] == "markdown"]


def no_cells(notebook: dict) -> None:
    notebook["cells"] = []


OVERSIZE_MB = 50


def oversize_notebook() -> str:
    """The solution with a 50 MB output (an image printed in a demo cell) saved with it."""
    notebook = solution()
    demo = next(c for c in notebook["cells"] if c["cell_type"] == "code" and "nbgrader" not in c["metadata"])
    image = "iVBORw0KGgo" + "A" * (OVERSIZE_MB * 2**20)
    demo["outputs"] = [{"output_type": "display_data", "metadata": {}, "data": {"image/png": image}}]
    return as_text(notebook)


def v3_notebook(broken: bool = False) -> Callable[[], str]:
    """The solution converted to nbformat 3 (cells inside 'worksheets'); `broken`: with unusable worksheets."""

    def content() -> str:
        old = nbformat.convert(nbformat.from_dict(solution()), 3)
        if broken:
            old["worksheets"] = [{"cells": "lost in a bad copy"}]
            return json.dumps(old, indent=1)
        return nbformat.writes(old, version=3)

    return content


def zero_bytes() -> bytes:
    return b"\x00" * 4096  # what a crash while saving can leave on some file systems


def two_copies(folder: Path) -> Path:
    """A folder holding two copies of the assignment, neither named as the assignment's notebook."""
    submission = folder / "submission"
    submission.mkdir()
    for name in ("ch02 draft.ipynb", "ch02 final.ipynb"):
        (submission / name).write_text(as_text(solution()), encoding="utf-8")
    return submission


# -- files that are read, with cells missing or broken ----------------------------------------------------------

def strip_nbgrader_metadata(notebook: dict) -> None:
    for cell in notebook["cells"]:
        cell["metadata"].pop("nbgrader", None)


def delete_cell(grade_id: str) -> Callable[[dict], None]:
    def edit(notebook: dict) -> None:
        notebook["cells"].remove(cell_by_id(notebook, grade_id))

    return edit


def reverse_after_setup(notebook: dict) -> None:
    """Every cell after the setup cell, in reverse order (solution cells before the cells that explain them)."""
    at = index_of(notebook, "setup")
    notebook["cells"][at + 1:] = notebook["cells"][at + 1:][::-1]


def move_to_top(grade_id: str) -> Callable[[dict], None]:
    def edit(notebook: dict) -> None:
        cell = cell_by_id(notebook, grade_id)
        notebook["cells"].remove(cell)
        notebook["cells"].insert(0, cell)

    return edit


def rename_everywhere(renames: dict[str, str]) -> Callable[[dict], None]:
    """Rename functions or classes in every code cell, as a student who prefers other names would."""

    def edit(notebook: dict) -> None:
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                text = source(cell)
                for old, new in renames.items():
                    text = text.replace(old, new)
                cell["source"] = text

    return edit


def replace_in(grade_id: str, old: str, new: str) -> Callable[[dict], None]:
    def edit(notebook: dict) -> None:
        cell = cell_by_id(notebook, grade_id)
        text = source(cell)
        assert text.count(old) == 1, (grade_id, old)
        cell["source"] = text.replace(old, new)

    return edit


SYNTAX_ERROR_LINE = "    for special in special_tokens:"


def syntax_error_line() -> int:
    return line_of(source(cell_by_id(_solution(CH02), "build_vocab")), SYNTAX_ERROR_LINE)


def set_sources(sources: dict[str, object]) -> Callable[[dict], None]:
    def edit(notebook: dict) -> None:
        for grade_id, value in sources.items():
            cell_by_id(notebook, grade_id)["source"] = value

    return edit


def to_markdown(grade_id: str) -> Callable[[dict], None]:
    """A solution cell turned into Markdown (the M key in Jupyter's command mode); its metadata stays."""

    def edit(notebook: dict) -> None:
        cell = cell_by_id(notebook, grade_id)
        cell["cell_type"] = "markdown"
        cell.pop("outputs", None)
        cell.pop("execution_count", None)

    return edit


def paste_into_new_cell(grade_id: str) -> Callable[[dict], None]:
    """The solution cell deleted, its code pasted into a new cell (no nbgrader metadata) further down."""

    def edit(notebook: dict) -> None:
        cell = cell_by_id(notebook, grade_id)
        at = notebook["cells"].index(cell)
        notebook["cells"].remove(cell)
        pasted = {"cell_type": "code", "execution_count": None, "id": "pasted01", "metadata": {}, "outputs": [],
                  "source": source(cell)}
        notebook["cells"].insert(at + 1, pasted)

    return edit


def with_scratch_notebook(folder: Path) -> Path:
    """A folder holding the renamed assignment notebook and a scratch notebook of the student's own."""
    submission = folder / "submission"
    submission.mkdir()
    (submission / "my work.ipynb").write_text(as_text(solution()), encoding="utf-8")
    scratch = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "execution_count": None, "id": "scratch1", "metadata": {}, "outputs": [],
         "source": "print('trying things out')"}]}
    (submission / "scratch.ipynb").write_text(as_text(scratch), encoding="utf-8")
    return submission


# -- the catalogue -----------------------------------------------------------------------------------------------

def unreadable(name: str, write: Callable[[Path], Path], *says: str, assignment: str = CH02) -> Malformed:
    return Malformed(name, assignment, write, {ALL: says}, unreadable=True)


MALFORMED = [
    # The file cannot be parsed: every test gets "Your notebook could not be graded: <file>: ...".
    unreadable("not_json_python_script", file_writer(python_script),
               "not a valid notebook file", "JSON error at line 1, column 1", "starts with '{', but this one does not"),
    unreadable("html_page", file_writer(html_page), "JSON error at line 1", "an HTML page, not a notebook"),
    unreadable("empty_file", file_writer(lambda: b""), "the file is empty"),
    unreadable("zero_bytes", file_writer(zero_bytes), "the file is empty", "only zero bytes"),
    unreadable("not_utf8_latin1", file_writer(latin1_bytes),
               "not UTF-8 text (byte {}) at line {}".format(*latin1_position()), "Latin-1"),
    unreadable("utf16", file_writer(utf16_bytes), "not UTF-8 text", "saved as UTF-16"),
    unreadable("truncated", file_writer(truncated_text), "JSON error at line", "ends too early"),
    unreadable("merge_conflict", file_writer(merge_conflict_text),
               f"JSON error at line {merge_conflict_line()}", "git merge conflict marker",
               f"at line {merge_conflict_line()}"),
    unreadable("json_list_of_cells", file_writer(cells_only),
               "valid JSON but not a Jupyter notebook", f"a list of {len(_solution(CH02)['cells'])} item(s)"),
    unreadable("json_results_file", file_writer(results_file),
               "valid JSON but not a Jupyter notebook", "keys 'assignment', 'score'"),
    unreadable("cells_not_a_list", file_writer(edited(cells_as_dict)), "'cells' is not a list of cells"),
    # Valid JSON, but an integer of more digits than Python converts: json.loads raises ValueError.
    unreadable("five_thousand_digit_number",
               file_writer(lambda: as_text(solution()).replace('"nbformat": 4', '"nbformat": 4' + "0" * 5000)),
               "a value in it cannot be read"),
    unreadable("only_markdown_cells", file_writer(edited(only_markdown)), "has no code cells"),
    unreadable("no_cells_at_all", file_writer(edited(no_cells)), "has no cells at all"),
    unreadable("oversize_50mb", file_writer(oversize_notebook),
               f"the file is {OVERSIZE_MB} MB", "more than the 20 MB limit", "was not read", "Clear Outputs"),
    unreadable("old_format_broken", file_writer(v3_notebook(broken=True)),
               "notebook format 3 could not be converted to version 4"),
    unreadable("folder_with_two_copies", two_copies,
               "this is a folder that holds 2 notebooks (ch02 draft.ipynb, ch02 final.ipynb)",
               "grade the notebook file itself"),

    # The file is read; what is broken costs the points of the tests that need it, and the rest still pass.
    Malformed("old_format_v3", CH02, file_writer(v3_notebook())),
    Malformed("byte_order_mark", CH02, file_writer(lambda: b"\xef\xbb\xbf" + as_text(solution()).encode())),
    Malformed("no_nbgrader_metadata", CH02, file_writer(edited(strip_nbgrader_metadata)),
              notes=("lost their nbgrader metadata", "all code cells were run")),
    # The data loader's tests run the student's create_dataloader_v1 on a stand-in GPTDatasetV1: they still pass.
    Malformed("deleted_solution_cell", CH02, file_writer(edited(delete_cell("gpt_dataset_v1"))),
              says={test: ("`GPTDatasetV1` " + MISSING, "delete the cell") for test in DATASET_TESTS}),
    Malformed("reordered_cells", CH02, file_writer(edited(reverse_after_setup))),
    Malformed("solution_cell_above_setup", CH02, file_writer(edited(move_to_top("gpt_dataset_v1"))),
              says={test: ("`GPTDatasetV1` " + MISSING, "cell 'gpt_dataset_v1' failed",
                           "NameError: name 'Dataset' is not defined") for test in DATASET_TESTS}),
    Malformed("renamed_function_and_class", CH02,
              file_writer(edited(rename_everywhere({"simple_tokenize": "tokenize_text",
                                                    "SimpleTokenizerV2": "UnknownAwareTokenizer"}))),
              says={"test_simple_tokenize": ("`simple_tokenize` " + MISSING, "Did you rename it"),
                    "test_tokenizer_v2_unknown_words": ("`SimpleTokenizerV2` " + MISSING, "Did you rename it"),
                    "test_tokenizer_v2_endoftext": ("`SimpleTokenizerV2` " + MISSING,)}),
    Malformed("syntax_error", CH02,
              file_writer(edited(replace_in("build_vocab", SYNTAX_ERROR_LINE, SYNTAX_ERROR_LINE.rstrip(":")))),
              says={"test_build_vocab": ("`build_vocab` " + MISSING, "cell 'build_vocab' failed: SyntaxError",
                                         f"(cell 'build_vocab', line {syntax_error_line()}:")}),
    Malformed("raises_at_import", CH02,
              file_writer(edited(replace_in(
                  "create_input_embeddings", "def create_input_embeddings(",
                  "token_embedding_layer = torch.nn.Embedding(gpt2_tokenizer.n_vocab, 256)\n\n"
                  "def create_input_embeddings("))),
              says={"test_input_embeddings": (
                  "`create_input_embeddings` " + MISSING, "cell 'create_input_embeddings' failed",
                  "NameError: name 'gpt2_tokenizer' is not defined (cell 'create_input_embeddings', line 1")}),
    Malformed("source_not_text", CH02,
              file_writer(edited(set_sources({"simple_tokenizer_v1": None,
                                              "create_input_embeddings": ["def create_input_embeddings(\n", 42]}))),
              says={"test_tokenizer_v1_encode": ("`SimpleTokenizerV1` " + MISSING,),
                    "test_tokenizer_v1_decode": ("`SimpleTokenizerV1` " + MISSING,),
                    "test_input_embeddings": ("`create_input_embeddings` " + MISSING,)},
              notes=("Cell 'simple_tokenizer_v1' (cell 15 of the notebook): its source is null, not text",
                     "Cell 'create_input_embeddings' (cell 38 of the notebook): its source is a list of lines with "
                     "the number 42 among them")),
    Malformed("only_ipython_magics", CH02,
              file_writer(edited(set_sources({"create_input_embeddings":
                                              "%load_ext autoreload\n%autoreload 2\n%run embeddings.py\n"}))),
              says={"test_input_embeddings": ("`create_input_embeddings` " + MISSING,)},
              notes=("Cell 'create_input_embeddings' (cell 38 of the notebook) holds only IPython commands",
                     "`%run embeddings.py`")),
    Malformed("solution_cell_turned_markdown", CH02, file_writer(edited(to_markdown("build_vocab"))),
              says={"test_build_vocab": ("`build_vocab` " + MISSING,)},
              notes=("Cell 'build_vocab' (cell 11 of the notebook) is a Markdown cell", "press Y")),
    Malformed("solution_pasted_into_new_cell", CH02, file_writer(edited(paste_into_new_cell("build_vocab"))),
              notes=("Cells without nbgrader metadata that only define functions or classes were run",
                     "cell 12 (`build_vocab`)")),
    Malformed("folder_with_scratch_notebook", CH02, with_scratch_notebook,
              notes=("holds 2 notebooks; graded my work.ipynb", "not graded: scratch.ipynb")),
]

BY_NAME = {entry.name: entry for entry in MALFORMED}
assert len(BY_NAME) == len(MALFORMED), "catalogue names are unique"
