"""The `course` command line.

    course check [NOTEBOOK] [--assignment ID] [--json FILE] [--summary FILE] [--github-output FILE]
                 [--classroom50 FILE] [--isolation I]
    course grade SUBMISSION [--assignment ID] [--json FILE] [--device D] [--isolation I]
    course grade DIR --jobs N [--out OUT] [--force] [--student ID] [--test NAME] [--roster FILE] [--overrides FILE]
                     [--excel]
    course gradebook SOURCE [--out OUT] [--submissions DIR] [--assignment ID] [--roster FILE] [--overrides FILE]
                     [--excel]
    course release [ID ...] [--check] [--out DIR] [--all]
    course validate

`course` finds its configuration, course.yml, in the working folder or the nearest folder above it: the
course's, or a student repository's (written by `course release --out`), where only `check` and `validate`
apply.

Exit status: 0 when grading or checking completed (whatever the score), 2 for a bad command line, 3 for a
configuration problem, 1 for other problems (e.g. a stale release with --check), 130 when grading a class was
interrupted with Ctrl-C (what was graded is written; a second run grades the rest).
"""

from __future__ import annotations

import argparse
import os
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
    batch.add_argument("--scheduler", metavar="ADDRESS",
                       help="grade on the workers of this Dask scheduler: tcp://HOST:PORT or a scheduler file "
                            "(default: course.yml's cluster.scheduler, unless --jobs is given; docs/cluster.md)")
    batch.add_argument("--student", metavar="ID", help="grade only this student's submission again, into the "
                       "existing results (the others keep theirs)")
    batch.add_argument("--test", metavar="NAME", help="grade the class again and keep only this test's new "
                       "result, into the existing results (the grader was wrong on NAME)")
    _gradebook_options(batch)

    gradebook = commands.add_parser(
        "gradebook", help="grades.csv, feedback, late work, overrides, roster and plots from results already there: "
                          "course grade's results folder, or an nbgrader course folder (its gradebook.db)")
    gradebook.add_argument("source", type=Path, help="course grade's results folder (OUT), or the nbgrader course "
                                                     "folder that holds gradebook.db")
    gradebook.add_argument("--out", type=Path, metavar="DIR", help="where to write (default: SOURCE for course "
                           "grade's results, ./grades for nbgrader)")
    gradebook.add_argument("--submissions", type=Path, metavar="DIR",
                           help="the class folder that was graded (for submission times and the submissions not "
                                "graded yet); course grade's results only")
    gradebook.add_argument("--assignment", metavar="ID", help="only this assignment (default: every one there is)")
    _gradebook_options(gradebook)

    check = commands.add_parser("check", help="run the public checks of a notebook and show what is left")
    check.add_argument("notebook", nargs="?", type=Path,
                       help="a notebook, or a folder that holds it (default in a student repository: its notebook)")
    check.add_argument("--assignment", metavar="ID", help="the assignment id (default: inferred from the notebook)")
    check.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    check.add_argument("--summary", type=Path, metavar="FILE",
                       help='append a Markdown summary to FILE (on GitHub: "$GITHUB_STEP_SUMMARY")')
    check.add_argument("--github-output", type=Path, metavar="FILE",
                       help="append the autograding reporter's payload as the step output `result` to FILE "
                            '(on GitHub: "$GITHUB_OUTPUT")')
    check.add_argument("--classroom50", type=Path, metavar="FILE", help="write Classroom 50's result.json to FILE")
    check.add_argument("--isolation", choices=["auto", "bubblewrap", "process"],
                       help="how the process running the notebook is isolated (default: course.yml's)")

    release = commands.add_parser("release", help="generate assignments/ from solutions/ with nbgrader, or write "
                                                  "student repositories (--out)")
    release.add_argument("ids", nargs="*", metavar="ID", help="assignment ids (default: all)")
    release.add_argument("--check", action="store_true", help="only check that assignments/ is up to date")
    release.add_argument("--out", type=Path, metavar="DIR",
                         help="write a self-contained student repository of one assignment to DIR; with --all "
                              "or several ids, one folder DIR/<id> each")
    release.add_argument("--all", action="store_true", help="every assignment of course.yml")

    commands.add_parser("validate", help="check course.yml, the files it names and the graders' points")
    return parser


def _gradebook_options(group) -> None:
    group.add_argument("--roster", type=Path, metavar="FILE",
                       help="CSV of the students (student, optional name and email): who has no submission is "
                            "'missing' with 0, submissions not on it go to not-on-roster.csv")
    group.add_argument("--overrides", type=Path, metavar="FILE",
                       help="CSV of points set by hand (student, test or total or late_penalty, points, reason)")
    group.add_argument("--excel", action="store_true",
                       help="start grades.csv with a UTF-8 byte-order mark, so that Excel shows accents right")


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
    if args.jobs is not None or args.scheduler or _is_class_folder(args.submission):
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
    """A folder with nbgrader's submitted/ folder, or whose notebooks are all in subfolders (one or two levels
    down: a student's folder, or nbgrader's <student>/<assignment>/). Links are not followed, and no deeper look
    is taken: a student's folder may hold anything, thousands of nested folders included."""
    if not path.is_dir():
        return False
    if (path / "submitted").is_dir():
        return True
    if _has_notebook(path):
        return False
    return any(_has_notebook(child) or any(_has_notebook(inner) for inner in _folders(child))
               for child in _folders(path))


def _folders(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _has_notebook(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(e.name.endswith(".ipynb") for e in entries)
    except OSError:
        return False


def _grade_class(course, args) -> int:
    from course import batch
    from course.grading.runner import worker_spec

    jobs = args.jobs if args.jobs is not None else 1
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    address = args.scheduler
    if address and args.jobs is not None:
        raise UsageError("--jobs and --scheduler: choose one (on a cluster, its workers are the lanes)")
    if address is None and args.jobs is None and course.config.cluster is not None:
        address = course.config.cluster.scheduler
    dispatcher = None
    if address:
        from course.cluster import dispatcher_for

        dispatcher = dispatcher_for(address)
    roster, overrides = _gradebook_files(args)  # first: a mistake in them is found before anything is graded
    found = batch.discover(course, args.submission, args.assignment, exclude=(args.out,))
    items = found.items
    isolation = worker_spec(course, course.assignment(items[0].assignment), args.device, args.isolation).sandbox
    if isolation.isolation != "bubblewrap" and not args.allow_process_isolation:
        raise UsageError(
            f"grading a class runs other people's code, which needs bubblewrap, and the worker would run with "
            f"{isolation.note}. Install bubblewrap (sudo apt-get install bubblewrap), or grade inside a container "
            "(docs/trust-model.md); if you trust every one of these submissions, pass --allow-process-isolation.")
    if args.force and (args.student or args.test):
        raise UsageError("--force grades everything again; --student and --test grade a part: choose one")
    partial = None
    if args.student or args.test:
        from course.gradebook.regrade import choose

        partial = choose(course, items, args.student, args.test)
    progress = batch.stderr_progress(len(partial if partial is not None else items))
    try:
        if partial is not None:
            from course.gradebook.regrade import regrade

            results, interrupted = regrade(course, items, partial, test=args.test, out=args.out, jobs=jobs,
                                           device=args.device, isolation=args.isolation,
                                           on_result=lambda result: progress.update(), dispatcher=dispatcher)
        else:
            results = batch.grade_batch(course, items, jobs=jobs, out=args.out, force=args.force, device=args.device,
                                        isolation=args.isolation, on_result=lambda result: progress.update(),
                                        dispatcher=dispatcher)
            interrupted = any(result.report is None for result in results)
    finally:
        progress.close()
    from course.gradebook.csvfile import TableError
    from course.gradebook.figures import render_summary
    from course.gradebook.publish import publish, written
    from course.gradebook.sources import from_batch

    assignments = list(dict.fromkeys(item.assignment for item in items))
    entries = from_batch(results)
    problem = None
    try:
        try:
            done = publish(course, entries, args.out, assignments=assignments, roster=roster, overrides=overrides,
                           excel=args.excel, private=(args.submission,))
        except TableError as exc:  # an override the graded class does not match: never leave grades.csv stale
            problem = exc
            done = publish(course, entries, args.out, assignments=assignments, roster=roster, excel=args.excel,
                           private=(args.submission,))
    except OSError as exc:
        raise CourseError(f"{args.out}: the results could not be written ({exc.strerror or exc})") from None
    print(batch.summary(results, found.skipped))
    changed = any(row.score != row.auto_score or row.status == "missing" for row in done.book.all_rows)
    print(render_summary(done.book, done.figures, scores=changed))
    print(written(args.out, done))
    print(f"results: {args.out}/<student>/<assignment>.json")
    if problem is not None:
        raise UsageError(f"{problem}\n(grades.csv and the feedback were written without the overrides: fix the file, "
                         f"then run `course gradebook {args.out} --submissions {args.submission}` with the same "
                         "options; nothing needs grading again)")
    if interrupted:
        not_graded = sum(result.report is None for result in results)
        print(f"interrupted: {len(results) - not_graded} graded, {not_graded} not graded (marked so in grades.csv); "
              "run the same command again to grade the rest", file=sys.stderr)
        return 130
    return 0


def _gradebook_files(args):
    from course.gradebook.overrides import read_overrides
    from course.gradebook.roster import read_roster

    roster = read_roster(args.roster) if args.roster else None
    overrides = read_overrides(args.overrides) if args.overrides else []
    return roster, overrides


def cmd_gradebook(args) -> int:
    from course.config import load_course
    from course.gradebook import sources
    from course.gradebook.figures import render_summary
    from course.gradebook.publish import publish, written

    course = load_course(args.root)
    roster, overrides = _gradebook_files(args)
    assignments = [args.assignment] if args.assignment else None
    if assignments:
        try:
            course.assignment(args.assignment)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
    source = args.source
    if (source / "gradebook.db").is_file():
        if args.submissions is not None:
            raise UsageError("--submissions is for course grade's results; with nbgrader, the submission times are "
                             "in its gradebook (and SOURCE/submitted/)")
        entries, students, assignments, notes = sources.from_nbgrader(course, source, assignments)
        roster = students if roster is None else roster
        out = args.out or Path("grades")
        private = (source,)
        print(f"reading nbgrader's gradebook {source / 'gradebook.db'} ({', '.join(assignments)})")
    else:
        entries, notes = sources.from_results(course, source, assignments, args.submissions)
        assignments = assignments or list(dict.fromkeys(entry.assignment for entry in entries))
        out = args.out or source
        private = (source, *([args.submissions] if args.submissions else []))
        print(f"reading course grade's results in {source} ({', '.join(assignments)})")
    try:
        done = publish(course, entries, out, assignments=assignments, roster=roster, overrides=overrides,
                       excel=args.excel, private=private, notes=notes)
    except OSError as exc:
        raise CourseError(f"{out}: the gradebook could not be written ({exc.strerror or exc})") from None
    print(render_summary(done.book, done.figures))
    print(written(out, done))
    return 0


def cmd_check(args) -> int:
    from course.config import StudentRepository, load_config

    config = load_config(args.root)
    notes: list[str] = []
    if isinstance(config, StudentRepository):
        own = config.assignment.id
        if args.assignment not in (None, own):
            raise UsageError(f"this student repository holds {own}, not {args.assignment}")
        notebook = args.notebook or config.notebook
        if notebook.is_dir() and (notebook / config.assignment.notebook).is_file():
            notebook = notebook / config.assignment.notebook
        from course.checking import CheckTarget

        target = CheckTarget.from_student_repository(config)
    else:
        if args.notebook is None:
            raise UsageError("name the notebook to check, e.g. `course check solutions/ch03_attention` (in a "
                             "student repository, `course check` finds its notebook itself)")
        from course.submission import resolve_submission

        assignment, notebook = resolve_submission(config, args.notebook, args.assignment, notes)
        from course.checking import CheckTarget

        target = CheckTarget.from_course(config, assignment)
    from course.checking import run_checks  # imports torch: only once there is work to do
    from course.reporters.autograding import append_step_output
    from course.reporters.classroom50 import write_classroom50
    from course.reporters.json_report import write_json
    from course.reporters.markdown import append_markdown
    from course.reporters.terminal import render_progress

    report = run_checks(target, notebook, isolation=args.isolation)
    report.notes[:0] = notes
    print(render_progress(report))
    outputs = [(args.json, lambda path: write_json(report, path)),
               (args.summary, lambda path: append_markdown(report, path)),
               (args.github_output, lambda path: append_step_output(report, path)),
               (args.classroom50, lambda path: write_classroom50(report, path, root=config.root))]
    for path, write in outputs:
        if path is None:
            continue
        try:
            write(path)
        except OSError as exc:
            raise CourseError(f"{path}: the results could not be written ({exc.strerror or exc})") from None
    return 0


def cmd_release(args) -> int:
    from course import release
    from course.config import load_course

    course = load_course(args.root)
    if args.check and args.out:
        raise UsageError("--check compares assignments/ with solutions/; it does not go with --out")
    if args.all and args.ids:
        raise UsageError("name assignment ids or --all, not both")
    ids = args.ids or [a.id for a in course.assignments]
    for assignment_id in ids:
        try:
            course.assignment(assignment_id)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
    if args.out is not None:
        if not args.ids and not args.all:
            raise UsageError("name the assignment to write a student repository of, or --all for one folder each")
        from course.student_repo import earlier_solutions, write_student_repository

        one = len(ids) == 1 and not args.all
        for assignment_id in ids:
            folder = args.out if one else args.out / assignment_id
            files = write_student_repository(course, course.assignment(assignment_id), folder)
            print(f"wrote the student repository of {assignment_id} to {folder} ({len(files)} files)")
            solved = earlier_solutions(course, course.assignment(assignment_id))
            if solved:
                print(f"warning: {assignment_id}'s repository holds the complete solutions of "
                      f"{', '.join(sorted(set(solved.values())))} (the support code it builds on: "
                      f"{', '.join(m.replace('.', '/') + '.py' for m in solved)}): hand it out after their deadlines",
                      file=sys.stderr)
        return 0
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
    from course.config import StudentRepository, load_config

    course = load_config(args.root)
    if isinstance(course, StudentRepository):
        assignment = course.assignment
        print(f"{assignment.id}: {len(assignment.tests)} public checks, {assignment.points} points")
        print("course.yml of this student repository is valid")
        return 0
    from course.config import probe_import_problems
    from course.errors import ConfigError
    from course.grading.runner import collect_points

    problems = []
    for assignment in course.assignments:
        points = collect_points(course, assignment)
        support = ", ".join(module.removeprefix("reference.") for module in assignment.support) or "nothing"
        data = ", ".join(assignment.data or ()) or "none"
        print(f"{assignment.id}: {len(points)} tests, {sum(points.values()):g} points; may import {support} "
              f"from reference/; data: {data}")
        problems.extend(probe_import_problems(course, assignment))
    if problems:
        raise ConfigError(f"{course.root / 'course.yml'}: {len(problems)} problem(s):\n" +
                          "\n".join(f"  {problem}" for problem in problems))
    print("course.yml is valid")
    return 0


COMMANDS = {"check": cmd_check, "grade": cmd_grade, "gradebook": cmd_gradebook, "release": cmd_release,
            "validate": cmd_validate}
