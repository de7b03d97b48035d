"""Finding a submission's notebook and the assignment it belongs to."""

from __future__ import annotations

from pathlib import Path

from course.config import Assignment, Course
from course.errors import UsageError
from course.notebook import NotebookError, grade_ids, read_notebook


def resolve_submission(course: Course, path: Path, assignment_id: str | None,
                       notes: list[str] | None = None) -> tuple[Assignment, Path]:
    """SUBMISSION is a notebook, or a folder holding the assignment's notebook.

    Returns the assignment and the notebook to grade. When the assignment is known (named, or recognised) but
    no single notebook can be chosen in a folder, the folder itself is returned: grading it gives every test
    a message that says what the folder holds. `notes` (if given) receives what was guessed, for the report.
    """
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    notes = notes if notes is not None else []
    assignment = _named_assignment(course, assignment_id) if assignment_id else None
    if path.is_dir():
        return _from_folder(course, path, assignment, notes)
    return assignment or _infer_from_notebook(course, path), path


def _named_assignment(course: Course, assignment_id: str) -> Assignment:
    try:
        return course.assignment(assignment_id)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


def _from_folder(course: Course, folder: Path, assignment: Assignment | None,
                 notes: list[str]) -> tuple[Assignment, Path]:
    candidates = [assignment] if assignment else course.assignments
    for candidate in candidates:
        notebook = folder / candidate.notebook
        if notebook.is_file():
            return candidate, notebook
    notebooks = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith(".") and p.is_file())
    if len(notebooks) == 1:
        return assignment or _infer_from_notebook(course, notebooks[0]), notebooks[0]
    # Several notebooks (a copy, a scratch notebook): the one that holds the assignment's cells, if only one does.
    matches = [(nb, match) for nb in notebooks for match in [_best_match(course, nb, candidates)] if match]
    if len(matches) == 1:
        chosen, match = matches[0]
        others = ", ".join(p.name for p in notebooks if p != chosen)
        notes.append(f"{folder} holds {len(notebooks)} notebooks; graded {chosen.name}, the only one with the "
                     f"cells of {match.id} (not graded: {others}).")
        return match, chosen
    if assignment is not None and notebooks:
        return assignment, folder  # graded: every test says what the folder holds
    expected = " or ".join(a.notebook for a in ([assignment] if assignment else course.assignments))
    if not notebooks:
        raise UsageError(f"{folder}: holds no notebook, so there is nothing to grade (expected a notebook named "
                         f"{expected})")
    found = ", ".join(p.name for p in notebooks)
    raise UsageError(f"{folder}: expected a notebook named {expected} (notebooks found: {found}); pass the "
                     "notebook itself, or --assignment ID")


def _best_match(course: Course, notebook: Path, candidates: list[Assignment]) -> Assignment | None:
    """The assignment whose solution shares the most nbgrader cell ids with `notebook` (None: no shared id)."""
    try:
        ids = grade_ids(read_notebook(notebook))
    except NotebookError:
        return None
    best, overlap = None, 0
    for assignment in candidates:
        shared = len(ids & grade_ids(read_notebook(course.solution_notebook(assignment))))
        if shared > overlap:
            best, overlap = assignment, shared
    return best


def _infer_from_notebook(course: Course, notebook: Path) -> Assignment:
    for assignment in course.assignments:
        if notebook.name == assignment.notebook:
            return assignment
    # Renamed file: recognise the assignment by the nbgrader cell ids it shares with a solution notebook.
    match = _best_match(course, notebook, course.assignments)
    if match is not None:
        return match
    names = " or ".join(a.notebook for a in course.assignments)
    try:
        read_notebook(notebook)
    except NotebookError as exc:
        reason = f"it could not be read: {str(exc).removeprefix(f'{notebook}: ')}"
    else:
        reason = "it shares no nbgrader cell with the course's notebooks"
    raise UsageError(f"{notebook}: cannot tell which assignment this notebook belongs to (its name is not {names}, "
                     f"and {reason}); pass --assignment ID")
