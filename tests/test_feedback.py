"""Failure messages teach (what, how far off, where, a hint) without revealing the expected values; the
reporters render one result model."""

from __future__ import annotations

import ast
import csv
import io
import json

import pytest
import torch

from course.grading.compare import GradingFailure, expect_close, expect_equal, expect_tensor, expect_true
from course.reporters.json_report import write_json
from course.reporters.terminal import render_table
from course.results import GradeReport, Status, TestResult
from tests.conftest import REPO


def failure(function, *args, **kwargs) -> str:
    with pytest.raises(GradingFailure) as excinfo:
        function(*args, **kwargs)
    return str(excinfo.value)


def test_close_values_pass_and_far_values_report_size_and_position_not_the_answer():
    expected = torch.tensor([[0.25, 0.5], [0.75, 1.0]])
    expect_close(expected + 1e-7, expected, what="output")
    got = expected.clone()
    got[1, 0] = 0.123
    message = failure(expect_close, got, expected, what="attention output", hint="check the mask.")
    assert message.startswith("attention output: values differ")
    assert "0.627" in message
    assert "(1, 0)" in message
    assert "1 of 4" in message
    assert "Hint: check the mask." in message
    assert "0.75" not in message  # the expected value at that position is never shown


def test_shape_type_dtype_and_nan_are_named():
    expected = torch.zeros(2, 3)
    assert "shape (3, 2) is wrong: expected (2, 3)" in failure(expect_close, torch.zeros(3, 2), expected, what="x")
    assert "expected a tensor, got list" in failure(expect_close, [[0.0] * 3] * 2, expected, what="x")
    integers = torch.zeros(2, 3, dtype=torch.long)
    assert "dtype torch.int64 is wrong" in failure(expect_close, integers, expected, what="x")
    got = torch.zeros(2, 3)
    got[0, 2] = float("nan")
    assert "nan at position (0, 2)" in failure(expect_close, got, expected, what="x")
    assert "shape (4,) is wrong" in failure(expect_tensor, torch.zeros(4), what="x", shape=(2, 2))


def test_exact_comparisons_point_at_the_first_difference():
    assert "item 2 is wrong (yours: 9)" in failure(expect_equal, [1, 2, 9], [1, 2, 3], what="ids")
    assert "has 2 items, expected 3" in failure(expect_equal, [1, 2], [1, 2, 3], what="ids")
    message = failure(expect_equal, "Hello , world", "Hello, world", what="text")
    assert "differs from character 5" in message
    assert "'Hello , world'" in message
    message = failure(expect_equal, torch.tensor([[1, 2], [3, 5]]), torch.tensor([[1, 2], [3, 4]]), what="t")
    assert "first at position (1, 1)" in message
    assert "your value there: 5" in message
    assert "1 expected key(s) missing, e.g. 'b'" in failure(expect_equal, {"a": 1}, {"a": 1, "b": 2}, what="vocab")
    assert "is 1, which is wrong" in failure(expect_equal, 1, 2, what="count")
    expect_equal((torch.tensor([1]), [2, "x"]), (torch.tensor([1]), [2, "x"]), what="nested")
    assert "the outputs changed" in failure(expect_true, False, what="causality", problem="the outputs changed")


def test_graders_use_only_teaching_checks():
    """A bare `assert` in a grader would print the expected value through pytest's assertion rewriting."""
    for grader in (REPO / "graders").glob("ch*.py"):
        tree = ast.parse(grader.read_text(encoding="utf-8"))
        asserts = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
        assert asserts == [], f"{grader.name}: bare assert on lines {asserts}"


def sample_report() -> GradeReport:
    return GradeReport(assignment="ch03_attention", notebook="nb.ipynb", duration=1.5, tests=[
        TestResult("test_a", "passed", 2, 2, duration=0.1, description="A works."),
        TestResult("test_b", "failed", 0, 1, "output: values differ. Hint: mask.", 0.2, "B works."),
        TestResult("test_c", "timeout", 0, 3, "Your code did not finish in time", 3.0),
    ])


def test_terminal_table_and_json_render_the_same_result(tmp_path):
    report = sample_report()
    table = render_table(report, width=100)
    assert "test_b" in table
    assert "FAIL" in table
    assert "TIMEOUT" in table
    assert "2/6" in table
    assert "Checks: B works. output: values differ. Hint: mask." in table
    path = tmp_path / "out" / "result.json"
    write_json(report, path)
    data = json.loads(path.read_text())
    assert data["score"] == 2
    assert data["max_score"] == 6
    assert data["assignment"] == "ch03_attention"
    assert [t["status"] for t in data["tests"]] == ["passed", "failed", "timeout"]
    assert set(data["tests"][0]) == {"name", "status", "score", "max_score", "message", "duration"}


def test_a_status_is_a_str_enum_that_every_writer_sees_as_its_plain_value():
    """Statuses are one Enum; a str one, so that comparisons, lookups and every output stay as they were."""
    result = TestResult("test_c", "timeout", 0, 3)
    assert result.status is Status.TIMEOUT
    assert (result.status == "timeout", f"{result.status}", str(result.status)) == (True, "timeout", "timeout")
    assert {"timeout": "TIMEOUT"}[result.status] == "TIMEOUT"
    assert json.dumps({"status": result.status}) == '{"status": "timeout"}'
    written = io.StringIO()
    csv.writer(written).writerow([result.status])
    assert written.getvalue() == "timeout\r\n"
    data = sample_report().to_dict()
    assert [type(t["status"]) for t in data["tests"]] == [str, str, str]
    assert [t.status for t in GradeReport.from_dict(data).tests] == [Status.PASSED, Status.FAILED, Status.TIMEOUT]
    with pytest.raises(ValueError, match="skipped"):
        TestResult("test_d", "skipped", 0, 1)


def test_a_result_scores_its_points_only_when_it_passed():
    assert TestResult.scored("test_a", "passed", 2).score == 2
    assert [TestResult.scored("test_a", status, 2).score for status in ("failed", "error", Status.TIMEOUT)] == [0] * 3
    assert TestResult.scored("test_a", Status.ERROR, 2, duration=-0.5).duration == 0.0


def test_a_hint_function_is_called_only_when_the_check_fails():
    calls = []

    def hint():
        calls.append(1)
        return "the named mistake."

    expect_close(torch.ones(2), torch.ones(2), what="x", hint=hint)
    assert calls == []
    assert "Hint: the named mistake." in failure(expect_close, torch.zeros(2), torch.ones(2), what="x", hint=hint)
    assert calls == [1]


def test_a_cell_that_failed_to_load_leads_the_message_of_a_missing_name():
    """After a SyntaxError in the cell that defines GELU, a test that misses GELU says so first, not last."""
    from course.grading.feedback import student_error_message
    from course.worker.runtime.records import ErrorKind, ErrorRecord

    broken = ErrorRecord(ErrorKind.RAISED, "invalid syntax", "SyntaxError", cell="gelu", line=10, code="return 0.5 +*")
    missing = student_error_message(ErrorRecord(ErrorKind.MISSING, name="GELU"), cell_errors=[broken])
    assert missing.startswith("While loading your notebook, cell 'gelu' failed: SyntaxError"), missing
    assert "SyntaxError: invalid syntax" in missing
    assert missing.index("SyntaxError") < missing.index("`GELU`")
    raised = student_error_message(ErrorRecord(ErrorKind.RAISED, "shapes differ", "ValueError", cell="block", line=3),
                                   cell_errors=[broken])
    assert raised.startswith("Your code raised ValueError")
    assert "Note: while loading your notebook, cell 'gelu' failed" in raised
