"""nbgrader with the course's graders: `nbgrader autograde` scores submissions without running them in its kernel.

nbgrader's autograde executes each submission in a Jupyter kernel in the instructor's process tree, with the
course folder around it, and scores a test cell by whether it raised. This module replaces that one step
(nbgrader's `Execute` preprocessor) with `GradeInSandbox`, configured in nbgrader_config.py:

- the submission (after nbgrader has cleared its outputs and restored the locked cells from its database) is
  graded by `course`, exactly as `course grade` grades it: the student's code runs only in the sandboxed worker,
  the verdict is computed by the hidden graders in this process;
- every grade cell of the notebook is a grader test (its grade_id is the test's name, its points the test's
  points: tests/test_public_checks.py keeps them so): a failed test becomes an error output of that cell, whose
  text is the course's feedback message; a passed test leaves the cell without output;
- nbgrader's own `SaveAutoGrades` then scores each cell as it always does (an error: 0; no error: full points),
  so its gradebook holds exactly the points `course grade` gives, per test, and formgrade, generate_feedback
  and export work unchanged. The feedback HTML shows the check cells' one-line source and the course's
  messages: no hidden test source, no grader path, no traceback.

A submission nbgrader cannot even read (not JSON, not UTF-8, empty, a merge conflict...) would stop nbgrader
before any preprocessor runs: autograde would exit 1, give that student no feedback and export a 0 without a
word. `SubmissionReader`, nbgrader's reader of submissions (`c.Autograde.exporter_class`), reads them as
`course grade` does (course/notebook.py): a notebook the course cannot read is replaced by the released
notebook, with a first cell saying so and the reason in its metadata; `GradeInSandbox` then gives each check
cell the message `course grade` gives for it ("Your notebook could not be graded: ... not a valid notebook
file: JSON error at line 66 ..."), so the student scores 0 with feedback that says why, and autograde carries on.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from pathlib import Path

import nbformat
from nbconvert.exporters import NotebookExporter
from nbconvert.exporters.exporter import ResourcesDict
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, Unicode

from course.notebook import NotebookError, read_notebook
from course.safe_text import safe_text

STATUS_NAMES = {"failed": "TestFailed", "error": "TestError", "timeout": "TestTimeout", "todo": "NotImplementedYet"}
# Metadata of a notebook that stands in for a submission the course could not read: why it could not be read.
# Only `SubmissionReader` writes it; a student who writes it into a notebook only gets their own 0 and message.
UNREADABLE = "course_unreadable"
UNREADABLE_NOTE = ("**This is not your notebook.** The file you submitted, `{name}`, could not be read, so it was "
                   "not graded. Below is the assignment as it was released; the message under each check says "
                   "what is wrong with your file. Fix it (or start again from your last good copy) and submit "
                   "again.")


class SubmissionReader(NotebookExporter):
    """nbgrader's reader of submissions, which reads a notebook as the course does and replaces one the course
    cannot read with the released notebook, marked unreadable (see the module)."""

    def from_filename(self, filename, resources=None, **kw):
        path = Path(filename)
        resources = _file_resources(path, resources)
        try:
            refused = self._refusal(path)
            if refused:
                raise NotebookError(refused)
            data = read_notebook(path)
        except NotebookError as exc:
            problem = str(exc).replace(str(path), path.name)
            release = self._release_notebook(path, resources)
            if release is None:
                raise
            self.log.info("%s could not be read (%s): grading the released notebook in its place", path, problem)
            nb = nbformat.read(str(release), as_version=4)
            nb.metadata[UNREADABLE] = problem
            note = nbformat.v4.new_markdown_cell(UNREADABLE_NOTE.format(name=path.name))
            if nb.nbformat_minor < 5:
                note.pop("id", None)
            nb.cells.insert(0, note)
        else:
            # The course's reader accepts what nbformat reads, and a UTF-8 byte-order mark, which nbformat refuses.
            nb = nbformat.reads(json.dumps(data), as_version=4)
        return self.from_notebook_node(nb, resources=resources, **kw)

    def _refusal(self, path: Path) -> str | None:
        """Why the submission is refused without being read: its notebook, or a folder between nbgrader's
        submitted/ folder and it, is a link, a hard link, a fifo or a device (course/submission_files.py)."""
        from course.submission_files import inspect_entry

        coursedir = getattr(self.parent, "coursedir", None)
        if coursedir is not None:
            top = Path(os.path.abspath(coursedir.format_path(coursedir.submitted_directory, ".", ".")))
            inside = Path(os.path.relpath(os.path.abspath(path), top))
            if inside.parts and inside.parts[0] != "..":
                for depth in range(1, len(inside.parts)):
                    problem = inspect_entry(top.joinpath(*inside.parts[:depth]), want_folder=True)
                    if problem:
                        return problem
        return inspect_entry(path, want_folder=False)

    def _release_notebook(self, path: Path, resources) -> Path | None:
        """The released notebook that `path` (a submission of an assignment) is a copy of, if there is one."""
        coursedir = getattr(self.parent, "coursedir", None)
        info = resources.get("nbgrader", {})
        if coursedir is None or "assignment" not in info:
            return None
        folder = Path(coursedir.format_path(coursedir.release_directory, ".", info["assignment"]))
        release = folder / path.name
        return release if release.is_file() else None


def _file_resources(path: Path, resources):
    """What nbconvert's own from_filename puts in `resources` about the file."""
    resources = ResourcesDict() if resources is None else resources
    if not resources.get("metadata"):
        resources["metadata"] = ResourcesDict()
    resources["metadata"]["name"] = path.stem
    resources["metadata"]["path"] = str(path.parent)
    modified = datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.UTC)
    resources["metadata"]["modified_date"] = f"{modified:%B} {modified.day}, {modified.year}"
    return resources


class GradeInSandbox(NbGraderPreprocessor):
    """nbgrader's autograde step, done by the course's graders in a sandboxed worker (see the module)."""

    course_root = Unicode("", help="the course folder (default: the nearest folder at or above the working "
                                   "folder that holds course.yml, where nbgrader runs)").tag(config=True)
    allow_process_isolation = Bool(
        False, help="grade without bubblewrap: only for code you trust (docs/trust-model.md)").tag(config=True)

    def preprocess(self, nb, resources):
        from course import batch
        from course.config import load_course
        from course.errors import UsageError
        from course.grading.runner import grade_notebook

        info = resources.get("nbgrader", {})
        course = load_course(Path(self.course_root).resolve() if self.course_root else None)
        assignment = course.assignment(info["assignment"])
        if UNREADABLE in nb.metadata:
            return self._unreadable(nb, resources, assignment.id, nb.metadata[UNREADABLE])
        launcher = batch.launcher_for(course, assignment)
        if launcher.spec.sandbox.isolation != "bubblewrap" and not self.allow_process_isolation:
            raise UsageError(f"nbgrader autograde runs other people's code, which needs bubblewrap; the worker would "
                             f"run with {launcher.spec.sandbox.note}. Install bubblewrap, or set "
                             "c.GradeInSandbox.allow_process_isolation = True if you trust every submission.")
        with tempfile.TemporaryDirectory(prefix="course-nbgrader-") as scratch:
            path = Path(scratch) / assignment.notebook
            nbformat.write(nb, str(path))
            report = grade_notebook(course, assignment, path, launcher=launcher)
        results = {test.name: test for test in report.tests}
        for cell in _grade_cells(nb):
            meta = cell.metadata.nbgrader
            result = results.get(meta.get("grade_id"))
            if result is None:
                cell.outputs = [_error("TestError", f"{meta.get('grade_id')!r} is not a test of the grader of "
                                                    f"{assignment.id}: the course is out of date (not your fault)")]
            elif result.status == "passed":
                cell.outputs = []
            else:
                cell.outputs = [_error(STATUS_NAMES.get(result.status, "TestError"), result.message)]
            cell.execution_count = None
        self.log.info("graded %s of %s: %g/%g (%s)", info.get("student"), assignment.id, report.score,
                      report.max_score, report.sandbox.get("isolation"))
        return nb, resources

    def _unreadable(self, nb, resources, assignment_id: str, problem):
        """Every check cell of a stand-in for an unreadable submission gets the message `course grade` gives."""
        from course.grading.feedback import student_error_message
        from course.worker.runtime.records import ErrorKind, ErrorRecord

        message = student_error_message(ErrorRecord(ErrorKind.NOTEBOOK, safe_text(problem, 2000)))
        for cell in _grade_cells(nb):
            cell.outputs = [_error("TestError", message)]
            cell.execution_count = None
        self.log.warning("%s's notebook of %s could not be read: 0 points (%s)",
                         resources.get("nbgrader", {}).get("student"), assignment_id, message)
        return nb, resources


def _grade_cells(nb):
    """The notebook's check cells: nbgrader grade cells that are not solution cells."""
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            yield cell


def _error(name: str, message: str):
    return nbformat.v4.new_output("error", ename=name, evalue=message, traceback=[f"{name}: {message}"])
