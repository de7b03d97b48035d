"""The roster: the students who should have submitted, with their names and e-mails if it has them.

A roster is a CSV file whose first line names its columns:

    student,name,email
    s2024001,José García,jose.garcia@example.edu

`student` (or `student_id`, `id`) is required: the id exactly as the submissions name their folders and as the
LMS knows the student, so grades.csv joins with an LMS export. `name` (or `first_name` and `last_name`) and
`email` are optional. Ids are kept exactly as written; an id with spaces around it, with control characters, or
twice in the file is an error that names the line and the column, never silently changed.

Joined with the entries of a class (`join`): a student on the roster without a submission gets an entry of their
own, "missing", with 0 points; a submission whose id is not on the roster is kept apart (grades.csv holds the
roster, not-on-roster.csv the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from course.gradebook.csvfile import TableError, read_table
from course.gradebook.records import MISSING, Entry
from course.safe_text import safe_text

COLUMNS = ("student", "name", "first_name", "last_name", "email")
ALIASES = {"student_id": "student", "id": "student"}
MAX_ID = 200


@dataclass
class RosterStudent:
    student: str
    name: str = ""
    email: str = ""
    line: int = 0


def read_roster(path: Path) -> list[RosterStudent]:
    students: list[RosterStudent] = []
    seen: dict[str, int] = {}
    for row in read_table(path, kind="roster", columns=COLUMNS, required=("student",), aliases=ALIASES):
        cell = row["student"]
        student = cell.text
        if not student:
            raise TableError(f"{cell.where(path)}: an empty student id")
        if student != student.strip():
            raise TableError(f"{cell.where(path)}: the id {student!r} has spaces around it; ids are compared "
                             "exactly, so remove them")
        if safe_text(student, MAX_ID, single_line=True) != student:
            raise TableError(f"{cell.where(path)}: the id {safe_text(student, 60, single_line=True)!r} holds "
                             f"control characters or is longer than {MAX_ID} characters")
        if student in seen:
            raise TableError(f"{cell.where(path)}: the id {student!r} is also on line {seen[student]}")
        seen[student] = cell.line
        name = row["name"].text.strip() if "name" in row else ""
        if not name:
            name = " ".join(row[key].text.strip() for key in ("first_name", "last_name")
                            if key in row and row[key].text.strip())
        email = row["email"].text.strip() if "email" in row else ""
        students.append(RosterStudent(student, safe_text(name, 200, single_line=True),
                                      safe_text(email, 200, single_line=True), cell.line))
    return students


def join(entries: list[Entry], roster: list[RosterStudent], assignments: list[str]) -> tuple[list[Entry],
                                                                                               list[Entry]]:
    """(the roster's entries in the roster's order, one per assignment, "missing" where there is no submission;
    the entries of students not on the roster). Names and e-mails of the roster win over the source's."""
    by_key = {(entry.student, entry.assignment): entry for entry in entries}
    listed = []
    for person in roster:
        for assignment in assignments:
            entry = by_key.pop((person.student, assignment), None)
            if entry is None:
                entry = Entry(person.student, assignment, None, MISSING)
            entry.on_roster = True
            entry.name = person.name or entry.name
            entry.email = person.email or entry.email
            listed.append(entry)
    apart = [entry for entry in entries if (entry.student, entry.assignment) in by_key]
    for entry in apart:
        entry.on_roster = False
    return listed, apart
