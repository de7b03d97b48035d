"""What the sandbox costs: grading time with bubblewrap, with process isolation, and with the spine's worker.

The spine's worker (before the sandbox: no limits, no audit hook, no namespaces, no result checks) is the
commit named by --baseline, checked out into a temporary git worktree. Each configuration grades each
assignment's solution notebook with `course grade --device cpu` in a fresh process; runs are interleaved
(one of each configuration in turn) so that a slow moment of the machine affects all of them alike.

    python benchmarks/sandbox_overhead.py [--repeat 5] [--baseline c73a0bb]

Results, with the machine and the date, are kept in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import grading_time  # noqa: E402 - the sibling script (benchmarks/ is on sys.path when this file runs)

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ["ch02_text_data", "ch03_attention"]


def grade_once(checkout: Path, assignment: str, extra: list[str]) -> tuple[float, float, float]:
    """(wall seconds, grading seconds reported in the JSON, score) for one run of `course grade`."""
    return grading_time.grade_once(checkout / "solutions" / assignment, checkout, tuple(extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", default="c73a0bb", help="commit of the spine's worker (default: c73a0bb)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from course.worker.sandbox import bubblewrap_problem

    with tempfile.TemporaryDirectory() as scratch:
        spine = Path(scratch) / "spine"
        subprocess.run(["git", "worktree", "add", "--detach", str(spine), args.baseline], cwd=REPO, check=True,
                       capture_output=True)
        try:
            configurations = {f"spine worker ({args.baseline})": (spine, []),
                              "sandbox, process isolation": (REPO, ["--isolation", "process"])}
            if bubblewrap_problem() is None:
                configurations["sandbox, bubblewrap"] = (REPO, ["--isolation", "bubblewrap"])
            else:
                print(f"bubblewrap not measured: {bubblewrap_problem()}", file=sys.stderr)
            runs = {(name, a): [] for name in configurations for a in ASSIGNMENTS}
            for checkout, extra in configurations.values():  # warm the file cache
                for assignment in ASSIGNMENTS:
                    grade_once(checkout, assignment, extra)
            for _ in range(args.repeat):
                for assignment in ASSIGNMENTS:
                    for name, (checkout, extra) in configurations.items():
                        runs[name, assignment].append(grade_once(checkout, assignment, extra))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(spine)], cwd=REPO, capture_output=True)

    print(f"Measured {date.today().isoformat()} on {platform.machine()}, {_cores()} cores, Python "
          f"{platform.python_version()}, {args.repeat} runs each, interleaved.\n")
    print("| assignment | worker | score | wall median (s) | wall min-max (s) | grading only, median (s) |")
    print("|---|---|---|---|---|---|")
    for (name, assignment), results in runs.items():
        walls = [r[0] for r in results]
        print(f"| {assignment} | {name} | {results[0][2]:g} | {statistics.median(walls):.2f} | "
              f"{min(walls):.2f}-{max(walls):.2f} | {statistics.median(r[1] for r in results):.2f} |")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
