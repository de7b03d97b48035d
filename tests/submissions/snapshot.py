"""Every grade of the catalogue, written down: for refactoring the graders without changing a single grade.

    python -m tests.submissions.snapshot grades OUT.json      # grade the whole catalogue (about 6 min, 2 cores)
    python -m tests.submissions.snapshot checks OUT.json      # `course check` on every catalogue notebook
    python -m tests.submissions.snapshot compare OLD.json NEW.json
    python -m tests.submissions.snapshot agree GRADES.json CHECKS.json   # public checks vs the hidden grader
    ... --only ch04_gpt --only appe_lora                       # some assignments only (compare: those keys)

A snapshot holds, for every (assignment, submission) of tests/submissions/catalog (solution, release, mutants,
variants), each test's name, status, score and message (durations left out). `compare` prints every difference
and exits 1 if there is one. Take one before a change to the graders, the checks or the grading API, one after,
and compare: "every grade stays as it is" is then a command's output, not a belief.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from course import batch
from course.config import load_course
from tests.conftest import REPO
from tests.submissions.build import with_edits
from tests.submissions.catalog import MUTANTS, VARIANTS


def catalogue_items(course, folder: Path, only=()) -> list[batch.BatchItem]:
    """The solution, the release, every mutant and every variant of every assignment (or of those in `only`), as
    notebooks in `folder`."""
    items = []
    for assignment in course.assignments:
        if only and assignment.id not in only:
            continue
        solution = course.solution_notebook(assignment)
        notebooks = {"solution": solution, "release": course.release_notebook(assignment)}
        for mutant in (m for m in MUTANTS if m.assignment == assignment.id):
            notebooks[mutant.name] = with_edits(
                solution, folder / assignment.id / mutant.name / assignment.notebook,
                replace={mutant.cell: list(mutant.edits)} if mutant.edits else None, sources=mutant.sources)
        for variant in (v for v in VARIANTS if v.assignment == assignment.id):
            notebooks[variant.name] = with_edits(solution, folder / assignment.id / variant.name / assignment.notebook,
                                                 sources=variant.sources)
        items += [batch.BatchItem(name, assignment.id, notebook) for name, notebook in notebooks.items()]
    return items


def _tests(report) -> list[list]:
    return [[t.name, t.status, t.score, t.max_score, t.message] for t in report.tests]


def grades(folder: Path, only=()) -> dict:
    course = load_course(REPO)
    results = batch.grade_batch(course, catalogue_items(course, folder, only), jobs=2, device="cpu")
    return {f"{r.item.assignment}/{r.item.student}": _tests(r.report) for r in results}


def checks(folder: Path, only=()) -> dict:
    from course.checking import CheckTarget, run_checks

    course = load_course(REPO)
    found = {}
    for item in catalogue_items(course, folder, only):
        assignment = course.assignment(item.assignment)
        report = run_checks(CheckTarget.from_course(course, assignment), item.notebook)
        found[f"{item.assignment}/{item.student}"] = _tests(report)
        print(f"{item.assignment}/{item.student}: {report.score:g}/{report.max_score:g}", file=sys.stderr)
    return found


def compare(old: dict, new: dict) -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in new or key not in old:
            lines.append(f"{key}: only in the {'old' if key in old else 'new'} snapshot")
            continue
        before, after = {t[0]: t for t in old[key]}, {t[0]: t for t in new[key]}
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                lines.append(f"{key} {name}:\n  old {before.get(name)}\n  new {after.get(name)}")
    return lines


def agreement(grades: dict, checks: dict) -> dict[str, tuple[int, list[str]]]:
    """Per assignment: (the mutants, those for which no public check of a failing hidden test fails)."""
    found: dict[str, tuple[int, list[str]]] = {}
    for key, tests in sorted(grades.items()):
        assignment, name = key.split("/", 1)
        hidden = {t[0] for t in tests if t[1] != "passed"}
        if name in ("solution", "release") or not hidden:
            continue
        public = {t[0] for t in checks.get(key, []) if t[1] != "passed"}
        count, missed = found.get(assignment, (0, []))
        found[assignment] = (count + 1, missed + ([] if hidden & public else [name]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("grades", "checks", "compare", "agree"))
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--only", action="append", default=[], metavar="ASSIGNMENT")
    args = parser.parse_args(argv)
    if args.what == "compare":
        old, new = ({key: value for key, value in json.loads(p.read_text()).items()
                     if not args.only or key.split("/")[0] in args.only} for p in args.paths[:2])
        lines = compare(old, new)
        print("\n".join(lines) or f"the same: {len(old)} submissions, "
                                   f"{sum(len(v) for v in old.values())} test results")
        return 1 if lines else 0
    if args.what == "agree":
        grades_, checks_ = (json.loads(p.read_text()) for p in args.paths[:2])
        for assignment, (count, missed) in agreement(grades_, checks_).items():
            if not args.only or assignment in args.only:
                print(f"{assignment}: {count - len(missed)}/{count} mutants caught by a public check of a failing "
                      f"hidden test" + (f"; missed: {', '.join(missed)}" if missed else ""))
        return 0
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        found = (grades if args.what == "grades" else checks)(Path(folder), args.only)
    args.paths[0].write_text(json.dumps(found, indent=1, sort_keys=True))
    print(f"{len(found)} submissions written to {args.paths[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
