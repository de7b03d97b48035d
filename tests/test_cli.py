"""`course grade`, `course validate` and `course release --check` as a user runs them."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO, load_json, run_cli

TEST_FIELDS = {"name", "status", "score", "max_score", "message", "duration"}


def test_grade_solution_folder_gives_full_marks_and_json(tmp_path):
    out = tmp_path / "result.json"
    done = run_cli("grade", "solutions/ch03_attention", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout
    assert "16/16" in done.stdout
    result = load_json(out)
    assert result["assignment"] == "ch03_attention"
    assert result["score"] == result["max_score"] == 16
    assert len(result["tests"]) >= 8
    for test in result["tests"]:
        assert TEST_FIELDS <= set(test)
        assert test["status"] == "passed"
        assert test["score"] == test["max_score"]


def test_grade_untouched_release_gives_zero_with_feedback(tmp_path):
    out = tmp_path / "result.json"
    done = run_cli("grade", "assignments/ch02_text_data", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "0/16" in done.stdout
    assert "Not implemented yet" in done.stdout
    result = load_json(out)
    assert result["score"] == 0
    assert result["max_score"] == 16
    assert {t["status"] for t in result["tests"]} == {"error"}
    # Feedback never shows the grader's source or a traceback.
    assert "Traceback" not in done.stdout
    assert "def test_" not in done.stdout
    assert "@probe" not in done.stdout


def test_assignment_is_inferred_from_a_renamed_notebook(tmp_path):
    renamed = tmp_path / "my work (final).ipynb"
    shutil.copy(REPO / "solutions/ch02_text_data/ch02_text_data.ipynb", renamed)
    out = tmp_path / "r.json"
    done = run_cli("grade", str(renamed), "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert load_json(out)["assignment"] == "ch02_text_data"


def test_broken_notebook_still_writes_a_result(tmp_path):
    broken = tmp_path / "ch03_attention.ipynb"
    broken.write_text('{"cells": [', encoding="utf-8")
    out = tmp_path / "r.json"
    done = run_cli("grade", str(broken), "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = load_json(out)
    assert result["score"] == 0
    assert result["max_score"] == 16
    assert all("JSON error at line 1" in t["message"] for t in result["tests"])


@pytest.mark.parametrize(("args", "expected"), [
    (["grade", "no/such/notebook.ipynb"], "no such file or folder"),
    (["grade", "solutions/ch03_attention", "--assignment", "ch99_nope"], "unknown assignment 'ch99_nope'"),
    (["grade", "tests"], "expected a notebook named"),
    (["grade", "solutions/ch03_attention", "--device", "tpu"], "unknown device 'tpu'"),
    (["grade"], "the following arguments are required"),
])
def test_bad_command_lines_exit_2_with_a_message(args, expected):
    done = run_cli(*args)
    assert done.returncode == 2
    assert expected in done.stderr


def test_configuration_error_exits_3_and_names_the_key(tmp_path):
    root = tmp_path / "course"
    root.mkdir()
    for folder in ("solutions", "graders", "reference", "checks", "data"):
        (root / folder).symlink_to(REPO / folder)
    text = (REPO / "course.yml").read_text(encoding="utf-8").replace("points: 16", "points: 15", 1)
    (root / "course.yml").write_text(text, encoding="utf-8")
    done = run_cli("--root", str(root), "grade", str(REPO / "solutions/ch02_text_data"))
    assert done.returncode == 3
    assert "course.yml" in done.stderr
    assert "(ch02_text_data).points is 15" in done.stderr
    assert "16 points" in done.stderr


def test_validate_reports_tests_and_points():
    done = run_cli("validate")
    assert done.returncode == 0, done.stderr
    assert "ch02_text_data:" in done.stdout
    assert "ch03_attention:" in done.stdout
    assert "16 points" in done.stdout
    # What course.yml no longer says, computed: the modules the student's code may import, the data files.
    assert "ch03_attention: 12 tests, 16 points; may import nothing from reference/; data: none" in done.stdout
    assert ("ch05_pretraining: 15 tests, 25 points; may import attention, gpt, text_data, tiktoken_offline from "
            "reference/; data: corpus/the-lamplighters-apprentice.txt, tiny-gpt2-logits.safetensors, "
            "tiny-gpt2.safetensors") in done.stdout
    assert done.stdout.endswith("course.yml is valid\n")


def test_validate_finds_a_probe_that_imports_what_the_worker_does_not_hold(tmp_path):
    root = tmp_path / "course"
    root.mkdir()
    for folder in ("solutions", "reference", "checks", "data", "course"):
        (root / folder).symlink_to(REPO / folder)
    (root / "graders").mkdir()
    for grader in (REPO / "graders").iterdir():
        (root / "graders" / grader.name).symlink_to(grader)
    (root / "graders" / "ch03_attention.py").unlink()
    (root / "graders" / "ch03_attention.py").write_text(
        (REPO / "graders" / "ch03_attention.py").read_text(encoding="utf-8")
        + "\nfrom course.grading import probe  # noqa: E402\n\n\n@probe\ndef peek(student):\n"
          "    from reference.gpt import GPTModel\n    return GPTModel\n", encoding="utf-8")
    text = (REPO / "course.yml").read_text(encoding="utf-8")
    entry = text[text.index("  - id: ch03_attention"):text.index("  - id: ch04_gpt")]
    (root / "course.yml").write_text(text[:text.index("  - id: ")] + entry, encoding="utf-8")
    done = run_cli("validate", cwd=root)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "ch03_attention: 12 tests, 16 points" in done.stdout
    assert f"{root / 'course.yml'}: 1 problem(s)" in done.stderr
    assert ("graders/ch03_attention.py: probe peek imports reference.gpt, which the worker of ch03_attention does "
            "not hold") in done.stderr


def test_release_is_up_to_date_with_solutions():
    done = run_cli("release", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_release_check_detects_a_stale_assignment(tmp_path):
    root = tmp_path / "course"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(".git", "__pycache__", ".venv", "*.egg-info"))
    notebook = root / "solutions/ch03_attention/ch03_attention.ipynb"
    notebook.write_text(notebook.read_text(encoding="utf-8").replace("Multi-head", "Multi-headed", 1), encoding="utf-8")
    done = run_cli("--root", str(root), "release", "--check", "ch03_attention")
    assert done.returncode == 1
    assert "assignments/ch03_attention/ch03_attention.ipynb: differs" in done.stderr


def test_release_contains_no_solution_code():
    for notebook in (REPO / "assignments").rglob("*.ipynb"):
        text = notebook.read_text(encoding="utf-8")
        assert "BEGIN SOLUTION" not in text, notebook
        assert "END SOLUTION" not in text, notebook
        assert "raise NotImplementedError()" in text, notebook
    shipped = {p.name for p in (REPO / "assignments").rglob("*") if p.is_file()}
    assert not {name for name in shipped if name.endswith(".py")}, "no grader or reference module is shipped"
