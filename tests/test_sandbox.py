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
from course.worker.sandbox import bubblewrap_arguments, plan_sandbox, python_folders, visible_paths
from tests.conftest import REPO

LIMITS = {"memory_mb": 4096, "cpu_seconds": 600, "file_mb": 64}


def test_process_policy_sets_limits_but_no_process_count():
    plan = plan_sandbox("process", device="cpu", **LIMITS)
    assert plan.isolation == "process"
    assert "was chosen" in plan.note
    assert plan.limits == {"cpu_seconds": 600, "file_mb": 64, "memory_mb": 4096}


def test_no_address_space_limit_on_a_gpu():
    assert "memory_mb" not in plan_sandbox("process", device="cuda", **LIMITS).limits


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
