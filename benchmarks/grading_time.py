"""How long `course grade` takes for one submission, end to end, as a user runs it.

For each assignment it grades the solution notebook (full marks) and the untouched student release (zero)
with the `course` command in a fresh process, several times, and prints the wall-clock median and range,
plus the time the grading itself reports (without interpreter start-up and imports).

    python benchmarks/grading_time.py [ID ...] [--repeat 5] [--markdown]

Without IDs, every assignment of course.yml.

Results, with the machine and the date, are kept in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def grade_once(submission: Path, checkout: Path = REPO, extra: tuple[str, ...] = ()) -> tuple[float, float, float]:
    """(wall seconds, seconds reported by the grader, score) for one `course grade` run in `checkout`."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "course", "grade", str(submission), "--json", str(out), "--device", "cpu",
                        *extra], cwd=checkout, check=True, capture_output=True)
        wall = time.perf_counter() - started
        result = json.loads(out.read_text())
    return wall, result["duration"], result["score"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", metavar="ID", help="assignment ids (default: all)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/benchmarks.md")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from course.config import load_course

    course = load_course(REPO)
    rows = []
    for assignment in [course.assignment(i) for i in args.ids] if args.ids else course.assignments:
        for kind, notebook in (("solution", course.solution_notebook(assignment)),
                               ("untouched release", course.release_notebook(assignment))):
            grade_once(notebook)  # warm the file cache
            runs = [grade_once(notebook) for _ in range(args.repeat)]
            walls = [r[0] for r in runs]
            rows.append((assignment.id, kind, runs[0][2], statistics.median(walls), min(walls), max(walls),
                         statistics.median(r[1] for r in runs)))

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.markdown:
        print(f"Measured {date.today().isoformat()} on {machine}, {args.repeat} runs each.\n")
        print("| assignment | submission | score | wall median (s) | wall min-max (s) | grading only, median (s) |")
        print("|---|---|---|---|---|---|")
        for aid, kind, score, median, low, high, inner in rows:
            print(f"| {aid} | {kind} | {score:g} | {median:.2f} | {low:.2f}-{high:.2f} | {inner:.2f} |")
    else:
        print(f"{machine}; {args.repeat} runs each")
        for aid, kind, score, median, low, high, inner in rows:
            print(f"{aid:16} {kind:18} score {score:>4g}  wall median {median:5.2f} s "
                  f"(min {low:.2f}, max {high:.2f})  grading only {inner:.2f} s")


if __name__ == "__main__":
    main()
