"""`course check`: the public checks of one notebook, run the way grading runs the student's code.

The notebook is loaded exactly as `course grade` loads it: its setup and solution cells (never the demo or
check cells) execute in the sandboxed worker (course/worker/), with the assignment's support modules and, as
one more support package, the public checks (checks/__init__.py and checks/<id>.py). Every check then runs
there, one call each, under the assignment's per-test time limit, so a hang or a crash costs that check only.

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
from course.grading.feedback import exception_text, student_error_message, where
from course.grading.probes import probe
from course.notebook import NotebookError, grading_cells, read_notebook
from course.results import GradeReport, TestResult
from course.worker.client import GraderBug, StudentCodeError, StudentTimeout, WorkerClient
from course.worker.sandbox import plan_sandbox

STATUSES = ("passed", "failed", "error")


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
        files = {f"{module.replace('.', '/')}.py": self.root.joinpath(*module.split(".")).with_suffix(".py")
                 for module in self.support}
        for name in ("__init__", self.assignment):
            files[f"checks/{name}.py"] = self.root / "checks" / f"{name}.py"
        return files


@probe(returns=Anything())
def run_public_check(student, module, name):
    """Run one public check against the student's module (in the worker); returns the check's outcome."""
    import importlib

    return importlib.import_module(module).CHECKS.run(name, vars(student))


def run_checks(target: CheckTarget, notebook: Path, isolation: str | None = None) -> GradeReport:
    """Run every public check of `target` on `notebook` in a sandboxed worker; one result per grader test."""
    started = time.monotonic()
    settings = target.sandbox
    sandbox = plan_sandbox(isolation or settings.isolation, memory_mb=settings.memory_mb,
                           cpu_seconds=settings.cpu_seconds, file_mb=settings.file_mb, device="cpu")
    report = GradeReport(assignment=target.assignment, tests=[], notebook=str(notebook), device="cpu", kind="check",
                         sandbox={"isolation": sandbox.isolation, "note": sandbox.note})
    try:
        selection = grading_cells(read_notebook(notebook))
    except NotebookError as exc:
        report.notes.append(str(exc))
        report.tests = [_result(target, name, "error", f"Your notebook could not be checked: {exc}")
                        for name in target.resolve_tests()]
        report.duration = time.monotonic() - started
        return report
    report.notes.extend(selection.notes)
    client = WorkerClient(
        cells=[{"label": c.label, "source": c.source} for c in selection.cells],
        support_files=target.support_files(),
        tiktoken_files=_tiktoken_files() if target.tiktoken else {},
        device="cpu",
        load_timeout=target.timeout,
        sandbox=sandbox,
    )
    client.start()  # torch imports in the worker meanwhile
    try:
        for name in target.resolve_tests():
            report.tests.append(_run_one(client, target, name, selection.demo_definitions))
        if client.load_report and client.load_report.cell_errors:
            first = client.load_report.cell_errors[0]
            report.notes.append(f"While loading your notebook, cell '{first.cell}' failed: {exception_text(first)} "
                                f"({where(first)}).")
    finally:
        client.close()
    report.duration = time.monotonic() - started
    return report


def _run_one(client: WorkerClient, target: CheckTarget, name: str, demo_definitions: dict[str, str]) -> TestResult:
    started = time.monotonic()
    kwargs = {"module": target.checks_module, "name": name}
    try:
        outcome = client.call(run_public_check.__name__, run_public_check.probe_source, kwargs, target.timeout)
    except StudentTimeout as exc:
        return _result(target, name, "timeout", f"Your code did not finish in time: {exc}",
                       time.monotonic() - started - client.last_overhead)
    except StudentCodeError as exc:
        cell_errors = client.load_report.cell_errors if client.load_report else []
        message = student_error_message(exc.record, demo_definitions=demo_definitions, cell_errors=cell_errors)
        return _result(target, name, "error", message, time.monotonic() - started - client.last_overhead)
    except GraderBug as exc:
        return _result(target, name, "error", f"Internal error of the checks (not your fault; please report it): "
                                              f"{exc}")
    duration = time.monotonic() - started - client.last_overhead
    if not (isinstance(outcome, dict) and outcome.get("status") in STATUSES
            and isinstance(outcome.get("message"), str) and isinstance(outcome.get("description"), str)):
        return _result(target, name, "error", "The check's result came back garbled: does your notebook replace a "
                                              "built-in or library function?", duration)
    message = outcome["message"]
    missing = outcome.get("missing_name")
    if isinstance(missing, str) and missing in demo_definitions:
        message += (f" `{missing}` is defined only in {demo_definitions[missing]}, a demo cell: demo cells are not "
                    "run when grading, so define it inside your solution cell.")
    return _result(target, name, outcome["status"], message, duration, outcome["description"])


def _result(target: CheckTarget, name: str, status: str, message: str, duration: float = 0.0,
            description: str = "") -> TestResult:
    points = target.tests[name]
    return TestResult(name=name, status=status, score=points if status == "passed" else 0.0, max_score=points,
                      message=message, duration=max(duration, 0.0), description=description or name)


def _tiktoken_files() -> dict[str, Path]:
    """GPT-2's BPE files, checked and seeded into tiktoken's cache, to be copied into the worker's cache."""
    from reference.tiktoken_offline import ENCODER_JSON_URL, VOCAB_BPE_URL, cache_file_name, seed_tiktoken_cache

    cache = seed_tiktoken_cache()
    return {name: cache / name for name in (cache_file_name(VOCAB_BPE_URL), cache_file_name(ENCODER_JSON_URL))}
