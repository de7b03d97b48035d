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
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, Unicode

STATUS_NAMES = {"failed": "TestFailed", "error": "TestError", "timeout": "TestTimeout"}


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
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell.cell_type != "code" or not meta.get("grade") or meta.get("solution"):
                continue
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


def _error(name: str, message: str):
    return nbformat.v4.new_output("error", ename=name, evalue=message, traceback=[f"{name}: {message}"])
