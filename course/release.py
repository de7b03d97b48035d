"""Generating the student release (assignments/) from the solution notebooks (solutions/) with nbgrader.

assignments/ is never edited by hand: `course release` regenerates it, and `course release --check` (run by
the tests) fails when the committed copy differs from what nbgrader would generate now. The data files an
assignment's notebook reads (course.yml's `data`, computed from the notebook) have one source, data/: the
release gets a copy of each beside the notebook, for students who have only the release.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from course.config import Course
from course.errors import CourseError


def generate(course: Course, assignment_ids: list[str], root: Path | None = None) -> None:
    """Run `nbgrader generate_assignment ID --force` for each id, in `root` (default: the course root)."""
    root = root or course.root
    env = dict(os.environ)
    # nbgrader runs helper programs (alembic) found next to the interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with tempfile.TemporaryDirectory(prefix="course-gradebook-") as scratch:
        for assignment_id in assignment_ids:
            command = [
                sys.executable, "-m", "nbgrader", "generate_assignment", assignment_id, "--force",
                f"--CourseDirectory.root={root}",
                f"--CourseDirectory.db_url=sqlite:///{scratch}/gradebook.db",
            ]
            done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
            release = root / "assignments" / assignment_id
            if done.returncode != 0 or not release.is_dir():
                raise CourseError(f"nbgrader generate_assignment {assignment_id} failed:\n{done.stdout}{done.stderr}")
            for data in course.data_files(course.assignment(assignment_id)):
                shutil.copyfile(data, release / data.name)


def stale_files(course: Course, assignment_ids: list[str]) -> list[str]:
    """Files of assignments/ that differ from a fresh generation (empty list: up to date)."""
    with tempfile.TemporaryDirectory(prefix="course-release-") as scratch:
        root = Path(scratch)
        shutil.copy(course.root / "nbgrader_config.py", root / "nbgrader_config.py")
        for assignment_id in assignment_ids:
            shutil.copytree(course.root / "solutions" / assignment_id, root / "solutions" / assignment_id,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        generate(course, assignment_ids, root)
        problems = []
        for assignment_id in assignment_ids:
            fresh_dir = root / "assignments" / assignment_id
            committed_dir = course.root / "assignments" / assignment_id
            fresh = _files(fresh_dir)
            committed = _files(committed_dir) if committed_dir.is_dir() else set()
            for name in sorted(fresh | committed):
                label = f"assignments/{assignment_id}/{name}"
                if name not in committed:
                    problems.append(f"{label}: missing")
                elif name not in fresh:
                    problems.append(f"{label}: not generated from solutions/ (remove it)")
                elif not _same(fresh_dir / name, committed_dir / name):
                    problems.append(f"{label}: differs from what solutions/{assignment_id} generates")
        return problems


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts}


def _same(a: Path, b: Path) -> bool:
    if a.suffix == ".ipynb":
        try:
            return json.loads(a.read_text(encoding="utf-8")) == json.loads(b.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return False
    return filecmp.cmp(a, b, shallow=False)
