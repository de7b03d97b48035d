"""nbgrader's real pipeline on a copy of the course, as docs/instructors.md runs it: generate_assignment, four
students in submitted/ (a full solution under a student id a spreadsheet would run as a formula, the untouched
release, a partly correct one, a notebook that is not JSON), autograde (done by the course's graders in the
sandbox, see course/nbgrader_bridge.py), generate_feedback and export. The gradebook holds, test by test, the
points that `course grade` gives; the CSV holds the totals, safe to open in a spreadsheet; the feedback shows the
course's messages and nothing of the hidden graders; no command warns. Then, without the pipeline: the CSV rule
that `course grade` and `nbgrader export` share."""

from __future__ import annotations

import csv
import html
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.coursedir import CourseDirectory
from traitlets.config.loader import PyFileConfigLoader

from course import batch
from course.grading.runner import grade_notebook
from course.nbgrader_export import COLUMNS, SpreadsheetCsvExport
from course.spreadsheet import FORMULA_STARTS, spreadsheet_cell, spreadsheet_text
from course.worker.sandbox import bubblewrap_problem
from tests.conftest import REPO
from tests.submissions.build import with_edits
from tests.submissions.catalog import MUTANTS

ASSIGNMENT = "ch03_attention"
FORMULA_ID = '=HYPERLINK("x")'  # a student id (a folder name) that a spreadsheet would run as a formula
STUDENTS = (FORMULA_ID, "untouched", "partly", "unreadable")
LINKED = "linked"  # whose notebook is a symbolic link to FORMULA_ID's (a classmate's full marks)
# What a CSV cell may not start with, if a spreadsheet is to show it as text (OWASP's list).
FORMULA_CHARACTERS = ("=", "+", "-", "@", "\t", "\r")
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
    for student in STUDENTS:
        target = root / "submitted" / student / ASSIGNMENT / assignment.notebook
        target.parent.mkdir(parents=True)
        if student == FORMULA_ID:
            shutil.copyfile(solution, target)
        elif student == "untouched":
            shutil.copyfile(course.release_notebook(assignment), target)
        elif student == "partly":
            with_edits(solution, target, replace={mutant.cell: list(mutant.edits)})
        else:  # cut off in the middle of a string: not JSON
            target.write_bytes(solution.read_bytes()[:3000])
        notebooks[student] = target
    linked = root / "submitted" / LINKED / ASSIGNMENT / assignment.notebook
    linked.parent.mkdir(parents=True)
    linked.symlink_to(notebooks[FORMULA_ID])
    logs = {}
    for command in (["generate_assignment", ASSIGNMENT, "--force"], ["autograde", ASSIGNMENT],
                    ["generate_feedback", ASSIGNMENT], ["export"]):
        done = nbgrader(*command, cwd=root)
        logs[command[0]] = done.stdout + done.stderr
    return root, notebooks, logs


def gradebook_scores(root: Path, student: str) -> dict[str, float]:
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, student)
        return {grade.name: grade.score for grade in submission.grades}


@pytest.mark.parametrize("student", STUDENTS)
def test_the_gradebook_holds_the_points_course_grade_gives_per_test(course, pipeline, student):
    root, notebooks, _ = pipeline
    report = grade_notebook(course, course.assignment(ASSIGNMENT), notebooks[student], device="cpu")
    assert gradebook_scores(root, student) == {test.name: test.score for test in report.tests}


def test_the_exported_csv_holds_the_totals_and_is_safe_in_a_spreadsheet(pipeline):
    root, _, _ = pipeline
    with (root / "grades.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == COLUMNS
    # The formula-like id is written with one quote in front, and the id is the cell without it.
    assert "'" + FORMULA_ID in [row["student_id"] for row in rows]
    assert {spreadsheet_text(row["student_id"]): float(row["score"]) for row in rows} == {
        FORMULA_ID: 16.0, "untouched": 0.0, "partly": 12.0, "unreadable": 0.0, LINKED: 0.0}
    assert not [cell for row in rows for cell in row.values() if cell.startswith(FORMULA_CHARACTERS)]


def test_the_feedback_shows_the_course_messages_and_no_hidden_grader(pipeline):
    root, _, _ = pipeline
    feedback = (root / "feedback" / "partly" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text(encoding="utf-8")
    assert "exactly what scores scaled by sqrt(d_out) instead of sqrt(head_dim) gives" in feedback
    for hidden in ("def test_", "graders/", "check_outputs", "reference_module", str(root)):
        assert hidden not in feedback, hidden


def test_an_unreadable_notebook_gets_feedback_that_says_what_is_wrong(course, pipeline):
    root, notebooks, logs = pipeline
    feedback = (root / "feedback" / "unreadable" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "", feedback))
    assert "This is not your notebook." in text
    # Under each check, the message `course grade` gives, with the file's name instead of its path.
    report = grade_notebook(course, course.assignment(ASSIGNMENT), notebooks["unreadable"], device="cpu")
    messages = {test.message.replace(str(notebooks["unreadable"]), notebooks["unreadable"].name)
                for test in report.tests}
    assert len(messages) == 1
    message = messages.pop()
    assert message.startswith("Your notebook could not be graded: ch03_attention.ipynb: not a valid notebook file")
    assert text.count(message) == len(report.tests)
    for hidden in ("def test_", "graders/", str(root)):
        assert hidden not in feedback, hidden
    assert "unreadable's notebook of ch03_attention could not be read: 0 points" in logs["autograde"]


def test_a_notebook_linked_to_a_classmates_is_refused_and_shows_none_of_it(pipeline):
    """nbgrader follows links when it reads a submission: the course refuses the link before anything is read,
    and the feedback shows the released notebook, not the classmate's code."""
    root, _, _ = pipeline
    assert sum(gradebook_scores(root, LINKED).values()) == 0
    feedback = (root / "feedback" / LINKED / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "", feedback))
    assert "is a symbolic link" in text
    assert "### BEGIN SOLUTION" not in text
    classmate = (root / "feedback" / FORMULA_ID / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text(encoding="utf-8")
    code = "torch.cat([head(x) for head in self.heads], dim=-1)"  # a line of the classmate's (the solution's) code
    assert code in html.unescape(re.sub(r"<[^>]+>", "", classmate))
    assert code not in text


def test_the_documented_commands_warn_of_nothing_avoidable(pipeline):
    _, _, logs = pipeline
    for command, log in logs.items():
        assert "is not absolute" not in log, command
        assert "Warning" not in log, (command, log[-3000:])  # e.g. SQLAlchemy's SAWarning
        warnings = [line for line in log.splitlines() if "| WARNING]" in line]
        expected = {"generate_assignment": ["Removing existing assignment"],
                    "autograde": ["unreadable's notebook of ch03_attention could not be read",
                                  f"{LINKED}'s notebook of ch03_attention could not be read"]}.get(command, [])
        assert [line for line in warnings if not any(text in line for text in expected)] == [], command


# ------------------------------------------------------------------------------------------------------------
# Without the pipeline: the configuration, and the CSV rule that `course grade` and `nbgrader export` share


def test_the_config_gives_nbgrader_the_course_folder_as_an_absolute_root(caplog):
    config = PyFileConfigLoader("nbgrader_config.py", path=str(REPO)).load_config()
    log = logging.getLogger("test-nbgrader-config")
    with caplog.at_level(logging.WARNING, logger=log.name):
        coursedir = CourseDirectory(config=config, log=log)
        assert coursedir.root == str(REPO)
    assert caplog.records == []
    assert config.ExportApp.plugin_class is SpreadsheetCsvExport


@pytest.mark.parametrize("text", ['=HYPERLINK("x")', "+1", "-1", "@SUM(A1)", "\tx", "\rx", "\nx", "'=1", "'",
                                  "\uff1d1"])
def test_a_cell_that_could_start_a_formula_gets_one_quote_in_front(text):
    assert spreadsheet_cell(text) == "'" + text
    assert spreadsheet_text(spreadsheet_cell(text)) == text


@pytest.mark.parametrize("text", ["alice", "s1234567", "Zoë O'Brien", "", " =1", "1-2", "a,b", 'say "hi"'])
def test_any_other_cell_is_written_as_it_is(text):
    assert spreadsheet_cell(text) == text
    assert spreadsheet_text(spreadsheet_cell(text)) == text


IDS = ['=HYPERLINK("x")', "@SUM(A1)", "-2+3", "'quoted", "alice", "s,1"]


class FakeGradebook:
    """What the export reads of nbgrader's Gradebook (a real one starts a subprocess: seconds)."""

    assignments = [SimpleNamespace(name="=a1", duedate=None, max_score=16.0)]
    students = [SimpleNamespace(id=student, last_name="+Name", first_name="Ann", email="@x") for student in IDS]

    def find_submission(self, assignment: str, student: str):
        if student == "alice":
            raise MissingEntry()
        return SimpleNamespace(score=12.0, late_submission_penalty=2.0, timestamp="2026-12-01 10:00:00")


def test_nbgrader_export_writes_every_cell_by_the_shared_rule(tmp_path):
    SpreadsheetCsvExport(to=str(tmp_path / "grades.csv")).export(FakeGradebook())
    with (tmp_path / "grades.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["student_id"] for row in rows] == [spreadsheet_cell(student) for student in IDS]
    assert [spreadsheet_text(row["student_id"]) for row in rows] == IDS
    assert {tuple(row[key] for key in ("assignment", "last_name", "first_name", "email")) for row in rows} == {
        ("'=a1", "'+Name", "Ann", "'@x")}
    scores = {row["student_id"]: (row["timestamp"], row["raw_score"], row["late_submission_penalty"], row["score"])
              for row in rows}
    assert scores["alice"] == ("", "0.0", "0.0", "0.0")
    assert scores["'@SUM(A1)"] == ("2026-12-01 10:00:00", "12.0", "2.0", "10.0")


def test_course_grade_writes_the_student_column_by_the_same_rule(tmp_path):
    results = [batch.BatchResult(batch.BatchItem(student, ASSIGNMENT, tmp_path / "x.ipynb"), None)
               for student in IDS]
    batch.write_csv(tmp_path / "grades.csv", results)
    with (tmp_path / "grades.csv").open(newline="", encoding="utf-8") as handle:
        assert [row["student"] for row in csv.DictReader(handle)] == [spreadsheet_cell(student) for student in IDS]
    assert all(start in FORMULA_STARTS for start in FORMULA_CHARACTERS)
