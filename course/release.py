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
    """nbgrader's generate_assignment (with --force) for each id, in `root` (default: the course root).

    One nbgrader process generates them all (`_generate_in_nbgrader` below): importing nbgrader and creating its
    database take seconds, and the notebooks themselves a fraction of one."""
    root = root or course.root
    env = dict(os.environ)
    # nbgrader runs helper programs (alembic) found next to the interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if not assignment_ids:
        return
    with tempfile.TemporaryDirectory(prefix="course-gradebook-") as scratch:
        command = [sys.executable, "-m", "course.release", str(root), f"sqlite:///{scratch}/gradebook.db",
                   *assignment_ids]
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    outcomes = {}
    for line in done.stdout.splitlines():
        if line.startswith(_OUTCOME):
            outcome = json.loads(line.removeprefix(_OUTCOME))
            outcomes[outcome["id"]] = outcome
    for assignment_id in assignment_ids:
        outcome = outcomes.get(assignment_id)
        release = root / "assignments" / assignment_id
        if outcome is None or not outcome["success"] or not release.is_dir():
            said = f"{outcome['log']}{outcome['error']}" if outcome else f"{done.stdout}{done.stderr}"
            raise CourseError(f"nbgrader generate_assignment {assignment_id} failed:\n{said}")
        for data in course.data_files(course.assignment(assignment_id)):
            shutil.copyfile(data, release / data.name)


_OUTCOME = "course-release-outcome: "  # the prefix of the lines the nbgrader process reports with


def _generate_in_nbgrader(root: str, db_url: str, assignment_ids: list[str]) -> None:
    """Run in the nbgrader process: generate each assignment with nbgrader's API and the course's
    nbgrader_config.py, and print one outcome line per assignment (its success, log and error)."""
    from nbgrader.apps.api import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=root).load_config()
    config.CourseDirectory.root = root
    config.CourseDirectory.db_url = db_url
    api = NbGraderAPI(config=config)
    for assignment_id in assignment_ids:
        result = api.generate_assignment(assignment_id, force=True, create=True)
        print(_OUTCOME + json.dumps({"id": assignment_id, "success": bool(result.get("success")),
                                     "log": str(result.get("log", "")), "error": str(result.get("error", ""))}),
              flush=True)


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


if __name__ == "__main__":  # python -m course.release ROOT DB_URL ID...: what generate() runs
    _generate_in_nbgrader(sys.argv[1], sys.argv[2], sys.argv[3:])
