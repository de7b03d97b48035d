"""Grading a class of 40: a shell loop of `course grade`, `course grade DIR --jobs 1` and `--jobs 2`, and
nbgrader's own autograde (which executes each notebook in a kernel, unsandboxed), on the same submissions, in
one run.

    python benchmarks/class_grading.py [--students 40] [--skip-loop] [--skip-nbgrader] [--baseline CHECKOUT]

`--baseline` times `course grade DIR --jobs 2` of another checkout of the course too (e.g. the last release:
`git worktree add /tmp/before HEAD~3`), in the same run on the same class, before this checkout's: a change's
cost is measured on one machine, one class, one minute.

The class (tests/submissions/classroom.py) holds the solution, the untouched release, the catalogue's variants
and mutants of chapter 3, unreadable notebooks and hostile submissions that are safe to run outside the sandbox
(nbgrader's kernel has none): an endless loop, os._exit, a forged reply, a bounded fork bomb. nbgrader runs with
a 30 s cell timeout, the course's per-test timeout.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.submissions.classroom import make_class  # noqa: E402

ASSIGNMENT = "ch03_attention"
# Safe to run unsandboxed (no gigabytes, no files planted in site-packages), so nbgrader can run them too.
HOSTILE = ("infinite_loop", "os_exit_in_function", "forged_reply_on_the_channel", "fork_bomb")


def course(*args: str, cwd: Path, repo: Path = REPO) -> None:
    """The `course` command of the checkout `repo` (its own package first on the path)."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    subprocess.run([sys.executable, "-m", "course", "--root", str(repo), *args], cwd=cwd, check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(how: str, action) -> tuple[str, float]:
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    print(f"  {how}: {seconds:.1f} s", flush=True)
    return how, seconds


def shell_loop(folder: Path, out: Path) -> None:
    for student in sorted((folder / "submitted").iterdir()):
        notebook = student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
        course("grade", str(notebook), "--assignment", ASSIGNMENT, "--json", str(out / f"{student.name}.json"),
               cwd=folder)


def nbgrader_autograde(folder: Path) -> None:
    """nbgrader's own autograde (Execute in a kernel) on a copy of the course that holds the class.

    nbgrader exits with 1 when a submission could not be autograded (the unreadable notebooks, a kernel killed
    by os._exit): that is part of the run being timed, so the exit status is reported, not raised."""
    copy = folder / "nbgrader-course"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "gradebook.db"))
    shutil.copytree(folder / "submitted", copy / "submitted")
    (copy / "nbgrader_config.py").write_text(
        'c = get_config()  # noqa: F821\n'
        'c.CourseDirectory.root = "."\n'
        'c.CourseDirectory.source_directory = "solutions"\n'
        'c.CourseDirectory.release_directory = "assignments"\n'
        'c.Execute.timeout = 30\n')
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    nbgrader = [sys.executable, "-m", "nbgrader"]
    subprocess.run([*nbgrader, "generate_assignment", ASSIGNMENT, "--force"], cwd=copy, env=env, check=True,
                   capture_output=True)
    done = subprocess.run([*nbgrader, "autograde", ASSIGNMENT, "--force"], cwd=copy, env=env, capture_output=True)
    graded = len(list((copy / "autograded").glob(f"*/{ASSIGNMENT}/{ASSIGNMENT}.ipynb")))
    print(f"nbgrader autograde: exit status {done.returncode}, {graded} notebooks autograded", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-nbgrader", action="store_true")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also time `--jobs 2` with the course of this checkout (e.g. a git worktree of HEAD)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="class-benchmark-") as scratch:
        folder = Path(scratch)
        make_class(folder, args.students, ASSIGNMENT, hostile=HOSTILE)
        print(f"Grading {args.students} submissions of {ASSIGNMENT}; each row is printed when it is done.", flush=True)
        if not args.skip_loop:
            (folder / "loop").mkdir()
            rows.append(timed("shell loop of `course grade`", lambda: shell_loop(folder, folder / "loop")))
        if args.baseline:
            out = folder / "baseline"
            rows.append(timed(f"`course grade DIR --jobs 2` of {args.baseline}",
                              lambda: course("grade", str(folder), "--jobs", "2", "--out", str(out), cwd=folder,
                                             repo=args.baseline.resolve())))
        for jobs in (1, 2):
            out = folder / f"jobs{jobs}"
            rows.append(timed(f"`course grade DIR --jobs {jobs}`",
                              lambda out=out, jobs=jobs: course("grade", str(folder), "--jobs", str(jobs), "--out",
                                                                str(out), cwd=folder)))
        if not args.skip_nbgrader:
            rows.append(timed("`nbgrader autograde` (executes in a kernel)", lambda: nbgrader_autograde(folder)))
    print(f"Measured {date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}: {args.students} submissions of {ASSIGNMENT}.\n")
    print("| how | wall time (s) | per submission (s) |")
    print("|---|---|---|")
    for how, seconds in rows:
        print(f"| {how} | {seconds:.1f} | {seconds / args.students:.2f} |")


if __name__ == "__main__":
    main()
