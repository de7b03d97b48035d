"""Grade one submission notebook: start the worker, run the assignment's grader with pytest, collect results."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import pytest
import torch

from course.config import Assignment, Course
from course.errors import ConfigError
from course.grading.device import resolve_device
from course.grading.plugin import GradingPlugin
from course.notebook import NotebookError, grading_cells, read_notebook
from course.results import GradeReport, TestResult
from course.worker.client import WorkerClient
from course.worker.launchers import DirectLauncher, Launcher, TemplateLauncher, WorkerSpec
from course.worker.sandbox import plan_sandbox


def worker_spec(course: Course, assignment: Assignment, device: str | None = None,
                isolation: str | None = None) -> WorkerSpec:
    """What the workers of an assignment share: support modules, GPT-2's BPE files, the device and the sandbox
    (`device` and `isolation` override course.yml's `device` and `sandbox.isolation`)."""
    device = resolve_device(device or course.config.device)
    settings = course.config.sandbox
    sandbox = plan_sandbox(isolation or settings.isolation, memory_mb=settings.memory_mb,
                           cpu_seconds=settings.cpu_seconds, file_mb=settings.file_mb, device=device)
    return WorkerSpec(support_files=_support_files(course, assignment),
                      tiktoken_files=_tiktoken_files() if assignment.tiktoken else {}, device=device,
                      sandbox=sandbox)


def make_launcher(spec: WorkerSpec) -> Launcher:
    """Workers forked from a template that has imported torch on Linux (see course/worker/launchers.py); a fresh
    interpreter per worker elsewhere (forking after importing torch is not safe on macOS)."""
    return TemplateLauncher(spec) if sys.platform.startswith("linux") else DirectLauncher(spec)


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
    own_launcher = launcher is None
    launcher = launcher or make_launcher(worker_spec(course, assignment, device, isolation))
    device, sandbox = launcher.spec.device, launcher.spec.sandbox
    notes = list(notes or [])
    load_problem = None
    client = None
    demo_definitions: dict[str, str] = {}
    try:
        selection = grading_cells(read_notebook(notebook_path))
        notes.extend(selection.notes)
        demo_definitions = selection.demo_definitions
    except NotebookError as exc:
        load_problem = str(exc)
        notes.append(load_problem)
    else:
        client = WorkerClient(cells=[{"label": c.label, "source": c.source} for c in selection.cells],
                              load_timeout=assignment.timeout, launcher=launcher)
        client.deadline = started + assignment.submission_timeout
        client.prepare()  # torch imports in the worker while pytest collects the grader here
    try:
        plugin = GradingPlugin(client, device=device, timeout=assignment.timeout, load_problem=load_problem,
                               demo_definitions=demo_definitions,
                               budget=(started + assignment.submission_timeout, assignment.submission_timeout))
        _run_pytest(course, assignment, plugin)
    finally:
        if client is not None:
            client.close()
            notes.extend(client.problems)  # what the submission left that could not be removed: said, never raised
        if own_launcher:
            launcher.close()
    _check_points(course, assignment, plugin)
    tests = [plugin.results.get(nodeid) or _no_result(nodeid, points) for nodeid, points in plugin.points.items()]
    return GradeReport(assignment=assignment.id, tests=tests, notebook=str(notebook_path), device=device,
                       duration=time.monotonic() - started, notes=notes,
                       sandbox={"isolation": sandbox.isolation, "note": sandbox.note})


def collect_points(course: Course, assignment: Assignment) -> dict[str, float]:
    """The grader's tests and their points, without running anything; checks them against course.yml."""
    plugin = GradingPlugin(None, device="cpu", timeout=assignment.timeout)
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
    return TestResult(name=nodeid.split("::")[-1], status="error", score=0.0, max_score=points,
                      message="No result: the test did not run to completion.")


def _support_files(course: Course, assignment: Assignment) -> dict[str, Path]:
    files = {}
    for module in assignment.support:
        path = course.module_path(module)
        files[str(path.relative_to(course.root))] = path
    return files


def _tiktoken_files() -> dict[str, Path]:
    """The GPT-2 BPE files, checked and seeded into tiktoken's cache, to be copied into the worker's cache."""
    from reference.tiktoken_offline import ENCODER_JSON_URL, VOCAB_BPE_URL, cache_file_name, seed_tiktoken_cache

    cache = seed_tiktoken_cache()
    return {name: cache / name for name in (cache_file_name(VOCAB_BPE_URL), cache_file_name(ENCODER_JSON_URL))}
