"""`nbgrader export` with cells a spreadsheet shows as text: nbgrader's grades.csv, made safe to open.

nbgrader's own CSV exporter writes each value as it is, without CSV quoting: a student whose folder (their id) is
named `=HYPERLINK("http://...")` gets a row whose id cell a spreadsheet runs as a formula, and a comma or a
double quote in a name breaks the row. `SpreadsheetCsvExport` (configured in nbgrader_config.py as
`c.ExportApp.plugin_class`) writes the same file with the same columns, rows and values, but through Python's
csv module (proper quoting) and with every cell passed through `course.spreadsheet.spreadsheet_cell`, the rule
`course grade` applies to its grades.csv: a cell that could start a formula (or starts with a quote) gets one
single quote in front. The student's id, as nbgrader knows it, is the cell without that one leading quote
(`course.spreadsheet.spreadsheet_text`), which is how the file joins with a roster.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import CsvExportPlugin

from course.spreadsheet import spreadsheet_cell

# nbgrader's columns, in nbgrader's order, so that whatever reads nbgrader's grades.csv reads this one.
COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email", "raw_score",
           "late_submission_penalty", "score", "max_score"]


class SpreadsheetCsvExport(CsvExportPlugin):
    """nbgrader's CSV export (`nbgrader export [--to FILE] [--assignment ...] [--student ...]`), spreadsheet-safe."""

    def export(self, gradebook: Gradebook) -> None:
        destination = Path(self.to or "grades.csv")
        students = {str(student) for student in self.student}
        assignments = {str(assignment) for assignment in self.assignment}
        self.log.info("Exporting grades to %s", destination)
        if assignments:
            self.log.info("Exporting only assignments: %s", sorted(assignments))
        if students:
            self.log.info("Exporting only students: %s", sorted(students))
        temporary = destination.with_name(f".{destination.name}.tmp")
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for assignment in gradebook.assignments:
                if assignments and assignment.name not in assignments:
                    continue
                for student in gradebook.students:
                    if students and student.id not in students:
                        continue
                    row = _row(gradebook, assignment, student)
                    writer.writerow([spreadsheet_cell(_text(row[column])) for column in COLUMNS])
        os.replace(temporary, destination)


def _row(gradebook: Gradebook, assignment, student) -> dict:
    """nbgrader's values for one student and one assignment; a student who submitted nothing scores 0."""
    row = {"assignment": assignment.name, "duedate": assignment.duedate, "student_id": student.id,
           "last_name": student.last_name, "first_name": student.first_name, "email": student.email,
           "max_score": assignment.max_score}
    try:
        submission = gradebook.find_submission(assignment.name, student.id)
    except MissingEntry:
        row.update(timestamp=None, raw_score=0.0, late_submission_penalty=0.0, score=0.0)
    else:
        penalty = submission.late_submission_penalty
        row.update(timestamp=submission.timestamp, raw_score=submission.score, late_submission_penalty=penalty,
                   score=max(0.0, submission.score - penalty))
    return row


def _text(value) -> str:
    """A value as nbgrader writes it: None as an empty cell, anything else as str() gives it."""
    return "" if value is None else str(value)
