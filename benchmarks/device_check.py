"""Do the graders give the same grades on a GPU as on the CPU? One command, for when a GPU is at hand.

Grades every catalogue entry (each assignment's solution, untouched release, mutants and variants:
tests/submissions/catalog) twice, as a class is graded (course/batch.py), once with `--device cpu` and once
with the device asked for, and lists every test whose status or score differs between the two. Messages
are compared too, but reported apart: their numbers (largest differences, positions) may differ by device
without the grade changing.

    python benchmarks/device_check.py                      # cuda against cpu, every assignment
    python benchmarks/device_check.py --device mps --only ch04_gpt
    python benchmarks/device_check.py --device cpu         # a dry run on a machine without a GPU

It exits 0 when every status and score agree, 1 when some differ, 2 when the device is not available.
The tolerances that depend on the device (course/grading/compare.py, TOLERANCES) and the tests that set their
own are listed in docs/benchmarks.md, "Grading on a GPU".
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from course import batch  # noqa: E402
from course.config import load_course  # noqa: E402
from course.errors import UsageError  # noqa: E402
from course.grading.device import resolve_device  # noqa: E402
from tests.submissions.snapshot import catalogue_items  # noqa: E402


def grade(course, folder: Path, only: list[str], device: str, jobs: int) -> dict[tuple[str, str], dict]:
    """{(assignment, entry): {test: (status, score, message)}} for the whole catalogue on `device`."""
    results = batch.grade_batch(course, catalogue_items(course, folder, only), jobs=jobs, device=device)
    return {(r.item.assignment, r.item.student): {t.name: (str(t.status), t.score, t.message) for t in r.report.tests}
            for r in results}


def differences(baseline: dict, other: dict) -> tuple[list[str], list[str]]:
    """(status or score differences, message-only differences), one line each."""
    grades, messages = [], []
    for key in sorted(baseline):
        for test, (status, score, message) in baseline[key].items():
            got = other.get(key, {}).get(test)
            where = f"{key[0]}/{key[1]} {test}"
            if got is None:
                grades.append(f"{where}: no result on the device")
            elif (got[0], got[1]) != (status, score):
                grades.append(f"{where}: cpu {status} {score:g}, device {got[0]} {got[1]:g}: {got[2][:300]}")
            elif got[2] != message:
                messages.append(f"{where}: message differs")
    return grades, messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device to compare with the CPU (default cuda)")
    parser.add_argument("--only", action="append", default=[], metavar="ASSIGNMENT")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except UsageError as exc:
        print(f"device_check: {exc}", file=sys.stderr)
        return 2
    course = load_course(REPO)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        on_cpu = grade(course, Path(folder) / "cpu", args.only, "cpu", args.jobs)
        on_device = grade(course, Path(folder) / "device", args.only, device, args.jobs)
    grades, messages = differences(on_cpu, on_device)
    tests = sum(len(v) for v in on_cpu.values())
    print(f"{platform.node()}, {time.strftime('%Y-%m-%d')}: {len(on_cpu)} catalogue entries, {tests} test results, "
          f"cpu against {device}, {time.monotonic() - started:.0f} s")
    for line in grades:
        print("  GRADE   " + line)
    for line in messages:
        print("  message " + line)
    print(f"{len(grades)} grades differ, {len(messages)} messages differ only in their text")
    return 1 if grades else 0


if __name__ == "__main__":
    sys.exit(main())
