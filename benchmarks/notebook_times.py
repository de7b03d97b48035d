"""How long each solution notebook takes to run top to bottom as a student runs it (without COURSE_QUICK, which
the test suite sets to shorten the longest demos), on this machine's CPU.

    python benchmarks/notebook_times.py [ID ...]

The course promises every notebook runs in under 3 minutes on a laptop CPU; this script measures it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from course.config import load_course  # noqa: E402
from reference.tiktoken_offline import seed_tiktoken_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="assignment ids (default: all)")
    args = parser.parse_args()
    course = load_course(REPO)
    assignments = [course.assignment(i) for i in args.ids] if args.ids else course.assignments
    rows = []
    with tempfile.TemporaryDirectory(prefix="notebook-times-") as scratch:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(seed_tiktoken_cache(Path(scratch) / "tiktoken"))
        os.environ.pop("COURSE_QUICK", None)
        os.environ["MPLBACKEND"] = "Agg"
        for assignment in assignments:
            notebook = nbformat.read(course.solution_notebook(assignment), as_version=4)
            started = time.monotonic()
            NotebookClient(notebook, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": scratch}}).execute()
            rows.append((assignment.id, time.monotonic() - started))
            print(f"{assignment.id}: {rows[-1][1]:.1f} s", file=sys.stderr)
    print(f"Measured {date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()} (the solution notebooks, top to bottom, as students run them).\n")
    print("| assignment | run time (s) |")
    print("|---|---|")
    for assignment_id, seconds in rows:
        print(f"| {assignment_id} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
