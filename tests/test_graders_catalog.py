"""The graders earn their points: solutions pass, untouched stubs score 0, every mutant loses exactly the
points of the tests aimed at its bug, correct variants written differently score full marks, and every grader
test is killed by at least one mutant.

The whole catalogue is graded once, as a class is graded (course/batch.py: two grading processes, each with a
template worker), so that the suite's time grows slowly with the chapters; each test then reads its result.
"""

from __future__ import annotations

import os

import pytest

from course import batch
from course.config import load_course
from course.grading.runner import collect_points
from tests.conftest import REPO
from tests.submissions.catalog import MUTANTS, VARIANTS
from tests.submissions.snapshot import catalogue_items

ASSIGNMENTS = [a.id for a in load_course(REPO).assignments]


@pytest.fixture(scope="module")
def graded(course, tmp_path_factory):
    """Every solution, release, mutant and variant, graded in one batch: {(assignment, name): report}.

    CATALOGUE_ONLY=ch04_gpt,appe_lora (with -k) grades those assignments only, while working on their graders."""
    only = [name for name in os.environ.get("CATALOGUE_ONLY", "").split(",") if name]
    items = catalogue_items(course, tmp_path_factory.mktemp("catalogue"), only)
    results = batch.grade_batch(course, items, jobs=2, device="cpu")
    return {(r.item.assignment, r.item.student): r.report for r in results}


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_solution_scores_full_marks(course, graded, assignment_id):
    assignment = course.assignment(assignment_id)
    report = graded[assignment_id, "solution"]
    failures = {t.name: t.message for t in report.tests if t.status != "passed"}
    assert failures == {}
    assert report.score == report.max_score == assignment.points


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_untouched_release_scores_zero_with_feedback(course, graded, assignment_id):
    assignment = course.assignment(assignment_id)
    report = graded[assignment_id, "release"]
    assert report.score == 0
    assert report.max_score == assignment.points
    for test in report.tests:
        assert test.status == "error", (test.name, test.status, test.message)
        assert "Not implemented yet" in test.message, test.message
        assert "cell '" in test.message, test.message


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: f"{m.assignment}-{m.name}")
def test_mutant_loses_exactly_the_targeted_points(graded, mutant):
    report = graded[mutant.assignment, mutant.name]
    failing = [t for t in report.tests if t.status != "passed"]
    assert {t.name for t in failing} == set(mutant.breaks), {t.name: t.message for t in failing}
    assert all(t.score == 0 for t in failing)
    assert all(t.message for t in failing)
    assert any(mutant.says in t.message for t in failing), "the grader should name this mistake"
    if mutant.not_says:
        assert not [t.name for t in failing if mutant.not_says in t.message], "a hint that does not fit this bug"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v.assignment}-{v.name}")
def test_correct_variant_scores_full_marks(course, graded, variant):
    assignment = course.assignment(variant.assignment)
    report = graded[variant.assignment, variant.name]
    assert {t.name: t.message for t in report.tests if t.status != "passed"} == {}
    assert report.score == assignment.points


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_every_assignment_has_mutants_and_variants(assignment_id):
    assert len([m for m in MUTANTS if m.assignment == assignment_id]) >= 6
    assert len([v for v in VARIANTS if v.assignment == assignment_id]) >= 2


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_every_grader_test_is_killed_by_some_mutant(course, assignment_id):
    tests = set(collect_points(course, course.assignment(assignment_id)))
    killed = set().union(*(m.breaks for m in MUTANTS if m.assignment == assignment_id))
    assert tests - killed == set(), "grader tests that no mutant fails"
    assert killed - tests == set(), "mutants name tests that do not exist"


def test_mistake_oracle_without_mistakes_is_the_reference():
    """The ch03 grader names classic mistakes by recomputing attention with one mistake switched on; with none
    switched on, that computation must equal the reference, or its diagnoses would be wrong."""
    import torch

    from graders.ch03_attention import attention_with, reference_module
    from reference import attention as ref

    cases = [
        (ref.SelfAttention_v1, {"d_in": 3, "d_out": 2}, (6, 3), False),
        (ref.SelfAttention_v2, {"d_in": 4, "d_out": 3, "qkv_bias": True}, (5, 4), False),
        (ref.CausalAttention, {"d_in": 3, "d_out": 2, "context_length": 6, "dropout": 0.5}, (2, 6, 3), True),
        (ref.MultiHeadAttention, {"d_in": 6, "d_out": 6, "context_length": 8, "dropout": 0.1, "num_heads": 3},
         (2, 5, 6), True),
    ]
    for cls, init, shape, causal in cases:
        model = reference_module(cls, 0, **init)
        x = torch.rand(*shape)
        with torch.no_grad():
            torch.testing.assert_close(attention_with(model, x, causal=causal), model(x), atol=1e-6, rtol=1e-5)


def test_the_snapshot_comparison_names_every_changed_result():
    """tests/submissions/snapshot.py: what a maintainer runs before and after a refactoring of the graders."""
    from tests.submissions.snapshot import compare

    old = {"ch03/solution": [["test_a", "passed", 1.0, 1.0, ""], ["test_b", "failed", 0.0, 2.0, "off by 1"]],
           "ch03/mutant": [["test_a", "passed", 1.0, 1.0, ""]]}
    assert compare(old, old) == []
    new = {"ch03/solution": [["test_a", "passed", 1.0, 1.0, ""], ["test_b", "failed", 0.0, 2.0, "off by 2"]]}
    lines = compare(old, new)
    assert lines[0] == "ch03/mutant: only in the old snapshot"
    assert lines[1].startswith("ch03/solution test_b:")
    assert "off by 2" in lines[1]
    assert len(lines) == 2
