"""The tables printed on the terminal: the score table of `course grade`, the progress table of `course check`."""

from __future__ import annotations

import shutil
import textwrap

from course.results import GradeReport

SYMBOLS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "timeout": "TIMEOUT", "todo": "TO DO"}


def render_table(report: GradeReport, width: int | None = None) -> str:
    width = width or min(shutil.get_terminal_size((100, 20)).columns, 120)
    name_width = max([len(t.name) for t in report.tests] + [4])
    lines = [f"{report.assignment}  ({report.notebook}, device {report.device})", ""]
    header = f"{'test'.ljust(name_width)}  {'status':7}  {'points':>9}"
    lines += [header, "-" * len(header)]
    for test in report.tests:
        points = f"{test.score:g}/{test.max_score:g}"
        lines.append(f"{test.name.ljust(name_width)}  {SYMBOLS[test.status]:7}  {points:>9}")
        if test.status != "passed":
            detail = test.message
            if test.description and test.description != test.name:
                detail = f"Checks: {test.description.rstrip('.')}. {detail}"
            for line in textwrap.wrap(detail, width=max(width - 6, 40)):
                lines.append("      " + line)
    lines.append("-" * len(header))
    lines.append(f"{'total'.ljust(name_width)}  {'':7}  {f'{report.score:g}/{report.max_score:g}':>9}")
    for note in report.notes:
        lines += [""] + textwrap.wrap("Note: " + note, width=width)
    if report.sandbox.get("note"):
        lines += [""] + textwrap.wrap("Sandbox: " + report.sandbox["note"], width=width)
    lines.append(f"\ngraded in {report.duration:.1f} s")
    return "\n".join(lines)


def render_progress(report: GradeReport, width: int | None = None) -> str:
    """The progress table printed by `course check`: every public check with its points, how many are left,
    and the first one to fix in full, with its hint."""
    width = width or min(shutil.get_terminal_size((100, 20)).columns, 120)
    lines = [f"{report.assignment}: public checks of {report.notebook}", ""]
    for test in report.tests:
        lines.append(f"  {SYMBOLS[test.status]:7}  {f'{test.score:g}/{test.max_score:g}':>5}  {test.name}")
    passed = len(report.passed)
    lines += ["", f"{passed} of {len(report.tests)} checks pass ({report.score:g} of {report.max_score:g} points); "
                  f"{len(report.tests) - passed} left."]
    first = report.first_failure
    if first is not None:
        lines += [""] + textwrap.wrap(f"Next to fix: {first.name}: {first.description}.", width=width)
        for paragraph in first.message.splitlines():
            lines += textwrap.wrap(paragraph, width=max(width - 4, 40), initial_indent="    ",
                                   subsequent_indent="    ")
    for note in report.notes:
        lines += [""] + textwrap.wrap("Note: " + note, width=width)
    lines += ["", *textwrap.wrap(PUBLIC_CHECKS_CAVEAT, width=width), f"\nchecked in {report.duration:.1f} s"]
    return "\n".join(lines)


PUBLIC_CHECKS_CAVEAT = ("These public checks are quick and visible, and far weaker than the hidden grader your "
                        "instructor runs: passing them all does not guarantee full marks.")
