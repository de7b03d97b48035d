"""From entries to rows: the roster joined, the late policy and the overrides applied, each grade computed.

For one entry (course/gradebook/records.py):

    tests       the grader's points per test, with test overrides (nbgrader's formgrader first, then the file)
    total       their sum, or a `total` override                              (0 for a missing student)
    penalty     the late policy's percent of the assignment's points, at most `total`, or a `late_penalty` override
    score       total - penalty                                                 (None: not graded)

`auto_score` stays the grader's own total, so grades.csv and the feedback show both.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from course.config import Course
from course.errors import UsageError
from course.gradebook import late as late_rules
from course.gradebook.overrides import FileOverride
from course.gradebook.records import LATE_PENALTY, MISSING, TOTAL, Entry, Late, Override, Row
from course.gradebook.roster import RosterStudent, join
from course.results import describe_test


@dataclass
class Book:
    """Everything the writers need: the rows of grades.csv, the rows kept apart, the tests of each assignment."""

    rows: list[Row]
    apart: list[Row] = field(default_factory=list)  # submissions whose id is not on the roster
    tests: dict[str, dict[str, float]] = field(default_factory=dict)  # assignment -> {test: its points}, in order
    roster: bool = False
    notes: list[str] = field(default_factory=list)  # for the instructor (printed), e.g. nbgrader's other due date

    @property
    def all_rows(self) -> list[Row]:
        return self.rows + self.apart

    def columns(self) -> list[str]:
        """Every test's name, assignment by assignment, each once."""
        return list(dict.fromkeys(name for tests in self.tests.values() for name in tests))


def build_book(course: Course | None, entries: list[Entry], *, assignments: list[str] | None = None,
               roster: list[RosterStudent] | None = None, overrides: list[FileOverride] = ()) -> Book:
    """The rows of `entries` (of `assignments`: default, those the entries have). Without `course` (a CSV of
    results alone) there is no deadline, no descriptions and no points of an assignment nobody submitted."""
    assignments = assignments or list(dict.fromkeys(entry.assignment for entry in entries))
    tests = {assignment: _tests(course, assignment, entries) for assignment in assignments}
    if course is not None:
        for entry in entries:
            _describe(course, entry)
    if roster is not None:
        listed, apart = join(entries, roster, assignments)
    else:
        listed, apart = entries, []
    extra = _file_overrides(overrides, listed + apart, tests, assignments)
    rows = [_row(course, entry, tests.get(entry.assignment, {}), extra.get(id(entry), [])) for entry in listed]
    kept_apart = [_row(course, entry, tests.get(entry.assignment, {}), extra.get(id(entry), [])) for entry in apart]
    return Book(rows, kept_apart, tests, roster is not None)


def _tests(course: Course | None, assignment: str, entries: list[Entry]) -> dict[str, float]:
    """The assignment's tests and their points: the grader's order, then any name only a report has."""
    found: dict[str, float] = {}
    for entry in entries:
        if entry.assignment == assignment and entry.report is not None:
            for test in entry.report.tests:
                found.setdefault(test.name, test.max_score)
    order = list(grader_tests(course.grader_path(course.assignment(assignment)))) if _known(course, assignment) else []
    position = {name: index for index, name in enumerate(order)}
    names = sorted(found, key=lambda name: position.get(name.split("[")[0], len(order)))
    return {name: found[name] for name in names}


def _known(course: Course | None, assignment: str) -> bool:
    if course is None:
        return False
    try:
        course.assignment(assignment)
    except KeyError:
        return False
    return True


@cache
def grader_tests(grader: Path) -> dict[str, str]:
    """The test functions of a grader module, in order, with what each checks (the first paragraph of its
    docstring, results.describe_test): read from its source (a trusted file of the course), never imported."""
    try:
        tree = ast.parse(grader.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    tests = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
            tests[node.name] = describe_test(ast.get_docstring(node))
    return tests


def _describe(course: Course, entry: Entry) -> None:
    """Fill in what each test checks where the source did not keep it (JSON results, nbgrader)."""
    if entry.report is None or not _known(course, entry.assignment):
        return
    descriptions = grader_tests(course.grader_path(course.assignment(entry.assignment)))
    for test in entry.report.tests:
        if not test.description:
            test.description = descriptions.get(test.name.split("[")[0], "")


def _file_overrides(overrides, entries: list[Entry], tests: dict[str, dict[str, float]],
                    assignments: list[str]) -> dict[int, list[Override]]:
    """The overrides of the file, checked against the gradebook, by entry (its id())."""
    by_key = {(entry.student, entry.assignment): entry for entry in entries}
    found: dict[int, list[Override]] = {}
    for item in overrides:
        override = item.override
        if not override.assignment:
            if len(assignments) != 1:
                raise item.error("student", f"the gradebook holds {len(assignments)} assignments "
                                            f"({', '.join(assignments)}): add an `assignment` column")
            override.assignment = assignments[0]
        elif override.assignment not in assignments:
            raise item.error("assignment", f"{override.assignment!r} is not an assignment of this gradebook "
                                           f"({', '.join(assignments)})")
        entry = by_key.get((override.student, override.assignment))
        if entry is None:
            raise item.error("student", f"{override.student!r} has no submission of {override.assignment} and is "
                                        "not on the roster")
        target = override.target
        if target not in (TOTAL, LATE_PENALTY):
            if target not in tests.get(override.assignment, {}):
                names = ", ".join(tests.get(override.assignment, {})) or "none known"
                raise item.error("test", f"{target!r} is not a test of {override.assignment} (its tests: {names}; "
                                         f"or {TOTAL}, {LATE_PENALTY})")
            if entry.report is None:
                raise item.error("test", f"{override.student!r} has no graded submission of "
                                         f"{override.assignment}: set the {TOTAL} instead")
            most = tests[override.assignment][target]
            if override.points > most:
                raise item.error("points", f"{override.points:g} is more than the {most:g} points of {target}")
        found.setdefault(id(entry), []).append(override)
    return found


def _row(course: Course | None, entry: Entry, tests: dict[str, float], extra: list[Override]) -> Row:
    report = entry.report
    assignment = course.assignment(entry.assignment) if _known(course, entry.assignment) else None
    test_max = {test.name: test.max_score for test in report.tests} if report else dict(tests)
    if report is not None:
        max_score: float | None = report.max_score
    else:
        max_score = float(assignment.points) if assignment else (sum(tests.values()) if tests else None)
    points: dict[str, float | None] = {t.name: t.score for t in report.tests} if report else dict.fromkeys(tests)
    auto = report.score if report is not None else (0.0 if entry.status == MISSING else None)
    changes = [*entry.overrides, *extra]
    applied: list[tuple[Override, float | None]] = []
    for override in changes:
        if override.target in points:
            applied.append((override, points[override.target]))
            points[override.target] = override.points
    total = sum(p for p in points.values() if p is not None) if report is not None else auto
    for override in changes:
        if override.target == TOTAL:
            applied.append((override, total))
            total = override.points
    if assignment is not None and course is not None and report is not None:
        late = late_rules.assess(course.late_policy(assignment), assignment.deadline, entry.time, entry.extension)
    elif assignment is not None and course is not None and assignment.deadline is not None:
        late = Late(assignment.deadline, None, 0.0, late_rules.rule(course.late_policy(assignment)))
    else:
        late = Late(None, None, 0.0, "no deadline")
    penalty = min(total, late.percent * (max_score or 0.0) / 100) if total is not None else 0.0
    for override in changes:
        if override.target == LATE_PENALTY:
            applied.append((override, penalty))
            penalty = min(override.points, total) if total is not None else 0.0
    score = max(0.0, total - penalty) if total is not None else None
    return Row(entry, max_score, points, test_max, auto, total, late, penalty, score, applied)


def check_assignments(course: Course, assignments: list[str]) -> None:
    for assignment in assignments:
        if not _known(course, assignment):
            raise UsageError(f"unknown assignment {assignment!r} (course.yml has: "
                             f"{', '.join(a.id for a in course.assignments)})")
