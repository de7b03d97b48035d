"""The one path from entries to files: the book, then grades.csv, the feedback pages and the plots.

`course grade DIR` (after grading) and `course gradebook SOURCE` (from results already there, or from nbgrader's
gradebook) both end here, so a class graded either way gets the same files:

    OUT/grades.csv                            one row per student and assignment (course/gradebook/table.py)
    OUT/not-on-roster.csv                     with a roster: the submissions whose id is not on it
    OUT/<student>/<assignment>.md, .html      the student's feedback (course/gradebook/feedback.py)
    OUT/class-<assignment>.png, .json         the class's scores and pass rates (plots.py, figures.py)

(<student> is the student's folder name under OUT, course/batch.py's `result_name`, beside the result JSON.)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from course.config import Course
from course.gradebook.book import Book, build_book
from course.gradebook.feedback import Redactor, write_feedback
from course.gradebook.figures import Figures, figures
from course.gradebook.overrides import FileOverride
from course.gradebook.plots import write_plot
from course.gradebook.records import MISSING, Entry
from course.gradebook.roster import RosterStudent
from course.gradebook.table import write_table

GRADES = "grades.csv"
NOT_ON_ROSTER = "not-on-roster.csv"


@dataclass
class Published:
    book: Book
    figures: list[Figures]
    feedback: int = 0  # students who got a feedback page
    plots: list[Path] = field(default_factory=list)


def publish(course: Course, entries: list[Entry], out: Path, *, assignments: list[str] | None = None,
            roster: list[RosterStudent] | None = None, overrides: list[FileOverride] = (), excel: bool = False,
            private: tuple[Path, ...] = (), notes: list[str] = ()) -> Published:
    """Build the book of `entries` and write every file; `private` are folders of the instructor's (e.g. the
    class folder) that no feedback page may name."""
    book = build_book(course, entries, assignments=assignments, roster=roster, overrides=overrides)
    book.notes += list(notes)
    columns = book.columns()
    write_table(out / GRADES, book.rows, columns, excel=excel)
    apart = out / NOT_ON_ROSTER
    if book.apart:
        write_table(apart, book.apart, columns, excel=excel)
    elif apart.is_file() and not apart.is_symlink():
        apart.unlink()  # from an earlier run: every submission is on the roster now
    redact = Redactor([course.root, Path(tempfile.gettempdir()), Path.home(),
                       *(path.resolve() for path in (out, *private)), *(p for p in (out, *private) if p.is_absolute())])
    done = Published(book, figures(book))
    for row in book.all_rows:
        if row.entry.report is not None or row.status == MISSING:
            title = course.assignment(row.assignment).title if row.assignment in _ids(course) else ""
            write_feedback(out, row, title, redact)
            done.feedback += 1
    for fig in done.figures:
        done.plots.append(write_plot(out, fig)[0])
    return done


def _ids(course: Course) -> set[str]:
    return {assignment.id for assignment in course.assignments}


def written(out: Path, done: Published) -> str:
    """The line that says where everything went."""
    parts = [str(out / GRADES)]
    if done.book.apart:
        parts.append(str(out / NOT_ON_ROSTER))
    if done.feedback:
        parts.append(f"feedback for {done.feedback} in {out}/<student>/<assignment>.html and .md")
    parts += [str(path) for path in done.plots]
    return "written: " + ", ".join(parts)
