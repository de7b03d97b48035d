"""Feedback a student can read: one Markdown file and one self-contained HTML page per student and assignment.

Rendered from a gradebook row (course/gradebook/records.py), itself built from the course's result model
(course/results.py), whatever graded the class. A page shows the score and how it was reached (the grader's
score, each override with its reason, the late days and penalty with the rule), the table of tests (what each
checks, its points, its status) and, for each test that did not pass, the grader's message with its hint, in full.

Nothing hidden is on it: the messages are the ones the graders write for students (no expected values beyond
what a message says, no grader source, no traceback), the notebook appears by its file name only, the sandbox's
notes are left out, and any instructor path that a message or a note might hold (the course's folder, the results
folder, the class folder, the temporary folders, the home folder) is cut to its last component.

Safe to publish: everything a student controls (the id, the name, the messages, cell names in messages) is
escaped, in HTML with html.escape (a `<script>` in a submission is text on the page, never markup) and in
Markdown with the reporters' escaping (course/reporters/markdown.py). The HTML page has no external asset, no
script, and a Content-Security-Policy that forbids loading anything.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path

from course.gradebook.records import LATE_PENALTY, MISSING, TOTAL, Row
from course.gradebook.table import number
from course.reporters.markdown import escape as md_escape
from course.reporters.markdown import inline as md_inline
from course.results import TestResult

LABELS = {"passed": "pass", "failed": "fail", "error": "error", "timeout": "timeout", "todo": "to do"}
ICONS = {"passed": "✅", "failed": "❌", "error": "❌", "timeout": "⏱️", "todo": "⬜"}


class Redactor:
    """Cuts instructor paths out of a text: a path under one of `folders` becomes its last component."""

    def __init__(self, folders: list[Path | str]):
        roots = sorted({str(folder).rstrip("/") for folder in folders if str(folder).strip("/")}, key=len,
                       reverse=True)
        stop = r"\s'\"`()<>,;"
        self.pattern = re.compile("(?:" + "|".join(re.escape(root) for root in roots) + f")(/[^{stop}]*)?(?![^{stop}])"
                                  ) if roots else None

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda match: (match.group(1) or "").rstrip("/").rsplit("/", 1)[-1] or "…", text)


def _when(value: dt.datetime | None, zone: dt.tzinfo | None) -> str:
    if value is None:
        return "unknown"
    shown = value.astimezone(zone) if zone is not None else value
    return shown.strftime("%Y-%m-%d %H:%M") + f" ({shown.strftime('%z')[:3]}:{shown.strftime('%z')[3:]})"


def _days(days: int) -> str:
    return f"{days} day{'s' if days != 1 else ''}"


def facts(row: Row) -> list[str]:
    """The lines under the score, as plain text: the grader's score, the overrides, the late work."""
    lines = []
    entry = row.entry
    if entry.status == MISSING:
        lines.append("No submission was received.")
    elif entry.report is None:
        lines.append("Not graded yet.")
    elif row.auto_score is not None:
        lines.append(f"Automatic score (the grader's): {number(row.auto_score)}/{number(row.max_score)}.")
    for override, old in row.applied:
        what = {TOTAL: "Total", LATE_PENALTY: "Late penalty"}.get(override.target, override.target)
        before = f"{number(old)} → " if old is not None else ""
        lines.append(f"{what}: {before}{number(override.points)}, set by your instructor: {override.reason}")
    late = row.late
    if late.deadline is not None and entry.report is not None:
        zone = late.deadline.tzinfo
        source = entry.time.source if entry.time.when is not None else ""
        submitted = _when(entry.time.when, zone) + (f", from the {source}" if source else "")
        lines.append(f"Deadline: {_when(late.deadline, zone)}. Submitted: {submitted}.")
        if late.days:
            lines.append(f"Late by {_days(late.days)} ({late.rule}): −{number(row.penalty)} points.")
        elif late.note:
            lines.append(late.note[0].upper() + late.note[1:] + ".")
    return lines


def _tests(row: Row) -> list[TestResult]:
    return list(row.entry.report.tests) if row.entry.report is not None else []


def _title(row: Row, title: str) -> tuple[str, str]:
    who = f"{row.entry.name} ({row.entry.student})" if row.entry.name else row.entry.student
    return f"{row.entry.assignment}: {title}" if title else row.entry.assignment, who


def _score(row: Row) -> str:
    return f"{number(row.score)}/{number(row.max_score)}" if row.score is not None else "not graded"


def _points(row: Row, test: TestResult) -> str:
    counted = row.tests.get(test.name)
    if counted is not None and counted != test.score:
        return f"{number(counted)}/{number(test.max_score)} (grader: {number(test.score)})"
    return f"{number(test.score)}/{number(test.max_score)}"


# ------------------------------------------------------------------------------------------------------------
# Markdown


def render_markdown(row: Row, title: str = "", redact: Redactor | None = None) -> str:
    redact = redact or Redactor([])
    heading, who = _title(row, title)
    lines = [f"# {md_escape(heading)}", "", f"**Student:** {md_escape(who)}", "",
             f"**Score: {_score(row)}**", ""]
    lines += [f"- {md_escape(redact(line))}" for line in facts(row)]
    tests = _tests(row)
    if tests:
        lines += ["", "| | test | what it checks | points |", "|---|---|---|---:|"]
        for test in tests:
            lines.append(f"| {ICONS[test.status]} {LABELS[test.status]} | {md_escape(test.name)} "
                         f"| {md_escape(redact(test.description))} | {md_escape(_points(row, test))} |")
    failed = [test for test in tests if test.status != "passed"]
    if failed:
        lines += ["", "## What did not pass"]
        for test in failed:
            lines += ["", f"### {md_escape(test.name)} ({number(test.score)}/{number(test.max_score)})", ""]
            if test.description:
                lines += [f"Checks: {md_escape(redact(test.description))}", ""]
            paragraphs = [p for p in redact(test.message).splitlines() if p.strip()] or ["(no message)"]
            for paragraph in paragraphs:
                if paragraph.startswith("Hint: "):
                    lines += [f"> **Hint:** {md_inline(paragraph.removeprefix('Hint: '))}", ">"]
                else:
                    lines += [f"> {md_inline(paragraph)}", ">"]
            lines.pop()
    notes = row.entry.report.notes if row.entry.report is not None else []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {md_inline(redact(note))}" for note in notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------
# HTML

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1f2328; line-height: 1.5; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; } h3 { font-size: 1rem; }
.score { font-size: 1.3rem; font-weight: 600; }
table { border-collapse: collapse; width: 100%; } th, td { border: 1px solid #d0d7de; padding: .3rem .5rem;
       text-align: left; vertical-align: top; }
td.points { text-align: right; white-space: nowrap; }
.passed { color: #1a7f37; } .failed, .error { color: #cf222e; } .timeout { color: #9a6700; }
.message { background: #f6f8fa; border-left: 4px solid #d0d7de; padding: .5rem 1rem; white-space: pre-wrap;
       overflow-wrap: anywhere; }
.hint { border-left-color: #0969da; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
"""


def _code_spans(text: str) -> str:
    """Escaped text in which the message's `code` spans become <code> (their content escaped too)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        return html.escape(text)
    return "".join(f"<code>{html.escape(part)}</code>" if index % 2 else html.escape(part)
                   for index, part in enumerate(parts))


def render_html(row: Row, title: str = "", redact: Redactor | None = None) -> str:
    redact = redact or Redactor([])
    e = html.escape
    heading, who = _title(row, title)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(heading)}: {e(who)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
           f"<h1>{e(heading)}</h1>", f"<p>Student: {e(who)}</p>", f'<p class="score">Score: {e(_score(row))}</p>']
    lines = facts(row)
    if lines:
        out.append("<ul>" + "".join(f"<li>{e(redact(line))}</li>" for line in lines) + "</ul>")
    tests = _tests(row)
    if tests:
        out.append("<table><thead><tr><th></th><th>test</th><th>what it checks</th><th>points</th></tr></thead>"
                   "<tbody>")
        for test in tests:
            out.append(f'<tr><td class="{test.status}">{ICONS[test.status]} {LABELS[test.status]}</td>'
                       f"<td><code>{e(test.name)}</code></td><td>{e(redact(test.description))}</td>"
                       f'<td class="points">{e(_points(row, test))}</td></tr>')
        out.append("</tbody></table>")
    failed = [test for test in tests if test.status != "passed"]
    if failed:
        out.append("<h2>What did not pass</h2>")
        for test in failed:
            out.append(f"<h3><code>{e(test.name)}</code> ({e(number(test.score))}/{e(number(test.max_score))})</h3>")
            if test.description:
                out.append(f"<p>Checks: {e(redact(test.description))}</p>")
            paragraphs = [p for p in redact(test.message).splitlines() if p.strip()] or ["(no message)"]
            for paragraph in paragraphs:
                if paragraph.startswith("Hint: "):
                    out.append(f'<div class="message hint"><strong>Hint:</strong> '
                               f"{_code_spans(paragraph.removeprefix('Hint: '))}</div>")
                else:
                    out.append(f'<div class="message">{_code_spans(paragraph)}</div>')
    notes = row.entry.report.notes if row.entry.report is not None else []
    if notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_code_spans(redact(note))}</li>" for note in notes) + "</ul>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def feedback_paths(out: Path, row: Row) -> tuple[Path, Path]:
    """OUT/<student's folder>/<assignment>.md and .html, beside the student's result file."""
    from course.batch import result_name

    folder = out / result_name(row.entry.student)
    return folder / f"{row.entry.assignment}.md", folder / f"{row.entry.assignment}.html"


def write_feedback(out: Path, row: Row, title: str, redact: Redactor) -> tuple[Path, Path]:
    markdown, page = feedback_paths(out, row)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((markdown, render_markdown(row, title, redact)), (page, render_html(row, title, redact))):
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    return markdown, page
