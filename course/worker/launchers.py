"""Starting worker processes: one fresh interpreter each, or forks of a template that has imported torch.

A worker is the process that runs one submission's code (course/worker/bootstrap.py); the client
(course/worker/client.py) talks to it over two pipes. How it is started is the launcher's business:

- `DirectLauncher` starts a fresh interpreter for every worker (inside bubblewrap where the plan says so), with
  its own folder: about two seconds of CPU to import torch each time. It works everywhere.
- `TemplateLauncher` (Linux) starts ONE template process per launcher, inside the same sandbox, that imports
  torch and then only forks: each worker is a fork of it, ready in milliseconds. The template serves one worker
  at a time. Between two workers it kills everything the last one started and the trusted side empties the
  last one's folder, so a worker never meets another's files or processes. The template cannot be inspected
  or altered by its workers (it is not dumpable, so they cannot ptrace it or read its memory; its code and
  support files are mounted read-only under bubblewrap); a worker that kills or stops it only costs a
  restart of the template. The trade-off against a fresh interpreter per worker: workers of one launcher share
  the template's sandbox (its namespaces and mounts) one after the other, instead of each having its own.

Both give the client a `WorkerProcess`: the two pipe ends, the worker's writable folder, and `kill()`, which
ends the worker and everything it started and returns how it ended (a return code as Popen writes it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from course.worker.cgroup import WorkerCgroup
from course.worker.sandbox import SandboxPlan

# The worker's own code, copied into its folder (the course repository is not visible inside the sandbox).
RUNTIME_FILES = [Path(__file__).with_name(name) for name in ("bootstrap.py", "protocol.py", "guard.py", "records.py")]
# Environment variables passed through to the worker; everything else is dropped.
PASSED_ENV_PREFIXES = ("CUDA_", "NVIDIA_", "HIP_", "ROCR_", "PYTORCH_")
# How long the template may take to answer a request (fork, kill), once torch is imported.
CONTROL_TIMEOUT = 10.0


@dataclass
class WorkerSpec:
    """What every worker of a launcher shares: the files it may import, the device, its sandbox."""

    support_files: dict[str, Path] = field(default_factory=dict)  # path in the support folder -> file to copy
    tiktoken_files: dict[str, Path] = field(default_factory=dict)  # cache name -> file (GPT-2's BPE files)
    device: str = "cpu"
    threads: int = 1
    sandbox: SandboxPlan = field(default_factory=lambda: SandboxPlan(isolation="process", note=""))
    startup_timeout: float = 120.0  # for the interpreter to start and import torch


class WorkerProcess:
    """A started worker, as the client sees it."""

    def __init__(self, request_fd: int, reply_fd: int, home: Path, folder: Path, kill):
        self.request_fd = request_fd  # non-blocking: every write has a deadline
        self.reply_fd = reply_fd
        self.home = home  # its working folder, the only writable one
        self.folder = folder  # what it may read of the launcher's files (support, runtime, tiktoken cache)
        self._kill = kill
        self.exit_code: int | None = None
        self.killed = False

    @property
    def support_dir(self) -> Path:
        return self.folder / "support"

    def kill(self) -> int | None:
        """End the worker and everything it started; returns its return code (negative: killed by that signal),
        None if that could not be learnt. Safe to call twice."""
        if not self.killed:
            self.killed = True
            for fd in (self.request_fd, self.reply_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.exit_code = self._kill()
        return self.exit_code


class Launcher:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.starts = 0  # workers started (a fork counts as a start)
        self.log_path: str | None = None

    def spawn(self) -> WorkerProcess:
        raise NotImplementedError

    def warm(self) -> bool:
        """Start, in the background, what the next spawn() needs; False if there is nothing to start ahead."""
        return False

    def close(self) -> None:
        raise NotImplementedError

    # -- shared by the launchers ----------------------------------------------------------------------------
    def _prepare(self, folder: Path) -> None:
        """The read-only part of a worker's folder: support modules, GPT-2's BPE files, the worker's own code."""
        support = folder / "support"
        support.mkdir(parents=True)
        for relative, source in self.spec.support_files.items():
            target = support / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        for package in {Path(r).parts[0] for r in self.spec.support_files}:
            (support / package / "__init__.py").touch()
        cache = folder / "tiktoken-cache"
        cache.mkdir()
        for name, source in self.spec.tiktoken_files.items():
            shutil.copyfile(source, cache / name)
        runtime = folder / "runtime"
        runtime.mkdir()
        for source in RUNTIME_FILES:
            shutil.copyfile(source, runtime / source.name)

    def _environment(self, folder: Path, home: Path) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "TIKTOKEN_CACHE_DIR": str(folder / "tiktoken-cache"),
            "OMP_NUM_THREADS": str(self.spec.threads),
        }
        env.update({k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)})
        return env

    def _settings(self, **extra) -> str:
        settings = {"limits": self.spec.sandbox.limits, **extra}
        if self.spec.sandbox.isolation == "process":
            settings["parent_pid"] = os.getpid()  # bubblewrap's --die-with-parent does this itself
        return json.dumps(settings)

    def _open_log(self):
        # The log lives outside the worker's folder, which student code may write to or empty.
        fd, self.log_path = tempfile.mkstemp(prefix="course-worker-", suffix=".log")
        return os.fdopen(fd, "wb")


def new_home(parent: Path) -> Path:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=parent))
    (home / "tmp").mkdir()
    return home


def remove_folder(folder: Path) -> None:
    """Remove a worker's folder, whatever its code made read-only in it."""
    for root, dirs, _files in os.walk(folder):
        for name in dirs:
            try:
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
            except (OSError, NotImplementedError):
                pass
    shutil.rmtree(folder, ignore_errors=True)


def _returncode(code: int | None, isolation: str) -> int | None:
    if code is not None and isolation == "bubblewrap" and code > 128:
        return 128 - code  # bwrap exits with 128 + N when the process it ran was killed by signal N
    return code


# ------------------------------------------------------------------------------------------------------------
# A fresh interpreter per worker


class DirectLauncher(Launcher):
    """Every worker is a new interpreter (in bubblewrap where the plan says so) with a folder of its own."""

    def spawn(self) -> WorkerProcess:
        folder = Path(tempfile.mkdtemp(prefix="course-worker-"))
        self._prepare(folder)
        home = new_home(folder)
        sandbox = self.spec.sandbox
        command = sandbox.command(sys.executable, folder / "runtime" / "bootstrap.py", folder, home,
                                  self.spec.device, self._settings())
        # A control group (where this machine allows one) limits the worker's processes and catches them all.
        group = WorkerCgroup.create(sandbox.pids_max) if sandbox.pids_max else None
        log = self._open_log()
        log_path = self.log_path
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            cwd=home, env=self._environment(folder, home), start_new_session=True, close_fds=True,
            preexec_fn=group.enter if group else None,
        )
        self.starts += 1
        request_fd, reply_fd = os.dup(process.stdin.fileno()), os.dup(process.stdout.fileno())
        process.stdin.close()
        process.stdout.close()
        os.set_blocking(request_fd, False)

        def kill() -> int | None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = process.wait()
            if group is not None:  # whatever the worker started, in or out of its process group
                group.remove()
            log.close()
            os.unlink(log_path)
            remove_folder(folder)
            return _returncode(code, sandbox.isolation)

        return WorkerProcess(request_fd, reply_fd, home, folder, kill)

    def close(self) -> None:
        pass  # every worker owns its folder and is removed by its own kill()


# ------------------------------------------------------------------------------------------------------------
# Forks of a template


class TemplateLauncher(Launcher):
    """Workers forked from one template process that has imported torch (Linux)."""

    def __init__(self, spec: WorkerSpec):
        super().__init__(spec)
        self.folder: Path | None = None
        self.template: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.group: WorkerCgroup | None = None
        self.log = None
        self.template_starts = 0

    def spawn(self) -> WorkerProcess:
        for attempt in range(2):
            if self.template is None or self.template.poll() is not None:
                self._start_template()
            request_read, request_write = os.pipe()
            reply_read, reply_write = os.pipe()
            home = new_home(self.folder / "homes")
            try:
                answer = self._ask({"op": "fork", "home": str(home)}, fds=[request_read, reply_write],
                                   timeout=self.spec.startup_timeout if attempt == 0 else CONTROL_TIMEOUT)
            except (OSError, TimeoutError, ValueError):
                answer = None
            finally:
                os.close(request_read)
                os.close(reply_write)
            if answer is not None and type(answer.get("pid")) is int:
                break
            os.close(request_write)
            os.close(reply_read)
            remove_folder(home)
            self._stop_template()  # broken (killed or stopped by the last worker?): start afresh
        else:
            raise RuntimeError("the template process that starts workers could not be started")
        self.starts += 1
        os.set_blocking(request_write, False)
        pid = answer["pid"]

        def kill() -> int | None:
            code = None
            try:
                answer = self._ask({"op": "kill", "pid": pid}, timeout=CONTROL_TIMEOUT)
                code = answer.get("returncode") if type(answer.get("returncode")) is int else None
            except (OSError, TimeoutError, ValueError):
                self._stop_template()  # it does not answer: it and everything in its sandbox go
            remove_folder(home)
            return code

        return WorkerProcess(request_write, reply_read, home, self.folder, kill)

    def warm(self) -> bool:
        if self.template is None or self.template.poll() is not None:
            self._start_template()  # torch is imported in the background; the first spawn() waits for it
        return True

    def close(self) -> None:
        self._stop_template()
        if self.folder is not None:
            remove_folder(self.folder)
            self.folder = None

    # -- the template ---------------------------------------------------------------------------------------
    def _start_template(self) -> None:
        self._stop_template()
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="course-template-"))
            self._prepare(self.folder)
            (self.folder / "homes").mkdir()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sandbox = self.spec.sandbox
        settings = self._settings(template={"control_fd": theirs.fileno(),
                                            "own_pid_namespace": sandbox.isolation == "bubblewrap"})
        command = sandbox.command(sys.executable, self.folder / "runtime" / "bootstrap.py", self.folder,
                                  self.folder / "homes", self.spec.device, settings)
        self.group = WorkerCgroup.create(sandbox.pids_max) if sandbox.pids_max else None
        self.log = self._open_log()
        self.template = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, cwd=self.folder / "homes",
            env=self._environment(self.folder, self.folder / "homes"), start_new_session=True, close_fds=True,
            pass_fds=(theirs.fileno(),), preexec_fn=self.group.enter if self.group else None,
        )
        theirs.close()
        self.control = ours
        self.template_starts += 1

    def _stop_template(self) -> None:
        if self.template is not None:
            try:
                os.killpg(self.template.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.template.wait()
            self.template = None
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.group is not None:
            self.group.remove()
            self.group = None
        if self.log is not None:
            self.log.close()
            os.unlink(self.log_path)
            self.log = None

    def _ask(self, request: dict, timeout: float, fds: list[int] = ()) -> dict:
        """One request to the template and its answer (JSON over the control socket, file descriptors beside)."""
        if self.control is None:
            raise OSError("no template")
        deadline = time.monotonic() + timeout
        self.control.settimeout(max(timeout, 0.01))  # a socket timeout raises TimeoutError
        socket.send_fds(self.control, [json.dumps(request).encode()], list(fds))
        while True:  # the first message after a start is "ready", sent once torch is imported
            self.control.settimeout(max(deadline - time.monotonic(), 0.01))
            data = self.control.recv(65536)
            if not data:
                raise OSError("the template closed its socket")
            answer = json.loads(data)
            if not isinstance(answer, dict):
                raise ValueError("not an answer")
            if answer.get("ready") is not True:
                return answer
