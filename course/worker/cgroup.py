"""A control group for one worker: a process limit that binds even a root grader, and no survivors.

RLIMIT_NPROC does not bind a process whose real user is root (the kernel exempts it, also inside a user
namespace that maps to root), and a worker that escaped its process group (setsid) would outlive a kill of that
group. Where the grading process may create control groups (it runs as root and a `pids` controller is mounted
writable: cgroup v1 at /sys/fs/cgroup/pids, or cgroup v2 with `pids` enabled), each worker gets one of its own:

- `pids.max` caps the number of processes and threads of the worker and everything it starts;
- when the worker is closed, every process still in the group is killed, and the group removed.

The worker enters its group before it runs anything (the client's pre-exec step writes to `cgroup.procs`), so
nothing it starts can be outside. Elsewhere `WorkerCgroup.create` returns None and the report says so.
"""

from __future__ import annotations

import functools
import os
import signal
import time
import uuid
from pathlib import Path

V1_PIDS = Path("/sys/fs/cgroup/pids")
V2_ROOT = Path("/sys/fs/cgroup")


class WorkerCgroup:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, pids_max: int) -> WorkerCgroup | None:
        """A new group limited to `pids_max` processes and threads, or None where groups cannot be made here."""
        parent = cgroup_parent()
        if parent is None:
            return None
        path = parent / f"course-worker-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
        except OSError:
            return None
        group = cls(path)
        try:
            (path / "pids.max").write_text(f"{pids_max}\n")
        except OSError:
            group.remove()
            return None
        return group

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def enter(self) -> None:
        """Move the calling process into the group (run in the worker's pre-exec step: async-signal-safe enough,
        a single write)."""
        fd = os.open(self.procs_file, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def members(self) -> list[int]:
        try:
            return [int(line) for line in Path(self.procs_file).read_text().split()]
        except (OSError, ValueError):
            return []

    def kill_all(self, timeout: float = 5.0, spare: frozenset[int] | set[int] = frozenset()) -> None:
        """SIGKILL every process in the group (but those in `spare`) until none is left (a fork racing the kill is
        caught next round)."""
        deadline = time.monotonic() + timeout
        while (pids := [pid for pid in self.members() if pid not in spare]) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(100):  # the kernel frees the group a moment after its last process is reaped
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)


@functools.lru_cache(maxsize=1)
def cgroup_parent() -> Path | None:
    """Where this process may create a group with a pids controller, or None."""
    if os.geteuid() != 0:
        return None
    if (V1_PIDS / "pids.max").exists() or (V1_PIDS / "cgroup.procs").exists():
        own = _own_group("pids")
        parent = V1_PIDS / own.lstrip("/") if own is not None else V1_PIDS
        return parent if os.access(parent, os.W_OK) else None
    controllers = V2_ROOT / "cgroup.subtree_control"
    if controllers.exists() and "pids" in controllers.read_text().split():
        return V2_ROOT if os.access(V2_ROOT, os.W_OK) else None
    return None


def _own_group(controller: str) -> str | None:
    """This process's group in a cgroup v1 hierarchy, from /proc/self/cgroup ("8:pids:/some/path")."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path
    except (OSError, ValueError):
        return None
    return None
