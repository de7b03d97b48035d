"""The sandbox's plan: isolation chosen by policy, limits, and what the worker may see."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course.errors import ConfigError
from course.worker import sandbox
from course.worker.cgroup import WorkerCgroup, cgroup_parent
from course.worker.sandbox import (
    READ_ONLY_ROOT,
    TMPFS_SHARE,
    bubblewrap_arguments,
    bubblewrap_problem,
    plan_sandbox,
    python_folders,
    visible_paths,
)
from tests.conftest import REPO

LIMITS = {"memory_mb": 4096, "cpu_seconds": 600, "file_mb": 64}


def test_process_policy_sets_limits_but_no_process_count():
    plan = plan_sandbox("process", device="cpu", **LIMITS)
    assert plan.isolation == "process"
    assert "was chosen" in plan.note
    assert plan.limits == {"cpu_seconds": 600, "file_mb": 64, "memory_mb": 4096}


def test_no_address_space_limit_on_a_gpu():
    assert "memory_mb" not in plan_sandbox("process", device="cuda", **LIMITS).limits


def test_under_bubblewrap_tmpfs_counts_against_the_memory_limit(monkeypatch):
    """/tmp and /dev/shm are RAM: each gets memory_mb / TMPFS_SHARE, and the address space what is left."""
    monkeypatch.setattr(sandbox, "bubblewrap_problem", lambda: None)
    plan = plan_sandbox("bubblewrap", device="cpu", **LIMITS)
    assert plan.tmpfs_mb == 4096 // TMPFS_SHARE == 128
    assert plan.limits["memory_mb"] + 2 * plan.tmpfs_mb == 4096
    assert plan_sandbox("bubblewrap", device="cuda", **LIMITS).tmpfs_mb == 128
    assert plan_sandbox("process", device="cpu", **LIMITS).tmpfs_mb is None


def test_required_bubblewrap_that_cannot_run_is_a_configuration_error(monkeypatch):
    monkeypatch.setattr(sandbox, "bubblewrap_problem", lambda: "the bwrap program is not installed")
    with pytest.raises(ConfigError, match="sandbox.isolation is 'bubblewrap'.*not installed"):
        plan_sandbox("bubblewrap", device="cpu", **LIMITS)
    plan = plan_sandbox("auto", device="cpu", **LIMITS)
    assert plan.isolation == "process"
    assert "not installed" in plan.note


def inside(path: str, folder: Path) -> bool:
    return path == str(folder) or path.startswith(str(folder) + os.sep)


def test_the_worker_sees_neither_the_course_nor_the_home():
    """Only the Python installation may lie inside them (a virtual environment in the repository)."""
    pythons = python_folders()
    home = Path(os.environ.get("HOME", "/nonexistent")).resolve()
    for path in visible_paths("cpu"):
        if path in pythons:
            continue
        assert not inside(path, REPO.resolve()), path
        assert not inside(path, home), path
    for path in pythons:
        assert not (inside(path, REPO.resolve()) and not inside(path, REPO.resolve() / ".venv")), path


def test_bubblewrap_command_binds_the_working_folder_writable_and_nothing_of_the_course(tmp_path):
    home = tmp_path / "home"
    args = bubblewrap_arguments(tmp_path, home, "cpu")
    assert args[args.index("--bind") + 1] == str(home)  # the only writable bind
    assert args.count("--bind") == 1
    assert args[args.index(str(tmp_path)) - 1] == "--ro-bind"  # the worker's own files: read-only
    assert "--unshare-all" in args
    assert "--die-with-parent" in args
    assert "--disable-userns" in args
    for scratch in ("/tmp", "/dev/shm"):  # RAM-backed, with a size
        at = args.index(scratch) - 1
        assert args[at] == "--tmpfs"
        assert args[at - 2:at] == ["--size", str(sandbox.DEFAULT_TMPFS_MB * 2**20)]
    assert args[-len(READ_ONLY_ROOT):] == READ_ONLY_ROOT  # last: nothing else stays writable
    for flag, source in zip(args, args[1:]):
        if flag in ("--ro-bind", "--ro-bind-try", "--bind"):
            assert not inside(source, REPO.resolve()) or inside(source, REPO.resolve() / ".venv"), source


@pytest.mark.skipif(cgroup_parent() is None, reason="no control group can be created here (needs root and a "
                                                    "writable pids controller)")
def test_a_control_group_caps_processes_and_leaves_no_survivor(tmp_path):
    """Processes in a worker's group are limited (even for root) and all killed when it is removed, including a
    daemon that left its process group with setsid."""
    group = WorkerCgroup.create(pids_max=8)
    assert group is not None
    pid_file = tmp_path / "daemon.pid"
    script = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n"
              f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n    time.sleep(60)\n")
    subprocess.run([sys.executable, "-c", script], preexec_fn=group.enter, check=True, timeout=30)
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    daemon = int(pid_file.read_text())
    assert daemon in group.members()
    count_file = tmp_path / "forks"
    fork_loop = (f"import os, time\nn = 0\ntry:\n    for _ in range(50):\n        if os.fork() == 0:\n"
                 f"            time.sleep(60)\n        n += 1\nexcept OSError:\n    pass\n"
                 f"open({str(count_file)!r}, 'w').write(str(n))\n")
    subprocess.run([sys.executable, "-c", fork_loop], preexec_fn=group.enter, check=True, timeout=30)
    assert int(count_file.read_text()) < 8
    group.remove()
    assert not alive(daemon)
    assert not group.path.exists()


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed orphan stays one until its new parent reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(bool(bubblewrap_problem()), reason=f"bubblewrap is not available here: {bubblewrap_problem()}")
def test_inside_bubblewrap_only_the_working_folder_and_capped_scratch_space_are_writable(tmp_path):
    """The sandbox's root, /dev, /etc and the rest refuse writes; /tmp and /dev/shm take writes up to their size
    and then fail with ENOSPC (the memory stays bounded); the working folder is writable."""
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "import errno, os\n"
        "for folder in ('/', '/dev', '/etc', '/sys', '/usr', '/proc', os.getcwd(), '/tmp', '/dev/shm'):\n"
        "    try:\n"
        "        with open(os.path.join(folder, 'probe'), 'wb') as handle:\n"
        "            for _ in range(64):\n"
        "                handle.write(bytes(2**20))\n"
        "        print(folder, 'written')\n"
        "    except OSError as exc:\n"
        "        print(folder, errno.errorcode.get(exc.errno))\n"
    )
    args = bubblewrap_arguments(tmp_path, home, "cpu", tmpfs_mb=16)
    result = subprocess.run(args + ["--", sys.executable, "-I", "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=home)
    outcome = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())
    assert outcome.pop(str(home)) == "written", result.stdout + result.stderr
    assert outcome.pop("/tmp") == outcome.pop("/dev/shm") == "ENOSPC"
    assert set(outcome.values()) <= {"EROFS", "ENOENT", "EACCES"}, outcome
