"""Malformed submissions (tests/submissions/malformed.py): each is graded to completion, and every test it costs
gets a clear message naming what is wrong (the file, the cell or the function), never a traceback.

Most entries are graded in this process (one worker each); a few go through `course grade` to show the exit
status, the printed table and the JSON file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from course import notebook as notebook_module
from course.grading.runner import collect_points
from course.notebook import NotebookError, read_notebook
from course.results import GradeReport
from course.submission import resolve_submission
from tests.conftest import load_json, run_cli
from tests.submissions.malformed import ALL, BY_NAME, MALFORMED, Malformed, latin1_bytes

COULD_NOT_BE_GRADED = "Your notebook could not be graded: "
# What must never reach a student: a traceback, or the grader's own failure.
NEVER = ("Traceback", 'File "', "Internal grader error", "No result: the test did not run")

REQUIRED_KINDS = {
    "not_json_python_script", "old_format_v3", "no_nbgrader_metadata", "deleted_solution_cell", "reordered_cells",
    "renamed_function_and_class", "syntax_error", "raises_at_import", "oversize_50mb", "not_utf8_latin1",
    "empty_file",
}


@dataclass
class Graded:
    notebook: Path  # what was graded (the folder itself when no notebook in it could be chosen)
    report: GradeReport


@pytest.fixture(scope="module")
def tests_of(course):
    """assignment id -> the names of its grader's tests (collected once, nothing run)."""
    cache: dict[str, set[str]] = {}

    def get(assignment_id: str) -> set[str]:
        if assignment_id not in cache:
            cache[assignment_id] = set(collect_points(course, course.assignment(assignment_id)))
        return cache[assignment_id]

    return get


@pytest.fixture(scope="module")
def graded(course, grade, tmp_path_factory):
    """Each entry written and graded once, in this process, as `course grade SUBMISSION --assignment ID` does."""
    cache: dict[str, Graded] = {}

    def get(entry: Malformed) -> Graded:
        if entry.name not in cache:
            submission = entry.write(tmp_path_factory.mktemp(entry.name))
            notes: list[str] = []
            assignment, notebook = resolve_submission(course, submission, entry.assignment, notes)
            assert assignment.id == entry.assignment
            report = grade(notebook, assignment.id)
            report.notes[:0] = notes
            cache[entry.name] = Graded(notebook, report)
        return cache[entry.name]

    return get


def test_the_catalogue_holds_the_required_kinds_and_more():
    names = {entry.name for entry in MALFORMED}
    assert REQUIRED_KINDS <= names
    assert len(names) >= 12


@pytest.mark.parametrize("entry", MALFORMED, ids=lambda e: e.name)
def test_malformed_submission_is_graded_with_a_clear_message_per_test(graded, tests_of, entry):
    result = graded(entry)
    report = result.report
    assert report.assignment == entry.assignment
    assert {t.name for t in report.tests} == tests_of(entry.assignment), "every test has a result"
    expected = {name: entry.says.get(name, entry.says.get(ALL)) for name in tests_of(entry.assignment)}
    assert set(entry.says) - {ALL} <= set(expected), "the catalogue names real tests"
    for test in report.tests:
        phrases = expected[test.name]
        if phrases is None:  # not affected by what is broken
            assert (test.status, test.score) == ("passed", test.max_score), (test.name, test.message)
            continue
        assert test.status in ("error", "failed"), (test.name, test.status)
        assert test.score == 0, (test.name, test.status)
        for phrase in phrases:
            assert phrase in test.message, (test.name, phrase, test.message)
        for bad in NEVER:
            assert bad not in test.message, (test.name, test.message)
    for phrase in entry.notes:
        assert any(phrase in note for note in report.notes), (phrase, report.notes)
    if not entry.unreadable and not entry.notes:
        assert report.notes == []


@pytest.mark.parametrize("entry", [e for e in MALFORMED if e.unreadable], ids=lambda e: e.name)
def test_unreadable_file_gives_every_test_the_same_message_naming_the_file(graded, entry):
    result = graded(entry)
    messages = {test.message for test in result.report.tests}
    assert len(messages) == 1
    (message,) = messages
    assert message.startswith(f"{COULD_NOT_BE_GRADED}{result.notebook}: "), message
    assert result.report.notes == [message.removeprefix(COULD_NOT_BE_GRADED)]
    assert {test.status for test in result.report.tests} == {"error"}
    assert result.report.score == 0


def test_an_oversize_notebook_is_refused_before_it_is_read(graded, monkeypatch):
    path = graded(BY_NAME["oversize_50mb"]).notebook
    assert path.stat().st_size > 50 * 2**20

    def not_allowed(*args, **kwargs):
        raise AssertionError("the file was read")

    monkeypatch.setattr(Path, "read_bytes", not_allowed)
    monkeypatch.setattr(Path, "read_text", not_allowed)
    monkeypatch.setattr(notebook_module.json, "loads", not_allowed)
    with pytest.raises(NotebookError, match=r"the file is 50 MB, more than the 20 MB limit"):
        read_notebook(path)


def test_a_byte_order_mark_is_read_as_utf8(tmp_path):
    plain = BY_NAME["reordered_cells"].write(tmp_path)  # any readable notebook
    with_bom = tmp_path / "bom.ipynb"
    with_bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert read_notebook(with_bom) == read_notebook(plain)


# -- `course grade` as a user runs it ----------------------------------------------------------------------------

def check_json_result(path: Path, tests: set[str], zero: set[str], *phrases: str) -> dict:
    result = load_json(path)
    assert {t["name"] for t in result["tests"]} == tests
    for test in result["tests"]:
        if test["name"] in zero:
            assert test["status"] in ("error", "failed"), test
            assert test["score"] == 0, test
            assert all(phrase in test["message"] for phrase in phrases), test
        else:
            assert test["status"] == "passed", test
            assert test["score"] == test["max_score"], test
    return result


def test_cli_misnamed_unreadable_file_needs_the_assignment_then_is_graded(tmp_path, tests_of):
    submission = tmp_path / "submission.ipynb"  # neither the assignment's name, nor readable to recognise it
    submission.write_bytes(latin1_bytes())

    done = run_cli("grade", str(submission))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot tell which assignment this notebook belongs to" in done.stderr
    assert "not UTF-8 text" in done.stderr
    assert "pass --assignment ID" in done.stderr
    assert "Traceback" not in done.stderr

    out = tmp_path / "result.json"
    done = run_cli("grade", str(submission), "--assignment", "ch02_text_data", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "0/16" in done.stdout
    assert "not UTF-8 text" in done.stdout
    assert all(name in done.stdout for name in tests_of("ch02_text_data"))
    tests = tests_of("ch02_text_data")
    result = check_json_result(out, tests, tests, f"{COULD_NOT_BE_GRADED}{submission}: not UTF-8 text (byte")
    assert result["score"] == 0
    assert result["max_score"] == 16


def test_cli_folder_with_a_scratch_notebook_and_a_syntax_error(tmp_path, tests_of):
    """The notebook with the assignment's cells is chosen among the folder's two, and a broken cell costs one test."""
    entry = BY_NAME["syntax_error"]
    folder = tmp_path / "submission"
    folder.mkdir()
    entry.write(folder).rename(folder / "my work.ipynb")
    scratch = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": "print(1)"}]}
    (folder / "scratch.ipynb").write_text(json.dumps(scratch), encoding="utf-8")
    out = tmp_path / "result.json"
    done = run_cli("grade", str(folder), "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "15/16" in done.stdout
    assert "SyntaxError" in done.stdout
    assert "Traceback" not in done.stdout
    printed = " ".join(done.stdout.split())  # the note is wrapped where the (temporary) path makes it long
    assert "graded my work.ipynb" in printed
    assert "not graded: scratch.ipynb" in printed
    result = check_json_result(out, tests_of("ch02_text_data"), {"test_build_vocab"}, *entry.says["test_build_vocab"])
    assert any("graded my work.ipynb" in note for note in result["notes"])


def test_cli_folder_with_two_copies_needs_a_choice(tmp_path):
    folder = BY_NAME["folder_with_two_copies"].write(tmp_path)
    done = run_cli("grade", str(folder))
    assert done.returncode == 2
    assert "notebooks found: ch02 draft.ipynb, ch02 final.ipynb" in done.stderr
    assert "pass the notebook itself, or --assignment ID" in done.stderr
