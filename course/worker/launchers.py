"""Starting worker processes: one fresh interpreter each, or forks of a template that has imported torch.

A worker is the process that runs one submission's code (course/worker/runtime/bootstrap.py); the client
(course/worker/client.py) talks to it over two pipes. How it is started is the launcher's business:

- `DirectLauncher` starts a fresh interpreter for every worker (inside bubblewrap where the plan says so), with
  its own folder: about two seconds of CPU to import torch each time. It works everywhere.
- `TemplateLauncher` (Linux) starts ONE template process per launcher, inside the same sandbox, that imports
  torch and then only forks: each worker is a fork of it, ready in milliseconds. The template cannot be
  inspected or altered by its workers (it is not dumpable, so they cannot ptrace it or read its memory; its code
  and support files are mounted read-only under bubblewrap); a worker that kills or stops it only costs a
  restart of the template. The trade-off against a fresh interpreter per worker: workers of one launcher share
  the template's sandbox (its namespaces and mounts) one after the other, instead of each having its own.
  So that each submission is graded as if alone, nothing passes from one worker to the next:
  - each worker gets its own output file for stdout and stderr (its prints, file offset and size limit are its
    own), made by the trusted side without a name and gone with the worker;
  - when a worker is killed and no other is alive (the ranks of a distributed test live together), the
    template kills whatever else runs in the sandbox and empties its /tmp, /dev/shm and message queues
    (bootstrap.py), and the trusted side empties the folder of all homes and, under process isolation with a
    control group, kills what is left in the group;
  - if something cannot be removed, the problem is reported on that submission (`WorkerProcess.problem`, in
    the report's notes) and the template and its folder are not used again: the next worker gets fresh ones.
  The template and its workers die with the grading process: bubblewrap's --die-with-parent ends the whole
  sandbox (its PID namespace); under process isolation the template is told by PR_SET_PDEATHSIG (it ends its
  workers and its control group, then exits) and every worker dies with its template.

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
from course.worker.runtime.guard import remove_tree
from course.worker.sandbox import SCRATCH_FOLDERS, SandboxPlan

# The worker's own code, copied into its folder as one folder (the course repository is not visible inside the
# sandbox): everything in course/worker/runtime/ but caches and its lint configuration.
RUNTIME_FOLDER = Path(__file__).with_name("runtime")
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
        self._kill = kill  # returns (return code, problem)
        self.exit_code: int | None = None
        self.problem: str | None = None  # one line, if what the worker left could not all be removed
        self.killed = False

    @property
    def support_dir(self) -> Path:
        return self.folder / "support"

    def kill(self) -> int | None:
        """End the worker and everything it started, and remove what it left; returns its return code (negative:
        killed by that signal), None if that could not be learnt. Safe to call twice. What could not be removed
        is said in `problem`."""
        if not self.killed:
            self.killed = True
            for fd in (self.request_fd, self.reply_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.exit_code, self.problem = self._kill()
        return self.exit_code


class Launcher:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.starts = 0  # workers started (a fork counts as a start)
        self.problems: list[str] = []  # what close() could not remove (no submission to report it on)

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
        shutil.copytree(RUNTIME_FOLDER, folder / "runtime",
                        ignore=shutil.ignore_patterns("__pycache__", ".ruff_cache", "*.toml"))

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


def output_file() -> int:
    """A descriptor of a fresh file for a worker's (or a template's) stdout and stderr. It has no name: nothing to
    delete, nothing another process can open by a path, and it goes when its last descriptor is closed. It lies
    outside the worker's folder, which student code may write to or empty."""
    with tempfile.TemporaryFile(prefix="course-worker-output-") as handle:
        return os.dup(handle.fileno())


def new_home(parent: Path) -> Path:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=parent))
    (home / "tmp").mkdir()
    return home


def remove_folder(folder: Path, what: str | None = None) -> str | None:
    """Remove a folder that a worker wrote in, however deep and whatever its code made read-only in it, without
    following links (course/worker/runtime/guard.py); never raises. Returns None, or one line that says what stayed."""
    return remove_tree(str(folder), what=what)


def _after_grading(problem: str | None) -> str | None:
    if not problem:
        return None
    return (f"Clean-up after grading: {problem}. This is the grading machine's problem, not the submission's; "
            "the next submission gets a fresh sandbox.")


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
        output = output_file()
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=output,
                cwd=home, env=self._environment(folder, home), start_new_session=True, close_fds=True,
                preexec_fn=group.enter if group else None,
            )
        finally:
            os.close(output)
        self.starts += 1
        request_fd, reply_fd = os.dup(process.stdin.fileno()), os.dup(process.stdout.fileno())
        process.stdin.close()
        process.stdout.close()
        os.set_blocking(request_fd, False)

        def kill() -> tuple[int | None, str | None]:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = process.wait()
            if group is not None:  # whatever the worker started, in or out of its process group
                group.remove()
            problem = remove_folder(folder, "the worker's folder")
            return _returncode(code, sandbox.isolation), _after_grading(problem)

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
        self.template_starts = 0
        self.live: set[int] = set()  # the template's workers not killed yet (their pids, as the template sees them)
        self.retired: list[Path] = []  # folders of templates given up after a failed clean-up, removed by close()
        self.tainted = False  # something a worker left could not be removed: retire once no worker is alive

    def spawn(self) -> WorkerProcess:
        for attempt in range(2):
            if self.template is None or self.template.poll() is not None:
                self._start_template()
            request_read, request_write = os.pipe()
            reply_read, reply_write = os.pipe()
            output = output_file()
            answer, home = None, None
            try:
                home = new_home(self.folder / "homes")
                answer = self._ask({"op": "fork", "home": str(home)}, fds=[request_read, reply_write, output],
                                   timeout=self.spec.startup_timeout if attempt == 0 else CONTROL_TIMEOUT)
            except (OSError, TimeoutError, ValueError):
                pass
            finally:
                for fd in (request_read, reply_write, output):
                    os.close(fd)
            if answer is not None and type(answer.get("pid")) is int:
                break
            os.close(request_write)
            os.close(reply_read)
            if home is not None:
                remove_folder(home)
            self._retire()  # broken (killed or stopped by the last worker? its folders replaced?): start afresh
        else:
            raise RuntimeError("the template process that starts workers could not be started")
        self.starts += 1
        os.set_blocking(request_write, False)
        pid, generation = answer["pid"], self.template_starts
        self.live.add(pid)

        def kill() -> tuple[int | None, str | None]:
            code, problems = None, []
            if generation == self.template_starts and self.template is not None:
                try:
                    answer = self._ask({"op": "kill", "pid": pid}, timeout=CONTROL_TIMEOUT)
                    code = answer.get("returncode") if type(answer.get("returncode")) is int else None
                    if type(answer.get("problem")) is str:
                        problems.append(answer["problem"][:1000])
                except (OSError, TimeoutError, ValueError):
                    self._stop_template()  # it does not answer: it and everything in its sandbox go
                self.live.discard(pid)
            # else: its template is gone, and the worker went with it
            problems.append(remove_folder(home, "the worker's folder"))
            if not self.live and self.folder is not None:
                problems += self._clean_between_submissions()
            problems = [problem for problem in problems if problem]
            self.tainted = self.tainted or bool(problems)
            if self.tainted and not self.live:
                self._retire()  # what stayed must not meet the next submission: a fresh template and folder
            return code, _after_grading("; ".join(problems)) if problems else None

        return WorkerProcess(request_write, reply_read, home, self.folder, kill)

    def warm(self) -> bool:
        if self.template is None or self.template.poll() is not None:
            self._start_template()  # torch is imported in the background; the first spawn() waits for it
        return True

    def close(self) -> None:
        self._retire()
        while self.retired:
            problem = remove_folder(self.retired.pop())
            if problem:
                self.problems.append(problem)

    # -- the template ---------------------------------------------------------------------------------------
    def _start_template(self) -> None:
        self._stop_template()
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="course-template-"))
            self._prepare(self.folder)
            (self.folder / "homes").mkdir()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sandbox = self.spec.sandbox
        self.group = WorkerCgroup.create(sandbox.pids_max) if sandbox.pids_max else None
        bubblewrap = sandbox.isolation == "bubblewrap"
        template = {"control_fd": theirs.fileno(), "own_pid_namespace": bubblewrap,
                    "scratch": list(SCRATCH_FOLDERS) if bubblewrap else []}
        if self.group is not None and not bubblewrap:
            template["cgroup_procs"] = self.group.procs_file  # what it ends if the grading process dies
        command = sandbox.command(sys.executable, self.folder / "runtime" / "bootstrap.py", self.folder,
                                  self.folder / "homes", self.spec.device, self._settings(template=template))
        output = output_file()  # the template's own messages (its workers get files of their own)
        try:
            self.template = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=output, cwd=self.folder / "homes",
                env=self._environment(self.folder, self.folder / "homes"), start_new_session=True, close_fds=True,
                pass_fds=(theirs.fileno(),), preexec_fn=self.group.enter if self.group else None,
            )
        finally:
            os.close(output)
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
        self.live.clear()  # its workers die with it
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.group is not None:
            self.group.remove()
            self.group = None

    def _retire(self) -> None:
        """Stop the template and remove its folder (or set it aside for close(), if something stays in it): the
        next spawn starts afresh."""
        self._stop_template()
        self.tainted = False
        if self.folder is not None:
            if remove_folder(self.folder) is not None:
                self.retired.append(self.folder)
            self.folder = None

    def _clean_between_submissions(self) -> list[str | None]:
        """No worker is alive: empty the folder of all homes (a worker may write there through native code), and
        under process isolation kill what is left in the template's control group."""
        assert self.folder is not None
        homes = self.folder / "homes"
        if homes.is_symlink() or not homes.is_dir():
            return ["the folder of the workers' homes was replaced"]
        problems = [remove_tree(str(homes), keep_top=True, what="the folder of the workers' homes")]
        if self.group is not None and self.template is not None and self.spec.sandbox.isolation != "bubblewrap":
            self.group.kill_all(spare={self.template.pid})
        return problems

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
