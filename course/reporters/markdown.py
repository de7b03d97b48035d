"""A GradeReport as GitHub-flavoured Markdown: the job summary a student reads after every push.

`course check --summary "$GITHUB_STEP_SUMMARY"` appends it to the job's summary page: the progress table (one
row per check, with its points and what it looks at), then the first failure in full with its hint, then
any notes. Student text (exception messages) is escaped so it can never break the table or inject markup.
"""

from __future__ import annotations

from pathlib import Path

from course.reporters.terminal import PUBLIC_CHECKS_CAVEAT
from course.results import GradeReport

ICONS = {"passed": "✅", "failed": "❌", "error": "❌", "timeout": "⏱️", "todo": "⬜"}
LABELS = {"passed": "pass", "failed": "fail", "error": "error", "timeout": "timeout", "todo": "to do"}


def escape(text: str) -> str:
    """Text safe inside a Markdown table cell or paragraph: no HTML, no table breaks, no stray emphasis."""
    replacements = {"\\": "\\\\", "&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "\\`", "*": "\\*",
                    "_": "\\_", "[": "\\[", "]": "\\]", "#": "\\#"}
    return "".join(replacements.get(character, character) for character in text)


def inline(text: str) -> str:
    """Escaped text in which `code` spans of the message stay code spans (their content needs no escaping).

    Spans are kept only where each one is sure to be a code span to any CommonMark reader: an even number of
    backticks, no empty span (two backticks in a row make a longer run, which can leave a span unclosed and its
    content read as raw HTML), text between every two spans; otherwise the whole text is escaped."""
    parts = text.split("`")
    spans, between = parts[1::2], parts[2:-1:2]
    if len(parts) % 2 == 0 or not all(spans) or not all(between):
        return escape(text)
    return "".join(f"`{part}`" if index % 2 else escape(part) for index, part in enumerate(parts))


def render_markdown(report: GradeReport) -> str:
    what = "Public checks" if report.kind == "check" else "Grade"
    passed = len(report.passed)
    lines = [
        f"## {what}: {escape(report.assignment)}: {report.score:g}/{report.max_score:g} points",
        "",
        f"{passed} of {len(report.tests)} {'checks' if report.kind == 'check' else 'tests'} pass"
        f"{', all done' if passed == len(report.tests) else f'; {len(report.tests) - passed} left'}.",
        "",
        "| | test | points | what it checks |",
        "|---|---|---:|---|",
    ]
    for test in report.tests:
        points = f"{test.score:g}/{test.max_score:g}"
        lines.append(f"| {ICONS[test.status]} {LABELS[test.status]} | `{test.name}` | {points} "
                     f"| {escape(test.description or test.name)} |")
    first = report.first_failure
    if first is not None:
        lines += ["", f"### Next to fix: `{first.name}`", ""]
        for paragraph in first.message.splitlines():
            if paragraph.startswith("Hint: "):
                lines += [f"> **Hint:** {inline(paragraph.removeprefix('Hint: '))}", ">"]
            else:
                lines += [f"> {inline(paragraph)}", ">"]
        lines.pop()
    if report.notes:
        lines += ["", "### Notes", ""] + [f"- {inline(note)}" for note in report.notes]
    if report.kind == "check":
        lines += ["", f"_{escape(PUBLIC_CHECKS_CAVEAT)}_"]
    return "\n".join(lines) + "\n"


def append_markdown(report: GradeReport, path: Path) -> None:
    """Append to `path` (GitHub's $GITHUB_STEP_SUMMARY is shared by the job's steps)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(render_markdown(report))
