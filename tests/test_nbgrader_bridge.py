"""nbgrader's real pipeline on a copy of the course: generate_assignment, three students in submitted/ (full,
untouched, partly correct), autograde (done by the course's graders in the sandbox, see
course/nbgrader_bridge.py), generate_feedback and export. The gradebook holds, test by test, the points that
`course grade` gives; the CSV holds the totals; the feedback shows the course's messages and nothing of the
hidden graders."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from course.grading.runner import grade_notebook
from course.worker.sandbox import bubblewrap_problem
from tests.conftest import REPO
from tests.submissions.build import with_edits
from tests.submissions.catalog import MUTANTS

ASSIGNMENT = "ch03_attention"
COPIED = ["course.yml", "nbgrader_config.py", "solutions", "assignments", "graders", "reference", "checks", "data"]


def nbgrader(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def pipeline(course, tmp_path_factory):
    if bubblewrap_problem():
        pytest.skip(f"nbgrader's autograde grades a class under bubblewrap, not available here: {bubblewrap_problem()}")
    root = tmp_path_factory.mktemp("nbgrader-course")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copyfile(source, root / name)
    assignment = course.assignment(ASSIGNMENT)
    solution = course.solution_notebook(assignment)
    mutant = next(m for m in MUTANTS if m.name == "mha_scaled_by_d_out")
    notebooks = {}
    for student in ("full", "untouched", "partly"):
        target = root / "submitted" / student / ASSIGNMENT / assignment.notebook
        target.parent.mkdir(parents=True)
        if student == "full":
            shutil.copyfile(solution, target)
        elif student == "untouched":
            shutil.copyfile(course.release_notebook(assignment), target)
        else:
            with_edits(solution, target, replace={mutant.cell: list(mutant.edits)})
        notebooks[student] = target
    nbgrader("generate_assignment", ASSIGNMENT, "--force", cwd=root)
    nbgrader("autograde", ASSIGNMENT, cwd=root)
    nbgrader("generate_feedback", ASSIGNMENT, cwd=root)
    nbgrader("export", cwd=root)
    return root, notebooks


def gradebook_scores(root: Path, student: str) -> dict[str, float]:
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, student)
        return {grade.name: grade.score for grade in submission.grades}


@pytest.mark.parametrize("student", ["full", "untouched", "partly"])
def test_the_gradebook_holds_the_points_course_grade_gives_per_test(course, pipeline, student):
    root, notebooks = pipeline
    report = grade_notebook(course, course.assignment(ASSIGNMENT), notebooks[student], device="cpu")
    assert gradebook_scores(root, student) == {test.name: test.score for test in report.tests}


def test_the_exported_csv_holds_the_totals(pipeline):
    root, _ = pipeline
    with (root / "grades.csv").open(encoding="utf-8") as handle:
        rows = {row["student_id"]: float(row["score"]) for row in csv.DictReader(handle)}
    assert rows == {"full": 16.0, "untouched": 0.0, "partly": 12.0}


def test_the_feedback_shows_the_course_messages_and_no_hidden_grader(pipeline):
    root, _ = pipeline
    feedback = (root / "feedback" / "partly" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text(encoding="utf-8")
    assert "exactly what scores scaled by sqrt(d_out) instead of sqrt(head_dim) gives" in feedback
    for hidden in ("def test_", "graders/", "check_outputs", "reference_module", str(root)):
        assert hidden not in feedback, hidden
