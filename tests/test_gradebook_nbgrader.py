"""One class, graded two ways, gives the same gradebook: `course grade`'s result files and nbgrader's gradebook
(gradebook.db built here with nbgrader.api.Gradebook, and the autograded notebooks' check cells as
course/nbgrader_bridge.py writes them) become the same grades.csv and the same feedback through `course
gradebook`, with the roster, the deadline and late policy of course.yml, and the overrides; nbgrader's own
students, extensions and formgrader points are used too."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import json
import warnings
from pathlib import Path

import pytest

from course.cli import main
from course.reporters.json_report import write_json
from course.results import GradeReport, TestResult
from tests.conftest import REPO
from tests.test_config import REPO_CONFIG, make_root

ASSIGNMENT = "ch03_attention"
DEADLINE = dt.datetime(2026, 10, 14, 21, 59, tzinfo=dt.UTC)
FAILED = "MultiHeadAttention output: values differ: largest difference 0.0038.\nHint: divide by sqrt(head_dim)."
CRASHED = "Your code raised ValueError: <script>alert(1)</script> (cell 'mha', line 3)."
# student -> (tests that fail with their status and message, hours after the deadline, first and last name)
CLASS = {
    "ann": ({}, -5.0, ("Ann", "Lee")),
    "bob": ({"test_mha_output": ("failed", FAILED), "test_mha_is_causal": ("error", CRASHED)}, 30.0,
            ("José", "García")),
    "cid": ({"test_simplified_self_attention": ("failed", "off by one")}, 0.1, ("Cid", "")),
}
ROSTER = "student,name\nann,Ann Lee\nbob,José García\ncid,Cid\ndan,Dan Roe\n"
OVERRIDES = "student,test,points,reason\nbob,test_mha_output,3,the grader was wrong on einsum (issue 31)\n"
STATUS_NAMES = {"failed": "TestFailed", "error": "TestError"}


def check_cells() -> dict[str, float]:
    """The grader's tests and points, as the release notebook's check cells hold them (tests/test_public_checks.py
    keeps them equal to the grader's)."""
    notebook = json.loads((REPO / "assignments" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text(encoding="utf-8"))
    found = {}
    for cell in notebook["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution"):
            found[meta["grade_id"]] = float(meta["points"])
    return found


def results(student: str) -> list[TestResult]:
    failing = CLASS[student][0]
    return [TestResult(name, failing[name][0] if name in failing else "passed", 0.0 if name in failing else points,
                       points, failing[name][1] if name in failing else "") for name, points in check_cells().items()]


@pytest.fixture(scope="module")
def two_ways(tmp_path_factory):
    top = tmp_path_factory.mktemp("two-ways")
    raw = copy.deepcopy(REPO_CONFIG)
    raw["late"] = {"policy": "penalty", "penalty_per_day": 10, "max_penalty": 50, "grace_minutes": 15}
    next(a for a in raw["assignments"] if a["id"] == ASSIGNMENT)["deadline"] = DEADLINE
    root = make_root(top, raw)
    (top / "roster.csv").write_text(ROSTER, encoding="utf-8")
    (top / "overrides.csv").write_text(OVERRIDES, encoding="utf-8")
    # course grade's way: the class folder (nbgrader's layout, with timestamp.txt) and the result files.
    for student in CLASS:
        folder = top / "class" / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        (folder / f"{ASSIGNMENT}.ipynb").write_text("{}")
        when = DEADLINE + dt.timedelta(hours=CLASS[student][1])
        (folder / "timestamp.txt").write_text(when.strftime("%Y-%m-%d %H:%M:%S.%f UTC"))
        report = GradeReport(ASSIGNMENT, results(student), notebook=str(folder / f"{ASSIGNMENT}.ipynb"))
        write_json(report, top / "results" / student / f"{ASSIGNMENT}.json", extra={"student": student})
    # nbgrader's way: its gradebook and the autograded notebooks.
    nbgrader_course(root)
    common = ["--roster", str(top / "roster.csv"), "--overrides", str(top / "overrides.csv")]
    assert main(["--root", str(root), "gradebook", str(top / "results"), "--submissions", str(top / "class"),
                 *common]) == 0
    assert main(["--root", str(root), "gradebook", str(root), "--out", str(top / "from-nbgrader"), *common]) == 0
    assert main(["--root", str(root), "gradebook", str(root), "--out", str(top / "nbgrader-roster")]) == 0
    return top, root


def nbgrader_course(root: Path) -> None:
    from nbgrader.api import Gradebook

    tests = check_cells()
    with warnings.catch_warnings(), Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        warnings.simplefilter("ignore")  # SQLAlchemy's "not in session" warnings of nbgrader 0.9
        gradebook.add_assignment(ASSIGNMENT, duedate=DEADLINE.strftime("%Y-%m-%d %H:%M:%S UTC"))
        gradebook.add_notebook(ASSIGNMENT, ASSIGNMENT)
        for name, points in tests.items():
            gradebook.add_grade_cell(name, ASSIGNMENT, ASSIGNMENT, max_score=points, cell_type="code")
        for student, (failing, hours, (first, last)) in CLASS.items():
            gradebook.add_student(student, first_name=first, last_name=last or None)
            when = DEADLINE + dt.timedelta(hours=hours)
            gradebook.add_submission(ASSIGNMENT, student, timestamp=when.strftime("%Y-%m-%d %H:%M:%S.%f UTC"))
            for grade in gradebook.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, student).grades:
                grade.auto_score = 0.0 if grade.name in failing else grade.max_score
                grade.needs_manual_grade = False
            autograded(root, student, failing)
        gradebook.add_student("dan", first_name="Dan", last_name="Roe")  # registered, never submitted
        gradebook.add_student("eve")  # not on the roster; the formgrader gave her a test's points by hand
        gradebook.add_submission(ASSIGNMENT, "eve", timestamp=DEADLINE.strftime("%Y-%m-%d %H:%M:%S UTC"),
                                 extension=dt.timedelta(days=3))
        for grade in gradebook.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, "eve").grades:
            grade.auto_score = 0.0
            grade.manual_score = 1.0 if grade.name == "test_mha_output" else None
        gradebook.db.commit()


def autograded(root: Path, student: str, failing: dict) -> None:
    """The autograded notebook's check cells, as course/nbgrader_bridge.py leaves them."""
    cells = [{"cell_type": "code", "metadata": {"nbgrader": {"grade": True, "solution": False, "grade_id": name,
                                                             "points": points}},
              "outputs": [{"output_type": "error", "ename": STATUS_NAMES[failing[name][0]], "evalue": failing[name][1],
                           "traceback": []}] if name in failing else [], "source": f'check("{name}")',
              "execution_count": None}
             for name, points in check_cells().items()]
    path = root / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def rows(path: Path) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["student"]: row for row in csv.DictReader(handle)}


def test_both_ways_give_the_same_grades(two_ways):
    top, _ = two_ways
    ours, theirs = rows(top / "results" / "grades.csv"), rows(top / "from-nbgrader" / "grades.csv")
    assert list(ours) == list(theirs) == ["ann", "bob", "cid", "dan"]  # the roster's order
    for student in ours:
        differ = {key for key in ours[student] if ours[student][key] != theirs[student][key]}
        assert differ <= {"time_source"}, (student, differ)
    assert ours["bob"]["time_source"] == "timestamp.txt"
    assert theirs["bob"]["time_source"] == "nbgrader gradebook"


def test_late_days_penalty_overrides_and_missing_in_the_csv(two_ways):
    top, _ = two_ways
    grades = rows(top / "from-nbgrader" / "grades.csv")
    bob = grades["bob"]
    assert (bob["name"], bob["auto_score"], bob["late_days"], bob["late_penalty"], bob["score"]) == (
        "José García", "12", "2", "3.2", "11.8")  # 12 + 3 by override = 15, minus 20% of 16
    assert bob["overrides"] == "test_mha_output 0 -> 3 (the grader was wrong on einsum (issue 31))"
    assert (bob["test_mha_output"], bob["test_mha_is_causal"]) == ("3", "0")
    assert bob["submitted_at"] == "2026-10-16T03:59:00Z"
    assert (grades["cid"]["late_days"], grades["cid"]["late_penalty"]) == ("0", "0")  # within the grace period
    assert (grades["ann"]["score"], grades["ann"]["status"]) == ("16", "complete")
    assert (grades["dan"]["status"], grades["dan"]["score"], grades["dan"]["max_score"]) == ("missing", "0", "16")
    apart = rows(top / "from-nbgrader" / "not-on-roster.csv")
    assert list(apart) == ["eve"]
    # Points the formgrader set are an override with its reason; her extension moves her deadline.
    assert (apart["eve"]["auto_score"], apart["eve"]["score"], apart["eve"]["late_days"]) == ("0", "1", "0")
    assert apart["eve"]["overrides"] == "test_mha_output 0 -> 1 (set by hand in nbgrader's formgrader)"


def test_both_ways_give_the_same_feedback(two_ways):
    top, _ = two_ways
    for student in ("ann", "bob", "cid", "dan"):
        ours = (top / "results" / student / f"{ASSIGNMENT}.md").read_text(encoding="utf-8")
        theirs = (top / "from-nbgrader" / student / f"{ASSIGNMENT}.md").read_text(encoding="utf-8")
        assert ours.replace("from the timestamp.txt", "from the nbgrader gradebook") == theirs, student
    page = (top / "from-nbgrader" / "bob" / f"{ASSIGNMENT}.html").read_text(encoding="utf-8")
    assert "Late by 2 days (10% of the points per day late, at most 50%, after a grace period of 15 minutes): " \
           "−3.2 points." in page
    assert "<strong>Hint:</strong> divide by sqrt(head_dim)." in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page
    assert "MultiHeadAttention on batches" in page  # what the test checks, from the grader's docstring


def test_without_a_roster_the_gradebook_students_are_the_class(two_ways):
    top, _ = two_ways
    grades = rows(top / "nbgrader-roster" / "grades.csv")
    assert list(grades) == ["ann", "bob", "cid", "dan", "eve"]
    assert grades["dan"]["status"] == "missing"
    assert grades["dan"]["name"] == "Dan Roe"
    assert not (top / "nbgrader-roster" / "not-on-roster.csv").exists()
    numbers = json.loads((top / "nbgrader-roster" / f"class-{ASSIGNMENT}.json").read_text(encoding="utf-8"))
    assert numbers["scores"] == sorted(float(row["score"]) for row in grades.values())
