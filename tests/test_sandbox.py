"""The sandbox's plan: isolation chosen by policy, limits, and what the worker may see."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from course.errors import ConfigError
from course.worker import sandbox
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
    args = bubblewrap_arguments(tmp_path, "cpu")
    assert args[args.index("--bind") + 1] == str(tmp_path)  # the only writable bind
    assert args.count("--bind") == 1
    assert "--unshare-all" in args
    assert "--die-with-parent" in args
    assert "--disable-userns" in args
    for flag, source in zip(args, args[1:]):
        if flag in ("--ro-bind", "--ro-bind-try", "--bind"):
            assert not inside(source, REPO.resolve()) or inside(source, REPO.resolve() / ".venv"), source
