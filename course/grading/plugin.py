"""The pytest plugin that turns a grader module's tests into scored results.

It provides the `submission` fixture (the handle a test uses to run probes in the worker), checks and reads
each test's markers, and classifies every outcome:

    passed   the test body completed
    failed   a comparison failed (GradingFailure), or a bare assertion did
    error    student code raised, crashed the worker, is missing, or returned something unusable
    timeout  student code ran past the per-test time limit

Markers (registered here, checked when the grader is collected; a bad marker names the test):

    @pytest.mark.points(n)              what the test is worth: one positive number
    @pytest.mark.depends_on("test_a")   tests of the same grader, earlier in the file, whose code this test
                                        uses: when both fail, the message says to fix those first

Who is blamed comes from where the error was found, never from its text: a test ends as a course error
("internal grader error") only for faults found on the trusted side (a probe called with arguments it does not
take, an exception in the grader's own comparison code). Whatever happens in the worker after the student's
code was loaded is the submission's. Only messages written for students leave this module: never a
traceback, the grader's source or an expected value.
"""

from __future__ import annotations

import inspect
import math
import time

import pytest

from course.grading import compare
from course.grading.contracts import BadResult, check_result
from course.grading.feedback import student_error_message
from course.results import TestResult
from course.worker.client import GraderBug, StudentCodeError, StudentTimeout
from course.worker.records import ErrorKind, ErrorRecord

MARKERS = (
    "points(n): the points a grader test is worth (one positive number)",
    "depends_on(*tests): earlier tests of the same grader whose code this test uses",
)


class Submission:
    """The `submission` fixture: runs probes against the student's module, within the test's time budget.

    The budget (course.yml's per-test `timeout`) counts only the time the test's probes spend in the worker,
    not the time to (re)start the worker and load the notebook, so a restart never eats a test's budget.
    """

    def __init__(self, client, timeout: float, device: str, load_problem: str | None,
                 budget: tuple[float, float] | None = None, hung: dict[str, str] | None = None,
                 blocked: str | None = None):
        """budget: (time.monotonic() deadline, seconds) for the whole submission, worker restarts included.
        hung: the student's functions and classes that ran out of time in earlier tests -> that test (shared by
        the submission's tests: a function that hangs costs one timeout, not one per test).
        blocked: why this test must not call the student's code at all (a test it depends on hung)."""
        self._client = client
        self._timeout = timeout
        self._used = 0.0
        self.device = device
        self._load_problem = load_problem
        self._budget = budget
        self._hung = hung if hung is not None else {}
        self._blocked = blocked
        self.test_name = ""

    def run(self, probe_function, **kwargs):
        """Run `probe_function` (a @probe) in the worker with these keyword arguments; returns its checked value."""
        source = _probe_source(probe_function, kwargs)
        self._check_may_run()  # an unreadable notebook, a failed load, a hung dependency, no time left
        target = next((v for k, v in kwargs.items() if k in ("name", "class_name") and isinstance(v, str)), None)
        if target in self._hung:
            raise StudentTimeout(f"not run again: `{target}` did not finish in time in {self._hung[target]}")
        remaining = self._timeout - self._used
        started = time.monotonic()
        try:
            value = self._client.call(probe_function.__name__, source, kwargs, remaining)
        except StudentTimeout:
            if target is not None and self._client.fatal is None:  # the call hung, not the loading
                self._hung[target] = self.test_name or "an earlier test"
            raise
        finally:
            self._used += time.monotonic() - started - self._client.last_overhead
        try:
            return check_result(probe_function.probe_returns, value, kwargs)
        except BadResult as exc:
            raise StudentCodeError.of(ErrorKind.BAD_OUTPUT, str(exc)) from None

    def run_ranks(self, probe_function, world_size: int, **kwargs) -> list:
        """Run `probe_function` in `world_size` extra workers at once, the ranks of a distributed training (each
        loaded with the submission, in one sandbox with a loopback network): each gets these keyword arguments
        plus `rank`, `world_size` and `master_port` (a free port for MASTER_PORT, with MASTER_ADDR 127.0.0.1).
        Returns their checked values in rank order; the first error in rank order is raised."""
        if type(world_size) is not int or world_size < 1:
            raise GraderBug(f"run_ranks needs a positive world_size, got {world_size!r}")
        port = _free_port()
        kwargs_list = [dict(kwargs, rank=rank, world_size=world_size, master_port=port) for rank in range(world_size)]
        source = _probe_source(probe_function, kwargs_list[0])
        self._check_may_run()
        remaining = self._timeout - self._used
        started = time.monotonic()
        try:
            values = self._client.call_ranks(probe_function.__name__, source, kwargs_list, remaining)
        finally:
            self._used += time.monotonic() - started - self._client.last_overhead
        try:
            return [check_result(probe_function.probe_returns, value, kwargs) for value in values]
        except BadResult as exc:
            raise StudentCodeError.of(ErrorKind.BAD_OUTPUT, str(exc)) from None

    def _check_may_run(self) -> None:
        """Raise now if this test may not call the student's code at all (see run)."""
        if self._load_problem is not None:
            raise StudentCodeError.of(ErrorKind.NOTEBOOK, self._load_problem)
        if self._client is not None and self._client.fatal is not None:
            raise self._client.fatal
        if self._blocked:
            raise StudentTimeout(self._blocked)
        if self._timeout - self._used <= 0:
            raise StudentTimeout(f"the {self._timeout:g} s time limit for this test was used up before this step")
        if self._budget is not None and time.monotonic() >= self._budget[0]:
            raise StudentTimeout(f"the {self._budget[1]:g} s time budget for the whole submission ran out before "
                                 "this test")

    def cell_errors(self):
        report = self._client.load_report if self._client is not None else None
        return report.cell_errors if report else []


class GradingPlugin:
    def __init__(self, client, device: str, timeout: float, load_problem: str | None = None,
                 demo_definitions: dict[str, str] | None = None, budget: tuple[float, float] | None = None):
        """demo_definitions: names that only demo cells define -> the cell ("cell 7"), for NameError messages.
        budget: (time.monotonic() deadline, seconds) for all the tests of the submission."""
        self.client = client
        self.budget = budget
        self.device = device
        self.timeout = timeout
        self.load_problem = load_problem
        self.demo_definitions = demo_definitions or {}
        self.points: dict[str, float] = {}
        self.depends_on: dict[str, list[str]] = {}
        self.results: dict[str, TestResult] = {}
        self.errors: dict[str, ErrorRecord] = {}  # the record of each test that ended with the student's error
        self.own_messages: dict[str, str] = {}  # each test's message before any "fix that first" note
        self.collection_errors: list[str] = []
        self.started: dict[str, float] = {}
        self.current: Submission | None = None
        self.hung: dict[str, str] = {}  # the student's names that ran out of time -> the test where they did

    # -- configuration and collection ----------------------------------------------------------------------
    def pytest_configure(self, config):
        for line in MARKERS:
            config.addinivalue_line("markers", line)
        compare.set_device(self.device)

    def pytest_collectreport(self, report):
        if report.failed:
            self.collection_errors.append(f"{report.nodeid}: {report.longreprtext}")

    def pytest_collection_modifyitems(self, session, config, items):
        names = [item.name for item in items]
        for position, item in enumerate(items):
            problem = self._read_markers(item, names[:position], set(names))
            if problem:
                self.collection_errors.append(f"{item.nodeid}: {problem}")
        if self.collection_errors:
            items.clear()  # a broken grader is a configuration problem: grade nothing

    def _read_markers(self, item, earlier: list[str], every: set[str]) -> str | None:
        markers = list(item.iter_markers("points"))
        if len(markers) != 1:
            return "needs exactly one @pytest.mark.points(n) marker" if not markers else "has several points markers"
        args = markers[0].args
        if len(args) != 1 or markers[0].kwargs or not _is_points(args[0]):
            return f"@pytest.mark.points takes one positive number, got {args or markers[0].kwargs}"
        self.points[item.nodeid] = float(args[0])
        depends = [name for marker in item.iter_markers("depends_on") for name in marker.args]
        for name in depends:
            if not isinstance(name, str) or name not in every:
                return f"@pytest.mark.depends_on names {name!r}, which is not a test of this grader"
            if name not in earlier:
                return f"@pytest.mark.depends_on names {name!r}, which must come earlier in the grader"
        self.depends_on[item.nodeid] = depends
        return None

    # -- the fixture -----------------------------------------------------------------------------------------
    @pytest.fixture
    def submission(self, request):
        item = request.node
        module = item.nodeid.rsplit("::", 1)[0]
        hung = [name for name in self.depends_on.get(item.nodeid, [])
                if getattr(self.results.get(f"{module}::{name}"), "status", None) == "timeout"]
        blocked = (f"not run: {hung[0]}, whose code this test uses, did not finish in time" if hung else None)
        self.current = Submission(self.client, self.timeout, self.device, self.load_problem, self.budget,
                                  hung=self.hung, blocked=blocked)
        self.current.test_name = item.name
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
            exc = call.excinfo.value if call.excinfo is not None else None
            if isinstance(exc, StudentCodeError):
                self.errors[item.nodeid] = exc.record
            self.own_messages[item.nodeid] = message
            if status != "passed":
                message = self._first_fix(item, message) + message
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

    def _first_fix(self, item, message: str) -> str:
        """'Fix test_a first (what it checks): ...' when a test this one depends on did not pass either.

        Not said when both failed the same way (an unreadable notebook, a hang while loading: one cause, not
        an earlier part), nor when this test's own stub is still unimplemented (a stub elsewhere than the
        dependency's): then the dependency is not what stops it.
        """
        module = item.nodeid.rsplit("::", 1)[0]
        own = self.errors.get(item.nodeid)
        unimplemented_here = own is not None and own.kind is ErrorKind.NOT_IMPLEMENTED
        failing = []
        for name in self.depends_on.get(item.nodeid, []):
            nodeid = f"{module}::{name}"
            result = self.results.get(nodeid)
            if result is None or result.status == "passed" or self.own_messages.get(nodeid) == message:
                continue
            theirs = self.errors.get(nodeid)
            if unimplemented_here and (theirs is None or theirs.cell != own.cell):
                continue
            failing.append(result)
        if not failing:
            return ""
        names = " and ".join(f"{r.name} ({r.description.rstrip('.')})" for r in failing)
        return f"Fix {names} first: this test uses that code, which fails its own test. "

    def _classify(self, call, report) -> tuple[str, str]:
        if report.outcome == "passed" and call.excinfo is None:
            return "passed", ""
        exc = call.excinfo.value if call.excinfo is not None else None
        if isinstance(exc, compare.GradingFailure):
            return "failed", str(exc)
        if isinstance(exc, StudentTimeout):
            if self.budget is not None and time.monotonic() >= self.budget[0] and "whole submission" not in str(exc):
                return "timeout", (f"Your code did not finish in time: the {self.budget[1]:g} s time budget for the "
                                   f"whole submission ran out ({exc}).")
            return "timeout", f"Your code did not finish in time: {exc}"
        if isinstance(exc, StudentCodeError):
            return "error", student_error_message(exc.record, hint=exc.hint, demo_definitions=self.demo_definitions,
                                                  cell_errors=self.current.cell_errors() if self.current else [])
        if isinstance(exc, GraderBug):
            return "error", f"Internal grader error (not your fault; please report it): {exc}"
        if isinstance(exc, AssertionError):
            return "failed", "A check failed."
        if call.excinfo is not None and call.excinfo.typename in ("Skipped", "XFailed"):
            return "error", "No result: the test was skipped, which never counts as a pass."
        name = call.excinfo.typename if call.excinfo is not None else "unknown"
        return "error", f"Internal grader error (not your fault; please report it): {name}"


def _probe_source(probe_function, kwargs: dict) -> str:
    """The source a @probe sends to the worker; a GraderBug if it is no probe or does not take these arguments."""
    source = getattr(probe_function, "probe_source", None)
    if source is None:
        raise GraderBug(f"{getattr(probe_function, '__name__', probe_function)!r} is not a @probe")
    try:
        inspect.signature(probe_function).bind(None, **kwargs)
    except TypeError as exc:
        raise GraderBug(f"probe {probe_function.__name__} called with the wrong arguments: {exc}") from None
    return source


def _free_port() -> int:
    """A TCP port free on this machine's loopback now (under bubblewrap the workers have a network of their own)."""
    import socket

    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def _is_points(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def _describe(item) -> str:
    doc = getattr(item, "function", None).__doc__ if hasattr(item, "function") else None
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else item.name
