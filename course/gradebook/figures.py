"""The class in numbers, per assignment: the score distribution and each test's pass rate; and the summary
printed on the terminal. The plot (course/gradebook/plots.py) draws these same numbers and keeps them beside the
PNG as JSON, so what is drawn is what grades.csv holds:

- scores: the `score` column of every row of the assignment that has one (a missing student's 0 included, a
  submission not graded left out), in tenths of the maximum (the last tenth includes full marks);
- pass rate of a test: among the rows with a graded submission, the share whose column for the test holds the
  test's full points (overrides included).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from course.gradebook.book import Book
from course.gradebook.records import MISSING, Row
from course.gradebook.table import number
from course.safe_text import safe_text

BINS = 10


@dataclass
class TestFigure:
    name: str
    max_score: float
    full: int  # rows with the test's full points
    graded: int  # rows with a result for the test

    __test__ = False  # not a pytest test class

    @property
    def rate(self) -> float:
        return self.full / self.graded if self.graded else 0.0


@dataclass
class Figures:
    assignment: str
    max_score: float
    scores: list[float]
    counts: list[int]  # BINS tenths of max_score
    missing: int
    not_graded: int
    tests: list[TestFigure] = field(default_factory=list)
    late: int = 0
    penalty: float = 0.0
    unknown_time: int = 0
    overrides: int = 0

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.scores) if self.scores else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.scores) if self.scores else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["median"] = self.mean, self.median
        data["bins"] = bin_labels()
        for test, figure in zip(data["tests"], self.tests):
            test["rate"] = figure.rate
        return data


def bin_of(score: float, max_score: float) -> int:
    return min(int(BINS * score / max_score), BINS - 1) if max_score > 0 else 0


def bin_labels() -> list[str]:
    return [f"{10 * b}-{10 * b + 9 if b < BINS - 1 else 100}%" for b in range(BINS)]


def figures(book: Book, rows: list[Row] | None = None) -> list[Figures]:
    """One Figures per assignment of the book, from `rows` (default: the rows of grades.csv)."""
    rows = book.rows if rows is None else rows
    found = []
    for assignment, tests in book.tests.items():
        group = [row for row in rows if row.assignment == assignment]
        if not group:
            continue
        max_score = max((row.max_score or 0.0 for row in group), default=0.0)
        scores = sorted(row.score for row in group if row.score is not None)
        counts = [0] * BINS
        for score in scores:
            counts[bin_of(score, max_score)] += 1
        graded = [row for row in group if row.entry.report is not None]
        test_figures = [TestFigure(name, points, sum(1 for row in graded if row.tests.get(name) == points),
                                   sum(1 for row in graded if row.tests.get(name) is not None))
                        for name, points in tests.items()]
        found.append(Figures(
            assignment, max_score, scores, counts, missing=sum(row.status == MISSING for row in group),
            not_graded=sum(row.score is None for row in group), tests=test_figures,
            late=sum(bool(row.late.days) for row in group), penalty=sum(row.penalty for row in group),
            unknown_time=sum(row.late.deadline is not None and row.entry.report is not None
                             and row.entry.time.when is None for row in group),
            overrides=sum(len(row.applied) for row in group)))
    return found


def _bar(rate: float, width: int = 20) -> str:
    filled = round(rate * width)
    return "#" * filled + "." * (width - filled)


def render_summary(book: Book, all_figures: list[Figures], *, scores: bool = True) -> str:
    """The terminal summary: per assignment the scores (unless `scores` is False: the grading run printed them
    already and nothing changed them), the pass rate of each test, late work and overrides; then the roster."""
    lines = []
    for fig in all_figures:
        if scores and fig.scores:
            missing = f", {fig.missing} missing counted as 0" if fig.missing else ""
            lines.append(f"{fig.assignment}: {len(fig.scores)} grades{missing}: mean {fig.mean:.2f}/"
                         f"{number(fig.max_score)}, median {number(fig.median)}")
            lines.append("  distribution: " + "  ".join(f"{label}: {count}"
                                                        for label, count in zip(bin_labels(), fig.counts)))
        elif not scores:
            lines.append(f"{fig.assignment}:")
        lines.append("  pass rate per test (full points):")
        width = max((len(test.name) for test in fig.tests), default=4)
        for test in fig.tests:
            lines.append(f"    {test.name.ljust(width)}  {_bar(test.rate)}  {round(100 * test.rate):3d}% "
                         f"({test.full}/{test.graded})")
        if fig.late or fig.unknown_time:
            unknown = (f"; {fig.unknown_time} without a known submission time (not penalised)"
                       if fig.unknown_time else "")
            lines.append(f"  late: {fig.late} submission(s), {number(fig.penalty)} points of penalties{unknown}")
        if fig.overrides:
            lines.append(f"  overrides: {fig.overrides} applied (see the overrides column of grades.csv)")
        if fig.not_graded:
            lines.append(f"  not graded: {fig.not_graded}")
    if book.roster:
        missing = [row for row in book.rows if row.status == MISSING]
        if missing:
            lines.append(f"missing ({len(missing)}), on the roster without a submission (0 points):")
            lines += [f"  {_who(row)}: {row.assignment}" for row in missing[:50]]
            if len(missing) > 50:
                lines.append(f"  ... and {len(missing) - 50} more (status `missing` in grades.csv)")
        if book.apart:
            lines.append(f"not on the roster ({len(book.apart)}), in not-on-roster.csv (check the ids):")
            lines += [f"  {_who(row)}: {row.assignment} {number(row.score)}/{number(row.max_score)}"
                      for row in book.apart]
    lines += [f"note: {note}" for note in book.notes]
    return "\n".join(lines)


def _who(row: Row) -> str:
    who = safe_text(row.student, 100, single_line=True)
    return f"{who} ({row.entry.name})" if row.entry.name else who
