"""The gradebook as data, without grading anything: late work, the roster, the overrides, grades.csv, the
feedback pages (safe to publish) and the class's figures and plot. Results are built as GradeReport objects."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import html
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from course import batch
from course.config import CONFIG_NAME, Course, CourseConfig, LatePolicy
from course.errors import ConfigError
from course.gradebook import late
from course.gradebook.book import build_book
from course.gradebook.csvfile import TableError
from course.gradebook.feedback import Redactor, render_html, render_markdown
from course.gradebook.figures import bin_of, render_summary
from course.gradebook.overrides import read_overrides
from course.gradebook.publish import publish
from course.gradebook.records import MISSING, Entry
from course.gradebook.roster import read_roster
from course.gradebook.table import COLUMNS, write_table
from course.gradebook.times import SubmissionTime
from course.results import GradeReport, TestResult
from tests.conftest import REPO

ASSIGNMENT = "ch03_attention"
TESTS = {"test_simplified_self_attention": 1.0, "test_causal_attention_output": 2.0, "test_mha_output": 3.0}
DEADLINE = dt.datetime(2026, 10, 14, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=2)))
SCRIPT = "<script>alert('x')</script>"


def course_with(late_policy: dict | None = None, deadline: dt.datetime | None = DEADLINE) -> Course:
    """The repository's course with a deadline for chapter 3 and a late policy (in memory)."""
    raw = copy.deepcopy(yaml.safe_load((REPO / CONFIG_NAME).read_text(encoding="utf-8")))
    for assignment in raw["assignments"]:
        if assignment["id"] == ASSIGNMENT and deadline is not None:
            assignment["deadline"] = deadline
    if late_policy is not None:
        raw["late"] = late_policy
    return Course(REPO, CourseConfig.model_validate(raw))


def report(points: dict[str, float], messages: dict[str, str] | None = None, notes=()) -> GradeReport:
    messages = messages or {}
    tests = [TestResult(name, "passed" if points.get(name, 0) == most else "failed", points.get(name, 0.0), most,
                        messages.get(name, "" if points.get(name, 0) == most else f"{name} is off.\nHint: look."))
             for name, most in TESTS.items()]
    return GradeReport(ASSIGNMENT, tests, notebook=f"/home/teacher/class/x/{ASSIGNMENT}.ipynb", notes=list(notes),
                       sandbox={"isolation": "bubblewrap", "note": "secret sandbox details"})


def entry(student: str, points: dict[str, float] | None, hours_late: float | None = None, **kwargs) -> Entry:
    when = None if hours_late is None else DEADLINE + dt.timedelta(hours=hours_late)
    time = SubmissionTime(when, "git commit") if when else SubmissionTime(detail="no timestamp.txt")
    if points is None:
        return Entry(student, ASSIGNMENT, None, MISSING, **kwargs)
    made = report(points)
    status = batch.BatchResult(batch.BatchItem(student, ASSIGNMENT, Path("x.ipynb")), made).status
    return Entry(student, ASSIGNMENT, made, status, time=time, **kwargs)


FULL = dict(TESTS)
PART = {"test_simplified_self_attention": 1.0, "test_causal_attention_output": 2.0, "test_mha_output": 0.0}


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------------------
# course.yml: deadlines and the late policy


def test_a_deadline_and_a_policy_are_read_and_checked():
    course = course_with({"policy": "penalty", "penalty_per_day": 10, "max_penalty": 50, "grace_minutes": 15})
    assert course.assignment(ASSIGNMENT).deadline == DEADLINE
    assert course.late_policy(course.assignment(ASSIGNMENT)) == LatePolicy(
        policy="penalty", penalty_per_day=10, max_penalty=50, grace_minutes=15)
    assert course.late_policy(course.assignment("ch04_gpt")).policy == "penalty"  # the course's policy
    assert course.assignment("ch04_gpt").deadline is None


@pytest.mark.parametrize(("change", "expected"), [
    (lambda raw: raw["assignments"][2].update(deadline="2026-10-14 23:59"),
     r"assignments\[2\] \(ch03_attention\)\.deadline: a date and time with a time zone is needed"),
    (lambda raw: raw.update(late={"policy": "penalty"}), r"late: policy: penalty needs penalty_per_day"),
    (lambda raw: raw.update(late={"policy": "zero", "penalty_per_day": 5}),
     r"late: penalty_per_day only go with policy: penalty"),
    (lambda raw: raw.update(late={"policy": "sometimes"}), r"late\.policy: Input should be 'none', 'penalty'"),
    (lambda raw: raw["assignments"][2].update(late={"policy": "penalty", "penalty_per_day": 150}),
     r"assignments\[2\] \(ch03_attention\)\.late\.penalty_per_day: Input should be less than or equal to 100"),
], ids=["naive-deadline", "penalty-without-rate", "rate-without-penalty", "unknown-policy", "rate-over-100"])
def test_late_settings_errors_name_the_key(tmp_path, change, expected):
    from tests.test_config import REPO_CONFIG, make_root

    assert REPO_CONFIG["assignments"][2]["id"] == ASSIGNMENT
    raw = copy.deepcopy(REPO_CONFIG)
    change(raw)
    from course.config import load_course

    with pytest.raises(ConfigError, match=expected):
        load_course(make_root(tmp_path, raw))


# ------------------------------------------------------------------------------------------------------------
# Late work


@pytest.mark.parametrize(("hours", "days", "percent"), [
    (-1, 0, 0), (0.2, 0, 0), (0.3, 1, 10), (23.9, 1, 10), (24.5, 2, 20), (24 * 9, 9, 50), (24 * 30, 30, 50)])
def test_a_penalty_per_started_day_up_to_a_cap_after_the_grace_period(hours, days, percent):
    policy = LatePolicy(policy="penalty", penalty_per_day=10, max_penalty=50, grace_minutes=15)
    verdict = late.assess(policy, DEADLINE, SubmissionTime(DEADLINE + dt.timedelta(hours=hours), "git commit"))
    assert (verdict.days, verdict.percent) == (days, percent)


def test_zero_none_extensions_and_unknown_times():
    after_two_days = SubmissionTime(DEADLINE + dt.timedelta(hours=40), "timestamp.txt")
    assert late.assess(LatePolicy(policy="zero", grace_minutes=60), DEADLINE, after_two_days).percent == 100
    assert late.assess(LatePolicy(), DEADLINE, after_two_days).days == 2  # no penalty, but the days are shown
    assert late.assess(LatePolicy(), DEADLINE, after_two_days).percent == 0
    extended = late.assess(LatePolicy(policy="zero"), DEADLINE, after_two_days, dt.timedelta(days=2))
    assert (extended.days, extended.percent) == (0, 0)
    unknown = late.assess(LatePolicy(policy="zero"), DEADLINE, SubmissionTime())
    assert (unknown.days, unknown.percent) == (None, 0)
    assert "not penalised" in unknown.note
    assert late.assess(LatePolicy(policy="zero"), None, after_two_days).days is None


def test_the_penalty_is_a_share_of_the_points_and_never_more_than_the_score():
    course = course_with({"policy": "penalty", "penalty_per_day": 10, "max_penalty": 50})
    book = build_book(course, [entry("early", FULL, -2), entry("one-day", FULL, 3), entry("weak", PART, 24 * 10)])
    rows = {row.student: row for row in book.rows}
    assert (rows["early"].late.days, rows["early"].penalty, rows["early"].score) == (0, 0, 6)
    assert (rows["one-day"].late.days, rows["one-day"].penalty, rows["one-day"].score) == (1, pytest.approx(0.6),
                                                                                           pytest.approx(5.4))
    assert (rows["weak"].penalty, rows["weak"].score) == (3, 0)  # 50% of 6 points, not more than the 3 earned


# ------------------------------------------------------------------------------------------------------------
# The roster


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_a_roster_from_excel_joins_exactly_and_lists_the_rest_apart(tmp_path):
    roster = read_roster(write(tmp_path / "roster.csv", "Student_ID,First_Name,Last_Name,Email\r\n"
                               "s-001,José,García,jose@example.edu\r\n=cmd|' /C calc'!A0,Eve,,\r\n007,Bond,,\r\n",
                               "utf-8-sig"))
    assert [(s.student, s.name, s.email) for s in roster] == [
        ("s-001", "José García", "jose@example.edu"), ("=cmd|' /C calc'!A0", "Eve", ""), ("007", "Bond", "")]
    entries = [entry("s-001", FULL), entry("stranger", PART), entry("007", PART)]
    book = build_book(course_with(), entries, roster=roster)
    assert [(row.student, row.status, row.score) for row in book.rows] == [
        ("s-001", "complete", 6), ("=cmd|' /C calc'!A0", MISSING, 0), ("007", "some failed", 3)]
    assert [row.student for row in book.apart] == ["stranger"]
    write_table(tmp_path / "grades.csv", book.rows, book.columns(), excel=True)
    data = (tmp_path / "grades.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    assert "José García".encode() in data
    rows = read_rows(tmp_path / "grades.csv")
    # The ids are the roster's, except a formula, which gets the course's one quote (spreadsheet_cell).
    assert [row["student"] for row in rows] == ["s-001", "'=cmd|' /C calc'!A0", "007"]
    assert rows[1]["max_score"] == "16"
    assert rows[1]["score"] == "0"
    assert list(rows[0])[:len(COLUMNS)] == COLUMNS


@pytest.mark.parametrize(("text", "expected"), [
    ("name,email\nann,a@x\n", r"roster.csv, line 1: the roster has no column 'student'"),
    ("student,grade\nann,3\n", r"roster.csv, line 1, column 2: unknown column 'grade'"),
    ("student,name\nann,Ann\nbob,Bob\nann,Ann again\n", r"roster.csv, line 4, column 1 \(student\): the id 'ann' "
                                                        r"is also on line 2"),
    ("student,name\n ann ,Ann\n", r"line 2, column 1 \(student\): the id ' ann ' has spaces around it"),
    ("student,name\nann,Ann,extra\n", r"roster.csv, line 2: 3 cells, but the header has 2"),
    ("student,name\n,Nobody\n", r"line 2, column 1 \(student\): an empty student id"),
    ("student,student_id\na,b\n", r"line 1, column 2: the column 'student' appears twice"),
    ("", r"roster.csv: the roster is empty"),
], ids=["no-id-column", "unknown-column", "duplicate", "spaces", "ragged", "empty-id", "twice", "empty"])
def test_a_roster_is_read_strictly(tmp_path, text, expected):
    with pytest.raises(TableError, match=expected):
        read_roster(write(tmp_path / "roster.csv", text))


def test_a_roster_that_is_not_utf8_names_the_line(tmp_path):
    with pytest.raises(TableError, match=r"roster.csv, line 3: the roster is not UTF-8 text"):
        read_roster(write(tmp_path / "roster.csv", "student,name\nann,Ann\njose,José\n", "latin-1"))


# ------------------------------------------------------------------------------------------------------------
# Overrides


def test_overrides_replace_points_with_a_reason_and_keep_the_automatic_score(tmp_path):
    course = course_with({"policy": "penalty", "penalty_per_day": 25})
    overrides = read_overrides(write(tmp_path / "overrides.csv", (
        "student,test,points,reason\n"
        "ann,test_mha_output,3,the grader was wrong on einsum\n"
        "bob,total,5,graded by hand\n"
        "bob,late_penalty,0,medical certificate\n"
        "cid,total,4,paper submission\n")))
    entries = [entry("ann", PART, -1), entry("bob", PART, 30), entry("cid", None)]
    book = build_book(course, entries, overrides=overrides)
    rows = {row.student: row for row in book.rows}
    assert (rows["ann"].auto_score, rows["ann"].tests["test_mha_output"], rows["ann"].score) == (3, 3, 6)
    assert (rows["bob"].auto_score, rows["bob"].total, rows["bob"].late.days, rows["bob"].penalty,
            rows["bob"].score) == (3, 5, 2, 0, 5)
    assert (rows["cid"].status, rows["cid"].auto_score, rows["cid"].score) == (MISSING, 0, 4)
    write_table(tmp_path / "grades.csv", book.rows, book.columns())
    csv_rows = {row["student"]: row for row in read_rows(tmp_path / "grades.csv")}
    assert csv_rows["ann"]["auto_score"] == "3"
    assert csv_rows["ann"]["score"] == "6"
    assert "test_mha_output 0 -> 3 (the grader was wrong on einsum)" in csv_rows["ann"]["overrides"]
    assert csv_rows["bob"]["late_days"] == "2"
    assert csv_rows["bob"]["late_penalty"] == "0"
    assert "late_penalty 3 -> 0 (medical certificate)" in csv_rows["bob"]["overrides"]
    page = render_markdown(rows["ann"], "Chapter 3")
    assert "test\\_mha\\_output: 0 → 3, set by your instructor: the grader was wrong on einsum" in page
    assert "Automatic score (the grader's): 3/6" in page


@pytest.mark.parametrize(("line", "expected"), [
    ("ann,test_nothing,1,x", r"overrides.csv, line 2, column 2 \(test\): 'test_nothing' is not a test of "
                             r"ch03_attention"),
    ("ann,test_mha_output,4,x", r"line 2, column 3 \(points\): 4 is more than the 3 points of test_mha_output"),
    ("ann,test_mha_output,\"2,5\",x", r"line 2, column 3 \(points\): '2,5' is not a number \(write a decimal point"),
    ("ann,total,-1,x", r"line 2, column 3 \(points\): points must be a number of at least 0"),
    ("ann,total,3,", r"line 2, column 4 \(reason\): empty \(say why"),
    ("zed,total,3,x", r"line 2, column 1 \(student\): 'zed' has no submission of ch03_attention"),
    ("cid,test_mha_output,3,x", r"line 2, column 2 \(test\): 'cid' has no graded submission"),
    ("ann,total,3,x\nann,total,4,y", r"line 3, column 2 \(test\): total of 'ann' is also set on line 2"),
], ids=["unknown-test", "too-many-points", "decimal-comma", "negative", "no-reason", "unknown-student",
        "test-of-missing", "twice"])
def test_overrides_are_checked_against_the_gradebook(tmp_path, line, expected):
    path = write(tmp_path / "overrides.csv", f"student,test,points,reason\n{line}\n")
    with pytest.raises(TableError, match=expected):
        build_book(course_with(), [entry("ann", PART), entry("cid", None)], overrides=read_overrides(path),
                   roster=read_roster(write(tmp_path / "roster.csv", "student\nann\ncid\n")))


# ------------------------------------------------------------------------------------------------------------
# Feedback: complete, and safe to publish


def hostile_row(tmp_path: Path):
    """A row where the student controls the id, the name, a message, a note and an override's reason quotes them."""
    messages = {"test_mha_output": f"Your code raised ValueError: {SCRIPT} (cell 'mha', line 3).\n"
                                   f"Hint: see {REPO}/graders/ch03_attention.py and /tmp/course-class-x/lane-1/a.py"}
    made = report(PART, messages, notes=[f"cell <img src=x onerror=alert(1)> kept; left {tmp_path}/scratch/x"])
    student = f"{SCRIPT}<b>"
    hostile = Entry(student, ASSIGNMENT, made, "some failed", name=f"<img src=x onerror=alert(2)> {SCRIPT}",
                    time=SubmissionTime(DEADLINE + dt.timedelta(hours=2), "git commit"))
    overrides = read_overrides(write(tmp_path / "o.csv", f'student,test,points,reason\n"{student}",'
                                                         f'test_causal_attention_output,1,"{SCRIPT}"\n'))
    book = build_book(course_with({"policy": "penalty", "penalty_per_day": 10}), [hostile], overrides=overrides)
    return book.rows[0]


def test_no_markup_from_a_submission_reaches_the_html_page(tmp_path):
    row = hostile_row(tmp_path)
    page = render_html(row, "Chapter 3", Redactor([REPO, tmp_path, "/tmp"]))
    # Only the page's own elements, none of the submission's: the student's text is shown as text.
    tags = {tag.lower() for tag in re.findall(r"<\s*([A-Za-z][\w-]*)", page)}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "ul", "li", "table",
                    "thead", "tbody", "tr", "th", "td", "code", "div", "strong"}, tags
    assert "<script" not in page.lower()
    assert html.escape(SCRIPT) in page
    # The page holds nothing of the instructor's: no path, no sandbox details, no expected value beyond the message.
    assert str(REPO) not in page
    assert str(tmp_path) not in page
    assert "/tmp/" not in page
    assert "graders/" not in page
    assert "secret sandbox details" not in page
    assert "/home/teacher" not in page
    assert "ch03_attention.py" in page  # the file's name only
    # Self-contained: no script, no external asset, and a policy that forbids loading any.
    markup = re.findall(r"<[^<>]*>", page)
    assert not [tag for tag in markup if re.search(r"\s(src|href|action|on\w+)\s*=", tag)]
    assert "url(" not in page
    assert "@import" not in page
    assert "default-src 'none'" in page
    # Complete: the score, the grader's score, the late days, the override's reason, the message and its hint.
    assert "Score: 1.4/6" in page
    assert "Automatic score (the grader&#x27;s): 3/6" in page
    assert "Late by 1 day" in page
    assert "−0.6 points" in page
    assert '<div class="message hint"><strong>Hint:</strong> see ch03_attention.py and a.py</div>' in page


def test_the_markdown_feedback_is_escaped_too(tmp_path):
    page = render_markdown(hostile_row(tmp_path), "Chapter 3", Redactor([REPO, tmp_path, "/tmp"]))
    assert "<script" not in page.replace(f"`{SCRIPT}`", "")
    assert "<img" not in page
    assert str(REPO) not in page
    assert str(tmp_path) not in page
    assert "secret sandbox details" not in page
    assert "> **Hint:** see ch03\\_attention.py and a.py" in page


def test_a_missing_student_gets_a_page_that_says_so():
    row = build_book(course_with(), [entry("ann", FULL)], roster=[*read_roster_text("student,name\nann,A\nbo,B\n")]
                     ).rows[1]
    page = render_markdown(row, "Chapter 3")
    assert "**Score: 0/16**" in page
    assert "No submission was received." in page


def read_roster_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return read_roster(write(Path(folder) / "r.csv", text))


# ------------------------------------------------------------------------------------------------------------
# The class: figures, plot, and one writer for every source


def class_book(tmp_path: Path):
    entries = [entry(f"s{i:02d}", points, hours) for i, (points, hours) in enumerate(
        [(FULL, -3), (FULL, 1), (PART, -1), (PART, 50), ({"test_simplified_self_attention": 1.0}, None),
         ({}, -2)])]
    roster = read_roster(write(tmp_path / "roster.csv", "student\n" + "".join(f"s{i:02d}\n" for i in range(7))))
    return course_with({"policy": "penalty", "penalty_per_day": 10}), entries, roster


def test_the_plotted_numbers_are_the_numbers_of_grades_csv(tmp_path):
    import matplotlib.image

    course, entries, roster = class_book(tmp_path)
    done = publish(course, entries, tmp_path / "out", roster=roster)
    rows = read_rows(tmp_path / "out" / "grades.csv")
    png = tmp_path / "out" / f"class-{ASSIGNMENT}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3
    assert image.shape[0] >= 300
    assert image.shape[1] >= 1000
    numbers = json.loads((tmp_path / "out" / f"class-{ASSIGNMENT}.json").read_text(encoding="utf-8"))
    scores = sorted(float(row["score"]) for row in rows if row["score"])
    assert numbers["scores"] == pytest.approx(scores)
    assert len(scores) == 7
    counts = [0] * 10
    for score in scores:
        counts[bin_of(score, numbers["max_score"])] += 1
    assert numbers["counts"] == counts
    assert numbers["missing"] == 1
    graded = [row for row in rows if row["status"] != MISSING]
    for test in numbers["tests"]:
        full = sum(1 for row in graded if row[test["name"]] and float(row[test["name"]]) == test["max_score"])
        assert (test["full"], test["graded"]) == (full, len(graded)), test["name"]
        assert test["max_score"] == TESTS[test["name"]]
    assert done.figures[0].counts == counts
    summary = render_summary(done.book, done.figures)
    assert f"{ASSIGNMENT}: 7 grades, 1 missing counted as 0" in summary
    assert "test_mha_output" in summary
    assert "33% (2/6)" in summary
    assert "late: 2 submission(s)" in summary
    assert "1 without a known submission time" in summary


def test_every_row_gets_its_feedback_and_unused_files_are_removed(tmp_path):
    course, entries, roster = class_book(tmp_path)
    out = tmp_path / "out"
    publish(course, entries + [entry("stranger", FULL)], out, roster=roster)
    assert (out / "not-on-roster.csv").is_file()
    for student in [f"s{i:02d}" for i in range(7)] + ["stranger"]:
        assert (out / student / f"{ASSIGNMENT}.html").is_file()
        assert (out / student / f"{ASSIGNMENT}.md").is_file()
    publish(course, entries, out, roster=roster)
    assert not (out / "not-on-roster.csv").exists()


def test_write_csv_of_a_class_run_uses_the_same_writer(tmp_path):
    results = [batch.BatchResult(batch.BatchItem("ann", ASSIGNMENT, tmp_path / "x.ipynb"), report(PART)),
               batch.BatchResult(batch.BatchItem("bob", ASSIGNMENT, tmp_path / "y.ipynb"), None)]
    batch.write_csv(tmp_path / "grades.csv", results)
    text = (tmp_path / "grades.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(row["student"], row["score"], row["status"]) for row in rows] == [
        ("ann", "3", "some failed"), ("bob", "", batch.NOT_GRADED)]
    assert rows[0]["test_mha_output"] == "0"
    assert rows[1]["test_mha_output"] == ""


def test_names_of_the_results_folder_never_take_the_place_of_its_files():
    for name in ("grades.csv", "not-on-roster.CSV", f"class-{ASSIGNMENT}.png", f"class-{ASSIGNMENT}.json"):
        assert "~" in batch.result_name(name)
    assert batch.result_name("grades") == "grades"
