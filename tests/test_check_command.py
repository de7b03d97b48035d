"""`course check` in the course repository: the points come from the grader, the notebook is loaded as grading
loads it, and what grading would not see (a helper only a demo cell defines, a hang, an unreadable file) is
reported per check. (In student repositories and against the notebook's own check cells:
tests/test_student_repository.py and tests/test_student_venv.py.)"""

from __future__ import annotations

import json

import pytest

from course.checking import CheckTarget, run_checks
from course.config import load_course
from course.grading.runner import collect_points, grade_notebook
from course.grading.session import GradingSession
from course.results import Status
from tests.conftest import REPO, run_cli

COURSE = load_course(REPO)
CH02 = COURSE.assignment("ch02_text_data")


def test_the_points_are_the_graders():
    assert CheckTarget.from_course(COURSE, CH02).resolve_tests() == collect_points(COURSE, CH02)


def test_a_course_needs_the_notebook_named():
    done = run_cli("check")
    assert (done.returncode, "name the notebook to check" in done.stderr) == (2, True)


@pytest.fixture(scope="module")
def troubled(tmp_path_factory):
    """The ch02 solution where simple_tokenize calls a helper that only a demo cell defines, and build_vocab
    never returns; checked with a 3-second limit per check."""
    notebook = json.loads(COURSE.solution_notebook(CH02).read_text(encoding="utf-8"))
    cells = notebook["cells"]
    for index, cell in enumerate(cells):
        grade_id = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
        if grade_id == "simple_tokenize":
            cell["source"] = "def simple_tokenize(text):\n    return split_words(text)\n"
            cells.insert(index + 1, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                                     "source": "import re\nsplit_words = lambda text: re.findall(r'\\w+', text)\n"
                                               "print(split_words('a b'))\n"})
        if grade_id == "build_vocab":
            cell["source"] = "def build_vocab(tokens, special_tokens=()):\n    while True:\n        pass\n"
    path = tmp_path_factory.mktemp("troubled") / "ch02_text_data.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    target = CheckTarget.from_course(COURSE, CH02)
    target.timeout = 3.0
    report = run_checks(target, path)
    return {test.name: test for test in report.tests}


def test_a_helper_defined_in_a_demo_cell_is_named(troubled):
    test = troubled["test_simple_tokenize"]
    assert (test.status, "`split_words` is defined only in cell" in test.message) == ("error", True)


def test_a_hang_costs_its_own_check_only(troubled):
    assert troubled["test_build_vocab"].status == "timeout"
    # said as grading says it (the grading session's classification)
    assert troubled["test_build_vocab"].message.startswith("Your code did not finish in time: stopped after 3.0 s")


def test_the_checks_after_a_hang_still_run(troubled):
    assert troubled["test_input_embeddings"].status == "passed"


def test_an_unreadable_notebook_fails_every_check_with_the_reason(tmp_path):
    broken = tmp_path / "ch02_text_data.ipynb"
    broken.write_text('{"cells": [', encoding="utf-8")
    report = run_checks(CheckTarget.from_course(COURSE, CH02), broken)
    assert {(t.status, "JSON error at line 1" in t.message) for t in report.tests} == {("error", True)}


def test_check_and_grade_run_through_one_grading_session(tmp_path, monkeypatch):
    """One sandbox set-up, one Deadline (checks have no budget for the whole submission), one classification."""
    opened = []
    open_session = GradingSession._open

    def spy(session):
        opened.append((session.kind, session.deadline.per_test, session.deadline.whole))
        open_session(session)

    monkeypatch.setattr(GradingSession, "_open", spy)
    broken = tmp_path / "ch02_text_data.ipynb"
    broken.write_text('{"cells": [', encoding="utf-8")
    checked = run_checks(CheckTarget.from_course(COURSE, CH02), broken)
    graded = grade_notebook(COURSE, CH02, broken, device="cpu")
    assert opened == [("check", CH02.timeout, None), ("grade", CH02.timeout, CH02.submission_timeout)]
    assert checked.sandbox == graded.sandbox
    assert [t.name for t in checked.tests] == [t.name for t in graded.tests]
    assert {t.status for t in checked.tests} == {t.status for t in graded.tests} == {Status.ERROR}
