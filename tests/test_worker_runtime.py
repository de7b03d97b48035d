"""The code that runs inside the worker is one folder, course/worker/runtime/: the launcher copies that folder
(not a list of files), and the worker loads `probe_kit`, the helpers that probes import, from its own copy,
before any student code. (That the folder imports nothing of the trusted side is a ruff rule: runtime/ruff.toml.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from course.worker.launchers import RUNTIME_FOLDER, Launcher, WorkerSpec


def python_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_launcher_copies_the_runtime_folder_whole_and_nothing_else(tmp_path):
    Launcher(WorkerSpec())._prepare(tmp_path)
    copied = tmp_path / "runtime"
    assert python_files(copied) == python_files(RUNTIME_FOLDER)
    assert "probe_kit/__init__.py" in python_files(copied)
    assert not list(copied.rglob("*.toml"))
    assert not list(copied.rglob(".ruff_cache"))


def test_the_worker_loads_every_probe_kit_module_from_its_own_copy(tmp_path):
    Launcher(WorkerSpec())._prepare(tmp_path)
    bootstrap = tmp_path / "runtime" / "bootstrap.py"
    script = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('bootstrap', {str(bootstrap)!r})\n"
        "bootstrap = importlib.util.module_from_spec(spec); spec.loader.exec_module(bootstrap)\n"
        "bootstrap._load_probe_kit()\n"
        "print(json.dumps({name: module.__file__ for name, module in sys.modules.items()"
        " if name.split('.')[0] == 'probe_kit'}))\n")
    loaded = json.loads(subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True,
                                       check=True, timeout=120).stdout)
    expected = {"probe_kit", *(f"probe_kit.{Path(name).stem}" for name in python_files(RUNTIME_FOLDER / "probe_kit")
                               if name != "__init__.py")}
    assert set(loaded) == expected
    assert all(Path(path).is_relative_to(tmp_path / "runtime" / "probe_kit") for path in loaded.values())


def test_the_trusted_side_imports_probe_kit_from_the_same_files():
    import importlib

    importlib.import_module("course.grading.probes")  # registers probe_kit
    probe_kit = importlib.import_module("probe_kit")
    assert Path(probe_kit.__file__).parent == RUNTIME_FOLDER / "probe_kit"
