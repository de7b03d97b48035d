"""A class of submissions (nbgrader's submitted/<student>/<assignment>/ layout) for the batch tests and
benchmarks: the solution, the untouched release, the catalogue's variants, hostile submissions, unreadable
notebooks and the catalogue's mutants, in that order, repeated up to the number of students asked for.

    python -m tests.submissions.classroom OUT [--students 40] [--assignment ch03_attention]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from course.config import load_course  # noqa: E402
from tests.submissions.build import with_edits  # noqa: E402
from tests.submissions.catalog import MUTANTS, VARIANTS  # noqa: E402
from tests.submissions.hostile import ATTACKS  # noqa: E402

# Hostile submissions of chapter 3 in a benchmark's class: one hangs, one exits, one eats memory, ...
HOSTILE = ("infinite_loop", "os_exit_in_function", "memory_bomb", "fork_bomb", "forged_reply_on_the_channel",
           "write_fake_results_and_hooks")
# The quick ones (no timeout to wait for, no gigabytes to touch), for tests.
QUICK_HOSTILE = ("os_exit_in_function", "fork_bomb", "forged_reply_on_the_channel", "write_fake_results_and_hooks")


def make_class(out: Path, students: int = 40, assignment_id: str = "ch03_attention",
               hostile: tuple[str, ...] = HOSTILE) -> list[str]:
    """Write the class into out/submitted/; returns the students' names, in the order written."""
    course = load_course(REPO)
    assignment = course.assignment(assignment_id)
    solution = course.solution_notebook(assignment)
    kinds: list[tuple[str, object]] = [("solution", None), ("release", None)]
    kinds += [(f"variant-{v.name}", v) for v in VARIANTS if v.assignment == assignment_id]
    if assignment_id == "ch03_attention":
        kinds += [(f"hostile-{a.name}", a) for a in ATTACKS if a.name in hostile]
    kinds += [("unreadable-json", "{ not json"), ("unreadable-empty", "")]
    kinds += [(f"mutant-{m.name}", m) for m in MUTANTS if m.assignment == assignment_id]
    names = []
    for index in range(students):
        kind, entry = kinds[index % len(kinds)]
        name = f"student{index + 1:02d}-{kind}"
        folder = out / "submitted" / name / assignment_id
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / assignment.notebook
        if kind == "solution":
            shutil.copyfile(solution, target)
        elif kind == "release":
            shutil.copyfile(course.release_notebook(assignment), target)
        elif kind.startswith("mutant-"):
            with_edits(solution, target, replace={entry.cell: list(entry.edits)} if entry.edits else None,
                       sources=entry.sources)
        elif kind.startswith("variant-"):
            with_edits(solution, target, sources=entry.sources)
        elif kind.startswith("hostile-"):
            sources = {cell: text.replace("@@REPO@@", str(REPO)).replace("@@FOLDER@@", str(folder))
                       for cell, text in entry.sources.items()}
            with_edits(solution, target, sources=sources)
        else:
            target.write_text(entry, encoding="utf-8")
        names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--assignment", default="ch03_attention")
    args = parser.parse_args()
    names = make_class(args.out, args.students, args.assignment)
    print(f"wrote {len(names)} submissions of {args.assignment} into {args.out / 'submitted'}")


if __name__ == "__main__":
    main()
