"""Reading a submission notebook and choosing the cells that grading executes.

A notebook becomes a module by executing its setup cells (read-only nbgrader cells) and its solution cells
(nbgrader `solution: true`), in notebook order. Demo cells (no nbgrader metadata) are skipped, so a training
loop in a demo cell never runs at grading time; only a cell the student added that merely defines functions or
classes (a helper, or a solution pasted into a new cell) is run with them. The public checks' cells (the
check cells, which are nbgrader grade cells, and the read-only cell that imports the checks) are never run.
Everything here runs on the trusted side: it parses JSON and Python (`ast.parse`), it never executes the
student's code.
"""

from __future__ import annotations

import ast
import codecs
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from course.safe_text import safe_text

# Above this size a submission is not read at all (a notebook with its outputs cleared is a few hundred kB).
MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024

# IPython-only syntax at the start of a line: magics (%name, %%name) and shell escapes (!cmd). Not `% n` or
# `!= b`: Black starts continuation lines with the operator, and those lines are Python.
_IPYTHON_LINE = re.compile(r"^\s*(%%?[A-Za-z_]|!(?!=))")

# What git leaves in a file when a merge conflicts.
_CONFLICT_MARKER = re.compile(r"^(<{7}|>{7})( |$)", re.MULTILINE)

# Cells longer than this are not parsed on the trusted side (to find definitions); they are treated as code
# that is not definitions-only.
_MAX_PARSED_SOURCE = 200_000

SKIPPED = "# (skipped at grading) "

# The read-only cell that imports the public checks (checks/<id>.py) for the notebook's check cells. Like the
# check cells themselves (nbgrader grade cells), it is never run at grading: the checks are the student's own
# feedback, not part of the graded module, and the process that runs student code has no `checks` package.
CHECKS_IMPORT_ID = "import_checks"

# A cell's label (its grade_id) appears in every message about the cell: a submission controls it, so it is capped.
MAX_LABEL = 100


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
    # Names that only demo cells (not run when grading) define -> "cell 7", for NameError messages.
    demo_definitions: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------------
# Reading the file


def read_notebook(path: Path) -> dict:
    """Parse a notebook file (nbformat 4, or older versions converted to 4) with precise error messages.

    Refused with a NotebookError that names the file and says what to do: a missing, empty or oversize file
    (checked before it is read), text that is not UTF-8 (a UTF-8 byte-order mark is accepted), invalid JSON
    (with hints for a cut-off file, a git merge conflict, an HTML page or a script renamed to .ipynb), JSON
    that is not a notebook, and a notebook without any code cell.

    Plain JSON parsing on purpose: importing nbformat's validator costs about two seconds per grading run,
    so nbformat is only imported to convert notebooks older than version 4.
    """
    if path.is_dir():
        raise NotebookError(f"{path}: notebook file not found: this is a folder{_folder_contents(path)}; "
                            "grade the notebook file itself")
    if not path.is_file():
        raise NotebookError(f"{path}: file not found")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise NotebookError(f"{path}: the file cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise NotebookError(f"{path}: the file is empty (was the notebook saved?)")
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(
            f"{path}: the file is {size / 2**20:.0f} MB, more than the {MAX_NOTEBOOK_BYTES // 2**20} MB limit, so it "
            "was not read; large outputs (images, long printouts) make a notebook this big: clear the outputs "
            "(Edit > Clear Outputs of All Cells) and save again"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NotebookError(f"{path}: the file cannot be read ({exc.strerror or exc})") from None
    text = _decode(path, raw)
    if not text.strip():
        raise NotebookError(f"{path}: the file is empty: it holds only white space (was the notebook saved?)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookError(
            f"{path}: not a valid notebook file: JSON error at line {exc.lineno}, column {exc.colno} "
            f"({exc.msg}){_json_hint(text, exc)}"
        ) from None
    except RecursionError:
        raise NotebookError(f"{path}: not a valid notebook file: its JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise NotebookError(f"{path}: not a valid notebook file: a value in it cannot be read "
                            f"({safe_text(str(exc), 200, single_line=True)})") from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise NotebookError(f"{path}: valid JSON but not a Jupyter notebook (no 'cells': the file holds "
                            f"{_describe_json(data)})")
    version = data.get("nbformat")
    if "worksheets" in data or isinstance(version, int) and version < 4:
        data = _upgrade(path, data)
    cells = data.get("cells")
    if not isinstance(cells, list):
        raise NotebookError(f"{path}: not a readable Jupyter notebook ('cells' is not a list of cells: it is "
                            f"{_describe_json(cells)})")
    for number, cell in enumerate(cells, 1):
        if not isinstance(cell, dict):
            raise NotebookError(f"{path}: not a readable Jupyter notebook ('cells' is not a list of cells: item "
                                f"{number} is {_describe_json(cell)})")
    if not any(cell.get("cell_type") == "code" for cell in cells):
        what = "no cells at all" if not cells else f"no code cells (its {len(cells)} cells are Markdown or raw text)"
        raise NotebookError(f"{path}: the notebook has {what}; is it the notebook you worked in?")
    return data


def _decode(path: Path, raw: bytes) -> str:
    if not raw.strip(b"\x00"):
        raise NotebookError(f"{path}: the file is empty: it holds only zero bytes, so it was not saved completely "
                            "(a crash, or a full disk?); save the notebook again")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_like_utf16(raw):
        raise NotebookError(f"{path}: not UTF-8 text: the file was saved as UTF-16; notebooks are always saved as "
                            "UTF-8 (save it again from Jupyter, or convert it to UTF-8 in your editor)")
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # some Windows editors add one: harmless
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        start = bom + exc.start
        line = raw.count(b"\n", 0, start) + 1
        raise NotebookError(
            f"{path}: not UTF-8 text (byte {start}) at line {line}: notebooks are always saved as UTF-8; "
            "was the file saved by an editor in another encoding (Latin-1, Windows-1252)?"
        ) from None


def _looks_like_utf16(raw: bytes) -> bool:
    """ASCII text saved as UTF-16 without a byte-order mark: every other byte is zero."""
    head = raw[:200]
    return len(head) >= 4 and (not any(head[1::2]) or not any(head[0::2]))


def _json_hint(text: str, exc: json.JSONDecodeError) -> str:
    conflict = _CONFLICT_MARKER.search(text)
    if conflict:
        line = text.count("\n", 0, conflict.start()) + 1
        return (f"; the file holds a git merge conflict marker ('{conflict.group(1)}') at line {line}: resolve the "
                "conflict by keeping one version of the notebook (e.g. `git checkout --theirs` or `--ours`)")
    start = text.lstrip()
    if start.startswith("<"):
        return ("; it is an HTML page, not a notebook: download the notebook file itself (on GitHub, the "
                "'Download raw file' button), not the web page that shows it")
    if not start.startswith(("{", "[")):
        # What the file holds is not quoted: a message must never show the contents of a file that is not a
        # notebook (it may not be the student's to show).
        return ("; a notebook file starts with '{', but this one does not: is it a Python script or another file "
                "renamed to .ipynb?")
    if exc.pos >= len(text.rstrip()) or start.startswith("{") and not text.rstrip().endswith("}"):
        return ("; the file ends too early, as if it was cut off (a notebook file ends with '}'; an interrupted "
                "save or upload?): save it again from Jupyter, or take it back from an earlier commit")
    return ""


def _describe_json(value) -> str:
    """A JSON value in words, for messages: 'a list of 3 item(s)', 'the number 42', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the value {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        keys = ", ".join(repr(key) for key in list(value)[:5])
        return f"an object with the keys {keys}" if keys else "an empty object"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def _upgrade(path: Path, data: dict) -> dict:
    """A notebook older than version 4 (cells inside 'worksheets'), converted with nbformat."""
    try:
        import nbformat

        return nbformat.convert(nbformat.from_dict(data), 4)
    except Exception as exc:  # noqa: BLE001 - nbformat raises several unrelated types for broken documents
        raise NotebookError(
            f"{path}: notebook format {data.get('nbformat')!r} could not be converted to version 4 "
            f"({type(exc).__name__}: {exc}); open it in Jupyter and save it again"
        ) from None


def _folder_contents(folder: Path) -> str:
    try:
        names = sorted(p.name for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    except OSError:
        return ""
    if not names:
        return " that holds no notebook"
    return f" that holds {len(names)} notebooks ({', '.join(names)})" if len(names) > 1 else f" (it holds {names[0]})"


# ------------------------------------------------------------------------------------------------------------
# Choosing the cells


def grading_cells(notebook: dict) -> GradingCells:
    """The code cells grading executes, in order: setup (locked) cells, solution cells, and added definitions."""
    any_metadata = any(_nbgrader_metadata(c) is not None for c in notebook["cells"] if c.get("cell_type") == "code")
    notes: list[str] = []
    chosen: list[CodeCell] = []
    added: list[str] = []
    demo_definitions: dict[str, str] = {}
    for index, cell in enumerate(notebook["cells"]):
        meta = _nbgrader_metadata(cell)
        if cell.get("cell_type") != "code":
            note = _not_a_code_cell(cell, index, meta)
            if note:
                notes.append(note)
            continue
        source = _source_text(cell)
        label = f"cell {index + 1}"
        if meta is not None:
            is_solution = bool(meta.get("solution"))
            is_setup = bool(meta.get("locked")) and not meta.get("grade") and meta.get("grade_id") != CHECKS_IMPORT_ID
            if not (is_solution or is_setup):
                continue  # a check cell (an nbgrader test cell) or the import of the checks: never run at grading
            label = safe_text(str(meta.get("grade_id") or label), MAX_LABEL, single_line=True)
            if source is not None and is_solution and _only_ipython(source):
                notes.append(_only_ipython_note(index, meta, source))
        elif any_metadata:  # no metadata, in a notebook that has some: a demo cell, or a definition the student added
            defined = _definitions_only(source) if source is not None else []
            if not defined:
                for name in _assigned_names(source):  # a demo cell
                    demo_definitions.setdefault(name, f"cell {index + 1}")
                continue
            added.append(f"cell {index + 1} ({', '.join(f'`{name}`' for name in defined)})")
        if source is None:
            notes.append(f"{_name(index, meta)}: its source is {_describe_source(cell.get('source'))}, not text, so "
                         "it was skipped (was the notebook edited outside Jupyter?)")
            continue
        chosen.append(CodeCell(label=label, source=_python_only(source), index=index))
    if added:
        notes.append(
            f"Cells without nbgrader metadata that only define functions or classes were run with your solution: "
            f"{'; '.join(added)}. Other cells you added are not run at grading."
        )
    if not any_metadata and chosen:
        notes.append(
            "The notebook's cells have lost their nbgrader metadata (was the code pasted into a new notebook?); "
            "all code cells were run, demo cells included. Work in the notebook you were given."
        )
    defined_when_graded = {name for cell in chosen for name in _assigned_names(cell.source)}
    demo_only = {name: cell for name, cell in demo_definitions.items() if name not in defined_when_graded}
    return GradingCells(cells=chosen, notes=notes, demo_definitions=demo_only)


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


def _name(index: int, meta: dict | None) -> str:
    """How a note names a cell: its grade_id (what the plugin's messages call it) and its position."""
    grade_id = meta.get("grade_id") if meta else None
    if not grade_id:
        return f"Cell {index + 1}"
    return f"Cell '{safe_text(str(grade_id), MAX_LABEL, single_line=True)}' (cell {index + 1} of the notebook)"


def _source_text(cell: dict) -> str | None:
    """The cell's source as one string (a string, or a list of lines); None when it is neither."""
    source = cell.get("source", "")
    if isinstance(source, str):
        return source
    if isinstance(source, list) and all(isinstance(line, str) for line in source):
        return "".join(source)
    return None


def _describe_source(value) -> str:
    if isinstance(value, list):
        odd = next(item for item in value if not isinstance(item, str))
        return f"a list of lines with {_describe_json(odd)} among them"
    return _describe_json(value)


def _parse(source: str) -> ast.Module | None:
    if len(source) > _MAX_PARSED_SOURCE:
        return None
    try:
        return ast.parse(_python_only(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _definitions_only(source: str) -> list[str]:
    """Names a cell defines when it holds only definitions (def, class, import, constants); else []."""
    tree = _parse(source)
    if tree is None:
        return []
    names = []
    for statement in tree.body:
        if isinstance(statement, _DEFINITIONS):
            names.append(statement.name)
        elif isinstance(statement, (ast.Import, ast.ImportFrom)):
            continue
        elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)) and _is_literal(statement.value):
            continue  # a constant: VOCAB_SIZE = 100
        else:
            return []
    return names


def _assigned_names(source: str | None) -> set[str]:
    """Names a cell binds at its top level (assignments, loops, with, imports, def, class)."""
    tree = _parse(source) if source is not None else None
    if tree is None:
        return set()
    names = set()
    for statement in tree.body:
        if isinstance(statement, (*_DEFINITIONS,)):
            names.add(statement.name)
        elif isinstance(statement, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in statement.names)
        else:
            targets = []
            if isinstance(statement, ast.Assign):
                targets = statement.targets
            elif isinstance(statement, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
                targets = [statement.target]
            elif isinstance(statement, (ast.With, ast.AsyncWith)):
                targets = [item.optional_vars for item in statement.items if item.optional_vars is not None]
            names.update(node.id for target in targets for node in ast.walk(target) if isinstance(node, ast.Name))
    return names


def _is_literal(node) -> bool:
    if node is None:
        return False
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return False
    return True


def _only_ipython(source: str) -> bool:
    """True for a cell whose lines are all IPython magics, shell escapes or comments (and at least one magic)."""
    lines = [line for line in source.splitlines() if line.strip()]
    if not any(_IPYTHON_LINE.match(line) for line in lines):
        return False
    first = lines[0].strip()
    if first.startswith("%%") and first.split()[0] not in _PYTHON_CELL_MAGICS:
        return True  # %%bash, %%writefile, ...: the whole cell is skipped
    return all(_IPYTHON_LINE.match(line) or line.lstrip().startswith("#") for line in lines)


def _only_ipython_note(index: int, meta: dict, source: str) -> str:
    commands = [line.strip() for line in source.splitlines() if _IPYTHON_LINE.match(line)]
    # Name the command that was meant to bring the code in (%run file.py, %load file.py), if there is one.
    command = next((c for c in commands if c.split()[0] in ("%run", "%load")), commands[0])
    return (f"{_name(index, meta)} holds only IPython commands (`{command[:60]}`), which are not run at grading: "
            "put your code itself in the cell (a file run with %run or loaded with %load is not part of your "
            "submission).")


def _not_a_code_cell(cell: dict, index: int, meta: dict | None) -> str | None:
    """A note for a solution or setup cell that was turned into Markdown or raw text (M or R in Jupyter)."""
    if meta is None or not (meta.get("solution") or meta.get("locked") and not meta.get("grade")):
        return None
    source = _source_text(cell)
    tree = _parse(source) if source else None
    if tree is None or not any(isinstance(s, (*_DEFINITIONS, ast.Import, ast.ImportFrom)) for s in tree.body):
        return None  # a written answer, not code
    kind = {"markdown": "a Markdown", "raw": "a raw"}.get(str(cell.get("cell_type")), "not a code")
    return (f"{_name(index, meta)} is {kind} cell, so its code was not run: in Jupyter, select it and press Y "
            "to turn it back into a code cell.")


# Cell magics whose body is still Python (only their first line is dropped); any other cell magic
# (%%bash, %%writefile, %%html, ...) makes the whole cell non-Python, so the whole cell is skipped.
_PYTHON_CELL_MAGICS = ("%%time", "%%timeit", "%%capture")


def _python_only(source: str) -> str:
    """Comment out IPython magics and shell escapes, which plain Python cannot execute."""
    first = source.lstrip().split("\n", 1)[0].strip()
    if first.startswith("%%") and first.split()[0] not in _PYTHON_CELL_MAGICS:
        return "\n".join(SKIPPED + line for line in source.splitlines())
    return "\n".join(SKIPPED + line if _IPYTHON_LINE.match(line) else line for line in source.splitlines())
