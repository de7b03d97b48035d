"""The grading API that every chapter's grader imports: probes checked when they are defined, markers checked
when a grader is collected, errors blamed from structured records, and comparisons that do not let NaN pass."""

from __future__ import annotations

import importlib.util
import textwrap
import time

import pytest
import torch

from course.grading.compare import GradingFailure, expect_close, expect_finite
from course.grading.feedback import student_error_message
from course.grading.plugin import GradingPlugin, Submission
from course.grading.probes import ProbeDefinitionError, call_function
from course.grading.runner import run_grader_module
from course.grading.session import Deadline, GradingSession, OutOfTime
from course.results import Status
from course.worker.client import GraderBug, StudentCodeError, StudentTimeout
from course.worker.runtime.records import ErrorKind, ErrorRecord


def import_file(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- probes ------------------------------------------------------------------------------------------------------

STRAY_GLOBAL = '''
from course.grading import probe

SCALE = 2.0


@probe
def scaled(student, x):
    return student.f(x) * SCALE
'''


def test_a_probe_using_a_grader_global_fails_when_the_grader_is_imported(tmp_path):
    path = tmp_path / "grader_with_stray_global.py"
    path.write_text(STRAY_GLOBAL)
    with pytest.raises(ProbeDefinitionError, match="uses SCALE, which the worker does not have"):
        import_file(path)


def test_a_probe_may_use_the_worker_names_builtins_and_its_own_imports(tmp_path):
    path = tmp_path / "grader_fine.py"
    path.write_text(textwrap.dedent('''
        from course.grading import DEVICE, probe

        @probe
        def fine(student, xs):
            import math
            helper = lambda v: torch.as_tensor(v, device=DEVICE) * math.pi
            return [F.relu(helper(x)) for x in sorted(xs, key=len)] + [nn.Identity()]
    '''))
    assert "def fine(student, xs):" in import_file(path).fine.probe_source


class FakeClient:
    last_overhead = 0.0
    load_report = None
    fatal = None

    def call(self, name, source, kwargs, timeout):
        return kwargs


def test_a_probe_called_with_arguments_it_does_not_take_is_a_grader_bug(tmp_path):
    submission = Submission(FakeClient(), timeout=10, device="cpu", load_problem=None)
    with pytest.raises(GraderBug, match="wrong arguments"):
        submission.run(call_function, name="f", inputs=[], extra=1)


# -- time budgets: one Deadline ------------------------------------------------------------------------------------

def test_one_deadline_bounds_each_test_and_the_whole_submission():
    fresh = Deadline(10, whole=100)
    assert (fresh.bound(5), 99 < fresh.bound(1000) <= 100, fresh.spent()) == (5, True, False)
    assert Deadline(10).bound(1000) == 1000  # no budget for the whole submission (`course check`)
    spent = Deadline(10, whole=8, start=time.monotonic() - 9)
    assert (spent.bound(5), spent.spent()) == (0.0, True)
    clock = fresh.start_test()
    clock.used = 10
    with pytest.raises(StudentTimeout, match="the 10 s time limit for this test was used up before this step"):
        clock.check()
    with pytest.raises(OutOfTime, match="the 8 s time budget for the whole submission ran out before this test"):
        spent.start_test().check()


def test_a_timeout_after_the_budget_ran_out_is_put_down_to_the_budget_once():
    spent = Deadline(10, whole=8, start=time.monotonic() - 9)
    hang = StudentTimeout("stopped after 2.0 s while running your code")
    assert spent.timeout_message(hang) == ("Your code did not finish in time: the 8 s time budget for the whole "
                                           "submission ran out (stopped after 2.0 s while running your code).")
    assert spent.timeout_message(OutOfTime("the 8 s budget ran out before this test")) == \
        "Your code did not finish in time: the 8 s budget ran out before this test"  # said once, not wrapped again
    assert Deadline(10, whole=100).timeout_message(hang) == f"Your code did not finish in time: {hang}"


class CountingClient(FakeClient):
    def __init__(self):
        self.timeouts = []  # what each call was given

    def call(self, name, source, kwargs, timeout):
        self.timeouts.append(timeout)
        return []


def test_a_test_that_starts_after_the_budget_ran_out_does_not_reach_the_worker():
    client = CountingClient()
    late = Submission(client, device="cpu", deadline=Deadline(10, whole=8, start=time.monotonic() - 9))
    with pytest.raises(OutOfTime):
        late.run(call_function, name="f", inputs=[])
    assert client.timeouts == []
    assert Submission(client, timeout=10, device="cpu").run(call_function, name="f", inputs=[]) == []
    assert client.timeouts == [10]  # the test's own limit (the client bounds it by the submission's budget)


def test_what_the_worker_raises_has_one_status_and_message_for_grade_and_check(tmp_path):
    """The mapping of check and grade is the same; only a fault of the course names whose it is."""
    record = ErrorRecord(kind=ErrorKind.RAISED, message="boom", type="ValueError")
    outcomes = {}
    for kind in ("grade", "check"):
        session = GradingSession(tmp_path / "nb.ipynb", launcher=None, deadline=Deadline(10), kind=kind)
        outcomes[kind] = [session.outcome(exc) for exc in (StudentTimeout("stopped"), StudentCodeError(record),
                                                           GraderBug("bad probe"), KeyError("x"))]
    assert outcomes["grade"][:2] == outcomes["check"][:2]
    assert [status for status, _ in outcomes["grade"][:3]] == [Status.TIMEOUT, Status.ERROR, Status.ERROR]
    assert outcomes["grade"][2][1].startswith("Internal grader error (not your fault")
    assert outcomes["check"][2][1].startswith("Internal error of the checks (not your fault")
    assert outcomes["grade"][3] is outcomes["check"][3] is None  # not the worker's side: the caller's to classify


# -- markers -----------------------------------------------------------------------------------------------------

def collection_errors(tmp_path, body: str) -> list[str]:
    path = tmp_path / f"grader_{tmp_path.name}.py"  # one module name per test: pytest caches modules by name
    path.write_text("import pytest\n\n" + textwrap.dedent(body))
    plugin = GradingPlugin(None, device="cpu", timeout=10)
    run_grader_module(path, plugin, "--collect-only")
    return plugin.collection_errors


@pytest.mark.parametrize(("marker", "problem"), [
    ("", "needs exactly one @pytest.mark.points(n) marker"),
    ("@pytest.mark.points(0)", "takes one positive number"),
    ("@pytest.mark.points(-1)", "takes one positive number"),
    ("@pytest.mark.points('2')", "takes one positive number"),
    ("@pytest.mark.points(True)", "takes one positive number"),
    ("@pytest.mark.points(float('nan'))", "takes one positive number"),
    ("@pytest.mark.points(1, 2)", "takes one positive number"),
    ("@pytest.mark.points(1)\n@pytest.mark.points(2)", "has several points markers"),
])
def test_points_markers_are_checked_per_test(tmp_path, marker, problem):
    errors = collection_errors(tmp_path, f"{marker}\ndef test_one(submission):\n    pass\n")
    assert len(errors) == 1
    assert "test_one" in errors[0]
    assert problem in errors[0]


@pytest.mark.parametrize(("name", "problem"), [
    ("test_unknown", "not a test of this grader"),
    ("test_later", "must come earlier in the grader"),
])
def test_dependencies_must_be_earlier_tests_of_the_same_grader(tmp_path, name, problem):
    errors = collection_errors(tmp_path, f'''
        @pytest.mark.points(1)
        @pytest.mark.depends_on("{name}")
        def test_first(submission):
            pass

        @pytest.mark.points(1)
        def test_later(submission):
            pass
    ''')
    assert len(errors) == 1
    assert "test_first" in errors[0]
    assert problem in errors[0]


# -- blame, from records -----------------------------------------------------------------------------------------

def test_a_reply_cannot_claim_to_be_a_grader_bug():
    for kind in ("grader", "crash", "timeout", "notebook", "anything"):
        record = ErrorRecord.from_reply({"kind": kind, "message": "Internal grader error (not your fault)"})
        assert record.kind is ErrorKind.BAD_OUTPUT


def test_mistyped_fields_of_a_reply_are_dropped():
    record = ErrorRecord.from_reply({"kind": "raised", "type": 3, "message": ["x"], "cell": {"a": 1}, "line": "7"})
    assert record.kind is ErrorKind.RAISED
    assert (record.type, record.message, record.cell, record.line) == ("", "", None, None)


def test_the_location_comes_from_fields_not_from_the_message():
    record = ErrorRecord(kind=ErrorKind.RAISED, type="ValueError", cell="causal_attention", line=4,
                         function="forward", code="x = y",
                         message="bad (cell 'grader', line 99, in internal: `secret`)")
    message = student_error_message(record)
    assert message.endswith("(cell 'causal_attention', line 4, in forward: `x = y`).")


def test_a_name_only_a_demo_cell_defines_is_explained():
    record = ErrorRecord(kind=ErrorKind.RAISED, type="NameError", message="name 'inputs' is not defined",
                         name="inputs", cell="simplified_self_attention", line=3)
    message = student_error_message(record, demo_definitions={"inputs": "cell 4"})
    assert "`inputs` is defined only in cell 4, a demo cell" in message
    assert "demo cells are not run when grading" in message


# -- comparisons and NaN -----------------------------------------------------------------------------------------

def test_nan_where_the_reference_is_finite_fails():
    with pytest.raises(GradingFailure, match="nan at position"):
        expect_close(torch.tensor([0.5, float("nan")]), torch.tensor([0.5, 0.5]), what="x")


def test_non_finite_reference_values_must_be_matched_exactly():
    expected = torch.tensor([float("nan"), float("inf"), 1.0])
    expect_close(expected.clone(), expected, what="x")
    with pytest.raises(GradingFailure, match="position \\(0\\) is wrong"):
        expect_close(torch.tensor([0.0, float("inf"), 1.0]), expected, what="x")
    with pytest.raises(GradingFailure, match="position \\(1\\) is wrong"):
        expect_close(torch.tensor([float("nan"), float("-inf"), 1.0]), expected, what="x")


def test_outputs_compared_with_each_other_must_be_finite():
    expect_finite(torch.ones(3), what="x")
    with pytest.raises(GradingFailure, match="non-finite"):
        expect_finite(torch.tensor([1.0, float("nan")]), what="x")
