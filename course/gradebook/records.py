"""The gradebook's data: one `Entry` per student and assignment, whatever graded it; one `Row` once computed.

Both ways of grading a class become the same entries (course/gradebook/sources.py): `course grade DIR`'s results
(in memory, or its OUT/<student>/<assignment>.json files) and nbgrader's gradebook. From there everything is
one path: the roster is joined (roster.py), the late policy applied (late.py), the overrides applied
(overrides.py), giving one `Row` each (book.py), which every writer renders: grades.csv (table.py), the
feedback pages (feedback.py), the figures and plots (figures.py, plots.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from course.gradebook.times import SubmissionTime
from course.results import GradeReport

MISSING = "missing"  # on the roster, no submission: 0 points
TOTAL = "total"  # an override of the points before the late penalty
LATE_PENALTY = "late_penalty"  # an override of the late penalty (0 waives it)


@dataclass
class Override:
    """Points set by hand: a test's points, the total before the late penalty, or the late penalty."""

    student: str
    assignment: str
    target: str  # a test's name, TOTAL or LATE_PENALTY
    points: float
    reason: str
    origin: str  # where it was set: "overrides.csv, line 4", "nbgrader's formgrader"


@dataclass
class Entry:
    """One student's submission of one assignment, or its absence, as a source gives it."""

    student: str  # the id, exactly as the source (or the roster) has it
    assignment: str
    report: GradeReport | None  # the automatic result; None: missing, or not graded
    status: str  # complete, some failed, some error, some timeout, unreadable, refused, course error, not graded,
    # missing
    time: SubmissionTime = field(default_factory=SubmissionTime)
    name: str = ""
    email: str = ""
    extension: dt.timedelta = dt.timedelta(0)  # more time than the deadline (nbgrader's per-student extension)
    overrides: list[Override] = field(default_factory=list)  # set in the source itself (nbgrader's formgrader)
    on_roster: bool | None = None  # None: there is no roster


@dataclass
class Late:
    """What the late policy says about one entry."""

    deadline: dt.datetime | None  # the student's deadline (with any extension); None: the assignment has none
    days: int | None  # days (or parts of a day) after the deadline; None: no deadline or no known time
    percent: float  # the penalty in percent of the points, as the policy says (before any override)
    rule: str  # the policy in words
    note: str = ""  # e.g. "submitted within the grace period", "no submission time known: not penalised"


@dataclass
class Row:
    """An entry with its grade computed: what grades.csv and the feedback show."""

    entry: Entry
    max_score: float | None  # None: not graded, and the assignment's points are unknown (a CSV of results alone)
    tests: dict[str, float | None]  # the points counted per test (overrides included); None: no result
    test_max: dict[str, float]
    auto_score: float | None  # the grader's total; None when nothing was graded
    total: float | None  # before the late penalty (overrides included)
    late: Late
    penalty: float  # points taken for lateness (after any override)
    score: float | None  # the grade; None: not graded
    applied: list[tuple[Override, float | None]] = field(default_factory=list)  # each override and what it replaced

    @property
    def student(self) -> str:
        return self.entry.student

    @property
    def assignment(self) -> str:
        return self.entry.assignment

    @property
    def status(self) -> str:
        return self.entry.status
