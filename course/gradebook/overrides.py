"""Points set by hand after grading: the overrides file.

A CSV file whose first line names its columns:

    student,test,points,reason
    s2024001,test_mha_output,3,"the grader was wrong on a correct einsum variant (issue 31)"
    s2024002,total,12,"graded by hand: the notebook was sent by e-mail"
    s2024003,late_penalty,0,"medical certificate: no late penalty"

- `test` is a test of the assignment (its points become `points`, between 0 and the test's points), `total` (the
  points before the late penalty become `points`), or `late_penalty` (the penalty becomes `points`; 0 waives it);
- `reason` is required: the student reads it in their feedback, next to the automatic result it replaces;
- `assignment` is an optional column, required when the gradebook holds several assignments.

Applied after grading, in the file's order, after any points set in nbgrader's formgrader; the automatic score
stays in grades.csv (`auto_score`) and in the feedback. An id, test or assignment the gradebook does not have,
points out of range, or the same student and test twice is an error naming the file, line and column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from course.gradebook.csvfile import Cell, TableError, read_table
from course.gradebook.records import LATE_PENALTY, TOTAL, Override
from course.safe_text import safe_text

COLUMNS = ("student", "assignment", "test", "points", "reason")
ALIASES = {"student_id": "student", "id": "student"}


@dataclass
class FileOverride:
    """An override as read, with its cells (for messages once it is checked against the gradebook)."""

    override: Override
    cells: dict[str, Cell]
    path: Path

    def error(self, column: str, message: str) -> TableError:
        return TableError(f"{self.cells[column].where(self.path)}: {message}")


def read_overrides(path: Path) -> list[FileOverride]:
    found: list[FileOverride] = []
    seen: dict[tuple[str, str, str], int] = {}
    for row in read_table(path, kind="overrides file", columns=COLUMNS,
                          required=("student", "test", "points", "reason"), aliases=ALIASES):
        for column in ("student", "test", "points", "reason"):
            if not row[column].text.strip():
                raise TableError(f"{row[column].where(path)}: empty" + (
                    " (say why: the student reads it in the feedback)" if column == "reason" else ""))
        student = row["student"].text
        if student != student.strip():
            raise TableError(f"{row['student'].where(path)}: the id {student!r} has spaces around it; ids are "
                             "compared exactly, so remove them")
        text = row["points"].text.strip()
        try:
            points = float(text)
        except ValueError:
            hint = " (write a decimal point, not a comma)" if "," in text else ""
            raise TableError(f"{row['points'].where(path)}: {safe_text(text, 40, single_line=True)!r} is not a "
                             f"number{hint}") from None
        if not math.isfinite(points) or points < 0:
            raise TableError(f"{row['points'].where(path)}: points must be a number of at least 0, not {text!r}")
        assignment = row["assignment"].text.strip() if "assignment" in row else ""
        target = row["test"].text.strip()
        key = (student, assignment, target)
        if key in seen:
            raise TableError(f"{row['test'].where(path)}: {target} of {student!r} is also set on line {seen[key]}")
        seen[key] = row["student"].line
        override = Override(student, assignment, target, points,
                            safe_text(row["reason"].text.strip(), 1000, single_line=True),
                            f"{path.name}, line {row['student'].line}")
        found.append(FileOverride(override, row, path))
    return found


def is_special(target: str) -> bool:
    return target in (TOTAL, LATE_PENALTY)
