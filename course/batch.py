"""Grading a class: finding the submissions in a folder, grading them in parallel, writing the results.

    course grade DIR --jobs N [--assignment ID] [--out OUT] [--force]

A folder of submissions is laid out in one of three ways (the first that fits is used):

    DIR/submitted/<student>/<assignment>/<notebook>   nbgrader's layout (DIR may also be `submitted` itself)
    DIR/<student>/...                                 a folder per student (e.g. a clone of a student's repository)
    DIR/<student>.ipynb                               a notebook per student

What an instructor can rely on:

- A submission is the regular files inside its own folder (course/submission_files.py): a folder or notebook
  that is a symbolic link, a hard link, a fifo or a device is refused with a message (every test 0), a folder
  with several notebooks is refused naming them, and entries that are not submissions are listed with the reason.
- Each submission is graded in its own sandboxed worker from a private copy of its notebook's bytes, exactly as
  `course grade NOTEBOOK` grades it. N grading processes ("lanes", `--jobs`) each import torch once and keep a
  template worker that has imported torch too (course/worker/launchers.py), so a submission costs a fork.
- Whatever a submission does, the run completes: a grading problem of the course's own is reported on that
  submission (and it is graded again next time), never raised; every other result and grades.csv are written.
- The first Ctrl-C stops taking submissions, ends the lanes (and their sandboxes) at once, and the results so
  far are written, the rest marked "not graded"; a lane dies with the process that started it.
- Results go to OUT/grades.csv and OUT/<student>/<assignment>.json (names that never collide, see
  `result_path`); a submission is graded again only when something that can change its grade has changed
  (its notebook, or the course: course/fingerprint.py), or with `force`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from course.config import Assignment, Course
from course.errors import UsageError
from course.reporters.json_report import write_json
from course.results import GradeReport, TestResult
from course.safe_text import safe_text
from course.submission import resolve_submission
from course.submission_files import SubmissionRefused, inspect_entry, read_notebook_bytes

NBGRADER_FOLDER = "submitted"
# How often the lanes may all be restarted after one of them died (a bug of the course, or the machine's OOM
# killer): the submissions still waiting are then reported as not graded instead of retried forever.
MAX_LANE_RESTARTS = 2
NOT_GRADED = "not graded"


@dataclass
class BatchItem:
    student: str
    assignment: str
    notebook: Path  # the notebook to grade (read without following links below `top`)
    notes: list[str] = field(default_factory=list)  # what was guessed while finding it
    problem: str | None = None  # why the submission is refused without running it (every test then scores 0)
    top: Path | None = None  # the folder the notebook is read from: no link below it is followed (default: its own)

    def relative(self) -> tuple[Path, Path]:
        top = self.top or self.notebook.parent
        return top, self.notebook.relative_to(top)


@dataclass
class Skipped:
    """An entry of the class folder that is not graded, and why."""

    name: str
    reason: str


@dataclass
class ClassFolder:
    items: list[BatchItem]
    skipped: list[Skipped] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------------
# Finding the submissions


def discover(course: Course, folder: Path, assignment_id: str | None = None,
             exclude: tuple[Path, ...] = ()) -> ClassFolder:
    """The submissions in `folder` (see the module's docstring), sorted by student, and the entries skipped
    (`exclude`: folders of ours, such as the results folder, that may lie inside it). UsageError when there are
    none of the assignment (or of any assignment, without `assignment_id`)."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder of submissions")
    if assignment_id is not None:
        _assignment(course, assignment_id)
    excluded = {path.resolve() for path in exclude}
    nbgrader = folder / NBGRADER_FOLDER
    if nbgrader.is_dir() and not nbgrader.is_symlink():
        found = _nbgrader_layout(course, nbgrader, assignment_id, excluded)
    else:
        found = _nbgrader_layout(course, folder, assignment_id, excluded)
        if not found.items:
            found = _per_student(course, folder, assignment_id, excluded)
    if not found.items:
        wanted = f"of {assignment_id} " if assignment_id else ""
        skipped = "".join(f"\n  {s.name}: {s.reason}" for s in found.skipped[:20])
        raise UsageError(f"{folder}: holds no submission {wanted}(expected {NBGRADER_FOLDER}/<student>/<assignment>/, "
                         f"a folder per student, or a notebook per student){skipped}")
    _check_unique(found.items)
    found.items.sort(key=lambda item: (item.student, item.assignment))
    return found


def _assignment(course: Course, assignment_id: str) -> Assignment:
    try:
        return course.assignment(assignment_id)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


def _entries(folder: Path, excluded: set[Path], skipped: list[Skipped]) -> list[os.DirEntry]:
    """The entries of a folder, sorted, without hidden ones (.git, .ipynb_checkpoints) and our own folders."""
    entries = []
    with os.scandir(folder) as listing:
        for entry in sorted(listing, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue  # hidden: a repository's .git, Jupyter's checkpoints
            if Path(entry.path).resolve() in excluded:
                skipped.append(Skipped(entry.name, "the results folder of this run"))
                continue
            entries.append(entry)
    return entries


def _nbgrader_layout(course: Course, folder: Path, assignment_id: str | None, excluded: set[Path]) -> ClassFolder:
    ids = [assignment_id] if assignment_id else [a.id for a in course.assignments]
    found = ClassFolder([])
    for student in _entries(folder, excluded, found.skipped):
        path = Path(student.path)
        submissions = [path / candidate for candidate in ids if os.path.lexists(path / candidate)]
        if not student.is_dir():  # (a link to a folder counts as a folder here, and is refused below)
            found.skipped.append(Skipped(student.name, "not a student's folder"))
            continue
        if not submissions:
            found.skipped.append(Skipped(student.name, f"holds no folder named {' or '.join(ids)}"))
            continue
        for submission in submissions:
            # A link anywhere (the student's folder, the submission's, the notebook) refuses the submission.
            problem = inspect_entry(path, want_folder=True) or inspect_entry(submission, want_folder=True)
            notebook, problem = (submission, problem) if problem else _one_notebook(course, submission)
            found.items.append(BatchItem(student.name, submission.name, notebook, problem=problem, top=folder))
    return found


def _per_student(course: Course, folder: Path, assignment_id: str | None, excluded: set[Path]) -> ClassFolder:
    found = ClassFolder([])
    for entry in _entries(folder, excluded, found.skipped):
        path = Path(entry.path)
        is_folder = entry.is_dir(follow_symlinks=False)
        # A link is a candidate (to be refused) where it poses as a student's folder or notebook.
        if not (is_folder or entry.name.endswith(".ipynb") or (entry.is_symlink() and entry.is_dir())):
            found.skipped.append(Skipped(entry.name, "not a folder or a notebook"))
            continue
        student = entry.name if is_folder else entry.name.removesuffix(".ipynb")
        problem = inspect_entry(path, want_folder=is_folder)
        notebooks = [path]
        if problem is None and is_folder:
            notebooks = _notebooks(path)
            if not notebooks:
                found.skipped.append(Skipped(entry.name, "holds no notebook"))
                continue
            problem = _several(path, notebooks) if len(notebooks) > 1 else inspect_entry(notebooks[0],
                                                                                           want_folder=False)
        if problem is not None:
            if assignment_id is None:
                found.skipped.append(Skipped(entry.name, f"refused, and its assignment is unknown: {problem} (with "
                                                         "--assignment ID it gets a row of its own in grades.csv)"))
            else:
                found.items.append(BatchItem(student, assignment_id, path, problem=problem, top=folder))
            continue
        notes: list[str] = []
        try:
            assignment, notebook = resolve_submission(course, notebooks[0], assignment_id, notes)
        except UsageError as exc:
            found.skipped.append(Skipped(entry.name, str(exc).removeprefix(f"{notebooks[0]}: ")))
            continue
        found.items.append(BatchItem(student, assignment.id, notebook, notes, top=folder))
    return found


def _notebooks(folder: Path) -> list[Path]:
    """The notebooks at the top of a submission's folder (links included: they are refused, not skipped)."""
    with os.scandir(folder) as listing:
        return sorted(Path(e.path) for e in listing if e.name.endswith(".ipynb") and not e.name.startswith("."))


def _several(folder: Path, notebooks: list[Path]) -> str:
    names = ", ".join(n.name for n in notebooks)
    return (f"{folder.name} holds {len(notebooks)} notebooks ({names}): a submission holds exactly one, so none "
            "was graded. Delete or move the others and submit again.")


def _one_notebook(course: Course, folder: Path) -> tuple[Path, str | None]:
    """The notebook of an nbgrader submission folder (named after its assignment), or the folder and why it is
    refused."""
    notebooks = _notebooks(folder)
    if not notebooks:
        expected = course.assignment(folder.name).notebook
        return folder, f"{folder.name} holds no notebook, so there was nothing to grade (expected {expected})"
    if len(notebooks) > 1:
        return folder, _several(folder, notebooks)
    return notebooks[0], inspect_entry(notebooks[0], want_folder=False)


def _check_unique(items: list[BatchItem]) -> None:
    seen: dict[tuple[str, str], BatchItem] = {}
    for item in items:
        key = (item.student, item.assignment)
        if key in seen:
            raise UsageError(f"{seen[key].notebook} and {item.notebook} are both {item.student}'s submission of "
                             f"{item.assignment}: keep one")
        seen[key] = item


# ------------------------------------------------------------------------------------------------------------
# Grading


@dataclass
class BatchResult:
    item: BatchItem
    report: GradeReport | None  # None: not graded (the run was interrupted before it)
    skipped: bool = False  # the result of an earlier run, still valid
    course_problem: bool = False  # the course could not grade it (its fault, not the student's): graded next time

    @property
    def status(self) -> str:
        if self.report is None:
            return NOT_GRADED
        if self.item.problem is not None or any(n.startswith("Refused:") for n in self.report.notes):
            return "refused"
        if self.course_problem:
            return "course error"
        return _status(self.report)


class Dispatcher(Protocol):
    """Where the submissions of a class are graded: `LocalLanes` (this machine), or a cluster (course/cluster.py).

    `run` grades each (index, fingerprint) of `todo` with `grade_submission` on `items[index]` and calls
    `done(index, fingerprint, outcome)` with what it returned, in this process, as results come in. It returns
    when all are done, or at a KeyboardInterrupt, which it catches after stopping everything it started."""

    def run(self, course: Course, items: list[BatchItem], todo: list[tuple[int, dict]], device: str | None,
            isolation: str | None, done: Callable[[int, dict, dict], None]) -> None: ...


def grade_batch(course: Course, items: list[BatchItem], *, jobs: int = 1, out: Path | None = None,
                force: bool = False, device: str | None = None, isolation: str | None = None,
                on_result: Callable[[BatchResult], None] | None = None,
                dispatcher: Dispatcher | None = None) -> list[BatchResult]:
    """Grade every item, `jobs` at a time, each lane a forked process (or with another `dispatcher`); writes
    each result's JSON under `out` as soon as it is known and reuses earlier JSON there unless `force`. Results
    are in item order; on Ctrl-C the ones not graded have `report` None (see the module's docstring)."""
    from course.fingerprint import course_parts
    from course.grading.runner import worker_spec  # torch and pytest, imported once here: the lanes inherit them

    results: dict[int, BatchResult] = {}
    parts = {}
    if items:
        spec = worker_spec(course, course.assignment(items[0].assignment), device, isolation)
        parts = course_parts(course, spec.device, spec.sandbox.isolation)

    def record(index: int, result: BatchResult) -> None:
        results[index] = result
        if on_result:
            on_result(result)

    todo = []
    for index, item in enumerate(items):
        fingerprint = _fingerprint(item, parts)
        earlier = None if force or out is None else _earlier_result(out, item, fingerprint)
        if earlier is not None:
            record(index, BatchResult(item, earlier, skipped=True))
        else:
            todo.append((index, fingerprint))

    def done(index: int, fingerprint: dict, outcome: dict) -> None:
        item = items[index]
        report = GradeReport.from_dict(outcome["report"])
        course_problem = bool(outcome.get("course_problem"))
        if out is not None and not course_problem:
            write_json(report, result_path(out, item), extra=fingerprint)
        record(index, BatchResult(item, report, course_problem=course_problem))

    with _Interrupts() as interrupts:
        def done_unless_interrupted(index: int, fingerprint: dict, outcome: dict) -> None:
            with interrupts.deferred():  # a Ctrl-C waits until the result file is whole
                done(index, fingerprint, outcome)

        (dispatcher or LocalLanes(jobs)).run(course, items, todo, device, isolation, done_unless_interrupted)
    return [results.get(index) or BatchResult(items[index], None) for index in range(len(items))]


class LocalLanes:
    """`jobs` grading processes ("lanes") forked from this one, each keeping its template worker."""

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, jobs)

    def run(self, course, items, todo, device, isolation, done) -> None:
        run_folder = Path(tempfile.mkdtemp(prefix="course-class-"))
        try:
            _run_lanes(course, items, todo, self.jobs, device, isolation, run_folder, done)
        finally:
            _remove(run_folder)


def _run_lanes(course, items, todo, jobs, device, isolation, run_folder, done) -> None:
    """Send the submissions to `jobs` lanes, a few at a time (so that a Ctrl-C leaves little queued); restart the
    lanes if one dies. Returns when all are graded, or at the first Ctrl-C."""
    waiting = list(todo)
    restarts = 0
    context = multiprocessing.get_context("fork")
    while waiting:
        lost: list[tuple[int, dict]] = []
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(waiting)), mp_context=context,
                                   initializer=_lane_started, initargs=(os.getpid(), str(run_folder)))
        running: dict[Future, tuple[int, dict]] = {}
        try:
            while waiting or running:
                while waiting and len(running) < 2 * jobs:
                    index, fingerprint = waiting.pop(0)
                    running[pool.submit(grade_submission, course, items[index], read_submission(items[index]),
                                        device, isolation, str(run_folder / f"copy-{index}"))] = (index, fingerprint)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    index, fingerprint = running.pop(future)
                    try:
                        outcome = future.result()
                    except Exception:  # noqa: BLE001 - a lane died (BrokenProcessPool): graded again below
                        lost.append((index, fingerprint))
                        continue
                    done(index, fingerprint, outcome)
        except KeyboardInterrupt:
            _stop_lanes(pool)
            return
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if lost:
            restarts += 1
            if restarts > MAX_LANE_RESTARTS:
                for index, fingerprint in lost:
                    done(index, fingerprint, course_problem_outcome(course, items[index], "its grading process "
                                                                    "ended unexpectedly, again and again"))
                return
            waiting = lost


def _stop_lanes(pool: ProcessPoolExecutor) -> None:
    """End every lane now (their templates and sandboxes die with them: see course/worker/launchers.py)."""
    pool.shutdown(wait=False, cancel_futures=True)
    lanes = multiprocessing.active_children()
    for lane in lanes:
        lane.kill()
    for lane in lanes:
        lane.join(timeout=5)


class _Interrupts:
    """SIGINT while a class is graded: the first one raises KeyboardInterrupt (unless in a `deferred` section,
    e.g. while a result file is written: then at its end); later ones are ignored while the run winds down."""

    def __init__(self):
        self.previous = None
        self.pending = False
        self.critical = 0
        self.seen = False

    def __enter__(self):
        if _main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False

    def _handle(self, signum, frame):
        if self.seen:
            return  # a second Ctrl-C: the run is already stopping
        self.seen = True
        if self.critical:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def deferred(self):
        interrupts = self

        class Deferred:
            def __enter__(self):
                interrupts.critical += 1

            def __exit__(self, *exc_info):
                interrupts.critical -= 1
                if interrupts.pending and not interrupts.critical:
                    interrupts.pending = False
                    raise KeyboardInterrupt
                return False

        return Deferred()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# -- in a lane ------------------------------------------------------------------------------------------------

_LAUNCHERS: dict = {}  # in each grading process: (assignment, device, isolation) -> its template launcher


def _lane_started(parent_pid: int, run_folder: str) -> None:
    """A lane's first step: Ctrl-C is for the main process (it stops the lanes itself), the lane dies with it,
    and everything it makes in /tmp (its templates' folders, the notebooks' copies) lies in the run's folder."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)  # the main process is already gone
    tempfile.tempdir = os.path.join(run_folder, f"lane-{os.getpid()}")
    os.makedirs(tempfile.tempdir, exist_ok=True)


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


def read_submission(item: BatchItem) -> bytes | str:
    """The notebook's bytes, read as course/submission_files.py reads them, or why the submission is refused."""
    if item.problem is not None:
        return item.problem
    try:
        return read_notebook_bytes(*item.relative())
    except SubmissionRefused as exc:
        return str(exc)
    except OSError as exc:
        return f"{item.notebook.name} cannot be read ({exc.strerror or exc})"


def grade_submission(course: Course, item: BatchItem, data: bytes | str, device: str | None,
                     isolation: str | None, scratch: str) -> dict:
    """In a lane: grade the notebook's `data` (or refuse the submission, when `data` says why) from a private
    copy in the folder `scratch`. The report travels back as plain data; a problem of the course's own becomes a
    report too (`course_problem`), never an exception."""
    try:
        if isinstance(data, str):
            return {"report": _refused_report(course, item, data).to_dict(descriptions=True)}
        return {"report": _grade_copy(course, item, data, Path(scratch), device, isolation).to_dict(descriptions=True)}
    except Exception as exc:  # noqa: BLE001 - the course's fault: reported on this submission, graded next time
        return course_problem_outcome(course, item, f"{type(exc).__name__}: {exc}")


def _grade_copy(course: Course, item: BatchItem, data: bytes, folder: Path, device, isolation) -> GradeReport:
    from course.grading.runner import grade_notebook

    assignment = course.assignment(item.assignment)
    folder.mkdir()
    copy = folder / item.notebook.name
    copy.write_bytes(data)
    try:
        report = grade_notebook(course, assignment, copy, device=device, isolation=isolation, notes=item.notes,
                                launcher=launcher_for(course, assignment, device, isolation))
    finally:
        _remove(folder)
    # Messages name the student's notebook, not the private copy's path on the grader's machine.
    for test in report.tests:
        test.message = test.message.replace(str(copy), item.notebook.name)
    report.notes = [note.replace(str(copy), item.notebook.name) for note in report.notes]
    report.notebook = str(item.notebook)
    return report


def _refused_report(course: Course, item: BatchItem, problem: str) -> GradeReport:
    """Every test of the grader at 0 with the reason, without running anything."""
    return _report_without_grading(course, item, f"Not graded: {problem}", f"Refused: {problem}")


def course_problem_outcome(course: Course, item: BatchItem, problem: str) -> dict:
    """What a dispatcher reports for a submission the course could not grade (every test 0, blamed on the course,
    no result file written, so that the next run grades it again)."""
    message = (f"Not graded: the course could not grade this submission ({problem}). This is not your fault: "
               "it is graded again on the next run.")
    try:
        report = _report_without_grading(course, item, message, message)
    except Exception:  # noqa: BLE001 - even the grader's test list is out of reach: one line stands for it
        report = GradeReport(item.assignment, [TestResult("grading", "error", 0.0, 0.0, message)],
                             notebook=str(item.notebook), notes=[message])
    return {"report": report.to_dict(descriptions=True), "course_problem": True}


_TEST_LISTS: dict[str, list[tuple[str, float]]] = {}


def _report_without_grading(course: Course, item: BatchItem, message: str, note: str) -> GradeReport:
    from course.grading.runner import collect_points

    assignment = course.assignment(item.assignment)
    if assignment.id not in _TEST_LISTS:
        _TEST_LISTS[assignment.id] = list(collect_points(course, assignment).items())
    tests = [TestResult(name, "error", 0.0, points, message) for name, points in _TEST_LISTS[assignment.id]]
    return GradeReport(assignment=assignment.id, tests=tests, notebook=str(item.notebook), notes=[note])


def close_launchers() -> None:
    """Stop the templates this process keeps (e.g. nbgrader's autograde, which grades in its own process)."""
    while _LAUNCHERS:
        _LAUNCHERS.popitem()[1].close()


def _remove(folder: Path) -> None:
    from course.worker.launchers import remove_folder

    remove_folder(folder)


# ------------------------------------------------------------------------------------------------------------
# Results


def result_path(out: Path, item: BatchItem) -> Path:
    return out / result_name(item.student) / f"{item.assignment}.json"


SAFE_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
# OUT's own files (grades.csv, not-on-roster.csv, class-<assignment>.png and .json: course/gradebook/publish.py)
# end with these: a student's folder named like one of them would stand in their way.
RESERVED_SUFFIXES = (".csv", ".json", ".png", ".md", ".html", ".tmp")


def result_name(student: str) -> str:
    """The student's folder name under OUT, one-to-one: a name of letters, digits, '-', '_' and '.' that does not
    start with '.' (nor end like one of OUT's own files, e.g. `grades.csv`) is kept as it is; any other name is
    written with those characters only, followed by '~' and a digest of the original (no kept name holds a '~',
    so `a b`, `a?b` and `a_b` get three folders)."""
    if (student and set(student) <= SAFE_NAME_CHARACTERS and not student.startswith(".") and len(student) <= 100
            and not student.lower().endswith(RESERVED_SUFFIXES)):
        return student
    readable = "".join(c if c in SAFE_NAME_CHARACTERS else "_" for c in student[:60]).lstrip(".") or "student"
    digest = hashlib.sha256(student.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}~{digest}"


def _fingerprint(item: BatchItem, parts: dict[str, str]) -> dict:
    """What a result depends on: the notebook's bytes (read as grading reads them) and the course's parts."""
    data = read_submission(item)
    notebook = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else "refused"
    return {"student": item.student, "notebook_sha256": notebook, "course_fingerprint": parts}


def _earlier_result(out: Path, item: BatchItem, fingerprint: dict) -> GradeReport | None:
    if item.problem is not None:
        return None  # cheap to redo, and its message should be the current one
    try:
        data = json.loads(result_path(out, item).read_text(encoding="utf-8"))
        if {key: data.get(key) for key in fingerprint} != fingerprint:
            return None
        return GradeReport.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_csv(path: Path, results: list[BatchResult], *, excel: bool = False) -> None:
    """One row per submission: student, assignment, score, max, status, ..., then the points of every test
    (course/gradebook/table.py says every column). A submission not graded (an interrupted run) has an empty score
    and the status "not graded". The results alone: no roster, deadline or override (`course grade DIR` itself
    writes grades.csv with them, through course/gradebook/publish.py, with the same writer)."""
    from course.gradebook.book import build_book
    from course.gradebook.sources import from_batch
    from course.gradebook.table import write_table

    book = build_book(None, from_batch(results, times=False))
    write_table(path, book.rows, book.columns(), excel=excel)


def _status(report: GradeReport) -> str:
    """complete: every test ran; unreadable: the notebook could not be read; else the worst test status."""
    if report.tests and all(t.message.startswith("Your notebook could not be graded") for t in report.tests):
        return "unreadable"
    statuses = {t.status for t in report.tests}
    for status in ("timeout", "error", "failed"):
        if status in statuses:
            return f"some {status}"
    return "complete"


def summary(results: list[BatchResult], skipped: list[Skipped] = ()) -> str:
    """Mean, distribution and the tests failed most often, then what was refused, skipped or not graded."""
    lines = []
    by_assignment: dict[str, list[BatchResult]] = {}
    for result in results:
        if result.report is not None:
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
    for status in ("refused", "course error"):
        named = [r for r in results if r.status == status]
        if named:
            lines.append(f"{status} ({len(named)}):")
            lines += [f"  {safe_text(r.item.student, 100, single_line=True)}: "
                      f"{safe_text(r.report.tests[0].message if r.report.tests else '', 300, single_line=True)}"
                      for r in named]
    not_graded = [r for r in results if r.report is None]
    if not_graded:
        lines.append(f"not graded ({len(not_graded)}), the run was interrupted: run the same command again to "
                     "grade them")
    if skipped:
        lines.append(f"skipped ({len(skipped)}), not submissions:")
        lines += [f"  {safe_text(s.name, 100, single_line=True)}: {safe_text(s.reason, 300, single_line=True)}"
                  for s in skipped]
    return "\n".join(lines) or "no submissions"


def stderr_progress(total: int):
    """A tqdm progress bar on the terminal (stderr)."""
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="submission", dynamic_ncols=True)
