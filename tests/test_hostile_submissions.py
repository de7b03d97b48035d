"""Hostile submissions (tests/submissions/hostile.py) score 0 on what they target, and grading completes.

Every attack is graded as a whole chapter 3 submission. Besides its own expectations, each run checks that
nothing escaped: all tests have a result, the secret in the grader's environment appears nowhere in the report,
the decoy beside the notebook and the course's files are intact, and no conftest.py / sitecustomize.py was
planted where Python or pytest would pick it up. Attacks whose outcome depends on the isolation level run under
bubblewrap (when this machine has it) and under process isolation.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from course.config import Course
from course.grading.runner import grade_notebook
from course.reporters.terminal import render_table
from course.worker.cgroup import cgroup_parent
from course.worker.sandbox import MAX_PROCESSES, bubblewrap_problem
from tests.conftest import REPO, load_json, run_cli
from tests.submissions.build import with_edits
from tests.submissions.hostile import ALL, ATTACKS, SANDBOX_DEPENDENT, SECRET_NAME, SECRET_VALUE

ASSIGNMENT = "ch03_attention"
TIMEOUT = 5.0  # per test: short, so the endless loop costs seconds (the solution needs well under 1 s)
MEMORY_MB = 1536  # a smaller address space than the default, so the memory bomb hits it within the timeout
PLANTED = ["conftest.py", "sitecustomize.py", "usercustomize.py", "results.json", "grades.json"]
GUARDED_FOLDERS = [REPO, REPO / "graders", Path(sysconfig.get_paths()["purelib"])]

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
LEVELS = ["bubblewrap", "process"]
CASES = [pytest.param(attack, level, id=f"{attack.name}-{level}")
         for attack in ATTACKS for level in (LEVELS if attack.name in SANDBOX_DEPENDENT else ["auto"])]


def course_with(course: Course, isolation: str, budget: float | None = None) -> Course:
    """The course, with short per-test timeouts, a smaller memory limit and the given isolation level (and time
    budget of a whole submission)."""
    update = {"timeout": TIMEOUT, **({"submission_timeout": budget} if budget else {})}
    assignments = [a.model_copy(update=update) for a in course.config.assignments]
    sandbox = course.config.sandbox.model_copy(update={"isolation": isolation, "memory_mb": MEMORY_MB})
    return Course(course.root, course.config.model_copy(update={"assignments": assignments, "sandbox": sandbox}))


def submit(course: Course, attack, folder: Path) -> Path:
    """Write the attack's notebook (placeholders filled in), its extra files and a decoy into `folder`."""
    sources = {cell: text.replace("@@REPO@@", str(REPO)).replace("@@FOLDER@@", str(folder))
               for cell, text in attack.sources.items()}
    notebook = with_edits(course.solution_notebook(course.assignment(ASSIGNMENT)),
                          folder / (attack.file_name or f"{ASSIGNMENT}.ipynb"), sources=sources,
                          grade_ids=attack.grade_ids)
    for name, text in attack.files.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "decoy.txt").write_text("must survive grading\n", encoding="utf-8")
    return notebook


@pytest.fixture
def planted_files_absent():
    """No attack may leave hooks or fake results in the course, the graders or site-packages."""
    before = {folder / name for folder in GUARDED_FOLDERS for name in PLANTED if (folder / name).exists()}
    yield
    after = {folder / name for folder in GUARDED_FOLDERS for name in PLANTED if (folder / name).exists()}
    assert after == before, f"files planted by student code: {sorted(map(str, after - before))}"


@pytest.mark.parametrize(("attack", "level"), CASES)
def test_attack_scores_zero_on_its_targets(course, attack, level, tmp_path, monkeypatch, planted_files_absent):
    if level == "bubblewrap" and bubblewrap_problem():
        pytest.skip(f"bubblewrap is not available here: {bubblewrap_problem()}")
    monkeypatch.setenv(SECRET_NAME, SECRET_VALUE)
    folder = tmp_path / "submission"
    notebook = submit(course, attack, folder)
    graded = course_with(course, level, attack.budget)

    report = grade_notebook(graded, graded.assignment(ASSIGNMENT), notebook, device="cpu")
    if attack.budget:
        assert report.duration < attack.budget + TIMEOUT + 10, "the submission's time budget ends the run"

    results = {t.name: t for t in report.tests}
    assert len(results) == 12
    assert report.max_score == 16
    targets = set(results) if attack.targets == ALL else set(attack.targets)
    assert targets <= set(results)
    for name in targets:
        assert results[name].score == 0, (name, results[name])
        assert results[name].status == (attack.status or results[name].status), (name, results[name])
        assert results[name].status != "passed", (name, results[name])
    if attack.says:
        assert any(attack.says in results[name].message for name in targets), \
            [results[name].message for name in targets]
    if attack.others_pass:
        assert all(results[name].status == "passed" for name in set(results) - targets), \
            {n: (r.status, r.message) for n, r in results.items() if n not in targets and r.status != "passed"}
    # Student code can never make its failure read as the course's.
    assert not [t.name for t in report.tests if t.message.startswith("Internal grader error")]
    # Nothing it wrote can redraw the instructor's terminal or break a writer: no control characters, valid UTF-8.
    table = render_table(report, width=100)
    assert not CONTROL.search(table.replace("\n", ""))
    table.encode("utf-8")
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")
    # Nothing leaked or was damaged, whatever the attack.
    assert SECRET_VALUE not in json.dumps(report.to_dict())
    assert notebook.is_file()
    assert (folder / "decoy.txt").is_file()
    assert (REPO / "course.yml").is_file()
    assert (REPO / "graders" / "ch03_attention.py").is_file()
    assert not hasattr(builtins, "HACKED")
    expected_level = {"auto": "bubblewrap" if not bubblewrap_problem() else "process"}.get(level, level)
    assert report.sandbox["isolation"] == expected_level


def test_listing_finds_nothing_of_the_course_or_other_submissions(course, tmp_path):
    """What a submission can list or read holds no solution, grader, notebook or other submission."""
    attack = next(a for a in ATTACKS if a.name == "read_solution_and_other_submissions")
    (tmp_path / "another_student").mkdir()
    (tmp_path / "another_student" / "their_work.ipynb").write_text("{}", encoding="utf-8")
    notebook = submit(course, attack, tmp_path / "submission")
    for level in ["process"] + ([] if bubblewrap_problem() else ["bubblewrap"]):
        graded = course_with(course, level)
        report = grade_notebook(graded, graded.assignment(ASSIGNMENT), notebook, device="cpu")
        message = next(t.message for t in report.tests if t.name == "test_simplified_self_attention")
        assert "found: " in message
        for secret in ("ch03_attention.ipynb", "ch02_text_data.py", "decoy.txt", "another_student", "submission"):
            assert secret not in message, (level, message)


def test_forged_output_and_planted_files_do_not_reach_the_command_line(tmp_path):
    """Run as an instructor does, from inside the submission's folder: printed fake scores, a shipped
    conftest.py / sitecustomize.py / torch.py / results.json change nothing; the real JSON replaces the fake."""
    attack = next(a for a in ATTACKS if a.name == "print_fake_score_lines")
    folder = tmp_path / "submission"
    folder.mkdir()
    from course.config import load_course

    notebook = submit(load_course(REPO), attack, folder)
    (folder / "conftest.py").write_text("raise SystemExit('conftest.py of the submission was imported')\n")
    (folder / "sitecustomize.py").write_text("raise SystemExit('sitecustomize.py of the submission was imported')\n")
    (folder / "torch.py").write_text("raise SystemExit('torch.py of the submission was imported')\n")
    (folder / "results.json").write_text('{"score": 16, "max_score": 16, "tests": []}\n')

    result = run_cli("--root", str(REPO), "grade", notebook.name, "--json", "results.json", cwd=folder)

    assert result.returncode == 0, result.stderr
    assert "was imported" not in result.stdout + result.stderr
    for forged in ("FAKE-SCORE", "::notice", "16/16"):
        assert forged not in result.stdout
    assert "15/16" in result.stdout
    data = load_json(folder / "results.json")
    assert data["score"] == 15
    assert data["max_score"] == 16
    assert len(data["tests"]) == 12


def test_escapes_and_surrogates_reach_an_ascii_terminal_neutralised(tmp_path):
    """Terminal escapes in an exception, a grade_id and the file name, and lone surrogates, graded by the command
    line on a terminal that takes only ASCII: the JSON is written, the table is printed, nothing is redrawn."""
    from course.config import load_course

    course = load_course(REPO)
    escapes = submit(course, next(a for a in ATTACKS if a.name == "terminal_escapes_draw_a_fake_table"),
                     tmp_path / "escapes")
    surrogates = submit(course, next(a for a in ATTACKS if a.name == "lone_surrogates_in_messages_and_grade_ids"),
                        tmp_path / "surrogates")
    for notebook in (escapes, surrogates):
        result = subprocess.run([sys.executable, "-m", "course", "--root", str(REPO), "grade", str(notebook),
                                 "--assignment", ASSIGNMENT, "--json", str(notebook.parent / "out.json")],
                                capture_output=True, timeout=300, env={**os.environ, "PYTHONIOENCODING": "ascii"})
        assert result.returncode == 0, result.stderr
        assert b"\x1b" not in result.stdout + result.stderr
        assert b"15/16" in result.stdout
        assert load_json(notebook.parent / "out.json")["score"] == 15


@pytest.mark.parametrize("level", LEVELS)
def test_the_process_limit_binds_even_a_root_grader(course, level, tmp_path):
    """The thread bomb counts how many threads it could start: fewer than the limit, whoever runs the grader."""
    if level == "bubblewrap" and bubblewrap_problem():
        pytest.skip(f"bubblewrap is not available here: {bubblewrap_problem()}")
    bound = cgroup_parent() is not None or (level == "bubblewrap" and os.geteuid() != 0)
    if not bound:
        pytest.skip("no control group here, and RLIMIT_NPROC does not bind this user (docs/trust-model.md)")
    graded = course_with(course, level)
    notebook = submit(course, next(a for a in ATTACKS if a.name == "thread_bomb"), tmp_path / "submission")
    report = grade_notebook(graded, graded.assignment(ASSIGNMENT), notebook, device="cpu")
    message = next(t.message for t in report.tests if t.name == "test_simplified_self_attention")
    started = int(re.search(r"started (\d+) threads", message).group(1))
    assert started < MAX_PROCESSES
