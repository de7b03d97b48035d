"""Grade one submission notebook: a grading session (course/grading/session.py) runs the assignment's grader with
pytest, and its results are collected."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import pytest
import torch

from course.config import Assignment, Course
from course.errors import ConfigError
from course.grading.device import resolve_device
from course.grading.plugin import GradingPlugin
from course.grading.session import Deadline, GradingSession, build_worker_spec, support_files
from course.grading.session import make_launcher as make_launcher  # (shared by the graders of a batch)
from course.results import GradeReport, Status, TestResult
from course.worker.launchers import Launcher, WorkerSpec


def worker_spec(course: Course, assignment: Assignment, device: str | None = None,
                isolation: str | None = None) -> WorkerSpec:
    """What the workers of an assignment share: support modules, GPT-2's BPE files, the device and the sandbox
    (`device` and `isolation` override course.yml's `device` and `sandbox.isolation`)."""
    return build_worker_spec(support_files(course.root, assignment.support), assignment.tiktoken,
                             course.config.sandbox, resolve_device(device or course.config.device), isolation)


def grade_notebook(course: Course, assignment: Assignment, notebook_path: Path,
                   device: str | None = None, isolation: str | None = None,
                   notes: list[str] | None = None, launcher: Launcher | None = None) -> GradeReport:
    """Grade one notebook; `device` and `isolation` override course.yml's `device` and `sandbox.isolation`;
    `notes` come first in the report (e.g. which of a folder's notebooks was chosen). A `launcher` shared by the
    submissions of a batch (made by `make_launcher(worker_spec(...))`) is used and left open; without one, this
    submission gets its own."""
    started = time.monotonic()
    # The trusted side's tensors are tiny: with torch's thread pool each operation would wait for threads, and
    # a class graded in parallel would have the pools of several grading processes fight over the cores.
    torch.set_num_threads(1)
    deadline = Deadline(assignment.timeout, assignment.submission_timeout, start=started)
    session = GradingSession(notebook_path, launcher or worker_spec(course, assignment, device, isolation), deadline,
                             kind="grade", notes=notes or ())
    with session:  # the worker imports torch while pytest collects the grader here
        plugin = GradingPlugin(session, device=session.device)
        _run_pytest(course, assignment, plugin)
    _check_points(course, assignment, plugin)
    tests = [plugin.results.get(nodeid) or _no_result(nodeid, points) for nodeid, points in plugin.points.items()]
    return GradeReport(assignment=assignment.id, tests=tests, notebook=str(notebook_path), device=session.device,
                       duration=time.monotonic() - started, notes=session.notes, sandbox=session.sandbox)


def collect_points(course: Course, assignment: Assignment) -> dict[str, float]:
    """The grader's tests and their points, without running anything; checks them against course.yml."""
    plugin = GradingPlugin(None, device="cpu")
    _run_pytest(course, assignment, plugin, "--collect-only")
    _check_points(course, assignment, plugin)
    return {nodeid.split("::")[-1]: points for nodeid, points in plugin.points.items()}


# "timeout": pytest-timeout (the repository's own suite uses it) must not apply a user's PYTEST_TIMEOUT to grading,
# which has its own per-test budgets.
UNUSED_PLUGINS = ("unraisableexception", "threadexception", "logging", "faulthandler", "doctest", "junitxml",
                  "pastebin", "stepwise", "nose", "legacypath", "timeout")


def _run_pytest(course: Course, assignment: Assignment, plugin: GradingPlugin, *extra: str) -> None:
    exit_code, output = run_grader_module(course.grader_path(assignment), plugin, *extra)
    if plugin.collection_errors or exit_code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        details = "\n".join(plugin.collection_errors) or output[-2000:]
        raise ConfigError(f"{assignment.grader}: the grader of {assignment.id} could not be collected:\n{details}")


def run_grader_module(grader: Path, plugin: GradingPlugin, *extra: str) -> tuple[int, str]:
    """Run one grader module with pytest in this process, quietly; returns pytest's exit code and output."""
    ini = grader.parent / "pytest.ini"
    args = [*extra,
        str(grader),
        *(["-c", str(ini)] if ini.is_file() else []),
        "--rootdir", str(grader.parent),
        "--confcutdir", str(grader.parent),
        "--import-mode=importlib",
        "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist",  # deterministic, in-process, no cache files
        # Plugins a grader does not need, which cost a class of submissions minutes: a full garbage collection
        # after every run (unraisableexception), log handlers set up around every test phase (logging), ...
        *(arg for plugin in UNUSED_PLUGINS for arg in ("-p", f"no:{plugin}")),
        "-q", "--no-header", "-W", "ignore::pytest.PytestAssertRewriteWarning",
    ]
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        exit_code = pytest.main(args, plugins=[plugin])
    return int(exit_code), output.getvalue()


def _check_points(course: Course, assignment: Assignment, plugin: GradingPlugin) -> None:
    total = sum(plugin.points.values())
    if total != assignment.points:
        raise ConfigError(
            f"{course.root / 'course.yml'}: assignments ({assignment.id}).points is {assignment.points}, but the "
            f"tests in {assignment.grader} are worth {total:g} points in all"
        )


def _no_result(nodeid: str, points: float) -> TestResult:
    return TestResult.scored(nodeid.split("::")[-1], Status.ERROR, points,
                             "No result: the test did not run to completion.")
