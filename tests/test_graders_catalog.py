"""The graders earn their points: solutions pass, untouched stubs score 0, every mutant loses exactly the
points of the tests aimed at its bug, correct variants written differently score full marks, and every grader
test is killed by at least one mutant."""

from __future__ import annotations

import pytest

from course.grading.runner import collect_points
from tests.submissions.build import with_edits
from tests.submissions.catalog import MUTANTS, VARIANTS

ASSIGNMENTS = ["ch02_text_data", "ch03_attention"]


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_solution_scores_full_marks(course, grade, assignment_id):
    assignment = course.assignment(assignment_id)
    report = grade(course.solution_notebook(assignment), assignment_id)
    failures = {t.name: t.message for t in report.tests if t.status != "passed"}
    assert failures == {}
    assert report.score == report.max_score == assignment.points


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_untouched_release_scores_zero_with_feedback(course, grade, assignment_id):
    assignment = course.assignment(assignment_id)
    report = grade(course.release_notebook(assignment), assignment_id)
    assert report.score == 0 and report.max_score == assignment.points
    for test in report.tests:
        assert test.status == "error", (test.name, test.status, test.message)
        assert "Not implemented yet" in test.message and "cell '" in test.message, test.message


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: f"{m.assignment}-{m.name}")
def test_mutant_loses_exactly_the_targeted_points(course, grade, tmp_path, mutant):
    assignment = course.assignment(mutant.assignment)
    notebook = with_edits(course.solution_notebook(assignment), tmp_path / assignment.notebook,
                          replace={mutant.cell: list(mutant.edits)})
    report = grade(notebook, mutant.assignment)
    failed = {t.name for t in report.tests if t.status != "passed"}
    assert failed == set(mutant.breaks), {t.name: t.message for t in report.tests if t.status != "passed"}
    for test in report.tests:
        if test.status != "passed":
            assert test.score == 0 and test.message, test


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v.assignment}-{v.name}")
def test_correct_variant_scores_full_marks(course, grade, tmp_path, variant):
    assignment = course.assignment(variant.assignment)
    notebook = with_edits(course.solution_notebook(assignment), tmp_path / assignment.notebook,
                          sources=variant.sources)
    report = grade(notebook, variant.assignment)
    assert {t.name: t.message for t in report.tests if t.status != "passed"} == {}
    assert report.score == assignment.points


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_every_grader_test_is_killed_by_some_mutant(course, assignment_id):
    tests = set(collect_points(course, course.assignment(assignment_id)))
    killed = set().union(*(m.breaks for m in MUTANTS if m.assignment == assignment_id))
    assert tests - killed == set(), "grader tests that no mutant fails"
    assert killed - tests == set(), "mutants name tests that do not exist"
