"""The worker process: the only place where student code runs.

Started by the trusted client as `python -I bootstrap.py SETTINGS` in a fresh temporary folder with a scrubbed
environment, inside bubblewrap where available (course/worker/sandbox.py). Before torch is imported it puts
resource limits on itself, and before any student code runs it installs an audit hook (guard.py). It loads the
submission's cells into a module named `submission`, then answers `call` requests: each one runs a small
probe function (sent as source by the grader; it holds no expected values) against that module and sends back
what the probe returned. It never sees an expected value and never decides a verdict.

Channel: requests arrive on the original stdin, replies leave on a private copy of the original stdout.
The student's own prints are sent to stderr so they can never be mistaken for a reply.
This file needs only the standard library and torch (it does not import the `course` package): the client
copies it, protocol.py, guard.py and records.py into the worker's folder, and they are loaded from there.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import json
import linecache
import os
import sys
import types

PROBE_PREFIX = "<probe "


def _load_sibling(name):
    """Import a module of the worker's runtime from beside this file (with -I the script's folder is not on
    sys.path). It is registered in sys.modules first, as dataclasses need."""
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(f"_course_worker_{name}", os.path.join(here, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load_probe_kit():
    """The package of helpers that probes import (`from probe_kit.text import ...`), beside this file: loaded
    with all its modules now, before any student code, under the name probes use."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_kit")
    spec = importlib.util.spec_from_file_location("probe_kit", os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    package = importlib.util.module_from_spec(spec)
    sys.modules["probe_kit"] = package
    spec.loader.exec_module(package)
    for name in sorted(os.listdir(here)):
        if name.endswith(".py") and name != "__init__.py":
            importlib.import_module(f"probe_kit.{name[:-3]}")


class GuardedImports(importlib.abc.MetaPathFinder):
    """Makes the course's own packages importable only from the support folder.

    `reference`, `graders` and `course` may be installed in the environment (editable or not). Inside the
    worker, a module of those packages is found only if a copy of it was placed in the support folder, i.e.
    only the support modules that course.yml allows for this assignment.
    """

    def __init__(self, blocked_packages, support_dir):
        self.blocked = set(blocked_packages)
        self.support_dir = support_dir

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in self.blocked:
            return None
        search = [self.support_dir] if "." not in fullname else path
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
        if spec is None or not str(spec.origin or "").startswith(self.support_dir):
            raise ModuleNotFoundError(f"No module named {fullname!r} (not available to submissions)", name=fullname)
        return spec


class MissingDefinition(AttributeError):
    """A name the grader needs is not defined by the notebook."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


class SubmissionModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingDefinition(name)


class BadOutput(Exception):
    """A probe returned something that cannot be sent back safely."""


class Worker:
    def __init__(self, protocol, guard, records, torch, requests_fd, replies_fd, memory_mb=None):
        self.protocol = protocol
        self.guard = guard
        self.records = records
        self.torch = torch
        self.requests_fd = requests_fd
        self.replies_fd = replies_fd
        self.memory_mb = memory_mb
        self.device = "cpu"
        self.module = None
        self.configured = False

    # -- the request loop -------------------------------------------------------------------------------
    def serve(self):
        while True:
            try:
                request = self.protocol.receive(self.requests_fd)
            except self.protocol.ChannelClosed:
                return
            handler = getattr(self, "op_" + str(request.get("op")), None)
            if handler is None:
                reply = {"ok": False, "protocol": f"unknown op {request.get('op')!r}"}
            elif not self.configured and handler != self.op_configure:
                reply = {"ok": False, "protocol": "not configured"}  # the sandbox comes first
            else:
                reply = handler(request)
            reply["id"] = request.get("id")  # the client matches replies to requests by this id
            try:
                self.protocol.send(self.replies_fd, reply)
            except self.protocol.BadMessage:
                self.protocol.send(self.replies_fd, {"ok": False, "id": request.get("id"),
                                                     "error": self.error("bad_output", "unsendable reply")})
            except (MemoryError, RuntimeError):  # no memory to encode a huge result (torch raises RuntimeError):
                reply = None  # nothing was written yet
                limit = f" of {self.memory_mb} MB" if self.memory_mb else ""
                self.protocol.send(self.replies_fd, {"ok": False, "id": request.get("id"), "error": self.error(
                    "bad_output", f"the returned value is too large to send back within the memory limit{limit}")})

    def op_configure(self, request):
        if self.configured:
            return {"ok": False, "protocol": "already configured"}
        support_dir = request["support_dir"]
        sys.meta_path.insert(0, GuardedImports(request["blocked_packages"], support_dir))
        sys.path.insert(0, support_dir)
        self.device = request["device"]
        self.torch.set_num_threads(int(request["threads"]))
        if self.device.startswith("cuda"):
            self.torch.zeros(1, device=self.device)  # initialise CUDA before the audit hook refuses ctypes
        # From here on, no process, no network, no ctypes, writes only in the working folder.
        self.guard.remove_unaudited()
        self.guard.install_audit_hook(**request["audit"])
        self.configured = True
        return {"ok": True, "pid": os.getpid(), "torch": str(self.torch.__version__)}

    def op_load(self, request):
        """Execute the chosen cells in order into a fresh `submission` module; a failing cell does not stop the rest."""
        module = SubmissionModule("submission")
        module.__dict__["__builtins__"] = __builtins__
        sys.modules["submission"] = module
        cell_errors = []
        for cell in request["cells"]:
            filename = f"{self.records.CELL_PREFIX}{cell['label']}>"
            linecache.cache[filename] = (len(cell["source"]), None, cell["source"].splitlines(True), filename)
            try:
                code = compile(cell["source"], filename, "exec")
                exec(code, module.__dict__)
            except BaseException as exc:  # noqa: BLE001 - a student's cell may raise anything, SystemExit included
                record = self.records.exception_record(exc, self.memory_mb)
                record["cell"] = record["cell"] or cell["label"]  # every error while loading is the cell's
                cell_errors.append(record)
        self.module = module
        return {"ok": True, "cell_errors": cell_errors}

    def op_call(self, request):
        if self.module is None:
            return {"ok": False, "protocol": "no submission loaded"}
        name = request["probe_name"]
        namespace = {"__name__": "probe", "torch": self.torch, "nn": self.torch.nn, "F": self.torch.nn.functional,
                     "DEVICE": self.device}
        filename = f"{PROBE_PREFIX}{name}>"
        source = request["probe_source"]
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        # The probe's source was compiled and checked on the trusted side before it was sent. If it fails here,
        # student code (already loaded) broke something the worker relies on: the student's, like all else here.
        try:
            exec(compile(request["probe_source"], filename, "exec"), namespace)
            kwargs = self.to_device(request["kwargs"])
        except BaseException as exc:  # noqa: BLE001
            record = self.records.exception_record(exc, self.memory_mb)
            record["kind"] = "environment"
            return {"ok": False, "error": record}
        self.torch.manual_seed(0)
        try:
            value = namespace[name](self.module, **kwargs)
        except MissingDefinition as exc:
            return {"ok": False, "error": self.error("missing", "", name=exc.name)}
        except BaseException as exc:  # noqa: BLE001 - student code may raise anything, SystemExit included
            return {"ok": False, "error": self.records.exception_record(exc, self.memory_mb)}
        try:
            return {"ok": True, "value": self.to_plain(value)}
        except BadOutput as exc:
            return {"ok": False, "error": self.error("bad_output", str(exc))}
        except Exception as exc:  # noqa: BLE001 - e.g. no memory left to copy a huge result
            value = None
            return {"ok": False, "error": self.records.exception_record(exc, self.memory_mb)}

    def error(self, kind, message, **fields):
        return {"kind": kind, "type": "", "message": message, "cell": None, "line": None, "function": None,
                "code": None, "name": None, **fields}

    # -- values in and out -----------------------------------------------------------------------------
    def to_device(self, value):
        if isinstance(value, self.torch.Tensor):
            return value.to(self.device)
        if isinstance(value, dict):
            return {key: self.to_device(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.to_device(item) for item in value)
        return value

    def to_plain(self, value, depth=0):
        """Only plain tensors (on the CPU), numbers, strings, None, and lists/tuples/str-keyed dicts go back."""
        torch = self.torch
        if depth > 20:
            raise BadOutput("the returned value is nested too deeply")
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
            if type(tensor) is not torch.Tensor:
                tensor = tensor.as_subclass(torch.Tensor)
            return tensor.to("cpu").clone().contiguous()
        if value is None or type(value) in (bool, int, float, str):
            return value
        if type(value) in (list, tuple):
            return type(value)(self.to_plain(item, depth + 1) for item in value)
        if type(value) is dict and all(type(key) is str for key in value):
            return {key: self.to_plain(item, depth + 1) for key, item in value.items()}
        raise BadOutput(f"returned an object of type {type(value).__name__}, which the grader cannot use")


def main():
    settings = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    guard = _load_sibling("guard")
    limits = settings.get("limits", {})
    if settings.get("parent_pid"):  # process isolation (bubblewrap's --die-with-parent does this itself)
        # A template is told with SIGTERM, so that it can end its workers first (see serve_template).
        guard.die_with_parent(int(settings["parent_pid"]), SIGTERM if settings.get("template") else SIGKILL)
    guard.apply_limits(limits)  # before torch is imported, so that nothing escapes them
    # Keep the channel out of the student's way: replies go to a private copy of stdout, prints go to stderr,
    # and reading stdin from student code sees an empty file.
    replies_fd = os.dup(1)
    requests_fd = os.dup(0)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdin = open(os.devnull)

    import torch

    protocol = _load_sibling("protocol")
    records = _load_sibling("records")
    _load_probe_kit()

    def worker(requests, replies):
        return Worker(protocol, guard, records, torch, requests, replies, memory_mb=limits.get("memory_mb"))

    if settings.get("template"):
        os.close(requests_fd)
        os.close(replies_fd)
        serve_template(settings["template"], worker, guard)
    else:
        worker(requests_fd, replies_fd).serve()


# -- the template: forks workers that need not import torch (see course/worker/launchers.py) ----------------------

SIGKILL, SIGTERM = 9, 15
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4


def serve_template(settings, make_worker, guard):
    """Answer the trusted side's requests on the control socket until it closes: `fork` (with the two pipe ends of
    the new worker's channel and the file for its output, and its working folder) and `kill` (end a worker and
    all it started; answers its return code). Usually one worker at a time (several while a test runs the ranks
    of a distributed training); none of them can inspect this process (it is not dumpable).

    When the last worker is killed, nothing of it is left for the next one: under bubblewrap every other process
    of the sandbox is killed and the sandbox's scratch folders (`scratch`: /tmp, /dev/shm, /dev/mqueue) and
    SysV IPC objects are emptied before the answer (the trusted side empties the working folders). When the
    grading process dies (SIGTERM, under process isolation) or closes the socket, the workers are ended and
    this process exits; a worker dies with this process."""
    import signal
    import socket

    control = socket.socket(fileno=settings["control_fd"])
    _set_dumpable(False)
    own_namespace = bool(settings.get("own_pid_namespace"))
    scratch = [folder for folder in settings.get("scratch", ()) if own_namespace and os.path.isdir(folder)]
    group_procs = settings.get("cgroup_procs")  # process isolation: the control group of this template
    template_pid = os.getpid()
    workers = set()

    def end_everything(*_):
        for pid in list(workers):
            _kill_group(pid)
        if own_namespace:
            _kill_all_but_init()
        elif group_procs:
            _kill_group_members(group_procs)
        os._exit(0)

    signal.signal(signal.SIGTERM, end_everything)
    control.send(json.dumps({"ready": True}).encode())
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(control, 65536, 4)
        except OSError:
            end_everything()
        if not data:
            end_everything()
        try:
            request = json.loads(data)
        except ValueError:
            request = {}
        if request.get("op") == "fork" and len(fds) == 3:
            pid = os.fork()
            if pid == 0:  # the new worker
                try:
                    control.close()
                    _start_worker(request["home"], fds, make_worker, template_pid)
                finally:
                    os._exit(0)
            workers.add(pid)
            answer = {"pid": pid}
        elif request.get("op") == "kill" and type(request.get("pid")) is int:
            workers.discard(request["pid"])
            answer = {"returncode": _end_worker(request["pid"])}
            if not workers:  # whatever else runs or lies in the sandbox goes once no worker is left to need it
                if own_namespace:
                    _kill_all_but_init()
                    _remove_ipc_objects()
                problems = [guard.remove_tree(folder, keep_top=True, what=f"the sandbox's {folder}", mounts_stay=True)
                            for folder in scratch]
                if any(problems):
                    answer["problem"] = "; ".join(problem for problem in problems if problem)
        else:
            answer = {"error": "unknown request"}
        for fd in fds:
            os.close(fd)
        control.send(json.dumps(answer).encode())


def _start_worker(home, fds, make_worker, template_pid):
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the template's handler is not the worker's
    _prctl(PR_SET_PDEATHSIG, SIGKILL)  # the worker dies with its template
    if os.getppid() != template_pid:
        os._exit(70)
    _set_dumpable(True)
    requests_fd, replies_fd, output_fd = fds
    # Its own output file, fresh from the trusted side: what it prints, where it seeks, what it reads back through
    # /proc/self/fd are its own, never another worker's.
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(output_fd)
    os.setsid()  # its own process group: killing the group ends everything it started
    os.chdir(home)
    os.environ["HOME"] = home
    os.environ["TMPDIR"] = os.path.join(home, "tmp")
    make_worker(requests_fd, replies_fd).serve()


def _end_worker(pid):
    """Kill the worker's process group and reap it (and any other child of ours that ended); returns the worker's
    return code, as Popen gives it."""
    _kill_group(pid)
    try:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        code = None
    _reap()
    return code


def _kill_group(pid):
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap():
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _kill_all_but_init(timeout=2.0):
    """In our own PID namespace: kill every process but this template and the namespace's init (bubblewrap's),
    until none is left (a process that escaped its group, a daemon; zombies do not count), so that nothing of
    a worker runs, or still writes, once it is gone."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while True:
        others = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in (1, os.getpid()) and not _zombie(entry):
                others.append(int(entry))
        if not others or time.monotonic() > deadline:
            return
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _reap()
        time.sleep(0.005)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _kill_group_members(procs_file):
    """Process isolation with a control group: kill every process of the group but this template."""
    import signal

    try:
        with open(procs_file) as procs:
            members = [int(line) for line in procs.read().split()]
    except (OSError, ValueError):
        return
    for pid in members:
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _remove_ipc_objects():
    """Remove the SysV shared memory segments, message queues and semaphores of the sandbox's IPC namespace: native
    code can make them, and they outlive their maker (a segment holds memory that no limit of a worker counts)."""
    found = []
    for kind in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as table:
                rows = table.read().splitlines()[1:]
        except OSError:
            continue
        found += [(kind, int(row.split()[1])) for row in rows if len(row.split()) > 1 and row.split()[1].isdigit()]
    if not found:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_rmid = 0
    for kind, ident in found:
        if kind == "shm":
            libc.shmctl(ident, ipc_rmid, None)
        elif kind == "msg":
            libc.msgctl(ident, ipc_rmid, None)
        else:
            libc.semctl(ident, 0, ipc_rmid)


_LIBC = []


def _prctl(option, value):
    if sys.platform.startswith("linux"):
        if not _LIBC:
            import ctypes

            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        _LIBC[0].prctl(option, value, 0, 0, 0)


def _set_dumpable(dumpable):
    """PR_SET_DUMPABLE: a process that is not dumpable cannot be traced, nor its memory read, by its peers."""
    _prctl(PR_SET_DUMPABLE, 1 if dumpable else 0)


if __name__ == "__main__":
    main()
