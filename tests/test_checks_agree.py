"""The public checks point at the bug the hidden grader finds.

Every mutant of the catalogue is checked with `course check`'s own code (run_checks: the notebook loaded in the
sandboxed worker, every public check run there). A mutant is caught when a public check fails (or errs) for a
hidden test that the mutant breaks: the student then sees, before the deadline, which test to work on. The
hidden tests a mutant breaks are its catalogue `breaks`, which tests/test_graders_catalog.py proves by grading.

At least 90% of each assignment's mutants must be caught; docs/fairness.md gives the figures and the misses.
The notebooks of one assignment share one template worker launcher, and two assignments run at a time.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from course.checking import CheckTarget, check_worker_spec, run_checks
from course.config import load_course
from course.grading.session import make_launcher
from tests.conftest import REPO
from tests.submissions.catalog import MUTANTS
from tests.submissions.snapshot import catalogue_items

ASSIGNMENTS = [a.id for a in load_course(REPO).assignments]
AGREEMENT = 0.9


def public_failures(course, assignment_id: str, folder) -> dict[str, set[str]]:
    """Each mutant of the assignment -> those of the public checks of the hidden tests it breaks that do not pass."""
    target = CheckTarget.from_course(course, course.assignment(assignment_id))
    target.tests = target.resolve_tests()
    mutants = {m.name: m for m in MUTANTS if m.assignment == assignment_id}
    items = [item for item in catalogue_items(course, folder / assignment_id, [assignment_id])
             if item.student in mutants]
    launcher = make_launcher(check_worker_spec(target))
    try:  # only the checks of the hidden tests each mutant breaks: the others cannot catch it
        return {item.student: {t.name for t in run_checks(target, item.notebook, launcher=launcher,
                                                          only=mutants[item.student].breaks).tests
                               if t.status != "passed"} for item in items}
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def checked(course, tmp_path_factory):
    """{assignment: {mutant: failing public checks}} for every assignment."""
    folder = tmp_path_factory.mktemp("checked")
    with ThreadPoolExecutor(2) as pool:
        found = pool.map(lambda assignment_id: public_failures(course, assignment_id, folder), ASSIGNMENTS)
        return dict(zip(ASSIGNMENTS, found))


def missed(checked, assignment_id: str) -> list[str]:
    return sorted(m.name for m in MUTANTS if m.assignment == assignment_id
                  and not checked[assignment_id][m.name] & m.breaks)


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_the_public_checks_catch_most_mutants(checked, assignment_id):
    count = len(checked[assignment_id])
    misses = missed(checked, assignment_id)
    # sys.__stdout__: printed through sys.stdout, the figures did not show, even with -s, once the checks had run.
    print(f"{assignment_id}: {count - len(misses)}/{count} mutants caught by a public check", misses or "",
          file=sys.__stdout__)
    assert count > 0
    assert (count - len(misses)) / count >= AGREEMENT, (f"{count - len(misses)}/{count} caught", misses)
