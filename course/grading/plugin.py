"""The pytest plugin that turns a grader module's tests into scored results.

It provides the `submission` fixture (the handle a test uses to run probes in the worker), reads each test's
points from its `@pytest.mark.points(n)` marker, and classifies every outcome:

    passed   the test body completed
    failed   a comparison failed (GradingFailure), or a bare assertion did
    error    student code raised, crashed the worker, is missing, or returned something unusable
    timeout  student code ran past the per-test time limit

Only messages written for students leave this module: never a traceback, the grader's source or an expected value.
"""

from __future__ import annotations

import time

import pytest

from course.grading import compare
from course.grading.contracts import BadResult, check_result
from course.results import TestResult
from course.worker.client import GraderBug, StudentCodeError, StudentTimeout


class Submission:
    """The `submission` fixture: runs probes against the student's module, within the test's time budget.

    The budget (course.yml's per-test `timeout`) counts only the time the test's probes spend in the worker,
    not the time to (re)start the worker and load the notebook, so a restart never eats a test's budget.
    """

    def __init__(self, client, timeout: float, device: str, load_problem: str | None):
        self._client = client
        self._timeout = timeout
        self._used = 0.0
        self.device = device
        self._load_problem = load_problem

    def run(self, probe_function, **kwargs):
        if self._load_problem is not None:
            raise StudentCodeError("notebook", self._load_problem)
        remaining = self._timeout - self._used
        if remaining <= 0:
            raise StudentTimeout(f"the {self._timeout:g} s time limit for this test was used up before this step")
        started = time.monotonic()
        try:
            value = self._client.call(probe_function.__name__, probe_function.probe_source, kwargs, remaining)
        finally:
            self._used += time.monotonic() - started - self._client.last_overhead
        try:
            return check_result(probe_function.probe_returns, value, kwargs)
        except BadResult as exc:
            raise StudentCodeError("bad_output", f"Your code's results could not be used: {exc}.") from None

    def cell_errors(self) -> list[dict]:
        report = self._client.load_report if self._client is not None else None
        return report.cell_errors if report else []


class GradingPlugin:
    def __init__(self, client, device: str, timeout: float, load_problem: str | None = None):
        self.client = client
        self.device = device
        self.timeout = timeout
        self.load_problem = load_problem
        self.points: dict[str, float] = {}
        self.results: dict[str, TestResult] = {}
        self.collection_errors: list[str] = []
        self.started: dict[str, float] = {}
        self.current: Submission | None = None

    # -- configuration and collection ----------------------------------------------------------------------
    def pytest_configure(self, config):
        config.addinivalue_line("markers", "points(n): the points a grader test is worth")
        compare.set_device(self.device)

    def pytest_collectreport(self, report):
        if report.failed:
            self.collection_errors.append(f"{report.nodeid}: {report.longreprtext}")

    def pytest_collection_modifyitems(self, session, config, items):
        for item in items:
            marker = item.get_closest_marker("points")
            if marker is None or not marker.args:
                self.collection_errors.append(f"{item.nodeid}: has no @pytest.mark.points(n) marker")
                continue
            self.points[item.nodeid] = float(marker.args[0])
        if self.collection_errors:
            items.clear()  # a broken grader is a configuration problem: grade nothing

    # -- the fixture -----------------------------------------------------------------------------------------
    @pytest.fixture
    def submission(self, request):
        self.current = Submission(self.client, self.timeout, self.device, self.load_problem)
        return self.current

    # -- outcomes --------------------------------------------------------------------------------------------
    def pytest_runtest_setup(self, item):
        self.started[item.nodeid] = time.monotonic()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if call.when == "call" or (call.when == "setup" and report.outcome != "passed"):
            status, message = self._classify(call, report)
            points = self.points.get(item.nodeid, 0.0)
            self.results[item.nodeid] = TestResult(
                name=item.name,
                status=status,
                score=points if status == "passed" else 0.0,
                max_score=points,
                message=message,
                duration=time.monotonic() - self.started.get(item.nodeid, time.monotonic()),
                description=_describe(item),
            )

    def _classify(self, call, report) -> tuple[str, str]:
        if report.outcome == "passed" and call.excinfo is None:
            return "passed", ""
        exc = call.excinfo.value if call.excinfo is not None else None
        if isinstance(exc, compare.GradingFailure):
            return "failed", str(exc)
        if isinstance(exc, StudentTimeout):
            return "timeout", f"Your code did not finish in time: {exc}"
        if isinstance(exc, StudentCodeError):
            return "error", self._student_error_message(exc)
        if isinstance(exc, GraderBug):
            return "error", f"Internal grader error (not your fault; please report it): {exc}"
        if isinstance(exc, AssertionError):
            return "failed", "A check failed."
        if call.excinfo is not None and call.excinfo.typename in ("Skipped", "XFailed"):
            return "error", "No result: the test was skipped, which never counts as a pass."
        name = call.excinfo.typename if call.excinfo is not None else "unknown"
        return "error", f"Internal grader error (not your fault; please report it): {name}"

    def _student_error_message(self, exc: StudentCodeError) -> str:
        if exc.kind == "notebook":
            return f"Your notebook could not be graded: {exc.message}"
        if exc.kind == "missing":
            message = (f"`{exc.message}` is not defined in your notebook. Did you rename it, or delete the cell "
                       "that defines it?")
        elif exc.kind == "not_implemented":
            message = (f"Not implemented yet: your code still raises NotImplementedError ({_where(exc.message)}). "
                       "Replace `raise NotImplementedError()` with your implementation.")
        elif exc.kind == "exception":
            message = f"Your code raised {exc.message}"
        else:
            message = exc.message
        cell_errors = self.current.cell_errors() if self.current else []
        if cell_errors and exc.kind in ("missing", "exception"):
            first = cell_errors[0]
            message += f" Note: while loading your notebook, cell '{first['label']}' failed: {first['message']}"
            if len(cell_errors) > 1:
                message += f" (and {len(cell_errors) - 1} more cell(s))"
        return message


def _where(described: str) -> str:
    """'NotImplementedError (cell 'x', line 3, in forward: `...`)' -> "cell 'x', line 3, in forward"."""
    start = described.find("(cell ")
    if start < 0:
        return "in a function the grader called"
    return described[start + 1:].split(":", 1)[0].rstrip(")")


def _describe(item) -> str:
    doc = getattr(item, "function", None).__doc__ if hasattr(item, "function") else None
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else item.name
