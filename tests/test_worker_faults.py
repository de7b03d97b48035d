"""Faults in student code cost the test that met them, never the run: a hang is a timeout, a crash or an
exception is an error with a clear message, the worker is restarted and the other tests still pass."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from course.grading.runner import grade_notebook
from course.grading.session import Deadline
from course.worker.client import StudentCodeError, StudentTimeout, WorkerClient
from course.worker.runtime.records import ErrorKind
from tests.submissions.build import cell_by_id, load, source, with_edits

CH03 = "ch03_attention"


def grade_with(course, tmp_path, *, timeout=None, **edits):
    assignment = course.assignment(CH03)
    if timeout is not None:
        assignment = assignment.model_copy(update={"timeout": timeout})
    notebook = with_edits(course.solution_notebook(assignment), tmp_path / assignment.notebook, **edits)
    report = grade_notebook(course, assignment, notebook, device="cpu")
    return {t.name: t for t in report.tests}, report


def body_replaced(course, grade_id, old, new):
    text = source(cell_by_id(load(course.solution_notebook(course.assignment(CH03))), grade_id))
    assert text.count(old) == 1
    return {grade_id: text.replace(old, new)}


def only_failures(results):
    return {name: (t.status, t.message) for name, t in results.items() if t.status != "passed"}


def test_endless_loop_is_a_timeout_and_the_rest_still_pass(course, tmp_path):
    sources = body_replaced(course, "simplified_self_attention", "attn_scores = inputs @ inputs.T",
                            "while True:\n        pass")
    results, report = grade_with(course, tmp_path, timeout=3, sources=sources)
    failures = only_failures(results)
    assert list(failures) == ["test_simplified_self_attention"]
    assert failures["test_simplified_self_attention"][0] == "timeout"
    assert "did not finish in time" in failures["test_simplified_self_attention"][1]
    assert report.score == report.max_score - 1


def test_os_exit_is_an_error_and_the_worker_restarts(course, tmp_path):
    sources = body_replaced(course, "self_attention_v1", "keys = x @ self.W_key",
                            "import os; os._exit(0)\n        keys = x @ self.W_key")
    results, _ = grade_with(course, tmp_path, sources=sources)
    failures = only_failures(results)
    assert list(failures) == ["test_self_attention_v1"]
    status, message = failures["test_self_attention_v1"]
    assert status == "error"
    assert "ended" in message
    assert "os._exit" in message


def test_exception_names_the_cell_and_line(course, tmp_path):
    sources = body_replaced(course, "self_attention_v2", "keys = self.W_key(x)",
                            "raise ValueError('shapes confuse me')\n        keys = self.W_key(x)")
    results, _ = grade_with(course, tmp_path, sources=sources)
    status, message = only_failures(results)["test_self_attention_v2"]
    assert status == "error"
    assert "ValueError: shapes confuse me" in message
    assert "cell 'self_attention_v2'" in message
    assert "in forward" in message


def test_syntax_error_in_one_cell_keeps_the_other_cells(course, tmp_path):
    sources = body_replaced(course, "multi_head_attention_wrapper", "return torch.cat(", "return torch.cat((")
    results, _ = grade_with(course, tmp_path, sources=sources)
    failures = only_failures(results)
    assert set(failures) == {"test_wrapper_output"}
    status, message = failures["test_wrapper_output"]
    assert status == "error"
    assert "MultiHeadAttentionWrapper` is not defined" in message
    assert "SyntaxError" in message
    assert "multi_head_attention_wrapper" in message


def test_renamed_function_is_reported_as_missing(course, tmp_path):
    sources = body_replaced(course, "simplified_self_attention", "def simplified_self_attention(",
                            "def simple_attention(")
    results, _ = grade_with(course, tmp_path, sources=sources)
    status, message = only_failures(results)["test_simplified_self_attention"]
    assert status == "error"
    assert "`simplified_self_attention` is not defined in your notebook" in message


def test_demo_cells_and_prints_do_not_interfere(course, tmp_path):
    """Demo cells (no nbgrader metadata) are not executed; prints in graded code do not corrupt the channel."""
    assignment = course.assignment(CH03)
    notebook = load(course.solution_notebook(assignment))
    notebook["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                              "source": "import os\nos._exit(3)  # a demo cell that would kill the grader"})
    cell = cell_by_id(notebook, "simplified_self_attention")
    cell["source"] = source(cell).replace("attn_scores = inputs @ inputs.T",
                                          "print('debug ' * 10000)\n    attn_scores = inputs @ inputs.T")
    path = tmp_path / assignment.notebook
    path.write_text(json.dumps(notebook), encoding="utf-8")
    report = grade_notebook(course, assignment, path, device="cpu")
    assert report.score == report.max_score, only_failures({t.name: t for t in report.tests})


def test_unusable_return_value_is_an_error(course, tmp_path):
    sources = body_replaced(course, "simplified_self_attention", "return attn_weights @ inputs",
                            "return object()")
    results, _ = grade_with(course, tmp_path, sources=sources)
    status, message = only_failures(results)["test_simplified_self_attention"]
    assert status == "error"
    assert "returned an object of type object" in message


PROBE_SOURCE = '''def inspect_worker(student, names):
    import importlib, os, sys
    found = {}
    for name in names:
        try:
            importlib.import_module(name)
            found[name] = "imported"
        except ImportError as exc:
            found[name] = str(exc)
    return {"found": found, "cwd": os.getcwd(), "home": os.environ.get("HOME", ""),
            "env": sorted(os.environ), "isolated": sys.flags.isolated}
'''


def test_worker_sees_support_modules_only(course):
    """Chapter 4's support (computed from its notebook and checks) is chapter 3's attention and the offline
    tokenizer; its own reference, other chapters' modules, the graders and the course are out of reach."""
    assignment = course.assignment("ch04_gpt")
    assert sorted(assignment.support) == ["reference.attention", "reference.tiktoken_offline"]
    support = {str(course.module_path(m).relative_to(course.root)): course.module_path(m) for m in assignment.support}
    client = WorkerClient(cells=[], support_files=support)
    client.start()
    try:
        names = ["reference.attention", "reference.tiktoken_offline", "reference.gpt", "reference.text_data",
                 "graders", "graders.ch04_gpt", "course", "course.worker.client"]
        value = client.call("inspect_worker", PROBE_SOURCE, {"names": names}, timeout=60)
    finally:
        workdir = client.worker.folder
        client.close()
    found = value["found"]
    assert found["reference.attention"] == "imported"
    assert found["reference.tiktoken_offline"] == "imported"
    for blocked in names[2:]:
        assert "not available to submissions" in found[blocked], (blocked, found[blocked])
    assert value["isolated"] == 1
    assert value["cwd"].startswith(str(workdir))
    assert value["home"].startswith(str(workdir))
    assert not [name for name in value["env"] if "TOKEN" in name and name != "TIKTOKEN_CACHE_DIR"]
    assert not Path(workdir).exists(), "the worker's folder is removed after grading"


def test_an_error_in_probe_code_after_student_code_is_the_students_and_not_fatal(course):
    """Once student code ran in the worker, an error there is the submission's (the worker cannot tell a probe
    bug from a library the notebook replaced); probe bugs are caught on the trusted side instead
    (tests/test_grading_api.py)."""
    client = WorkerClient(cells=[], support_files={})
    client.start()
    try:
        with pytest.raises(StudentCodeError) as excinfo:
            client.call("broken", "def broken(student):\n    return undefined_name\n", {}, timeout=60)
        assert excinfo.value.record.kind is ErrorKind.UNUSABLE
        assert excinfo.value.record.type == "NameError"
        ok = client.call("ok", "def ok(student):\n    return torch.ones(2)\n", {}, timeout=60)
        assert ok.tolist() == [1.0, 1.0]
    finally:
        client.close()


@pytest.mark.skipif(sys.platform != "linux", reason="the crash test relies on Linux signals")
def test_segfault_is_an_error(course, tmp_path):
    """A real crash in native code (ctypes is refused by the sandbox; faulthandler's test hook is not)."""
    sources = body_replaced(course, "simplified_self_attention", "attn_scores = inputs @ inputs.T",
                            "import faulthandler; faulthandler._sigsegv()\n    attn_scores = inputs @ inputs.T")
    results, _ = grade_with(course, tmp_path, sources=sources)
    failures = only_failures(results)
    assert list(failures) == ["test_simplified_self_attention"]
    status, message = failures["test_simplified_self_attention"]
    assert status == "error"
    assert "SIGSEGV" in message


def test_endless_loop_while_loading_times_out_once_for_all_tests(course, tmp_path):
    """A hang at the top level of a solution cell is met once; every test then fails at once with that message."""
    sources = body_replaced(course, "simplified_self_attention", "def simplified_self_attention(",
                            "while True:\n    pass\n\ndef simplified_self_attention(")
    started = time.monotonic()
    results, report = grade_with(course, tmp_path, timeout=2, sources=sources)
    assert time.monotonic() - started < 20
    assert {t.status for t in results.values()} == {"timeout"}
    assert all("while running your notebook's cells" in t.message for t in results.values())
    assert report.score == 0


def test_one_worker_serves_many_calls_and_a_crash_costs_one_restart():
    cells = [{"label": "answer", "source": "def answer():\n    return 42\n"}]
    client = WorkerClient(cells=cells, support_files={})
    client.start()
    ask = "def ask(student):\n    return student.answer()\n"
    try:
        assert [client.call("ask", ask, {}, timeout=60) for _ in range(3)] == [42, 42, 42]
        assert client.starts == 1, "torch is imported once per submission, not once per call"
        with pytest.raises(StudentCodeError) as excinfo:
            client.call("die", "def die(student):\n    import os\n    os._exit(7)\n", {}, timeout=60)
        assert excinfo.value.record.kind is ErrorKind.CRASH
        assert "exit status 7" in excinfo.value.record.message
        assert client.call("ask", ask, {}, timeout=60) == 42
        assert client.starts == 2
    finally:
        client.close()


FORGE_AND_SLEEP = """def forge_and_sleep(student):
    import fcntl, io, os, struct, sys, time
    frame = sys._getframe(1)
    while not any(isinstance(v, dict) and v.get("op") == "call" for v in frame.f_locals.values()):
        frame = frame.f_back
    request = next(v for v in frame.f_locals.values() if isinstance(v, dict) and v.get("op") == "call")
    for fd in range(20):
        try:
            fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe
        except OSError:
            pass
    buffer = io.BytesIO()
    torch.save({"ok": True, "value": 1, "id": request["id"]}, buffer)
    message = struct.pack("!Q", len(buffer.getvalue())) + buffer.getvalue()
    for fd in range(3, 20):
        try:
            os.write(fd, message)
        except OSError:
            pass
    time.sleep(3600)
"""


def test_a_worker_that_stops_reading_costs_one_timeout_not_a_blocked_grader():
    """The worker answers a request itself (a forged reply), shrinks its request pipe and stops reading: the next
    request, larger than the pipe, cannot be written, and the write's deadline ends the wait."""
    client = WorkerClient(cells=[], support_files={})
    client.start()
    try:
        assert client.call("forge_and_sleep", FORGE_AND_SLEEP, {}, timeout=60) == 1
        started = time.monotonic()
        with pytest.raises(StudentTimeout, match="stopped reading what the grader sends"):
            client.call("ok", "def ok(student, x):\n    return x\n", {"x": torch.zeros(100_000)}, timeout=3)
        assert time.monotonic() - started < 10
    finally:
        client.close()


def test_a_result_too_large_for_the_workers_memory_is_an_error_and_the_worker_lives_on():
    """Copying and encoding a huge result needs memory the worker may not have (torch raises RuntimeError, not
    MemoryError): that call fails with the memory limit in its message, and the same worker serves the next."""
    from course.worker.sandbox import plan_sandbox

    plan = plan_sandbox("process", memory_mb=1024, cpu_seconds=600, file_mb=64, device="cpu")
    client = WorkerClient(cells=[], support_files={}, sandbox=plan)
    client.start()
    try:
        with pytest.raises(StudentCodeError) as excinfo:
            client.call("huge", "def huge(student):\n    return torch.zeros(60_000_000)\n", {}, timeout=60)
        assert "at most 1024 MB" in excinfo.value.record.message
        assert client.call("ok", "def ok(student):\n    return torch.ones(2)\n", {}, timeout=60).tolist() == [1.0, 1.0]
        assert client.starts == 1
    finally:
        client.close()


def test_the_whole_submissions_budget_cuts_every_wait_for_the_worker_short():
    """The client keeps to the submission's Deadline: a call given 60 s ends when the budget does."""
    deadline = Deadline(60, whole=10)
    client = WorkerClient(cells=[], support_files={}, deadline=deadline)
    client.start()
    try:
        with pytest.raises(StudentTimeout) as excinfo:  # (while starting, on a very slow machine)
            client.call("slow", "def slow(student):\n    import time\n    time.sleep(60)\n", {}, timeout=60)
        assert time.monotonic() < deadline.ends + 5
        assert "time budget for the whole submission ran out" in deadline.timeout_message(excinfo.value)
    finally:
        client.close()
