"""`course check`: the public checks of one notebook, run the way grading runs the student's code.

The notebook is loaded exactly as `course grade` loads it, through the same grading session
(course/grading/session.py): its setup and solution cells (never the demo or check cells) execute in the
sandboxed worker (course/worker/), with the assignment's support modules and, as one more support package, the
public checks (checks/__init__.py and checks/<id>.py). Every check then runs there, one call each, under the
assignment's per-test time limit (the session's Deadline; checks have no budget for the whole submission), so a
hang or a crash costs that check only, and is reported as grading reports it.

The checks are the same functions the notebook's check cells call in the student's kernel; only where the
notebook comes from differs. In the kernel everything the student ran exists; here only what grading runs,
so `course check` is the truthful preview of what the grader will see (a helper defined in a demo cell, say).

Public checks decide their verdict inside the worker, where the student's code could forge it. That is
accepted: they are the student's own feedback, nothing is scored from them. The hidden grader never trusts
the worker (see docs/trust-model.md).

This works in the course repository (the points come from the grader's markers) and in a student repository
(from its course.yml, which `course release --out` wrote from the same markers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from course.config import Assignment, Course, SandboxConfig, StudentRepository
from course.grading.contracts import Anything
from course.grading.feedback import exception_text, loading_failure, where
from course.grading.probes import probe
from course.grading.session import Deadline, GradingSession, build_worker_spec, support_files
from course.results import GradeReport, Status, TestResult
from course.worker.client import GraderBug, StudentCodeError, StudentTimeout

# What a public check may report itself (see checks/__init__.py); a timeout is the session's to say.
CHECK_STATUSES = (Status.PASSED, Status.FAILED, Status.ERROR, Status.TODO)


@dataclass
class CheckTarget:
    """What `course check` needs to know about an assignment, from the course or from a student repository."""

    assignment: str
    notebook: str  # the notebook's file name
    root: Path  # the folder holding checks/ and reference/
    tests: dict[str, float] | None  # the hidden grader's tests -> points, in the grader's order (None: collect)
    support: tuple[str, ...] = ()  # reference modules the notebook may import
    tiktoken: bool = False
    timeout: float = 30.0
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    collect: Callable[[], dict[str, float]] | None = None  # gives `tests` when they are None

    @classmethod
    def from_course(cls, course: Course, assignment: Assignment) -> CheckTarget:
        def collect() -> dict[str, float]:
            from course.grading.runner import collect_points  # imports pytest: only in the course repository

            return collect_points(course, assignment)

        # The grader's points are collected while the worker starts (see run_checks).
        return cls(assignment=assignment.id, notebook=assignment.notebook, root=course.root, tests=None,
                   collect=collect, support=tuple(assignment.support), tiktoken=assignment.tiktoken,
                   timeout=assignment.timeout, sandbox=course.config.sandbox)

    def resolve_tests(self) -> dict[str, float]:
        if self.tests is None:
            self.tests = self.collect()
        return self.tests

    @classmethod
    def from_student_repository(cls, repository: StudentRepository) -> CheckTarget:
        assignment = repository.assignment
        return cls(assignment=assignment.id, notebook=assignment.notebook, root=repository.root,
                   tests=dict(assignment.tests), support=tuple(assignment.support), tiktoken=assignment.tiktoken,
                   timeout=assignment.timeout, sandbox=repository.config.sandbox)

    @property
    def checks_module(self) -> str:
        return f"checks.{self.assignment}"

    def support_files(self) -> dict[str, Path]:
        """What the worker may import, by path inside its support folder: the support modules and the checks."""
        files = support_files(self.root, self.support)
        for name in ("__init__", self.assignment):
            files[f"checks/{name}.py"] = self.root / "checks" / f"{name}.py"
        return files


@probe(returns=Anything())
def run_public_check(student, module, name):
    """Run one public check against the student's module (in the worker); returns the check's outcome."""
    import importlib

    return importlib.import_module(module).CHECKS.run(name, vars(student))


def check_worker_spec(target: CheckTarget, isolation: str | None = None):
    """What the workers that run `target`'s checks share (the support modules and the public checks, on the CPU)."""
    return build_worker_spec(target.support_files(), target.tiktoken, target.sandbox, "cpu", isolation)


def run_checks(target: CheckTarget, notebook: Path, isolation: str | None = None, launcher=None,
               only: frozenset[str] | None = None) -> GradeReport:
    """Run every public check of `target` on `notebook` in a sandboxed worker; one result per grader test.
    launcher: one made from check_worker_spec(target) and shared by many notebooks (left open), or None for a
    worker of this call's own. only: run these checks alone (the report then holds only them)."""
    started = time.monotonic()
    session = GradingSession(notebook, launcher or check_worker_spec(target, isolation), Deadline(target.timeout),
                             kind="check")
    with session:  # the worker starts while the grader's points are collected (resolve_tests)
        if session.load_problem is not None:
            tests = [_result(target, name, Status.ERROR, f"Your notebook could not be checked: {session.load_problem}")
                     for name in target.resolve_tests()]
        else:
            tests = [_run_one(session, target, name) for name in target.resolve_tests() if only is None or name in only]
            cell_errors = session.cell_errors()
            if cell_errors:
                first = cell_errors[0]
                session.notes.append(f"While loading your notebook, cell '{first.cell}' failed: "
                                     f"{exception_text(first)} ({where(first)}).")
    return GradeReport(assignment=target.assignment, tests=tests, notebook=str(notebook), device=session.device,
                       duration=time.monotonic() - started, notes=session.notes, sandbox=session.sandbox, kind="check")


def _run_one(session: GradingSession, target: CheckTarget, name: str) -> TestResult:
    clock = session.deadline.start_test()
    kwargs = {"module": target.checks_module, "name": name}
    try:
        with clock.step(session.client) as seconds:
            outcome = session.client.call(run_public_check.__name__, run_public_check.probe_source, kwargs, seconds)
    except (StudentTimeout, StudentCodeError, GraderBug) as exc:
        status, message = session.outcome(exc)  # as grading says it
        return _result(target, name, status, message, clock.used)
    if not (isinstance(outcome, dict) and outcome.get("status") in CHECK_STATUSES
            and isinstance(outcome.get("message"), str) and isinstance(outcome.get("description"), str)):
        return _result(target, name, Status.ERROR, "The check's result came back garbled: does your notebook replace "
                                                   "a built-in or library function?", clock.used)
    message = outcome["message"]
    missing = outcome.get("missing_name")
    cell_errors = session.cell_errors()
    if isinstance(missing, str) and cell_errors:  # a cell that failed to load comes first: it is the likely cause
        message = f"{loading_failure(cell_errors)} {message}"
    if isinstance(missing, str) and missing in session.demo_definitions:
        message += (f" `{missing}` is defined only in {session.demo_definitions[missing]}, a demo cell: demo cells "
                    "are not run when grading, so define it inside your solution cell.")
    return _result(target, name, outcome["status"], message, clock.used, outcome["description"])


def _result(target: CheckTarget, name: str, status: Status | str, message: str, duration: float = 0.0,
            description: str = "") -> TestResult:
    return TestResult.scored(name, status, target.tests[name], message, duration, description or name)
