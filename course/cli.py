"""The `course` command line.

    course grade SUBMISSION [--assignment ID] [--json FILE] [--device D] [--isolation I]
    course release [ID ...] [--check]
    course validate

Exit status: 0 when grading completed (whatever the score), 2 for a bad command line, 3 for a configuration
problem, 1 for other problems (e.g. a stale release with --check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course.errors import CourseError, UsageError
from course.safe_text import safe_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="course", description="Autograding for the LLMs-from-scratch course.")
    parser.add_argument("--root", type=Path, default=None,
                        help="the course folder (default: the nearest folder holding course.yml)")
    commands = parser.add_subparsers(dest="command", required=True)

    grade = commands.add_parser("grade", help="grade a submission notebook (or a folder holding it), or a class")
    grade.add_argument("submission", type=Path, help="a notebook, or a folder that holds the assignment's notebook; "
                                                     "or a folder of submissions (see --jobs)")
    grade.add_argument("--assignment", metavar="ID", help="the assignment id (default: inferred from the notebook)")
    grade.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    grade.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: course.yml's device policy)")
    grade.add_argument("--isolation", choices=["auto", "bubblewrap", "process"],
                       help="how the worker is isolated (default: course.yml's sandbox.isolation; see "
                            "docs/trust-model.md)")
    batch = grade.add_argument_group("grading a class", "SUBMISSION is a folder of submissions: nbgrader's "
                                     "submitted/<student>/<assignment>/, a folder per student or a notebook per "
                                     "student. Implied by a folder whose notebooks are all in subfolders.")
    batch.add_argument("--jobs", type=int, metavar="N", help="grade N submissions at a time (default: 1)")
    batch.add_argument("--out", type=Path, metavar="DIR", default=Path("grades"),
                       help="where grades.csv and one JSON per student go (default: ./grades)")
    batch.add_argument("--force", action="store_true",
                       help="grade again submissions whose notebook and grader have not changed since the last run")
    batch.add_argument("--allow-process-isolation", action="store_true",
                       help="grade a class without bubblewrap (only for code you trust: docs/trust-model.md)")

    release = commands.add_parser("release", help="generate assignments/ from solutions/ with nbgrader")
    release.add_argument("ids", nargs="*", metavar="ID", help="assignment ids (default: all)")
    release.add_argument("--check", action="store_true", help="only check that assignments/ is up to date")

    commands.add_parser("validate", help="check course.yml, the files it names and the graders' points")
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a character gets an escape, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CourseError as exc:
        print(f"course: error: {safe_text(str(exc), 4000)}", file=sys.stderr)
        return exc.exit_code


def cmd_grade(args) -> int:
    from course.config import load_course
    from course.submission import resolve_submission

    course = load_course(args.root)
    if args.jobs is not None or _is_class_folder(args.submission):
        return _grade_class(course, args)
    notes: list[str] = []  # what resolving the submission guessed, e.g. which of a folder's notebooks is graded
    assignment, notebook = resolve_submission(course, args.submission, args.assignment, notes)

    from course.grading.runner import grade_notebook  # imports pytest and torch: only once there is work to do
    from course.reporters.json_report import write_json
    from course.reporters.terminal import render_table

    report = grade_notebook(course, assignment, notebook, device=args.device, isolation=args.isolation,
                            notes=notes)
    if args.json:  # first: whatever happens to the terminal, the result is on disk
        try:
            write_json(report, args.json)
        except OSError as exc:
            raise CourseError(f"{args.json}: the results could not be written ({exc.strerror or exc})") from None
    print(render_table(report))
    return 0


def _is_class_folder(path: Path) -> bool:
    """A folder with nbgrader's submitted/ folder, or whose notebooks are all in subfolders."""
    if not path.is_dir():
        return False
    if (path / "submitted").is_dir():
        return True
    if any(path.glob("*.ipynb")):
        return False
    return any(child.is_dir() and next(child.rglob("*.ipynb"), None) for child in path.iterdir())


def _grade_class(course, args) -> int:
    from course import batch
    from course.grading.runner import worker_spec

    jobs = args.jobs if args.jobs is not None else 1
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    items = batch.discover(course, args.submission, args.assignment)
    isolation = worker_spec(course, course.assignment(items[0].assignment), args.device, args.isolation).sandbox
    if isolation.isolation != "bubblewrap" and not args.allow_process_isolation:
        raise UsageError(
            f"grading a class runs other people's code, which needs bubblewrap, and the worker would run with "
            f"{isolation.note}. Install bubblewrap (sudo apt-get install bubblewrap), or grade inside a container "
            "(docs/trust-model.md); if you trust every one of these submissions, pass --allow-process-isolation.")
    progress = batch.stderr_progress(len(items))
    try:
        results = batch.grade_batch(course, items, jobs=jobs, out=args.out, force=args.force, device=args.device,
                                    isolation=args.isolation, on_result=lambda result: progress.update())
    finally:
        progress.close()
        batch.close_launchers()
    batch.write_csv(args.out / "grades.csv", results)
    print(batch.summary(results))
    print(f"results: {args.out / 'grades.csv'} and {args.out}/<student>/<assignment>.json")
    return 0


def cmd_release(args) -> int:
    from course import release
    from course.config import load_course

    course = load_course(args.root)
    ids = args.ids or [a.id for a in course.assignments]
    for assignment_id in ids:
        try:
            course.assignment(assignment_id)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
    if args.check:
        problems = release.stale_files(course, ids)
        if problems:
            print("assignments/ is out of date with solutions/ (run `course release`):", file=sys.stderr)
            for problem in problems:
                print("  " + problem, file=sys.stderr)
            return 1
        print(f"assignments/ is up to date for {', '.join(ids)}")
        return 0
    release.generate(course, ids)
    print(f"generated assignments/ for {', '.join(ids)}")
    return 0


def cmd_validate(args) -> int:
    from course.config import load_course
    from course.grading.runner import collect_points

    course = load_course(args.root)
    for assignment in course.assignments:
        points = collect_points(course, assignment)
        print(f"{assignment.id}: {len(points)} tests, {sum(points.values()):g} points")
    print("course.yml is valid")
    return 0


COMMANDS = {"grade": cmd_grade, "release": cmd_release, "validate": cmd_validate}
