"""Limits and an audit hook that the worker puts on itself before any student code runs.

This file runs inside the worker (the trusted side imports `remove_tree` too) and needs only the standard library:

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
- `die_with_parent`: the worker is killed (SIGKILL; a template is told with SIGTERM) when the grading process dies.
- `remove_tree`: removes a folder (or empties it) however deep, whatever was made read-only in it, without
  following symbolic links, and says what it could not remove instead of raising. The trusted side removes
  workers' folders with it, and a template empties its sandbox's /tmp and /dev/shm with it between submissions.

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


def die_with_parent(parent_pid, signal_number=9):
    """Get `signal_number` (SIGKILL by default) when the parent dies (Linux prctl PR_SET_PDEATHSIG); call before
    the audit hook, which refuses ctypes. If the parent is already gone, exit at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal_number, 0, 0, 0)
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


# -- removing what a worker left -------------------------------------------------------------------------------

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602  # Linux, 64-bit: the inode's attributes (chattr)
_UNCHANGEABLE = 0x00000010 | 0x00000020  # FS_IMMUTABLE_FL | FS_APPEND_FL: a file that even root cannot remove


class _Leftovers:
    """What could not be removed: a count and the first example (its path shortened), for one line of report."""

    def __init__(self):
        self.count = 0
        self.example = ""

    def add(self, names, error):
        self.count += 1
        if not self.example:
            path = "/".join(names)
            path = path if len(path) <= 120 else "..." + path[-117:]
            reason = getattr(error, "strerror", None) or type(error).__name__
            self.example = f"{path}: {reason}"

    def line(self, what):
        if not self.count:
            return None
        entries = "1 entry" if self.count == 1 else f"{self.count} entries"
        return f"{entries} of {what} could not be removed (for example {self.example})"


def remove_tree(path, keep_top=False, what=None, mounts_stay=False):
    """Remove the folder `path` and everything in it (with `keep_top`, only what is in it); returns None, or one
    line that says what could not be removed. Never raises.

    It never crosses into another filesystem: a mount point inside (which a worker could only have made with
    privileges, e.g. under process isolation as root) stays with all it holds, and is reported unless
    `mounts_stay` (a sandbox's /tmp holds the mount points of the template's own folders).

    The walk is not recursive and holds one folder open at a time (it goes back up through '..', checking that
    it arrives where it came from), so a tree nested deeper than Python's recursion limit or than PATH_MAX is
    removed too. Symbolic links are removed, never followed. Folders the worker made unreadable or unwritable get
    their owner's permissions back, and immutable or append-only attributes are cleared where the remover may
    do so (a root grader): so what a worker leaves is removed unless the kernel refuses it (a mount point, say).
    """
    leftovers = _Leftovers()
    what = what or f"the folder {path}"
    try:
        parent = os.open(os.path.dirname(os.path.abspath(path)) or "/", _DIRECTORY)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            return None
        leftovers.add([os.fspath(path)], exc)
        return leftovers.line(what)
    try:
        name = os.path.basename(os.path.abspath(path))
        try:
            _remove_entry(parent, name, leftovers, keep_top, mounts_stay)
        except Exception as exc:  # noqa: BLE001 - whatever happens, say so and go on
            leftovers.add([name], exc)
    finally:
        os.close(parent)
    return leftovers.line(what)


def _remove_entry(parent, name, leftovers, keep_top, mounts_stay):
    try:
        top = _open_folder(parent, name)
    except FileNotFoundError:
        return
    except OSError as exc:
        if keep_top or not _unlink(parent, name):  # not a folder (a file or a link): remove it as such
            leftovers.add([name], exc)
        return
    # The path from the top to the folder being emptied: [name, (device, inode), names that stay], one per level.
    top_status = os.fstat(top)
    stack = [[name, (top_status.st_dev, top_status.st_ino), set()]]
    current = top
    try:
        while True:
            names = [level[0] for level in stack]
            child = _empty_files(current, stack[-1][2], names, leftovers, stack[0][1][0], mounts_stay)
            if child is not None:  # go down into a subfolder
                try:
                    opened = _open_folder(current, child)
                except OSError as exc:
                    if not _unlink(current, child):
                        leftovers.add(names + [child], exc)
                        stack[-1][2].add(child)
                    continue
                status = os.fstat(opened)
                os.close(current)
                current = opened
                stack.append([child, (status.st_dev, status.st_ino), set()])
                continue
            if len(stack) == 1:
                break
            # This folder is empty (but for what stays): go back up and remove it.
            up = os.open("..", _DIRECTORY, dir_fd=current)
            os.close(current)
            current = up
            done = stack.pop()
            status = os.fstat(current)
            if (status.st_dev, status.st_ino) != stack[-1][1]:
                leftovers.add(names, OSError(0, "moved while it was being removed"))
                return
            try:
                os.rmdir(done[0], dir_fd=current)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if not _retry_after_clearing(current, done[0], os.rmdir):
                    if not done[2]:  # a folder whose contents stayed is already counted
                        leftovers.add(names, exc)
                    stack[-1][2].add(done[0])
    finally:
        os.close(current)
    if not keep_top:
        try:
            os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not _retry_after_clearing(parent, name, os.rmdir) and not stack[0][2]:
                leftovers.add([name], exc)


def _empty_files(folder, staying, names, leftovers, device, mounts_stay):
    """Remove every entry of `folder` that is not a folder; returns the name of a subfolder still to empty."""
    import stat

    os.lseek(folder, 0, os.SEEK_SET)  # from the first entry, also when this folder was listed before
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name in staying:
                continue
            try:
                status = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError:
                status = None
            if status is not None and status.st_dev != device:  # a mount point: not ours to empty
                staying.add(entry.name)
                if not mounts_stay:
                    leftovers.add(names + [entry.name], OSError(0, "a mount point"))
                continue
            if status is not None and stat.S_ISDIR(status.st_mode):
                return entry.name
            try:
                os.unlink(entry.name, dir_fd=folder)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if not _retry_after_clearing(folder, entry.name, os.unlink):
                    leftovers.add(names + [entry.name], exc)
                    staying.add(entry.name)
    return None


def _open_folder(parent, name):
    """A descriptor of the folder `name` in `parent` (never through a symbolic link), with its owner's rights
    given back if the worker took them away."""
    try:
        folder = os.open(name, _DIRECTORY, dir_fd=parent)
    except PermissionError:
        _give_rights_back(parent, name)
        folder = os.open(name, _DIRECTORY, dir_fd=parent)
    try:
        if os.fstat(folder).st_mode & 0o700 != 0o700:
            os.fchmod(folder, 0o700)  # to list it and remove its entries
    except OSError:
        pass
    return folder


def _give_rights_back(parent, name):
    if hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd"):
        # chmod of the folder itself, through a descriptor opened without following links
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            os.chmod(f"/proc/self/fd/{handle}", 0o700)
        finally:
            os.close(handle)
    else:
        import stat

        if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            os.chmod(name, 0o700, dir_fd=parent)


def _unlink(folder, name):
    try:
        os.unlink(name, dir_fd=folder)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _retry_after_clearing(folder, name, remove):
    """After a refusal: clear the immutable and append-only attributes of the entry and of its folder (where the
    remover may: a root grader), and if that changed anything `remove` (os.unlink, os.rmdir) it once more; True if
    it then worked."""
    cleared = False
    for target in (None, name):
        try:
            if target is None:
                handle = os.dup(folder)
            else:
                handle = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
        except OSError:
            continue
        try:
            cleared = _clear_attributes(handle) or cleared
        finally:
            os.close(handle)
    if not cleared:
        return False
    try:
        remove(name, dir_fd=folder)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _clear_attributes(handle):
    if not sys.platform.startswith("linux"):
        return False
    import fcntl
    import struct

    try:
        buffer = bytearray(8)
        fcntl.ioctl(handle, _FS_IOC_GETFLAGS, buffer)
        flags = struct.unpack_from("i", buffer)[0]
        if not flags & _UNCHANGEABLE:
            return False
        struct.pack_into("i", buffer, 0, flags & ~_UNCHANGEABLE)
        fcntl.ioctl(handle, _FS_IOC_SETFLAGS, buffer)
        return True
    except OSError:
        return False
