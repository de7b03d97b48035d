"""The trusted side of the worker: start it, load the submission, run probes under a deadline.

One worker serves all the tests of one submission (torch is imported once, or not at all when the worker is a
fork of a template: see course/worker/launchers.py). A fault in the worker (a crash, `os._exit`, a hang past the
deadline, garbage on the channel) fails the call that caused it; the worker is then killed with everything it
started, and a fresh one loads the submission again for the next call.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from course.worker.launchers import DirectLauncher, Launcher, WorkerProcess, WorkerSpec
from course.worker.runtime import protocol
from course.worker.runtime.records import ErrorKind, ErrorRecord
from course.worker.sandbox import SandboxPlan, visible_paths

if TYPE_CHECKING:
    from course.grading.session import Deadline

# The largest reply accepted from the worker: outputs of tiny models are a few kB.
MAX_REPLY_BYTES = 64 * 1024 * 1024

# Top-level packages of this repository that student code may only see through the support folder.
BLOCKED_PACKAGES = ("reference", "graders", "course")


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
    def __init__(self, cells: list[dict], support_files: dict[str, Path] | None = None, device: str = "cpu",
                 threads: int = 1, startup_timeout: float = 120.0, load_timeout: float = 30.0,
                 tiktoken_files: dict[str, Path] | None = None, sandbox: SandboxPlan | None = None,
                 launcher: Launcher | None = None, deadline: Deadline | None = None):
        """
        cells: [{"label", "source"}] to execute, in order, as the submission module.
        deadline: the submission's time budgets, which every wait for the worker keeps to (Deadline.bound); None:
            each wait lasts as long as it is given.
        launcher: how workers are started (shared by the submissions of a batch); by default a DirectLauncher of
            its own, made from the other arguments:
        support_files: relative path inside the support folder -> file to copy there (e.g. reference/text_data.py).
        tiktoken_files: cache name -> file, seeded into the worker's private TIKTOKEN_CACHE_DIR.
        sandbox: isolation and limits (default: process isolation with no limits, for tests of the client).
        startup_timeout: for the interpreter and torch to start. load_timeout: for the cells to execute.
        """
        self.owns_launcher = launcher is None
        self.launcher = launcher or DirectLauncher(WorkerSpec(
            support_files=support_files or {}, tiktoken_files=tiktoken_files or {}, device=device, threads=threads,
            sandbox=sandbox or SandboxPlan(isolation="process", note=""), startup_timeout=startup_timeout))
        self.cells = cells
        self.load_timeout = load_timeout
        self.deadline = deadline
        self.last_overhead = 0.0  # seconds the last call() spent (re)starting the worker and loading the submission
        self.worker: WorkerProcess | None = None
        self.load_report: LoadReport | None = None
        self.fatal: Exception | None = None  # a load that crashed or hung: not retried for every test
        self.configured = False
        self.starts = 0
        self.request_id = 0
        self.problems: list[str] = []  # what could not be removed after a worker (one line each), for the report

    @property
    def spec(self) -> WorkerSpec:
        return self.launcher.spec

    # -- lifecycle -------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Get a worker going in the background (the template of a batch, or this submission's own worker)."""
        if not self.launcher.warm():
            self.start()

    def start(self) -> None:
        """Start a worker (returns at once; a fresh interpreter imports torch in the background)."""
        self.worker = self.launcher.spawn()
        self.starts += 1
        self.load_report = None
        # Sent now, answered once the worker is ready; the reply is awaited by the first load().
        self.configured = False
        spec = self.spec
        try:
            protocol.send(self.worker.request_fd, {
                "op": "configure", "id": self._next_id(), "support_dir": str(self.worker.support_dir),
                "device": spec.device, "threads": spec.threads, "blocked_packages": list(BLOCKED_PACKAGES),
                "audit": {"writable": [str(self.worker.home)],
                          "readable": visible_paths(spec.device) + [str(self.worker.folder)],
                          "strict_paths": spec.sandbox.isolation == "process"}},
                time.monotonic() + spec.startup_timeout)
        except (protocol.ChannelClosed, protocol.ChannelTimeout):
            pass  # the worker died (or hangs) at once; load() reports how it ended

    def close(self) -> None:
        self._kill()
        if self.owns_launcher:
            self.launcher.close()

    def _kill(self) -> int | None:
        """End the worker (if any) and everything it started; returns how it ended (see WorkerProcess.kill)."""
        code = None
        if self.worker is not None:
            code = self.worker.kill()
            if self.worker.problem and self.worker.problem not in self.problems:
                self.problems.append(self.worker.problem)
            self.worker = None
        return code

    def _alive(self) -> bool:
        return self.worker is not None

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
            self.start()
        try:
            if not self.configured:
                self._receive(time.monotonic() + self._bounded(self.spec.startup_timeout),
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
        return seconds if self.deadline is None else self.deadline.bound(seconds)

    def _next_id(self) -> int:
        self.request_id += 1
        return self.request_id

    def call_ranks(self, probe_name: str, probe_source: str, kwargs_list: list[dict], timeout: float) -> list:
        """Run a probe in len(kwargs_list) extra workers at once (the ranks of a distributed training: they wait
        for each other), each with its own arguments; returns their values in rank order, or raises the first
        error in rank order. The extra workers come from the same launcher (one sandbox, one loopback network)
        and end when this returns."""
        started = time.monotonic()
        ranks = [WorkerClient(self.cells, load_timeout=self.load_timeout, launcher=self.launcher,
                              deadline=self.deadline) for _ in kwargs_list]
        try:
            for rank in ranks:
                rank.start()
            for rank in ranks:
                rank.load()
            self.last_overhead = time.monotonic() - started
            deadline = time.monotonic() + self._bounded(timeout)
            size = len(ranks)
            for rank, kwargs in zip(ranks, kwargs_list):
                rank._send({"op": "call", "probe_name": probe_name, "probe_source": probe_source, "kwargs": kwargs},
                           deadline, f"running rank {kwargs.get('rank')} of {size}")
            replies = [rank._receive(deadline, f"running rank {index} of {size} (a rank that waits for a peer that "
                                               "never answers stops here)")
                       for index, rank in enumerate(ranks)]
        finally:
            for rank in ranks:
                rank.close()
                self.problems += [problem for problem in rank.problems if problem not in self.problems]
        for reply in replies:
            if not (reply.get("ok") is True and "value" in reply):
                raise StudentCodeError(ErrorRecord.from_reply(reply.get("error")))
        return [reply["value"] for reply in replies]

    def _request(self, message: dict, timeout: float, during: str) -> dict:
        deadline = time.monotonic() + timeout
        self._send(message, deadline, during)
        return self._receive(deadline, during)

    def _send(self, message: dict, deadline: float, during: str) -> None:
        assert self.worker is not None
        try:
            protocol.send(self.worker.request_fd, {**message, "id": self._next_id()}, deadline)
        except protocol.ChannelClosed:
            pass  # the worker is gone; _receive reports how it ended
        except protocol.ChannelTimeout:
            self._kill()
            raise StudentTimeout(f"stopped while {during}: the process running your code stopped reading what the "
                                 "grader sends") from None

    def _receive(self, deadline: float, during: str) -> dict:
        assert self.worker is not None
        limit = deadline - time.monotonic()
        try:
            reply = protocol.receive(self.worker.reply_fd, deadline, max_bytes=MAX_REPLY_BYTES)
            # Student code can write to the channel too: a message with an earlier id is a leftover (the real
            # reply to a request whose reply was forged) and is skipped. A forged reply with the right id is
            # no worse than returning those values, and it is checked like any result.
            while isinstance(reply, dict) and type(reply.get("id")) is int and reply["id"] < self.request_id:
                reply = protocol.receive(self.worker.reply_fd, deadline, max_bytes=MAX_REPLY_BYTES)
        except protocol.ChannelTimeout:
            self._kill()
            raise StudentTimeout(
                f"stopped after {limit:.1f} s while {during} (an endless loop, or far too slow?)") from None
        except protocol.ChannelClosed:
            code = self._kill()
            raise StudentCodeError.of(ErrorKind.CRASH, f"the process running your code ended while {during} "
                                                       f"({_describe_exit(code)})") from None
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


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {"SIGKILL": " (out of memory?)", "SIGSEGV": " (a crash in native code?)",
                "SIGXCPU": " (it used up the CPU time allowed for grading)"}.get(name, "")
        return f"killed by {name}{hint}"
    return f"exit status {code}: did your code call os._exit() or exit()?"
