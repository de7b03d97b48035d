"""Limits and an audit hook that the worker puts on itself before any student code runs.

This file runs inside the worker and needs only the standard library. It has two parts:

- `apply_limits`: resource limits (setrlimit), set once at start-up with soft == hard, so student code cannot
  raise them again: address space (a memory bomb gets MemoryError instead of eating the machine), CPU time (a
  backstop for the per-test wall-clock deadline), file size, no core files, and the number of processes where
  the worker runs in its own user namespace (there the count covers only the worker's own processes).
- `install_audit_hook`: a PEP 578 audit hook, which cannot be removed once installed. It refuses to start
  processes, to signal other processes, to call into C through ctypes, to open sockets, to change the limits,
  to walk the garbage collector's object graph (where the hook itself lives), to write outside the worker's
  own folder, and to read anything but the system, the Python installation and the worker's own folder.
  The hook never runs code of the student's: it reads only str and bytes paths (a path object's __fspath__ is
  the student's code, and could answer differently each time it is asked), so with `strict_paths` any other
  path object is refused, with a message saying to pass str(path).
- `remove_unaudited`: calls that Python does not audit (pidfd_open and pidfd_send_signal, which can signal
  another process) are taken out of the modules that hold them, and the hook refuses to load those modules
  again (which would bring the calls back).
- `die_with_parent`: the worker is killed (SIGKILL) when the grading process dies.

An audit hook is defence in depth, not a boundary: native code can get around it. The boundary on Linux is
bubblewrap (see course/worker/sandbox.py), which leaves everything else out of the worker's view.
"""

import _thread
import os
import resource
import sys

# Events refused outright: (event name or prefix ending in '.', what the student is told was refused).
REFUSED_EVENTS = {
    "os.fork": "starting a process", "os.forkpty": "starting a process", "os.posix_spawn": "starting a process",
    "os.spawn": "starting a process", "os.exec": "starting a program", "os.system": "running a shell command",
    "subprocess.Popen": "starting a process", "os.startfile": "starting a program",
    "resource.setrlimit": "changing the resource limits", "resource.prlimit": "changing the resource limits",
    "gc.get_objects": "inspecting the garbage collector", "gc.get_referrers": "inspecting the garbage collector",
    "gc.get_referents": "inspecting the garbage collector",
    "sys.remote_exec": "attaching to a process",
}
REFUSED_PREFIXES = {"ctypes.": "calling native code through ctypes", "socket.": "using the network",
                    "_posixsubprocess.": "starting a process"}
SIGNAL_EVENTS = ("os.kill", "os.killpg", "signal.pthread_kill")
# Functions without an audit event that signal other processes: (module, name), removed by remove_unaudited.
UNAUDITED = (("posix", "pidfd_open"), ("os", "pidfd_open"), ("_signal", "pidfd_send_signal"),
             ("signal", "pidfd_send_signal"))
# Built-in modules, loaded at start-up, that may not be loaded again once the hook is installed (a fresh copy
# would bring the UNAUDITED calls back; os and signal re-imported take their functions from these).
NO_RELOAD = frozenset({"posix", "_signal"})

# Events with path arguments: name -> positions of the paths. Writes are allowed only inside the worker's folder.
WRITE_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.symlink": (0, 1),
    "os.link": (0, 1), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.lchmod": (0,), "os.lchown": (0,), "os.mkfifo": (0,),
    "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,),
    "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1), "shutil.chown": (0,),
}
READ_EVENTS = {"os.listdir": (0,), "os.scandir": (0,), "os.chdir": (0,), "glob.glob": (0,), "os.listxattr": (0,),
               "os.getxattr": (0,)}

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def apply_limits(limits):
    """limits: {"memory_mb", "cpu_seconds", "file_mb", "processes"}; a missing or None value sets no limit."""
    def set_limit(kind, soft, hard=None):
        hard = soft if hard is None else hard
        current_soft, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(kind, (soft, hard))

    set_limit(resource.RLIMIT_CORE, 0)
    if limits.get("memory_mb"):
        set_limit(resource.RLIMIT_AS, int(limits["memory_mb"]) * 2**20)
    if limits.get("cpu_seconds"):
        # SIGXCPU at the soft limit ends the worker; SIGKILL at the hard limit if SIGXCPU is somehow survived.
        seconds = int(limits["cpu_seconds"])
        set_limit(resource.RLIMIT_CPU, seconds, seconds + 5)
    if limits.get("file_mb"):
        set_limit(resource.RLIMIT_FSIZE, int(limits["file_mb"]) * 2**20)
    if limits.get("processes"):
        set_limit(resource.RLIMIT_NPROC, int(limits["processes"]))


def die_with_parent(parent_pid):
    """SIGKILL this process when its parent dies (Linux prctl PR_SET_PDEATHSIG); call before the audit hook,
    which refuses ctypes. If the parent is already gone, exit at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig, sigkill = 1, 9
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(70)


def remove_unaudited():
    """Take out the calls listed in UNAUDITED from the modules already loaded (call before student code runs)."""
    for module_name, name in UNAUDITED:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, name):
            delattr(module, name)


def install_audit_hook(writable, readable, strict_paths=True):
    """writable: the only folders written to (the worker's own); readable: the only paths read or listed (the
    system, the Python installation, the worker's folder: what bubblewrap would show), besides /proc/self.
    strict_paths: refuse path arguments that are neither str nor bytes (process isolation, where the hook is the
    only check); without it such paths are not checked by the hook (bubblewrap, whose view is the boundary)."""
    writable = tuple(_real(p) for p in writable)
    own_proc = f"/proc/{os.getpid()}"
    readable = tuple(_real(p) for p in readable) + writable + (own_proc, os.devnull)
    own_pid = os.getpid()
    start_cwd = os.getcwd()
    busy = set()  # threads inside the hook: resolving a path must not audit itself (per thread, so that
    # another thread's events are never waved through while one thread is in here)

    def inside(path, folders):
        return any(path == folder or path.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders)

    def check_read(path):
        if not inside(path, readable):
            raise PermissionError(f"the grading sandbox does not allow reading {path}")

    def check_write(path):
        if path != os.devnull and not inside(path, writable):
            raise PermissionError(f"the grading sandbox does not allow writing to {path} "
                                  "(only the working folder is writable)")

    def resolve(value):
        # Exact types only: a str or bytes subclass, or a path object, would run the student's methods here.
        if value is None or type(value) is int:
            return None
        if type(value) is bytes:
            value = value.decode(sys.getfilesystemencoding(), "surrogateescape")
        elif type(value) is not str:
            if strict_paths:
                raise PermissionError("the grading sandbox opens only paths given as str or bytes: pass "
                                      f"str(path) instead of a {type(value).__name__!r} object")
            return None
        try:
            cwd = os.getcwd()
        except OSError:  # student code deleted its working folder
            cwd = start_cwd
        return _real(os.path.join(cwd, value))

    def hook(event, args):
        thread = _thread.get_ident()
        if thread in busy:
            return
        busy.add(thread)
        try:
            if event == "import" and args and args[0] in NO_RELOAD:
                raise PermissionError(f"the grading sandbox does not allow loading {args[0]} again")
            if event in REFUSED_EVENTS:
                raise PermissionError(f"the grading sandbox does not allow {REFUSED_EVENTS[event]} ({event})")
            for prefix, what in REFUSED_PREFIXES.items():
                if event.startswith(prefix):
                    raise PermissionError(f"the grading sandbox does not allow {what} ({event})")
            if event in SIGNAL_EVENTS:
                if event != "signal.pthread_kill" and args and args[0] not in (0, own_pid):
                    raise PermissionError(f"the grading sandbox does not allow signalling other processes ({event})")
            elif event == "open":
                path = resolve(args[0])
                if path is not None and os.path.isdir(path):
                    # A folder's file descriptor would let later calls name paths relative to it (dir_fd=...),
                    # which the audit events do not show: paths this hook could not check.
                    raise PermissionError(f"the grading sandbox does not allow opening folders ({path})")
                if path is not None:
                    mode, flags = (args[1] or ""), (args[2] or 0)
                    if any(c in str(mode) for c in "wax+") or (isinstance(flags, int) and flags & _WRITE_FLAGS):
                        check_write(path)
                    check_read(path)
            elif event in WRITE_EVENTS:
                for position in WRITE_EVENTS[event]:
                    if position < len(args) and (path := resolve(args[position])) is not None:
                        check_write(path)
            elif event in READ_EVENTS:
                for position in READ_EVENTS[event]:
                    if position < len(args):
                        path = resolve(args[position] if args[position] is not None else ".")
                        if path is not None:
                            check_read(path)
        finally:
            busy.discard(thread)

    sys.addaudithook(hook)


def _real(path):
    return os.path.realpath(os.path.abspath(path))
