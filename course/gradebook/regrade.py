"""Regrading a part of a class into the results already there: one student, or one test for everyone.

    course grade DIR --student ID     grade ID's submission again (whatever its fingerprint); the others keep
                                      their results as they are, without being looked at
    course grade DIR --test NAME      for the day the grader was wrong on one test: once the grader is fixed,
                                      grade every submission again and keep, of each, only NAME's new result;
                                      the other tests keep the points the students already saw
    (both together: one test of one student)

`--test` grades whole submissions (the grading core runs a grader's tests together, each submission in its own
worker), so it takes as long as grading the class; what it changes is only the named test (and its parametrized
cases, NAME[...]). A submission whose notebook changed since its last result, or that has no earlier result, gets
its whole new result instead: mixing two notebooks' results would grade neither. The merged result is written
with the new fingerprint, so a plain `course grade DIR` afterwards keeps it (use --force to grade everything from
scratch), and it carries a note, shown in the student's feedback, that the test was graded again.

A submission the run could not grade (Ctrl-C, a problem of the course's) keeps its earlier result.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from course.batch import BatchItem, BatchResult, grade_batch, result_path
from course.config import Course
from course.errors import UsageError
from course.reporters.json_report import write_json
from course.results import GradeReport
from course.safe_text import safe_text

REGRADED = "was graded again on"


def earlier_result(out: Path, item: BatchItem) -> tuple[dict, GradeReport] | None:
    """The result file of an earlier run (as it is: its fingerprint is not compared), or None."""
    try:
        data = json.loads(result_path(out, item).read_text(encoding="utf-8"))
        return data, GradeReport.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def choose(course: Course, items: list[BatchItem], student: str | None, test: str | None) -> list[BatchItem]:
    """The items to grade again; UsageError for a student or a test the class does not have."""
    targets = [item for item in items if student is None or item.student == student]
    if not targets:
        known = ", ".join(safe_text(item.student, 60, single_line=True) for item in items[:10])
        raise UsageError(f"--student {student!r}: no such submission in the class folder (its students include: "
                         f"{known}{', ...' if len(items) > 10 else ''})")
    if test is not None:
        from course.grading.runner import collect_points

        for assignment in dict.fromkeys(item.assignment for item in targets):
            names = collect_points(course, course.assignment(assignment))
            if not any(name == test or name.startswith(test + "[") for name in names):
                raise UsageError(f"--test {test!r}: not a test of {assignment} (its tests: {', '.join(names)})")
    return targets


def merge_test(old: GradeReport, new: GradeReport, test: str, today: dt.date | None = None) -> GradeReport:
    """`old` with the results of `test` (and its parametrized cases) taken from `new`."""
    today = today or dt.date.today()
    fresh = {t.name: t for t in new.tests if t.name == test or t.name.startswith(test + "[")}
    tests = [fresh.pop(t.name, t) for t in old.tests] + list(fresh.values())
    note = f"{test} {REGRADED} {today.isoformat()}; the other tests keep their earlier results."
    notes = [n for n in old.notes if not n.startswith(f"{test} {REGRADED}")] + [note]
    return GradeReport(old.assignment, tests, notebook=old.notebook, device=new.device, duration=old.duration,
                       notes=notes, sandbox=dict(new.sandbox), kind=old.kind)


def regrade(course: Course, items: list[BatchItem], targets: list[BatchItem], *, test: str | None, out: Path,
            jobs: int, device: str | None, isolation: str | None,
            on_result: Callable[[BatchResult], None] | None = None, dispatcher=None) -> tuple[list[BatchResult], bool]:
    """Grade `targets` again (see the module) and return every item's result, and whether the run was
    interrupted."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".regrade-", dir=out))  # hidden: never a student's folder
    try:
        fresh = {(r.item.student, r.item.assignment): r
                 for r in grade_batch(course, targets, jobs=jobs, out=scratch, force=True, device=device,
                                      isolation=isolation, on_result=on_result, dispatcher=dispatcher)}
        interrupted = any(result.report is None for result in fresh.values())
        results = []
        for item in items:
            earlier = earlier_result(out, item)
            new = fresh.get((item.student, item.assignment))
            if new is None or new.report is None or new.course_problem:
                if earlier is not None:
                    results.append(BatchResult(item, earlier[1], skipped=True))
                else:
                    results.append(new or BatchResult(item, None))
                continue
            data = json.loads(result_path(scratch, item).read_text(encoding="utf-8"))
            fingerprint = {key: value for key, value in data.items() if key not in new.report.to_dict()}
            report = new.report
            if (test is not None and earlier is not None
                    and earlier[0].get("notebook_sha256") == data.get("notebook_sha256")):
                report = merge_test(earlier[1], new.report, test)
            write_json(report, result_path(out, item), extra=fingerprint)
            results.append(BatchResult(item, report))
        return results, interrupted
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
