"""Grading a class: a folder of mixed submissions graded in parallel gets exactly the scores that grading each
one alone gives; results go to a CSV and one JSON per student; unchanged submissions are not graded again; the
layouts are recognised; a folder without submissions and process isolation are refused with a clear message."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from course.gradebook.table import COLUMNS
from course.grading.runner import grade_notebook
from course.worker.sandbox import bubblewrap_problem
from tests.conftest import run_cli
from tests.submissions.classroom import QUICK_HOSTILE, make_class

ASSIGNMENT = "ch03_attention"


def read_csv(path):
    with path.open(encoding="utf-8") as handle:
        return {row["student"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """A class of 20 (full, stub, variants, hostile, unreadable, mutants) graded by the command line, 2 jobs."""
    if bubblewrap_problem():
        pytest.skip(f"a class is graded under bubblewrap, which is not available here: {bubblewrap_problem()}")
    folder = tmp_path_factory.mktemp("class")
    students = make_class(folder, 20, ASSIGNMENT, hostile=QUICK_HOSTILE)
    done = run_cli("grade", str(folder), "--jobs", "2", "--out", str(folder / "grades"))
    return folder, students, done


def test_a_class_is_graded_with_a_summary_and_exit_0(graded_class):
    _, students, done = graded_class
    assert done.returncode == 0, done.stderr
    assert f"{ASSIGNMENT}: {len(students)} submissions" in done.stdout
    assert "failed most often:" in done.stdout


def test_the_csv_has_a_row_per_student_and_a_column_per_test(course, graded_class):
    folder, students, _ = graded_class
    rows = read_csv(folder / "grades" / "grades.csv")
    assert sorted(rows) == sorted(students)
    tests = set(next(iter(rows.values()))) - set(COLUMNS)  # the gradebook's columns, then one per test
    assert len(tests) == 12
    assert rows["student01-solution"]["score"] == "16"
    assert rows["student02-release"]["score"] == "0"
    unreadable = next(student for student in students if student.endswith("unreadable-json"))
    assert rows[unreadable]["status"] == "unreadable"


def sample(students: list[str]) -> list[str]:
    """One student of every kind (solution, release, variant, hostile, unreadable) and two mutants: grading each
    alone starts Python and imports torch, about 2 s, so the comparison takes a sample of the class."""
    kinds = {}
    for student in students:
        kinds.setdefault(student.split("-")[1], []).append(student)
    return [group[0] for group in kinds.values()] + kinds["mutant"][1:2]


def test_every_kind_of_student_gets_the_score_that_grading_alone_gives(course, graded_class):
    """The batch path (forks of a template, two grading processes) against grading one submission alone."""
    folder, students, _ = graded_class
    assignment = course.assignment(ASSIGNMENT)
    for student in sample(students):
        data = json.loads((folder / "grades" / student / f"{ASSIGNMENT}.json").read_text(encoding="utf-8"))
        alone = grade_notebook(course, assignment, folder / "submitted" / student / ASSIGNMENT / assignment.notebook,
                               device="cpu")
        assert {t["name"]: t["status"] for t in data["tests"]} == {t.name: t.status for t in alone.tests}, student
        assert data["score"] == alone.score, student


def test_a_second_run_grades_only_what_changed(graded_class, tmp_path):
    folder, students, _ = graded_class
    copy = tmp_path / "class"
    shutil.copytree(folder, copy)
    changed = copy / "submitted" / "student02-release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    shutil.copyfile(copy / "submitted" / "student01-solution" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", changed)
    done = run_cli("grade", str(copy), "--jobs", "2", "--out", str(copy / "grades"))
    assert done.returncode == 0, done.stderr
    assert f"{len(students) - 1} unchanged since the last run" in done.stdout
    assert read_csv(copy / "grades" / "grades.csv")["student02-release"]["score"] == "16"


@pytest.mark.parametrize("layout", ["folder per student", "notebook per student"])
def test_other_layouts_are_recognised(course, tmp_path, layout):
    solution = course.solution_notebook(course.assignment(ASSIGNMENT))
    for student in ("ada", "grace"):
        target = (tmp_path / student / solution.name if layout == "folder per student"
                  else tmp_path / f"{student}.ipynb")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(solution, target)
    done = run_cli("grade", str(tmp_path), "--jobs", "1", "--assignment", ASSIGNMENT, "--out", str(tmp_path / "g"),
                   "--allow-process-isolation")
    assert done.returncode == 0, done.stderr
    rows = read_csv(tmp_path / "g" / "grades.csv")
    assert {student: row["score"] for student, row in rows.items()} == {"ada": "16", "grace": "16"}


def test_a_folder_without_submissions_is_an_error(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no notebooks here")
    done = run_cli("grade", str(tmp_path), "--jobs", "2", "--assignment", ASSIGNMENT, "--allow-process-isolation")
    assert done.returncode == 2
    assert f"holds no submission of {ASSIGNMENT}" in done.stderr


def test_a_class_is_not_graded_under_process_isolation_unless_allowed(tmp_path):
    make_class(tmp_path, 1, ASSIGNMENT)
    done = run_cli("grade", str(tmp_path), "--jobs", "1", "--isolation", "process", "--out", str(tmp_path / "g"))
    assert done.returncode == 2
    assert "needs bubblewrap" in done.stderr
    assert "--allow-process-isolation" in done.stderr
    allowed = run_cli("grade", str(tmp_path), "--jobs", "1", "--isolation", "process", "--out", str(tmp_path / "g"),
                      "--allow-process-isolation")
    assert allowed.returncode == 0, allowed.stderr


def test_a_submission_that_tampers_with_its_worker_does_not_affect_the_next(course, tmp_path):
    """Graded one after the other by the same template: a submission that patches torch and plants files, then
    the solution, which must still get full marks."""
    from course import batch
    from tests.submissions.build import with_edits
    from tests.submissions.hostile import ATTACKS

    assignment = course.assignment(ASSIGNMENT)
    items = []
    for name in ("patch_tensor_to_at_import", "write_fake_results_and_hooks"):
        attack = next(a for a in ATTACKS if a.name == name)
        sources = {cell: text.replace("@@REPO@@", str(tmp_path)).replace("@@FOLDER@@", str(tmp_path))
                   for cell, text in attack.sources.items()}
        notebook = with_edits(course.solution_notebook(assignment), tmp_path / name / assignment.notebook,
                              sources=sources)
        items += [batch.BatchItem(name, ASSIGNMENT, notebook),
                  batch.BatchItem(f"{name}-then-solution", ASSIGNMENT, course.solution_notebook(assignment))]
    try:
        results = batch.grade_batch(course, items, jobs=1, device="cpu")
    finally:
        batch.close_launchers()
    scores = {r.item.student: r.report.score for r in results}
    assert scores["patch_tensor_to_at_import"] == 0
    assert scores["patch_tensor_to_at_import-then-solution"] == 16
    assert scores["write_fake_results_and_hooks-then-solution"] == 16
