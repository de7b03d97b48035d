"""One grading session: how `course grade` and `course check` run the student's code, in one place.

`course grade` runs the hidden grader's tests (pytest, course/grading/runner.py and plugin.py) and `course check`
the public checks (course/checking.py). Both run one notebook's code the same way, through a GradingSession:

    the sandbox     build_worker_spec and make_launcher: the support files, GPT-2's BPE files (tiktoken_files),
                    the device and the isolation of the worker; a batch shares one launcher among its submissions
    the notebook    its setup and solution cells, read once, or why it cannot be read (`load_problem`)
    the worker      one WorkerClient that loads those cells and runs every test's calls
    the time        one Deadline: the seconds each test may spend in the student's code, and the whole
                    submission's budget; the only code that looks at the clock to decide
    the outcome     what the worker's side raised, turned into a Status and a message for the student (`outcome`)

A session is a context manager: leaving it ends the worker (and the launcher, when it is the session's own) and
adds to `notes` what the submission left that could not be removed.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from course.config import SandboxConfig
from course.grading.feedback import student_error_message
from course.notebook import NotebookError, grading_cells, read_notebook
from course.results import Status
from course.worker.client import GraderBug, StudentCodeError, StudentTimeout, WorkerClient
from course.worker.launchers import DirectLauncher, Launcher, TemplateLauncher, WorkerSpec
from course.worker.runtime.records import ErrorRecord
from course.worker.sandbox import plan_sandbox

# The first words of a message that blames the course, not the student (see plugin.py: student code can never
# make its own failure read like this).
COURSE_FAULT = {"grade": "Internal grader error", "check": "Internal error of the checks"}


def course_fault(what: str, kind: Literal["grade", "check"] = "grade") -> str:
    """The message of a test that failed through a fault of the course (found on the trusted side), never the
    student's."""
    return f"{COURSE_FAULT[kind]} (not your fault; please report it): {what}"


# -- the sandbox ---------------------------------------------------------------------------------------------------

def support_files(root: Path, modules: Iterable[str]) -> dict[str, Path]:
    """The support modules a notebook may import (dotted names, e.g. reference.text_data), by their path inside the
    worker's support folder (reference/text_data.py) -> the file under `root`."""
    return {f"{module.replace('.', '/')}.py": root.joinpath(*module.split(".")).with_suffix(".py")
            for module in modules}


def tiktoken_files() -> dict[str, Path]:
    """GPT-2's BPE files, checked and seeded into tiktoken's cache, to be copied into the worker's cache."""
    from reference.tiktoken_offline import ENCODER_JSON_URL, VOCAB_BPE_URL, cache_file_name, seed_tiktoken_cache

    cache = seed_tiktoken_cache()
    return {name: cache / name for name in (cache_file_name(VOCAB_BPE_URL), cache_file_name(ENCODER_JSON_URL))}


def build_worker_spec(files: dict[str, Path], tiktoken: bool, settings: SandboxConfig, device: str = "cpu",
                      isolation: str | None = None) -> WorkerSpec:
    """What every worker of a session shares: the files it may import, GPT-2's BPE files (with `tiktoken`), the
    device and the sandbox planned from course.yml's `sandbox` (`isolation` overrides its `isolation`)."""
    sandbox = plan_sandbox(isolation or settings.isolation, memory_mb=settings.memory_mb,
                           cpu_seconds=settings.cpu_seconds, file_mb=settings.file_mb, device=device)
    return WorkerSpec(support_files=files, tiktoken_files=tiktoken_files() if tiktoken else {}, device=device,
                      sandbox=sandbox)


def make_launcher(spec: WorkerSpec) -> Launcher:
    """Workers forked from a template that has imported torch on Linux (see course/worker/launchers.py); a fresh
    interpreter per worker elsewhere (forking after importing torch is not safe on macOS)."""
    return TemplateLauncher(spec) if sys.platform.startswith("linux") else DirectLauncher(spec)


# -- the time ------------------------------------------------------------------------------------------------------

class OutOfTime(StudentTimeout):
    """The whole submission's time budget had run out before a test could start (its message says so)."""


class Deadline:
    """The time budgets of one submission, kept and checked here and nowhere else.

    per_test: seconds each test may spend in the student's code (course.yml's `timeout`); (re)starting the worker
        and loading the notebook do not count, so a restart never eats a test's time.
    whole: seconds of wall time for all the tests of the submission, worker restarts included (course.yml's
        `submission_timeout`), counted from `start` (default: now); None: no such budget (`course check`).
    """

    def __init__(self, per_test: float, whole: float | None = None, start: float | None = None):
        self.per_test = per_test
        self.whole = whole
        self.ends = None if whole is None else (time.monotonic() if start is None else start) + whole

    def bound(self, seconds: float) -> float:
        """`seconds`, or less when the whole submission's budget ends sooner: how long a wait for the worker may
        last (every wait of the WorkerClient: starting, loading, running)."""
        return seconds if self.ends is None else max(0.0, min(seconds, self.ends - time.monotonic()))

    def spent(self) -> bool:
        """Whether the whole submission's budget has run out."""
        return self.ends is not None and time.monotonic() >= self.ends

    def start_test(self) -> TestTime:
        """The time of one test, which starts with none of its `per_test` seconds used."""
        return TestTime(self)

    def timeout_message(self, exc: StudentTimeout) -> str:
        """The student's message for a timeout: once the whole submission's budget has run out, the timeout is
        put down to it (an OutOfTime already says so)."""
        if self.spent() and not isinstance(exc, OutOfTime):
            return (f"Your code did not finish in time: the {self.whole:g} s time budget for the whole submission "
                    f"ran out ({exc}).")
        return f"Your code did not finish in time: {exc}"


class TestTime:
    """One test's share of a Deadline: `limit` seconds in the student's code, of which `used` are spent."""

    __test__ = False  # not a pytest test class

    def __init__(self, deadline: Deadline):
        self.deadline = deadline
        self.limit = deadline.per_test
        self.used = 0.0

    def check(self) -> None:
        """Raise StudentTimeout if no further step of this test may start: its own time, or the submission's, is up."""
        if self.limit - self.used <= 0:
            raise StudentTimeout(f"the {self.limit:g} s time limit for this test was used up before this step")
        if self.deadline.spent():
            raise OutOfTime(f"the {self.deadline.whole:g} s time budget for the whole submission ran out before "
                            "this test")

    @contextlib.contextmanager
    def step(self, client: WorkerClient) -> Iterator[float]:
        """One call into the worker: gives the seconds it may take (what is left of `limit`) and then charges the
        time it spent in the student's code (not the client's `last_overhead`: a restart or a load)."""
        started = time.monotonic()
        try:
            yield self.limit - self.used
        finally:
            self.used += time.monotonic() - started - client.last_overhead


# -- the session ---------------------------------------------------------------------------------------------------

class GradingSession:
    """One notebook, graded (`kind` "grade": the hidden grader's tests) or checked ("check": the public checks).

    launcher: a launcher shared by the submissions of a batch (used and left open), or the WorkerSpec of this
        session's own launcher (made on entering, closed on leaving).
    notes: what the report says first (e.g. which of a folder's notebooks was chosen); the notebook's own notes
        (cells it lacks, ...) and what could not be removed after the worker follow.
    """

    def __init__(self, notebook: Path, launcher: Launcher | WorkerSpec, deadline: Deadline,
                 kind: Literal["grade", "check"] = "grade", notes: Iterable[str] = ()):
        self.notebook = notebook
        self.own_launcher = isinstance(launcher, WorkerSpec)
        self.launcher = make_launcher(launcher) if isinstance(launcher, WorkerSpec) else launcher
        self.deadline = deadline
        self.kind = kind
        self.notes = list(notes)
        self.load_problem: str | None = None  # why the notebook cannot be read: every test fails with it
        self.demo_definitions: dict[str, str] = {}  # names that only demo cells define -> that cell ("cell 7")
        self.client: WorkerClient | None = None

    @property
    def device(self) -> str:
        return self.launcher.spec.device

    @property
    def sandbox(self) -> dict:
        """The report's `sandbox`: the isolation the worker runs under, and what that means."""
        plan = self.launcher.spec.sandbox
        return {"isolation": plan.isolation, "note": plan.note}

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> GradingSession:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _open(self) -> None:
        """Read the notebook's cells and get its worker going (torch imports there while the tests are collected)."""
        try:
            selection = grading_cells(read_notebook(self.notebook))
        except NotebookError as exc:
            self.load_problem = str(exc)
            self.notes.append(self.load_problem)
            return
        self.notes.extend(selection.notes)
        self.demo_definitions = selection.demo_definitions
        self.client = WorkerClient(cells=[{"label": c.label, "source": c.source} for c in selection.cells],
                                   load_timeout=self.deadline.per_test, launcher=self.launcher,
                                   deadline=self.deadline)
        self.client.prepare()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.notes.extend(self.client.problems)  # what the submission left that could not be removed: said
        if self.own_launcher:
            self.launcher.close()

    # -- outcomes --------------------------------------------------------------------------------------------
    def cell_errors(self) -> list[ErrorRecord]:
        """The cells that failed while the notebook was loaded (named after a missing name or a raise)."""
        report = self.client.load_report if self.client is not None else None
        return report.cell_errors if report else []

    def outcome(self, exc: BaseException) -> tuple[Status, str] | None:
        """The status and message of a test that the worker's side ended with `exc` (a timeout, the student's
        error, a fault of the course found on the trusted side); None for any other exception."""
        if isinstance(exc, StudentTimeout):
            return Status.TIMEOUT, self.deadline.timeout_message(exc)
        if isinstance(exc, StudentCodeError):
            return Status.ERROR, student_error_message(exc.record, hint=exc.hint, cell_errors=self.cell_errors(),
                                                       demo_definitions=self.demo_definitions)
        if isinstance(exc, GraderBug):
            return Status.ERROR, course_fault(str(exc), self.kind)
        return None
