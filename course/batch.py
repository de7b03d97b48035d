"""Grading a class: finding the submissions in a folder, grading them in parallel, writing the results.

    course grade DIR --jobs N [--assignment ID] [--out OUT] [--force]

A folder of submissions is laid out in one of three ways (the first that fits is used):

    DIR/submitted/<student>/<assignment>/<notebook>   nbgrader's layout (DIR may also be `submitted` itself)
    DIR/<student>/...                                 a folder per student (e.g. a clone of a student's repository)
    DIR/<student>.ipynb                               a notebook per student

Each submission is graded in its own sandboxed worker, exactly as `course grade NOTEBOOK` grades it: one that
crashes, hangs or attacks the grader costs its own tests and nothing else. N grading processes (`--jobs`) each
import torch once and keep a template worker that has imported torch too (course/worker/launchers.py), so a
submission costs a fork, not a start of Python. Results go to OUT/grades.csv (one row per submission, one column
per test) and OUT/<student>/<assignment>.json; a submission whose notebook and grader have not changed since its
JSON was written is not graded again unless `force`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from course.config import Assignment, Course
from course.errors import UsageError
from course.reporters.json_report import write_json
from course.results import GradeReport
from course.safe_text import safe_text
from course.submission import resolve_submission

NBGRADER_FOLDER = "submitted"


@dataclass
class BatchItem:
    student: str
    assignment: str
    notebook: Path  # a notebook, or a folder graded as one (every test then says what the folder holds)
    notes: list[str] = field(default_factory=list)  # what was guessed while finding it


# ------------------------------------------------------------------------------------------------------------
# Finding the submissions


def discover(course: Course, folder: Path, assignment_id: str | None = None) -> list[BatchItem]:
    """The submissions in `folder` (see the module's docstring), sorted by student; UsageError when there are
    none of the assignment (or of any assignment, without `assignment_id`)."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder of submissions")
    if assignment_id is not None:
        _assignment(course, assignment_id)
    nbgrader = folder / NBGRADER_FOLDER if (folder / NBGRADER_FOLDER).is_dir() else folder
    items = _nbgrader_layout(course, nbgrader, assignment_id)
    if not items:
        items = _per_student(course, folder, assignment_id)
    if not items:
        wanted = f"of {assignment_id} " if assignment_id else ""
        raise UsageError(f"{folder}: holds no submission {wanted}(expected {NBGRADER_FOLDER}/<student>/<assignment>/, "
                         "a folder per student, or a notebook per student)")
    return sorted(items, key=lambda item: (item.student, item.assignment))


def _assignment(course: Course, assignment_id: str) -> Assignment:
    try:
        return course.assignment(assignment_id)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


def _nbgrader_layout(course: Course, folder: Path, assignment_id: str | None) -> list[BatchItem]:
    ids = [assignment_id] if assignment_id else [a.id for a in course.assignments]
    items = []
    for student in _children(folder):
        for candidate in ids:
            if (student / candidate).is_dir():
                assignment, notebook = _resolve(course, student / candidate, candidate)
                items.append(BatchItem(student.name, assignment.id, notebook))
    return items


def _per_student(course: Course, folder: Path, assignment_id: str | None) -> list[BatchItem]:
    items = []
    for entry in _children(folder, notebooks=True):
        notes: list[str] = []
        try:
            assignment, notebook = resolve_submission(course, entry, assignment_id, notes)
        except UsageError:
            continue  # not a submission (e.g. an instructor's file beside them)
        student = entry.stem if entry.is_file() else entry.name
        items.append(BatchItem(student, assignment.id, notebook, notes))
    return items


def _resolve(course: Course, folder: Path, assignment_id: str):
    try:
        return resolve_submission(course, folder, assignment_id)
    except UsageError:
        return course.assignment(assignment_id), folder


def _children(folder: Path, notebooks: bool = False) -> list[Path]:
    entries = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_")) or entry.name in ("grades", "autograded", "feedback", "release"):
            continue
        if entry.is_dir() or (notebooks and entry.suffix == ".ipynb" and entry.is_file()):
            entries.append(entry)
    return entries


# ------------------------------------------------------------------------------------------------------------
# Grading


@dataclass
class BatchResult:
    item: BatchItem
    report: GradeReport
    skipped: bool = False  # the result of an earlier run, still valid


def grade_batch(course: Course, items: list[BatchItem], *, jobs: int = 1, out: Path | None = None,
                force: bool = False, device: str | None = None, isolation: str | None = None,
                on_result: Callable[[BatchResult], None] | None = None) -> list[BatchResult]:
    """Grade every item, `jobs` at a time; writes each result's JSON under `out` as soon as it is known (so an
    interrupted run keeps what it did) and reuses earlier JSON there unless `force`. Results are in item order."""
    results: dict[int, BatchResult] = {}
    todo = []
    for index, item in enumerate(items):
        earlier = None if force or out is None else _earlier_result(course, item, out)
        if earlier is not None:
            results[index] = BatchResult(item, earlier, skipped=True)
            if on_result:
                on_result(results[index])
        else:
            todo.append(index)

    def done(index: int, report: GradeReport) -> None:
        results[index] = BatchResult(items[index], report)
        if out is not None:
            write_json(report, result_path(out, items[index]), extra=_fingerprint(course, items[index]))
        if on_result:
            on_result(results[index])

    if jobs <= 1 or len(todo) <= 1:
        for index in todo:
            done(index, _grade_one(course, items[index], device, isolation))
    else:
        # Forked grading processes inherit this one's imports (torch included): each then keeps a template.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(_grade_in_lane, course, items[index], device, isolation): index for index in todo}
            for future in as_completed(futures):
                done(futures[future], GradeReport.from_dict(future.result()))
    return [results[index] for index in range(len(items))]


_LAUNCHERS: dict = {}  # in each grading process: (assignment, device, isolation) -> its template launcher


def launcher_for(course: Course, assignment: Assignment, device: str | None = None, isolation: str | None = None):
    """This process's template launcher for an assignment (made on first use, closed when the process ends)."""
    from multiprocessing import util

    from course.grading.runner import make_launcher, worker_spec

    key = (assignment.id, device, isolation)
    if key not in _LAUNCHERS:
        launcher = make_launcher(worker_spec(course, assignment, device, isolation))
        _LAUNCHERS[key] = launcher
        util.Finalize(launcher, launcher.close, exitpriority=10)  # run when the grading process ends
    return _LAUNCHERS[key]


def _grade_one(course: Course, item: BatchItem, device: str | None, isolation: str | None) -> GradeReport:
    from course.grading.runner import grade_notebook

    assignment = course.assignment(item.assignment)
    return grade_notebook(course, assignment, item.notebook, device=device, isolation=isolation, notes=item.notes,
                          launcher=launcher_for(course, assignment, device, isolation))


def _grade_in_lane(course: Course, item: BatchItem, device: str | None, isolation: str | None) -> dict:
    """In a grading process: grade one item; the report travels back as plain data."""
    return _grade_one(course, item, device, isolation).to_dict(descriptions=True)


def close_launchers() -> None:
    """Stop the templates this process keeps (grading in this process, e.g. with one job)."""
    while _LAUNCHERS:
        _LAUNCHERS.popitem()[1].close()


# ------------------------------------------------------------------------------------------------------------
# Results


def result_path(out: Path, item: BatchItem) -> Path:
    return out / _file_name(item.student) / f"{item.assignment}.json"


def _file_name(student: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in safe_text(student, 100, single_line=True))
    return name.lstrip(".") or "student"


def _fingerprint(course: Course, item: BatchItem) -> dict:
    """What a result depends on: the notebook's bytes and the grader's (and course.yml's, for points/limits)."""
    def digest(paths: Iterable[Path]) -> str:
        sha = hashlib.sha256()
        for path in paths:
            sha.update(path.read_bytes() if path.is_file() else str(path).encode())
        return sha.hexdigest()

    assignment = course.assignment(item.assignment)
    return {"student": item.student, "notebook_sha256": digest([item.notebook]),
            "grader_sha256": digest([course.grader_path(assignment), course.root / "course.yml"])}


def _earlier_result(course: Course, item: BatchItem, out: Path) -> GradeReport | None:
    path = result_path(out, item)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if {k: data.get(k) for k in ("student", "notebook_sha256", "grader_sha256")} != _fingerprint(course, item):
            return None
        return GradeReport.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_csv(path: Path, results: list[BatchResult]) -> None:
    """One row per submission: student, assignment, score, max, status, then the points of every test."""
    tests = list(dict.fromkeys(t.name for r in results for t in r.report.tests))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "assignment", "score", "max_score", "status", *tests])
        for result in results:
            report = result.report
            points = {t.name: f"{t.score:g}" for t in report.tests}
            writer.writerow([_csv_safe(result.item.student), report.assignment, f"{report.score:g}",
                             f"{report.max_score:g}", _status(report), *(points.get(name, "") for name in tests)])
    os.replace(temporary, path)


def _csv_safe(text: str) -> str:
    """A student's folder name as a cell a spreadsheet will not run as a formula."""
    text = safe_text(text, 200, single_line=True)
    return "'" + text if text.startswith(("=", "+", "-", "@")) else text


def _status(report: GradeReport) -> str:
    """complete: every test ran; unreadable: the notebook could not be read; else the worst test status."""
    if report.tests and all(t.message.startswith("Your notebook could not be graded") for t in report.tests):
        return "unreadable"
    statuses = {t.status for t in report.tests}
    for status in ("timeout", "error", "failed"):
        if status in statuses:
            return f"some {status}"
    return "complete"


def summary(results: list[BatchResult]) -> str:
    """Mean, distribution and the tests failed most often, for the end of a batch run."""
    if not results:
        return "no submissions"
    lines = []
    by_assignment: dict[str, list[BatchResult]] = {}
    for result in results:
        by_assignment.setdefault(result.report.assignment, []).append(result)
    for assignment, group in by_assignment.items():
        maximum = group[0].report.max_score or 1
        scores = [r.report.score for r in group]
        lines.append(f"{assignment}: {len(group)} submissions, mean {statistics.mean(scores):.2f}/{maximum:g} "
                     f"(median {statistics.median(scores):g}, full marks {sum(s == maximum for s in scores)}, "
                     f"zero {sum(s == 0 for s in scores)}); "
                     f"{sum(r.skipped for r in group)} unchanged since the last run")
        buckets = Counter(min(int(10 * s / maximum), 9) for s in scores)
        bars = "  ".join(f"{10 * b}-{10 * b + 9 if b < 9 else 100}%: {buckets.get(b, 0)}" for b in range(10))
        lines.append(f"  distribution: {bars}")
        failed = Counter(t.name for r in group for t in r.report.tests if t.status != "passed")
        if failed:
            worst = ", ".join(f"{name} ({count})" for name, count in failed.most_common(3))
            lines.append(f"  failed most often: {worst}")
    return "\n".join(lines)


def stderr_progress(total: int):
    """A tqdm progress bar on the terminal (stderr)."""
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="submission", dynamic_ncols=True)
