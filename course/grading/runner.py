"""Grade one submission notebook: start the worker, run the assignment's grader with pytest, collect results."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import pytest

from course.config import Assignment, Course
from course.errors import ConfigError
from course.grading.device import resolve_device
from course.grading.plugin import GradingPlugin
from course.notebook import NotebookError, grading_cells, read_notebook
from course.results import GradeReport, TestResult
from course.worker.client import WorkerClient
from course.worker.sandbox import plan_sandbox


def grade_notebook(course: Course, assignment: Assignment, notebook_path: Path,
                   device: str | None = None, isolation: str | None = None,
                   notes: list[str] | None = None) -> GradeReport:
    """Grade one notebook; `device` and `isolation` override course.yml's `device` and `sandbox.isolation`;
    `notes` come first in the report (e.g. which of a folder's notebooks was chosen)."""
    started = time.monotonic()
    device = resolve_device(device or course.config.device)
    notes = list(notes or [])
    load_problem = None
    client = None
    demo_definitions: dict[str, str] = {}
    settings = course.config.sandbox
    sandbox = plan_sandbox(isolation or settings.isolation, memory_mb=settings.memory_mb,
                           cpu_seconds=settings.cpu_seconds, file_mb=settings.file_mb, device=device)
    try:
        selection = grading_cells(read_notebook(notebook_path))
        notes.extend(selection.notes)
        demo_definitions = selection.demo_definitions
    except NotebookError as exc:
        load_problem = str(exc)
        notes.append(load_problem)
    else:
        client = WorkerClient(
            cells=[{"label": c.label, "source": c.source} for c in selection.cells],
            support_files=_support_files(course, assignment),
            tiktoken_files=_tiktoken_files() if assignment.tiktoken else {},
            device=device,
            load_timeout=assignment.timeout,
            sandbox=sandbox,
        )
        client.deadline = started + assignment.submission_timeout
        client.start()  # torch imports in the worker while pytest collects the grader here
    try:
        plugin = GradingPlugin(client, device=device, timeout=assignment.timeout, load_problem=load_problem,
                               demo_definitions=demo_definitions,
                               budget=(started + assignment.submission_timeout, assignment.submission_timeout))
        _run_pytest(course, assignment, plugin)
    finally:
        if client is not None:
            client.close()
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
