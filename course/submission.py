"""Finding a submission's notebook and the assignment it belongs to."""

from __future__ import annotations

from pathlib import Path

from course.config import Assignment, Course
from course.errors import UsageError
from course.notebook import NotebookError, grade_ids, read_notebook


def resolve_submission(course: Course, path: Path, assignment_id: str | None) -> tuple[Assignment, Path]:
    """SUBMISSION is a notebook, or a folder holding the assignment's notebook."""
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    assignment = _named_assignment(course, assignment_id) if assignment_id else None
    if path.is_dir():
        return _from_folder(course, path, assignment)
    return assignment or _infer_from_notebook(course, path), path


def _named_assignment(course: Course, assignment_id: str) -> Assignment:
    try:
        return course.assignment(assignment_id)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


def _from_folder(course: Course, folder: Path, assignment: Assignment | None) -> tuple[Assignment, Path]:
    candidates = [assignment] if assignment else course.assignments
    for candidate in candidates:
        notebook = folder / candidate.notebook
        if notebook.exists():
            return candidate, notebook
    notebooks = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if assignment and len(notebooks) == 1:
        return assignment, notebooks[0]
    if not assignment and len(notebooks) == 1:
        return _infer_from_notebook(course, notebooks[0]), notebooks[0]
    expected = assignment.notebook if assignment else " or ".join(a.notebook for a in course.assignments)
    found = ", ".join(p.name for p in notebooks) or "none"
    raise UsageError(f"{folder}: expected a notebook named {expected} (notebooks found: {found})")


def _infer_from_notebook(course: Course, notebook: Path) -> Assignment:
    for assignment in course.assignments:
        if notebook.name == assignment.notebook:
            return assignment
    # Renamed file: recognise the assignment by the nbgrader cell ids it shares with a solution notebook.
    try:
        ids = grade_ids(read_notebook(notebook))
    except NotebookError:
        ids = set()
    best, overlap = None, 0
    for assignment in course.assignments:
        shared = len(ids & grade_ids(read_notebook(course.solution_notebook(assignment))))
        if shared > overlap:
            best, overlap = assignment, shared
    if best is None:
        raise UsageError(f"{notebook}: cannot tell which assignment this notebook belongs to; pass --assignment ID")
    return best
