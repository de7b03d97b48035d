"""Where a class's grades come from, each made into the same entries (course/gradebook/records.py):

- `from_batch`: the results of `course grade DIR` in memory, as the class run returns them;
- `from_results`: the files `course grade DIR` wrote, OUT/<student>/<assignment>.json (each holds the student's
  id), read back without grading anything; with the class folder (`submissions`), also the submission times and
  the submissions that have no result yet ("not graded");
- `from_nbgrader`: nbgrader's gradebook (gradebook.db, through `nbgrader.api.Gradebook`): per test the points
  autograde gave (the course's graders, course/nbgrader_bridge.py), the message from the check cell's output
  in autograded/<student>/<assignment>/, the submission time nbgrader recorded, each student's extension,
  points set by hand in the formgrader (as overrides), and the gradebook's students (the roster, unless one is
  given).

The submission time of a `course grade` submission comes from its folder (course/gradebook/times.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

from course.batch import NOT_GRADED, BatchItem, BatchResult, discover
from course.config import Course
from course.errors import UsageError
from course.gradebook.book import grader_tests
from course.gradebook.records import Entry, Override
from course.gradebook.roster import RosterStudent
from course.gradebook.times import SubmissionTime, submission_time
from course.results import GradeReport, TestResult
from course.safe_text import safe_text

MAX_RESULT_BYTES = 8 * 2**20
NBGRADER_STATUSES = {"TestFailed": "failed", "TestError": "error", "TestTimeout": "timeout"}
FORMGRADER = "nbgrader's formgrader"


def item_time(item: BatchItem) -> SubmissionTime:
    """When the submission of a class item was handed in (its folder's timestamp.txt or git repository)."""
    try:
        top, relative = item.relative()
    except ValueError:  # a notebook outside the folder it was found in: nothing to read a time from
        return SubmissionTime(detail="the submission is not inside the class folder")
    folder = relative.parent if item.notebook.name.endswith(".ipynb") else relative
    return submission_time(top, folder)


def from_batch(results: list[BatchResult], *, times: bool = True) -> list[Entry]:
    return [Entry(result.item.student, result.item.assignment, result.report, result.status,
                  time=item_time(result.item) if times else SubmissionTime(source=""))
            for result in results]


# ------------------------------------------------------------------------------------------------------------
# course grade's result files


def from_results(course: Course, out: Path, assignments: list[str] | None = None,
                 submissions: Path | None = None) -> tuple[list[Entry], list[str]]:
    """The entries of the result files in `out`, and notes for the instructor (files left out)."""
    if not out.is_dir():
        raise UsageError(f"{out}: not a folder of results (course grade DIR --out {out} writes one)")
    ids = assignments or [a.id for a in course.assignments]
    items: dict[tuple[str, str], BatchItem] = {}
    if submissions is not None:
        found = discover(course, submissions, ids[0] if assignments and len(ids) == 1 else None, exclude=(out,))
        items = {(item.student, item.assignment): item for item in found.items if item.assignment in ids}
    notes: list[str] = []
    entries: list[Entry] = []
    with os.scandir(out) as listing:
        folders = sorted((e for e in listing if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)),
                         key=lambda e: e.name)
    for folder in folders:
        for assignment in ids:
            path = Path(folder.path) / f"{assignment}.json"
            loaded = _result_file(path, notes)
            if loaded is None:
                continue
            student, report = loaded
            item = items.pop((student, assignment), None)
            status = BatchResult(item or BatchItem(student, assignment, Path(report.notebook)), report).status
            if item is not None:
                time = item_time(item)
            elif submissions is not None:
                time = SubmissionTime(detail="not in the submissions folder any more")
            else:
                time = SubmissionTime(detail="no submissions folder given (--submissions DIR)")
            entries.append(Entry(student, assignment, report, status, time=time))
    for (student, assignment), item in items.items():
        entries.append(Entry(student, assignment, None, NOT_GRADED, time=item_time(item)))
    if not entries:
        raise UsageError(f"{out}: holds no results of {', '.join(ids)} (expected <student>/<assignment>.json, as "
                         "course grade DIR --out writes them)")
    entries.sort(key=lambda entry: (entry.student, entry.assignment))
    return entries, notes


def _result_file(path: Path, notes: list[str]) -> tuple[str, GradeReport] | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RESULT_BYTES:
        notes.append(f"{path}: not a result file, left out")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        report = GradeReport.from_dict(data)
        student = data.get("student", path.parent.name)
        if not isinstance(student, str):
            raise TypeError("student")
    except (OSError, ValueError, KeyError, TypeError):
        notes.append(f"{path}: not a result file of course grade, left out")
        return None
    return student, report


# ------------------------------------------------------------------------------------------------------------
# nbgrader's gradebook


def from_nbgrader(course: Course, root: Path, assignments: list[str] | None = None
                  ) -> tuple[list[Entry], list[RosterStudent], list[str], list[str]]:
    """(entries, the gradebook's students, the assignments read, notes) of nbgrader's course folder `root`."""
    database = root / "gradebook.db"
    if not database.is_file():
        raise UsageError(f"{database}: no nbgrader gradebook (run `nbgrader autograde ID` in the course folder "
                         "first, or name the folder that holds gradebook.db)")
    from nbgrader.api import Gradebook, MissingEntry

    notes: list[str] = []
    entries: list[Entry] = []
    with Gradebook(f"sqlite:///{database}") as gradebook:
        known = [assignment.name for assignment in gradebook.assignments]
        if assignments:
            for name in assignments:
                if name not in known:
                    raise UsageError(f"{database}: the gradebook has no assignment {name!r} (it has: "
                                     f"{', '.join(known) or 'none'})")
            wanted = list(assignments)
        else:
            wanted = [name for name in known if name in {a.id for a in course.assignments}]
            if not wanted:
                raise UsageError(f"{database}: none of the gradebook's assignments ({', '.join(known) or 'none'}) "
                                 "is in course.yml")
        students = sorted(gradebook.students, key=lambda student: student.id)
        roster = [RosterStudent(student.id, _name(student), safe_text(student.email or "", 200, single_line=True))
                  for student in students]
        for assignment in wanted:
            notes += _due_date_note(course, assignment, gradebook.find_assignment(assignment).duedate)
            for student in students:
                try:
                    submission = gradebook.find_submission(assignment, student.id)
                except MissingEntry:
                    continue
                entries.append(_nbgrader_entry(course, root, assignment, student, submission))
    return entries, roster, wanted, notes


def _name(student) -> str:
    return safe_text(" ".join(part for part in (student.first_name, student.last_name) if part), 200,
                     single_line=True)


def _utc(naive: dt.datetime | None) -> dt.datetime | None:
    """nbgrader stores times in UTC without a zone."""
    return None if naive is None else naive.replace(tzinfo=dt.UTC)


def _due_date_note(course: Course, assignment: str, duedate) -> list[str]:
    due = _utc(duedate)
    deadline = course.assignment(assignment).deadline if assignment in {a.id for a in course.assignments} else None
    if due is None or due == deadline:
        return []
    if deadline is None:
        return [f"{assignment}: nbgrader's due date {due.isoformat()} is not used; the deadline is course.yml's "
                f"`deadline`, which {assignment} does not have"]
    return [f"{assignment}: nbgrader's due date {due.isoformat()} differs from course.yml's deadline "
            f"{deadline.isoformat()}, which is the one used"]


def _nbgrader_entry(course: Course, root: Path, assignment: str, student, submission) -> Entry:
    order = list(grader_tests(course.grader_path(course.assignment(assignment))))
    position = {name: index for index, name in enumerate(order)}
    tests: list[TestResult] = []
    overrides: list[Override] = []
    graded = False
    for notebook in submission.notebooks:
        messages = _check_outputs(root, student.id, assignment, notebook.name)
        for grade in notebook.grades:
            auto = grade.auto_score
            graded = graded or auto is not None
            maximum = float(grade.max_score or 0.0)
            score = float(auto or 0.0)
            if messages is not None and grade.name in messages:
                kind, message = messages[grade.name]
                status = NBGRADER_STATUSES.get(kind, "error")
            elif auto is None:
                status, message = "error", "Not graded by nbgrader's autograde."
            else:
                status = "passed" if score >= maximum else "failed"
                message = "" if messages is not None or status == "passed" else \
                    "No message: nbgrader's autograded notebook of this submission is missing."
            tests.append(TestResult(grade.name, status, score, maximum, message))
            final = grade.score
            if (grade.manual_score is not None or grade.extra_credit) and final is not None and final != score:
                overrides.append(Override(student.id, assignment, grade.name, float(final),
                                          "set by hand in nbgrader's formgrader", FORMGRADER))
    tests.sort(key=lambda test: position.get(test.name, len(order)))
    time = SubmissionTime(_utc(submission.timestamp), "nbgrader gradebook") if submission.timestamp else None
    if time is None:
        time = submission_time(root / "submitted", Path(student.id) / assignment) if _plain(student.id) else \
            SubmissionTime(detail="an id that is not a folder name")
    entry = Entry(student.id, assignment, None, NOT_GRADED, time=time, name=_name(student),
                  email=safe_text(student.email or "", 200, single_line=True),
                  extension=submission.extension or dt.timedelta(0), overrides=overrides)
    if graded:
        entry.report = GradeReport(assignment, tests, notebook=course.assignment(assignment).notebook)
        entry.status = BatchResult(BatchItem(student.id, assignment, Path(entry.report.notebook)), entry.report).status
    return entry


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def _check_outputs(root: Path, student: str, assignment: str, notebook: str) -> dict[str, tuple[str, str]] | None:
    """{grade id: (error name, message)} of the check cells of nbgrader's autograded notebook (their outputs are
    written by the course, course/nbgrader_bridge.py); None when the notebook is not there."""
    from course.submission_files import SubmissionRefused, read_notebook_bytes

    if not all(_plain(part) for part in (student, assignment, notebook)):
        return None
    try:
        data = json.loads(read_notebook_bytes(root / "autograded", Path(student) / assignment / f"{notebook}.ipynb"))
    except (OSError, SubmissionRefused, ValueError):
        return None
    found: dict[str, tuple[str, str]] = {}
    for cell in data.get("cells", []) if isinstance(data, dict) else []:
        meta = cell.get("metadata", {}).get("nbgrader", {}) if isinstance(cell, dict) else {}
        if not (isinstance(meta, dict) and meta.get("grade") and not meta.get("solution")):
            continue
        for output in cell.get("outputs", []):
            if isinstance(output, dict) and output.get("output_type") == "error":
                found[str(meta.get("grade_id"))] = (str(output.get("ename", "")), str(output.get("evalue", "")))
                break
    return found
