"""The pytest plugin that turns a grader module's tests into scored results.

It provides the `submission` fixture (the handle a test uses to run probes in the worker), checks and reads
each test's markers, and classifies every outcome as a Status (course/results.py):

    passed   the test body completed
    failed   a comparison failed (GradingFailure), or a bare assertion did
    error    student code raised, crashed the worker, is missing, or returned something unusable
    timeout  student code ran past the per-test time limit, or the whole submission's budget ran out

What the worker's side raises (a timeout, the student's error, a fault of the course) is classified by the
grading session (course/grading/session.py), as it is for `course check`; the time budgets are its Deadline.

Markers (registered here, checked when the grader is collected; a bad marker names the test):

    @pytest.mark.points(n)              what the test is worth: one positive number
    @pytest.mark.depends_on("test_a")   tests of the same grader, earlier in the file, whose code this test
                                        uses: when both fail, the message says to fix those first
    @pytest.mark.runs("GPTModel", ...)  the student's code this test runs, directly or through other code of the
                                        student's: names of the grader's INTERFACE (a whole function or class,
                                        or one method, "BPETokenizerSimple.train") or of its HELPERS (solution
                                        code that the graded names call, e.g. ch02_bpe's merge_pair); required
                                        on every test of a grader that has an INTERFACE
    @pytest.mark.stand_ins("LayerNorm", ...)
                                        parts of the student's that the declared code would call, but that this
                                        test replaces with correct stand-ins while it runs (probe_kit.parts
                                        .replaced): a bug in a part then costs only the part's own tests. Names
                                        as for `runs`, none of them declared there

A hanging function costs one timeout, not one per test that reaches it. When a test's call into the worker runs
out of time (a hang, not a failed load), the code it declares with `runs` that no passing test has yet shown to
finish is taken as hung, and every later test that declares any of that code (the same name, or a class and
one of its methods) is not run: it ends as a timeout whose message names what hung and where (in a grader
without declarations, a test is not run when a test it depends on timed out). A probe that reaches code of the
student's that the test does not declare (`student.GPTModel` in its source, or `name="calc_loss_loader"` among
its arguments) is a grader bug, so a declaration cannot silently go missing; tests/test_hanging_stubs.py checks
what declared code calls against the solution, and grades the solution with every stub made to hang.

Who is blamed comes from where the error was found, never from its text: a test ends as a course error
("internal grader error") only for faults found on the trusted side (a probe called with arguments it does not
take, an exception in the grader's own comparison code). Whatever happens in the worker after the student's
code was loaded is the submission's. Only messages written for students leave this module: never a
traceback, the grader's source or an expected value.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import time

import pytest

from course.grading import compare
from course.grading.contracts import BadResult, check_result
from course.grading.interface import Class
from course.grading.session import Deadline, GradingSession, course_fault
from course.results import Status, TestResult, describe_test
from course.worker.client import GraderBug, StudentCodeError, StudentTimeout
from course.worker.runtime.records import ErrorKind, ErrorRecord

MARKERS = (
    "points(n): the points a grader test is worth (one positive number)",
    "depends_on(*tests): earlier tests of the same grader whose code this test uses",
    "runs(*names): the student's functions, classes or Class.methods this test runs (directly or not)",
    "stand_ins(*names): parts of the student's that the declared code calls, replaced by correct stand-ins here",
)


class Submission:
    """The `submission` fixture: runs probes against the student's module, within the test's time budget.

    The budget (course.yml's per-test `timeout`) counts only the time the test's probes spend in the worker,
    not the time to (re)start the worker and load the notebook, so a restart never eats a test's budget.
    """

    def __init__(self, client, timeout: float | None = None, device: str = "cpu", load_problem: str | None = None,
                 deadline: Deadline | None = None, hung: dict[str, str] | None = None,
                 blocked: str | None = None, runs: tuple[str, ...] | None = None,
                 finished: set[str] | None = None, declarable: frozenset[str] = frozenset()):
        """deadline: the submission's time budgets (per test, and for the whole submission); without one, a
        Deadline of `timeout` seconds per test and no budget for the whole submission (tests of the plugin).
        hung: the student's functions and classes that ran out of time in earlier tests -> that test (shared by
        the submission's tests: a function that hangs costs one timeout, not one per test).
        blocked: why this test must not call the student's code at all (code it runs, or a test it depends on,
        hung).
        runs: what this test declares it runs (@pytest.mark.runs), None when its grader declares nothing;
        finished: the names that passing tests declared (shown to finish); declarable: the names a grader may
        declare (its INTERFACE and HELPERS)."""
        self._client = client
        self._time = (deadline or Deadline(timeout)).start_test()  # this test's time in the student's code
        self.device = device
        self._load_problem = load_problem
        self._hung = hung if hung is not None else {}
        self._blocked = blocked
        self._runs = runs
        self._finished = finished if finished is not None else set()
        self._declarable = declarable
        self.test_name = ""

    @property
    def _timeout(self) -> float:
        """This test's time limit (tests/test_ranks.py shortens it)."""
        return self._time.limit

    @_timeout.setter
    def _timeout(self, seconds: float) -> None:
        self._time.limit = seconds

    def run(self, probe_function, **kwargs):
        """Run `probe_function` (a @probe) in the worker with these keyword arguments; returns its checked value."""
        source = _probe_source(probe_function, kwargs)
        self._check_may_run()  # an unreadable notebook, a failed load, a hung dependency, no time left
        self._check_declared(source, kwargs)
        target = next((v for k, v in kwargs.items() if k in ("name", "class_name") and isinstance(v, str)), None)
        if self._runs is None and target in self._hung:  # (a test that declares what it runs is blocked up front)
            raise StudentTimeout(f"not run again: `{target}` did not finish in time in {self._hung[target]}")
        try:
            with self._time.step(self._client) as seconds:
                value = self._client.call(probe_function.__name__, source, kwargs, seconds)
        except StudentTimeout:
            self._record_hang(target)
            raise
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
        self._check_declared(source, kwargs)
        self._check_may_run()
        try:
            with self._time.step(self._client) as seconds:
                values = self._client.call_ranks(probe_function.__name__, source, kwargs_list, seconds)
        except StudentTimeout:
            self._record_hang(None)
            raise
        try:
            return [check_result(probe_function.probe_returns, value, kwargs) for value in values]
        except BadResult as exc:
            raise StudentCodeError.of(ErrorKind.BAD_OUTPUT, str(exc)) from None

    def _check_declared(self, source: str, kwargs: dict) -> None:
        """A GraderBug if the probe reaches code of the student's that this test does not declare: an attribute of
        the student's module in the probe's source (`student.GPTModel`), or a name passed as an argument
        (`name="calc_loss_loader"`). What that code calls in turn is the declaration's business (the test of
        tests/test_hanging_stubs.py checks it against the solution)."""
        if self._runs is None:
            return
        reached = _student_attributes(source) | {value for value in kwargs.values() if isinstance(value, str)}
        missing = sorted(name for name in reached
                         if name in self._declarable and not any(overlaps(name, mine) for mine in self._runs))
        if missing:
            raise GraderBug(f"{self.test_name or 'a test'} runs {', '.join(f'`{name}`' for name in missing)} without "
                            "declaring it in @pytest.mark.runs")

    def _record_hang(self, target: str | None) -> None:
        """A call into the worker ran out of time: remember what hung, so that no later test runs it again.

        What hung is taken to be the code this test declares that no passing test has shown to finish (with tests
        ordered bottom up, the test's own subject); in a grader without declarations, the probe's target. Nothing
        is remembered when the loading hung (every later call then fails at once anyway)."""
        if self._client is None or self._client.fatal is not None:
            return
        suspects = [name for name in self._runs or () if name not in self._finished]
        if self._runs is None and target is not None:
            suspects = [target]
        for name in suspects:
            self._hung.setdefault(name, self.test_name or "an earlier test")

    def _check_may_run(self) -> None:
        """Raise now if this test may not call the student's code at all (see run)."""
        if self._load_problem is not None:
            raise StudentCodeError.of(ErrorKind.NOTEBOOK, self._load_problem)
        if self._client is not None and self._client.fatal is not None:
            raise self._client.fatal
        if self._blocked:
            raise StudentTimeout(self._blocked)
        self._time.check()  # this test's time, and the whole submission's


class GradingPlugin:
    def __init__(self, session: GradingSession | None, device: str, timeout: float = 30.0):
        """session: the submission's grading session (its worker client, notebook, deadline and the classification
        of what the worker raises); None for a plugin that only collects the grader's tests and markers (then
        `timeout` is the per-test limit, should its tests run)."""
        self.session = session
        self.client = session.client if session is not None else None
        self.deadline = session.deadline if session is not None else Deadline(timeout)
        self.device = device
        self.load_problem = session.load_problem if session is not None else None
        self.points: dict[str, float] = {}
        self.depends_on: dict[str, list[str]] = {}
        self.runs: dict[str, tuple[str, ...]] = {}  # each test of a grader with an INTERFACE -> what it runs
        self.stand_ins: dict[str, tuple[str, ...]] = {}  # each test -> the student's parts it runs stand-ins for
        self.declarable: dict[str, frozenset[str]] = {}  # each test -> the names its grader may declare
        self.finished: set[str] = set()  # the names that passing tests declared: shown to finish
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
        return self._read_runs(item)

    def _read_runs(self, item) -> str | None:
        """@pytest.mark.runs: names of the grader's INTERFACE (a function, a class, or "Class.method") or HELPERS;
        required where the grader has an INTERFACE."""
        markers = list(item.iter_markers("runs"))
        names = [name for marker in markers for name in marker.args]
        if any(marker.kwargs for marker in markers):
            return "@pytest.mark.runs takes names only"
        interface = getattr(getattr(item, "module", None), "INTERFACE", None)
        if interface is None:
            return "@pytest.mark.runs needs the grader's INTERFACE, to check its names" if names else None
        helpers = tuple(getattr(item.module, "HELPERS", ()))
        declarable = _declarable(interface, helpers)
        if not names:
            return ("needs @pytest.mark.runs(...) naming the student's functions and classes it runs (directly or "
                    "through other code of the student's)")
        for name in names:
            if not isinstance(name, str) or name not in declarable:
                return (f"@pytest.mark.runs names {name!r}, which is neither a function, class or Class.method of the "
                        "grader's INTERFACE nor one of its HELPERS")
        self.runs[item.nodeid] = tuple(dict.fromkeys(names))
        self.declarable[item.nodeid] = declarable
        return self._read_stand_ins(item, declarable)

    def _read_stand_ins(self, item, declarable: frozenset[str]) -> str | None:
        """@pytest.mark.stand_ins: declarable names that the test's `runs` does not name."""
        markers = list(item.iter_markers("stand_ins"))
        names = [name for marker in markers for name in marker.args]
        if any(marker.kwargs for marker in markers):
            return "@pytest.mark.stand_ins takes names only"
        for name in names:
            if not isinstance(name, str) or name not in declarable:
                return f"@pytest.mark.stand_ins names {name!r}, which is not a name @pytest.mark.runs could declare"
            if any(overlaps(name, mine) for mine in self.runs[item.nodeid]):
                return f"@pytest.mark.stand_ins names {name!r}, which the test declares it runs"
        self.stand_ins[item.nodeid] = tuple(dict.fromkeys(names))
        return None

    # -- the fixture -----------------------------------------------------------------------------------------
    @pytest.fixture
    def submission(self, request):
        item = request.node
        module = item.nodeid.rsplit("::", 1)[0]
        if item.nodeid in self.runs:  # what it runs is declared: blocked when that code hung, and only then
            blocked = self._hung_code(self.runs[item.nodeid])
        else:  # a grader without declarations: blocked when a test it depends on timed out
            hung = [name for name in self.depends_on.get(item.nodeid, [])
                    if getattr(self.results.get(f"{module}::{name}"), "status", None) == Status.TIMEOUT]
            blocked = f"not run: {hung[0]}, whose code this test uses, did not finish in time" if hung else None
        self.current = Submission(self.client, device=self.device, load_problem=self.load_problem,
                                  deadline=self.deadline, hung=self.hung, blocked=blocked,
                                  runs=self.runs.get(item.nodeid),
                                  finished=self.finished, declarable=self.declarable.get(item.nodeid, frozenset()))
        self.current.test_name = item.name
        if blocked:
            self.current._check_may_run()  # not run at all (an unreadable notebook or a failed load says so first)
        return self.current

    def _hung_code(self, runs: tuple[str, ...]) -> str | None:
        """Why a test that runs `runs` must not run: code of it hung in an earlier test (None if none did)."""
        for name in runs:
            for hung, test in self.hung.items():
                if overlaps(name, hung):
                    also = [other for other, where in self.hung.items() if where == test and other != hung
                            and any(overlaps(mine, other) for mine in runs)]
                    if not also:
                        return f"not run: `{hung}`, which this test runs, did not finish in time in {test}"
                    names = ", ".join(f"`{n}`" for n in [hung, *also])
                    return f"not run: {test} did not finish in time in code that this test runs too ({names})"
        return None

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
            if status == Status.PASSED:
                self.finished.update(self.runs.get(item.nodeid, ()))
            else:
                message = self._first_fix(item, message) + message
            self.results[item.nodeid] = TestResult.scored(
                item.name, status, self.points.get(item.nodeid, 0.0), message,
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
            if result is None or result.status == Status.PASSED or self.own_messages.get(nodeid) == message:
                continue
            theirs = self.errors.get(nodeid)
            if unimplemented_here and (theirs is None or theirs.cell != own.cell):
                continue
            failing.append(result)
        if not failing:
            return ""
        names = " and ".join(f"{r.name} ({r.description.rstrip('.')})" for r in failing)
        return f"Fix {names} first: this test uses that code, which fails its own test. "

    def _classify(self, call, report) -> tuple[Status, str]:
        if report.outcome == "passed" and call.excinfo is None:
            return Status.PASSED, ""
        exc = call.excinfo.value if call.excinfo is not None else None
        if isinstance(exc, compare.GradingFailure):
            return Status.FAILED, str(exc)
        found = self.session.outcome(exc) if self.session is not None else None  # what the worker's side raised
        if found is not None:
            return found
        if isinstance(exc, AssertionError):
            return Status.FAILED, "A check failed."
        if call.excinfo is not None and call.excinfo.typename in ("Skipped", "XFailed"):
            return Status.ERROR, "No result: the test was skipped, which never counts as a pass."
        name = call.excinfo.typename if call.excinfo is not None else "unknown"
        return Status.ERROR, course_fault(name)


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


@functools.lru_cache(maxsize=256)
def _student_attributes(source: str) -> frozenset[str]:
    """The attributes of the student's module (the probe's first parameter) that a probe's source names."""
    function = next(node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef))
    if not function.args.args:
        return frozenset()
    student = function.args.args[0].arg
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == student:
            names.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id == student
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            names.add(node.args[1].value)
    return frozenset(names)


def _free_port() -> int:
    """A TCP port free on this machine's loopback now (under bubblewrap the workers have a network of their own)."""
    import socket

    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def overlaps(a: str, b: str) -> bool:
    """Two declared names cover common code: the same name, or a class and one of its methods."""
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def _declarable(interface, helpers: tuple[str, ...]) -> frozenset[str]:
    """What a grader's tests may name in @pytest.mark.runs: each function and class of its INTERFACE, each class's
    "Class.__init__" and "Class.method" of its declared methods, and its HELPERS."""
    names = set(helpers)
    for entry in interface.items:
        names.add(entry.name)
        if isinstance(entry, Class):
            names.update(f"{entry.name}.{method}" for method in ("__init__", *entry.methods))
    return frozenset(names)


def _is_points(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def _describe(item) -> str:
    doc = getattr(item, "function", None).__doc__ if hasattr(item, "function") else None
    return describe_test(doc) or item.name
