"""After grading, as an instructor sees it: `course grade DIR` with a roster, overrides and --excel on a real
class of chapter 3 (the solution, a realistic bug, a submission that writes markup into its messages and folder
name), then a regrade of one test of one student into the same results. The gradebook's details are tested as
data in tests/test_gradebook*.py; this is the one class actually graded."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from course import batch
from tests.conftest import run_cli
from tests.submissions.build import with_edits
from tests.submissions.catalog import MUTANTS

ASSIGNMENT = "ch03_attention"
HOSTILE = "eve<script>"
SCRIPT = '<script>alert("x")</script>'
GRADE = ["--jobs", "2", "--isolation", "process", "--allow-process-isolation", "--device", "cpu"]


@pytest.fixture(scope="module")
def graded(course, tmp_path_factory):
    top = tmp_path_factory.mktemp("term")
    assignment = course.assignment(ASSIGNMENT)
    solution = course.solution_notebook(assignment)
    submitted = top / "class" / "submitted"
    notebook = f"{ASSIGNMENT}/{assignment.notebook}"
    (submitted / "ann" / ASSIGNMENT).mkdir(parents=True)
    shutil.copyfile(solution, submitted / "ann" / notebook)
    mutant = next(m for m in MUTANTS if m.name == "mha_scaled_by_d_out")
    with_edits(solution, submitted / "bob" / notebook, replace={mutant.cell: list(mutant.edits)})
    with_edits(solution, submitted / HOSTILE / notebook, sources={
        "simplified_self_attention": f"def simplified_self_attention(inputs):\n    raise ValueError('{SCRIPT}')\n"})
    (top / "roster.csv").write_text("student,name,email\nann,Ann Lee,ann@example.edu\nbob,José García,"
                                    "jose@example.edu\ndan,Dan Roe,dan@example.edu\n", encoding="utf-8")
    (top / "overrides.csv").write_text("student,test,points,reason\nbob,test_mha_output,3,the book allows "
                                       "sqrt(d_out)\n", encoding="utf-8")
    options = ["--out", str(top / "grades"), "--roster", str(top / "roster.csv"), "--overrides",
               str(top / "overrides.csv"), "--excel", *GRADE]
    done = run_cli("grade", str(top / "class"), *options)
    return top, options, done


def table(path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig"))))


def test_grades_csv_joins_the_roster_with_overrides_for_excel(graded):
    top, _, done = graded
    assert done.returncode == 0, done.stderr
    data = (top / "grades" / "grades.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    assert "José García".encode() in data
    rows = {row["student"]: row for row in table(top / "grades" / "grades.csv")}
    assert list(rows) == ["ann", "bob", "dan"]
    assert (rows["ann"]["score"], rows["ann"]["status"], rows["ann"]["email"]) == ("16", "complete", "ann@example.edu")
    assert (rows["bob"]["auto_score"], rows["bob"]["score"], rows["bob"]["test_mha_output"]) == ("12", "15", "3")
    assert rows["bob"]["overrides"] == "test_mha_output 0 -> 3 (the book allows sqrt(d_out))"
    assert (rows["dan"]["status"], rows["dan"]["score"]) == ("missing", "0")
    apart = table(top / "grades" / "not-on-roster.csv")
    assert [row["student"] for row in apart] == [HOSTILE]
    assert apart[0]["score"] == "15"
    assert "missing (1)" in done.stdout
    assert "not on the roster (1)" in done.stdout
    assert "pass rate per test" in done.stdout


def test_every_student_gets_feedback_that_is_safe_to_publish(graded):
    top, _, _ = graded
    page = (top / "grades" / batch.result_name(HOSTILE) / f"{ASSIGNMENT}.html").read_text(encoding="utf-8")
    assert "Your code raised ValueError" in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert str(top) not in page
    assert "graders/" not in page
    bob = (top / "grades" / "bob" / f"{ASSIGNMENT}.md").read_text(encoding="utf-8")
    assert "sqrt(d\\_out) instead of sqrt(head\\_dim)" in bob
    assert "the book allows sqrt(d\\_out)" in bob
    assert "No submission was received" in (top / "grades" / "dan" / f"{ASSIGNMENT}.md").read_text(encoding="utf-8")


def test_the_class_picture_holds_the_csv_numbers(graded):
    import matplotlib.image

    top, _, _ = graded
    image = matplotlib.image.imread(top / "grades" / f"class-{ASSIGNMENT}.png")
    assert image.shape[0] > 300
    assert image.shape[1] > 1000
    numbers = json.loads((top / "grades" / f"class-{ASSIGNMENT}.json").read_text(encoding="utf-8"))
    assert numbers["scores"] == sorted(float(row["score"]) for row in table(top / "grades" / "grades.csv"))


def test_one_test_of_one_student_is_graded_again_into_the_same_results(graded):
    top, options, _ = graded
    ann = (top / "grades" / "ann" / f"{ASSIGNMENT}.json").read_bytes()
    done = run_cli("grade", str(top / "class"), "--student", "bob", "--test", "test_mha_output", *options)
    assert done.returncode == 0, done.stderr
    assert (top / "grades" / "ann" / f"{ASSIGNMENT}.json").read_bytes() == ann  # not graded again
    bob = json.loads((top / "grades" / "bob" / f"{ASSIGNMENT}.json").read_text(encoding="utf-8"))
    assert any("test_mha_output was graded again on" in note for note in bob["notes"])
    rows = {row["student"]: row for row in table(top / "grades" / "grades.csv")}
    assert list(rows) == ["ann", "bob", "dan"]
    assert rows["bob"]["score"] == "15"
    assert "test\\_mha\\_output was graded again" in (top / "grades" / "bob" / f"{ASSIGNMENT}.md").read_text(
        encoding="utf-8")
