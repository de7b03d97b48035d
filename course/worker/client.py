"""The trusted side of the worker: start it, load the submission, run probes under a deadline.

One worker serves all the tests of one submission (torch is imported once). A fault in the worker (a crash,
`os._exit`, a hang past the deadline, garbage on the channel) fails the call that caused it; the worker is
then killed with its whole process group and started afresh, with the submission reloaded, for the next call.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from course.worker import protocol
from course.worker.cgroup import WorkerCgroup
from course.worker.records import ErrorKind, ErrorRecord
from course.worker.sandbox import SandboxPlan, visible_paths

# The worker's own code, copied into its folder (the course repository is not visible inside the sandbox).
RUNTIME_FILES = [Path(__file__).with_name(name) for name in ("bootstrap.py", "protocol.py", "guard.py", "records.py")]
# The largest reply accepted from the worker: outputs of tiny models are a few kB.
MAX_REPLY_BYTES = 64 * 1024 * 1024

# Top-level packages of this repository that student code may only see through the support folder.
BLOCKED_PACKAGES = ("reference", "graders", "course")

# Environment variables passed through to the worker; everything else is dropped.
PASSED_ENV_PREFIXES = ("CUDA_", "NVIDIA_", "HIP_", "ROCR_", "PYTORCH_")


class StudentCodeError(Exception):
    """Student code raised, crashed the worker, is missing a definition or returned something unusable.

    `record` says what and where, as fields; `hint` may be added by a grader that recognises the error.
    """

    def __init__(self, record: ErrorRecord, hint: str | None = None):
        super().__init__(record.message)
        self.record = record
        self.hint = hint

    @classmethod
    def of(cls, kind: ErrorKind, message: str) -> StudentCodeError:
        return cls(ErrorRecord(kind=kind, message=message))


class StudentTimeout(Exception):
    """Student code did not finish before the deadline."""


class GraderBug(Exception):
    """A fault of the course (e.g. a probe called with arguments it does not take), found on the trusted side."""


@dataclass
class LoadReport:
    cell_errors: list[ErrorRecord]


class WorkerClient:
    def __init__(self, cells: list[dict], support_files: dict[str, Path], device: str = "cpu",
                 threads: int = 1, startup_timeout: float = 120.0, load_timeout: float = 30.0,
                 tiktoken_files: dict[str, Path] | None = None, sandbox: SandboxPlan | None = None):
        """
        cells: [{"label", "source"}] to execute, in order, as the submission module.
        support_files: relative path inside the support folder -> file to copy there (e.g. reference/text_data.py).
        startup_timeout: for the interpreter and torch to start. load_timeout: for the cells to execute.
        tiktoken_files: cache name -> file, seeded into the worker's private TIKTOKEN_CACHE_DIR.
        sandbox: isolation and limits (default: process isolation with no limits, for tests of the client).
        """
        self.sandbox = sandbox or SandboxPlan(isolation="process", note="")
        self.cells = cells
        self.support_files = support_files
        self.tiktoken_files = tiktoken_files or {}
        self.device = device
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.load_timeout = load_timeout
        self.deadline: float | None = None  # time.monotonic() by which everything must end (the submission's budget)
        self.last_overhead = 0.0  # seconds the last call() spent (re)starting the worker and loading the submission
        self.process: subprocess.Popen | None = None
        self.cgroup: WorkerCgroup | None = None
        self.workdir: Path | None = None
        self.load_report: LoadReport | None = None
        self.fatal: Exception | None = None  # a load that crashed or hung: not retried for every test
        self.configured = False
        self.starts = 0
        self.request_id = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the process (returns at once; torch is imported in the background)."""
        self.workdir = Path(tempfile.mkdtemp(prefix="course-worker-"))
        support = self.workdir / "support"
        for relative, source in self.support_files.items():
            target = support / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        for package in {Path(r).parts[0] for r in self.support_files}:
            (support / package / "__init__.py").touch()
        support.mkdir(exist_ok=True)
        cache = self.workdir / "tiktoken-cache"
        cache.mkdir()
        for name, source in self.tiktoken_files.items():
            shutil.copyfile(source, cache / name)
        home = self.workdir / "home"
        home.mkdir()
        (home / "tmp").mkdir()
        runtime = self.workdir / "runtime"
        runtime.mkdir()
        for source in RUNTIME_FILES:
            shutil.copyfile(source, runtime / source.name)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "TIKTOKEN_CACHE_DIR": str(cache),
            "OMP_NUM_THREADS": str(self.threads),
        }
        env.update({k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)})
        # The log lives outside the worker's folder, which student code may write to or empty.
        log_fd, self.log_path = tempfile.mkstemp(prefix="course-worker-", suffix=".log")
        self.log = os.fdopen(log_fd, "wb")
        settings = {"limits": self.sandbox.limits}
        if self.sandbox.isolation == "process":
            settings["parent_pid"] = os.getpid()
        settings = json.dumps(settings)
        command = self.sandbox.command(sys.executable, runtime / "bootstrap.py", self.workdir, self.device, settings)
        # A control group (where this machine allows one) limits the worker's processes and catches them all.
        self.cgroup = WorkerCgroup.create(self.sandbox.pids_max) if self.sandbox.pids_max else None
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            cwd=home, env=env, start_new_session=True, close_fds=True,
            preexec_fn=self.cgroup.enter if self.cgroup else None,
        )
        self.starts += 1
        self.load_report = None
        # Every write has a deadline: student code could shrink the pipe and stop reading it.
        os.set_blocking(self.process.stdin.fileno(), False)
        # Sent now, answered once torch is imported; the reply is awaited by the first load().
        self.configured = False
        try:
            protocol.send(self.process.stdin.fileno(), {
                "op": "configure", "id": self._next_id(), "support_dir": str(support), "device": self.device,
                "threads": self.threads,
                "blocked_packages": list(BLOCKED_PACKAGES),
                "audit": {"writable": [str(self.workdir)], "readable": visible_paths(self.device),
                          "strict_paths": self.sandbox.isolation == "process"}},
                time.monotonic() + self.startup_timeout)
        except (protocol.ChannelClosed, protocol.ChannelTimeout):
            pass  # the worker died (or hangs) at once; load() reports how it ended

    def close(self) -> None:
        self._kill()
        if self.workdir is not None:
            _make_removable(self.workdir)
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _kill(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                stream.close()
            self.process = None
            self.log.close()
            os.unlink(self.log_path)
        if self.cgroup is not None:  # whatever the worker started, in or out of its process group
            self.cgroup.remove()
            self.cgroup = None

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- requests --------------------------------------------------------------------------------------------
    def load(self) -> LoadReport:
        """Make sure a live worker holds the submission; returns what went wrong while executing its cells.

        A start or a load that crashes or hangs is fatal: every later call fails with the same message at once,
        instead of waiting for the same hang again in every test.
        """
        if self.fatal is not None:
            raise self.fatal
        if self._alive() and self.load_report is not None:
            return self.load_report
        if not self._alive():
            self.close()
            self.start()
        try:
            if not self.configured:
                self._receive(time.monotonic() + self._bounded(self.startup_timeout),
                              during="starting the process that runs your code")
                self.configured = True
            reply = self._request({"op": "load", "cells": self.cells}, timeout=self._bounded(self.load_timeout),
                                  during="running your notebook's cells")
        except (StudentTimeout, StudentCodeError) as exc:
            self.fatal = exc
            raise
        errors = reply.get("cell_errors")
        errors = errors if type(errors) is list else []
        self.load_report = LoadReport(cell_errors=[_load_error(record) for record in errors[:100]])
        return self.load_report

    def call(self, probe_name: str, probe_source: str, kwargs: dict, timeout: float):
        """Run a probe against the loaded submission within `timeout` seconds; returns its (plain) value or raises.

        Starting the worker and loading the submission are not part of `timeout` (see `last_overhead`).
        """
        started = time.monotonic()
        try:
            self.load()
        finally:
            self.last_overhead = time.monotonic() - started
        reply = self._request({"op": "call", "probe_name": probe_name, "probe_source": probe_source,
                               "kwargs": kwargs}, timeout=self._bounded(timeout), during="running your code")
        if reply.get("ok") is True and "value" in reply:
            return reply["value"]
        raise StudentCodeError(ErrorRecord.from_reply(reply.get("error")))

    def _bounded(self, seconds: float) -> float:
        """`seconds`, or less when the submission's time budget (`deadline`) ends sooner."""
        return seconds if self.deadline is None else max(0.0, min(seconds, self.deadline - time.monotonic()))

    def _next_id(self) -> int:
        self.request_id += 1
        return self.request_id

    def _request(self, message: dict, timeout: float, during: str) -> dict:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        try:
            protocol.send(self.process.stdin.fileno(), {**message, "id": self._next_id()}, deadline)
        except protocol.ChannelClosed:
            pass  # the worker is gone; _receive reports how it ended
        except protocol.ChannelTimeout:
            self._kill()
            raise StudentTimeout(f"stopped after {timeout:.1f} s while {during}: the process running your code "
                                 "stopped reading what the grader sends") from None
        return self._receive(deadline, during)

    def _receive(self, deadline: float, during: str) -> dict:
        assert self.process is not None
        limit = deadline - time.monotonic()
        try:
            reply = protocol.receive(self.process.stdout.fileno(), deadline, max_bytes=MAX_REPLY_BYTES)
            # Student code can write to the channel too: a message with an earlier id is a leftover (the real
            # reply to a request whose reply was forged) and is skipped. A forged reply with the right id is
            # no worse than returning those values, and it is checked like any result.
            while isinstance(reply, dict) and type(reply.get("id")) is int and reply["id"] < self.request_id:
                reply = protocol.receive(self.process.stdout.fileno(), deadline, max_bytes=MAX_REPLY_BYTES)
        except protocol.ChannelTimeout:
            self._kill()
            raise StudentTimeout(
                f"stopped after {limit:.1f} s while {during} (an endless loop, or far too slow?)") from None
        except protocol.ChannelClosed:
            code = self.process.wait(timeout=5) if self.process else None
            self._kill()
            raise StudentCodeError.of(ErrorKind.CRASH, f"the process running your code ended while {during} "
                                                       f"({_describe_exit(code, self.sandbox.isolation)})") from None
        except protocol.BadMessage as exc:
            self._kill()
            raise StudentCodeError.of(
                ErrorKind.BAD_OUTPUT, f"garbled reply from the process running your code while {during}: {exc}"
            ) from None
        if not isinstance(reply, dict) or reply.get("id") != self.request_id:
            self._kill()
            raise StudentCodeError.of(ErrorKind.BAD_OUTPUT,
                                      f"garbled reply from the process running your code while {during}")
        return reply


def _load_error(data) -> ErrorRecord:
    """A cell that failed while loading: whatever the worker says, the error is the student's cell's."""
    if type(data) is dict and data.get("kind") not in (ErrorKind.MISSING.value, ErrorKind.NOT_IMPLEMENTED.value):
        data = {**data, "kind": ErrorKind.RAISED.value}
    return ErrorRecord.from_reply(data)


def _make_removable(folder: Path) -> None:
    """Student code may have made files or folders read-only in its folder: give them back their write bit."""
    for root, dirs, _files in os.walk(folder):
        for name in dirs:
            try:
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
            except (OSError, NotImplementedError):
                pass


def _describe_exit(code: int | None, isolation: str = "process") -> str:
    if code is None:
        return "it stopped answering"
    if isolation == "bubblewrap" and code > 128:
        code = 128 - code  # bwrap exits with 128 + N when the worker was killed by signal N
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {"SIGKILL": " (out of memory?)", "SIGSEGV": " (a crash in native code?)",
                "SIGXCPU": " (it used up the CPU time allowed for grading)"}.get(name, "")
        return f"killed by {name}{hint}"
    return f"exit status {code}: did your code call os._exit() or exit()?"
