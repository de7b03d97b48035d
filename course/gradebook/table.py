"""grades.csv: one row per student and assignment, safe in a spreadsheet, joinable with the LMS.

Columns (COLUMNS, then one per grader test holding the points it counts):

    student        the id, exactly as the roster (or the submission's folder) has it
    name, email    from the roster or nbgrader's gradebook (empty otherwise)
    assignment
    score          the grade: the tests' points (with overrides), minus the late penalty; empty if not graded
    max_score
    status         complete, some failed / error / timeout, unreadable, refused, course error, missing, not graded
    auto_score     what the grader gave, before any override or penalty
    late_days      days (or parts of a day) after the deadline; 0 on time; empty without a deadline or a time
    late_penalty   the points the late policy took (after any override)
    overrides      each override: what it set, what it replaced, and why
    submitted_at   the submission time (UTC, ISO 8601)
    time_source    timestamp.txt, git commit, nbgrader gradebook, or none (and why)

Every cell goes through `course.spreadsheet.spreadsheet_cell`, the course's one rule against formulas (a cell
that could start one gets a single quote in front; an id is the cell without it). Control characters are shown
as escapes (course/safe_text.py).

Excel reads a CSV file in the computer's own code page unless the file starts with a UTF-8 byte-order mark: `José
García` shows as `JosÃ© GarcÃ­a`. With `excel=True` (`--excel`) the file starts with one, which Excel, LibreOffice,
Google Sheets, pandas and LMS imports (Canvas, Moodle) all accept; it is off by default, because a program that
reads the file as plain UTF-8 (Python's csv module with encoding="utf-8") then sees it in the first column's name.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

from course.gradebook.records import Row
from course.safe_text import safe_text
from course.spreadsheet import spreadsheet_cell

COLUMNS = ["student", "name", "email", "assignment", "score", "max_score", "status", "auto_score", "late_days",
           "late_penalty", "overrides", "submitted_at", "time_source"]


def number(value: float | None) -> str:
    """Points as written in the CSV and the feedback: 12, 12.5, 1.9 (no float noise); '' for None."""
    if value is None:
        return ""
    return f"{round(value, 4):g}"


def when(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe_overrides(row: Row) -> str:
    return "; ".join(f"{override.target} {number(old) or '-'} -> {number(override.points)} ({override.reason})"
                     for override, old in row.applied)


def cells(row: Row, tests: list[str]) -> list[str]:
    entry = row.entry
    late = row.late
    values = [
        safe_text(entry.student, 200, single_line=True), entry.name, entry.email, entry.assignment,
        number(row.score), number(row.max_score), entry.status, number(row.auto_score),
        "" if late.days is None else str(late.days),
        number(row.penalty) if (late.deadline is not None and entry.report is not None) or row.penalty else "",
        describe_overrides(row),
        when(entry.time.when) if entry.report is not None else "",
        entry.time.describe() if entry.report is not None else "",
        *(number(row.tests.get(name)) for name in tests),
    ]
    return [spreadsheet_cell(safe_text(value, 2000, single_line=True)) for value in values]


def write_table(path: Path, rows: list[Row], tests: list[str], *, excel: bool = False) -> None:
    """Write `rows` to `path` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="", encoding="utf-8-sig" if excel else "utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([spreadsheet_cell(name) for name in (*COLUMNS, *tests)])
        for row in rows:
            writer.writerow(cells(row, tests))
    os.replace(temporary, path)
