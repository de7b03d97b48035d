"""How long `course check` takes for one notebook, end to end, as a student runs it after an edit.

For each assignment it writes the student repository (`course release ID --out`), then runs `course check`
in a fresh process, inside that repository, on the completed notebook (the solution's code typed into the
stubs) and on the untouched release, several times; it prints the wall-clock median and range, and the time
the check itself reports (without interpreter start-up and imports). It also times `course check` in the
course repository on the solution notebook, where the points are collected from the grader first.

    python benchmarks/check_time.py [--repeat 5] [--markdown]

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


def check_once(notebook: Path, cwd: Path) -> tuple[float, float, float]:
    """(wall seconds, seconds reported by the check, points) for one `course check` run in `cwd`."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "checks.json"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "course", "check", str(notebook), "--json", str(out)], cwd=cwd,
                       check=True, capture_output=True)
        wall = time.perf_counter() - started
        result = json.loads(out.read_text())
    return wall, result["duration"], result["score"]


def completed(release: Path, solution: Path, target: Path) -> Path:
    """The release notebook with the solution's code (without its markers) in every solution cell."""
    notebook = json.loads(release.read_text(encoding="utf-8"))
    code = {}
    for cell in json.loads(solution.read_text(encoding="utf-8"))["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader") or {}
        if meta.get("solution"):
            lines = "".join(cell["source"]).splitlines(True)
            code[meta["grade_id"]] = "".join(x for x in lines if x.strip() not in ("### BEGIN SOLUTION",
                                                                                   "### END SOLUTION"))
    for cell in notebook["cells"]:
        grade_id = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
        if grade_id in code:
            cell["source"] = code[grade_id]
    target.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/benchmarks.md")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from course.config import load_course

    course = load_course(REPO)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for assignment in course.assignments:
            repository = Path(scratch) / assignment.id
            subprocess.run([sys.executable, "-m", "course", "release", assignment.id, "--out", str(repository)],
                           cwd=REPO, check=True, capture_output=True)
            done = completed(repository / assignment.notebook, course.solution_notebook(assignment),
                             repository / f"completed-{assignment.notebook}")
            cases = [("student repository", "completed", done, repository),
                     ("student repository", "untouched release", repository / assignment.notebook, repository),
                     ("course repository", "solution", course.solution_notebook(assignment), REPO)]
            for where, kind, notebook, cwd in cases:
                check_once(notebook, cwd)  # warm the file cache
                runs = [check_once(notebook, cwd) for _ in range(args.repeat)]
                walls = [r[0] for r in runs]
                rows.append((assignment.id, where, kind, runs[0][2], statistics.median(walls), min(walls),
                             max(walls), statistics.median(r[1] for r in runs)))

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.markdown:
        print(f"Measured {date.today().isoformat()} on {machine}, {args.repeat} runs each "
              f"(load average {load:.1f} at the end).\n")
        print("| assignment | where | notebook | points | wall median (s) | wall min-max (s) "
              "| checks only, median (s) |")
        print("|---|---|---|---|---|---|---|")
        for aid, where, kind, score, median, low, high, inner in rows:
            print(f"| {aid} | {where} | {kind} | {score:g} | {median:.2f} | {low:.2f}-{high:.2f} | {inner:.2f} |")
    else:
        print(f"{machine}; {args.repeat} runs each; load average {load:.1f}")
        for aid, where, kind, score, median, low, high, inner in rows:
            print(f"{aid:16} {where:19} {kind:18} points {score:>4g}  wall median {median:5.2f} s "
                  f"(min {low:.2f}, max {high:.2f})  checks only {inner:.2f} s")


if __name__ == "__main__":
    main()
