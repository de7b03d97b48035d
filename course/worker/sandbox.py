"""How the worker is isolated: what it may see, what it may write, how much it may use.

Two levels, chosen by course.yml's `sandbox.isolation` (see docs/trust-model.md):

- "bubblewrap" (Linux, the `bwrap` program): the worker runs in fresh user, mount, PID, network, IPC and UTS
  namespaces. Its filesystem holds only the system folders (read-only), the Python installation (read-only), its
  own working folder, and an empty /tmp and /dev/shm: small RAM-backed filesystems (tmpfs) whose size counts
  against the submission's memory (see `plan_sandbox`). Nothing else is writable: the sandbox's root and /dev
  are remounted read-only. The course repository, the graders, the reference, the submissions and the user's
  home are simply not there; there is no network; its processes die with it.
- "process" (anywhere): the worker is an ordinary process with a scrubbed environment, resource limits and an
  audit hook (guard.py) that refuses processes, ctypes, sockets, writes outside its folder and reads outside
  the same paths bubblewrap would show. Defence in depth, but native code could get around it.

Both levels draw on the same lists of what the worker may see (SYSTEM_FOLDERS, ETC_FILES, SYS_FOLDERS, the GPU
nodes and `python_folders`): bubblewrap binds them, and `visible_paths` gives them to the audit hook.

"auto" uses bubblewrap where it works and says so in the report when it falls back to "process".
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from course.errors import ConfigError
from course.worker.cgroup import cgroup_parent

# System folders the worker needs (read-only): the dynamic loader, libc, libstdc++, CA certificates...
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Files of /etc that programs read at start-up; the rest of /etc (e.g. /etc/shadow for a root user) stays out.
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/nsswitch.conf", "/etc/passwd",
             "/etc/group", "/etc/localtime", "/etc/hosts", "/etc/alternatives", "/etc/os-release")
# CPU topology, read by torch's thread pools.
SYS_FOLDERS = ("/sys/devices/system/cpu", "/sys/fs/cgroup")
# Read by torch and the C library; bubblewrap gives the worker its own /proc and a minimal /dev instead.
PROC_FILES = ("/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys/kernel", "/proc/sys/vm/overcommit_memory")
DEV_FILES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/shm")
# GPU device nodes, visible only when grading on CUDA.
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri")
# Processes and threads a worker may have at once (torch's thread pools included).
MAX_PROCESSES = 64
# Under bubblewrap, /tmp and /dev/shm are tmpfs (RAM): each may hold memory_mb / TMPFS_SHARE, and the worker's
# address space is memory_mb less both, so that what a submission holds in memory, files in tmpfs included,
# stays within sandbox.memory_mb. (4096 MB: 128 MB each, 3840 MB of address space. A worker's TMPDIR is its
# working folder, on disk: /tmp and /dev/shm are for what insists on them.)
TMPFS_SHARE = 32
DEFAULT_TMPFS_MB = 4096 // TMPFS_SHARE  # for a plan made without limits
# The places a template's workers may write in its sandbox, besides their folders: emptied between submissions.
SCRATCH_FOLDERS = ("/tmp", "/dev/shm", "/dev/mqueue")


@dataclass(frozen=True)
class SandboxPlan:
    """What the client needs to start one worker."""

    isolation: str  # "bubblewrap" or "process"
    note: str  # one line for the report, e.g. why bubblewrap was not used
    limits: dict = field(default_factory=dict)  # for guard.apply_limits
    pids_max: int | None = None  # processes and threads of the worker, enforced by a control group (cgroup.py)
    tmpfs_mb: int | None = None  # size of each of /tmp and /dev/shm under bubblewrap (None: DEFAULT_TMPFS_MB)

    def command(self, python: str, bootstrap: Path, folder: Path, writable: Path, device: str,
                settings: str) -> list[str]:
        """The command line that starts a worker (or a template of workers) whose files are in `folder`, of which
        only `writable` may be written; it starts in `writable`."""
        worker = [python, "-I", str(bootstrap), settings]
        if self.isolation != "bubblewrap":
            return worker
        return bubblewrap_arguments(folder, writable, device, self.tmpfs_mb) + ["--", *worker]


def plan_sandbox(policy: str, *, memory_mb: int, cpu_seconds: int, file_mb: int, device: str) -> SandboxPlan:
    """Decide the isolation for this machine and course.yml's `sandbox` settings."""
    problem = bubblewrap_problem() if policy in ("auto", "bubblewrap") else "isolation 'process' was chosen"
    if policy == "bubblewrap" and problem:
        raise ConfigError(f"course.yml: sandbox.isolation is 'bubblewrap' but bubblewrap cannot run here: {problem}")
    limits = {"cpu_seconds": cpu_seconds, "file_mb": file_mb}
    tmpfs_mb = None if problem else max(memory_mb // TMPFS_SHARE, 1)
    if device == "cpu":
        # CUDA reserves huge address ranges: no address-space limit there. Under bubblewrap the two tmpfs come out
        # of the same budget (their pages are memory that no address-space limit sees).
        limits["memory_mb"] = memory_mb - 2 * (tmpfs_mb or 0)
    if problem is None:
        # In its own user namespace the worker's process count covers only its own processes (except for a
        # root grader, whom RLIMIT_NPROC does not bind: the control group below does).
        limits["processes"] = MAX_PROCESSES
        note = "bubblewrap: the worker sees only the system, Python and its own folder; no network"
        isolation = "bubblewrap"
    else:
        note = f"process isolation only ({problem}); for code you trust, see docs/trust-model.md"
        isolation = "process"
    pids_max = MAX_PROCESSES if cgroup_parent() is not None else None
    if pids_max:
        note += f"; at most {MAX_PROCESSES} processes (a control group)"
    elif isolation == "process":
        note += "; no control group here for a process limit"
    return SandboxPlan(isolation=isolation, note=note, limits=limits, pids_max=pids_max, tmpfs_mb=tmpfs_mb)


def visible_paths(device: str) -> list[str]:
    """Everything the worker may read besides its own folder: the system, /etc's start-up files, the Python
    installation (and GPU device nodes on CUDA). Not the course, the submissions or anyone's home."""
    paths = [os.path.realpath(p) for p in SYSTEM_FOLDERS if os.path.isdir(p)]
    paths += [p for p in ETC_FILES + SYS_FOLDERS + PROC_FILES + DEV_FILES if os.path.exists(p)]
    if not device.startswith("cpu"):
        paths += gpu_nodes()
    return sorted(set(paths)) + python_folders()


def python_folders() -> list[str]:
    """The Python installation the worker runs on (a virtual environment and its base), as real paths."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    folders = set(prefixes)
    executable = os.path.realpath(sys.executable)
    if not any(executable.startswith(p + os.sep) for p in prefixes):
        folders.add(os.path.dirname(executable))
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        # Only sys.path entries inside the installation: an editable install's source folder stays out.
        if real and os.path.isdir(real) and any(real == p or real.startswith(p + os.sep) for p in prefixes):
            folders.add(real)
    # Unprefixed symlinks (/usr/bin/python3 -> ...) are covered by the system folders.
    return sorted(folders)


def gpu_nodes() -> list[str]:
    return [node for pattern in GPU_DEVICES for node in glob.glob(pattern)]


def bubblewrap_arguments(folder: Path, writable: Path, device: str, tmpfs_mb: int | None = None) -> list[str]:
    """bwrap's options: the system and Python read-only, `folder` read-only, `writable` (inside it) writable, /tmp
    and /dev/shm of `tmpfs_mb` each; the rest read-only."""
    return (_system_arguments(device, tmpfs_mb)
            + ["--ro-bind", str(folder), str(folder), "--bind", str(writable), str(writable), "--chdir", str(writable)]
            + READ_ONLY_ROOT)


# Last of bwrap's options: the sandbox's own root and /dev (tmpfs that bwrap makes to hold the mount points) are
# made read-only, so that /tmp, /dev/shm and the working folder are the only places a worker can write to.
READ_ONLY_ROOT = ["--remount-ro", "/dev", "--remount-ro", "/"]


def _system_arguments(device: str, tmpfs_mb: int | None = None) -> list[str]:
    """bwrap's namespaces, its read-only view of the system and the Python installation, and the scratch
    filesystems (/tmp, /dev/shm: tmpfs of `tmpfs_mb` each; /dev/mqueue: the IPC namespace's message queues, so that
    a template can see and remove them)."""
    size = str((tmpfs_mb or DEFAULT_TMPFS_MB) * 2**20)
    args = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--disable-userns"]
    for system in SYSTEM_FOLDERS:
        if os.path.islink(system):
            args += ["--symlink", os.readlink(system), system]  # merged /usr: /bin -> usr/bin
        elif os.path.isdir(system):
            args += ["--ro-bind", system, system]
    for path in ETC_FILES + SYS_FOLDERS:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs",
             "/dev/shm", "--mqueue", "/dev/mqueue"]
    if not device.startswith("cpu"):
        for node in gpu_nodes():
            args += ["--dev-bind-try", node, node]
    for python in python_folders():
        if not any(python == s or python.startswith(s + os.sep) for s in SYSTEM_FOLDERS if not os.path.islink(s)):
            args += ["--ro-bind", python, python]
    return args


@functools.lru_cache(maxsize=1)
def bubblewrap_problem() -> str | None:
    """None if bubblewrap works on this machine, else why not (checked once per process, in ~10 ms)."""
    if sys.platform != "linux":
        return f"bubblewrap needs Linux, this is {sys.platform}"
    if shutil.which("bwrap") is None:
        return "the bwrap program is not installed (apt install bubblewrap)"
    probe = _system_arguments("cpu") + READ_ONLY_ROOT + ["--", "/bin/true"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start ({exc})"
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        return f"bwrap cannot create namespaces here ({reason})"
    return None
