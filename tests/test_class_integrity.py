"""One student, one grade: the class path against students who attack it through their repository's files and
names, and against an instructor who interrupts or kills the run.

- A submission is the regular files in its own folder: symbolic links (to a classmate's notebook, to the
  course's solution, to a credentials file), hard links, fifos, a linked student folder are refused, score 0,
  and nothing is read through them.
- Every student gets a result file of their own (`a b`, `a?b`, `a_b`), folders that are not submissions are
  listed with the reason, a folder with two notebooks is refused naming both.
- The first Ctrl-C writes grades.csv with what was graded and exits 130; the next run grades the rest; a killed
  `course` leaves no lane, template or sandbox behind, and nothing in its temporary folder.
- A re-run regrades when the course changed (a reference constant), not only when the notebook did.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course import batch
from course.config import load_course
from course.worker.sandbox import bubblewrap_problem
from tests.conftest import REPO, run_cli
from tests.submissions.build import with_edits

ASSIGNMENT = "ch03_attention"
TOKEN = "ghp_SECRET_TOKEN_0123456789"


def read_csv(path: Path) -> dict[str, dict]:
    with path.open(encoding="utf-8") as handle:
        return {row["student"]: row for row in csv.DictReader(handle)}


def put(course, folder: Path, student: str, kind: str = "solution") -> Path:
    """submitted/<student>/ch03_attention/ch03_attention.ipynb: the solution or the untouched release."""
    assignment = course.assignment(ASSIGNMENT)
    source = course.solution_notebook(assignment) if kind == "solution" else course.release_notebook(assignment)
    target = folder / "submitted" / student / ASSIGNMENT / assignment.notebook
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def grade(course, folder: Path, out: Path | None = None, **options) -> tuple[batch.ClassFolder, dict]:
    found = batch.discover(course, folder, ASSIGNMENT)
    results = batch.grade_batch(course, found.items, jobs=1, out=out, device="cpu", isolation="process", **options)
    return found, {r.item.student: r for r in results}


# ------------------------------------------------------------------------------------------------------------
# Links, pipes and devices


@pytest.fixture(scope="module")
def linked_class(course, tmp_path_factory):
    folder = tmp_path_factory.mktemp("links")
    outside = tmp_path_factory.mktemp("outside")
    credentials = outside / "credentials"
    credentials.write_text(f"token={TOKEN}\n")
    assignment = course.assignment(ASSIGNMENT)
    alice = put(course, folder, "alice")
    for student, target in [("bob", alice), ("carol", course.solution_notebook(assignment)), ("dave", credentials)]:
        link = folder / "submitted" / student / ASSIGNMENT / assignment.notebook
        link.parent.mkdir(parents=True)
        link.symlink_to(target)
    (folder / "submitted" / "erin").symlink_to(folder / "submitted" / "alice")  # a student folder that is a link
    (folder / "submitted" / "frank" / ASSIGNMENT).mkdir(parents=True)
    (folder / "submitted" / "frank" / ASSIGNMENT / assignment.notebook).hardlink_to(
        shutil.copyfile(alice, outside / "copy.ipynb"))
    (folder / "submitted" / "gina" / ASSIGNMENT).mkdir(parents=True)
    os.mkfifo(folder / "submitted" / "gina" / ASSIGNMENT / assignment.notebook)
    (folder / "submitted" / "hank").mkdir()
    (folder / "submitted" / "hank" / ASSIGNMENT).symlink_to(folder / "submitted" / "alice" / ASSIGNMENT)
    out = folder / "grades"
    found, results = grade(course, folder, out)
    batch.write_csv(out / "grades.csv", list(results.values()))
    return folder, out, found, results


@pytest.mark.parametrize(("student", "what"), [
    ("bob", "a symbolic link"), ("carol", "a symbolic link"), ("dave", "a symbolic link"),
    ("erin", "a symbolic link"), ("frank", "a hard link"), ("gina", "a fifo"), ("hank", "a symbolic link")])
def test_a_linked_or_special_notebook_is_refused_with_zero(linked_class, student, what):
    _, _, _, results = linked_class
    report = results[student].report
    assert report.score == 0
    assert results[student].status == "refused"
    assert all(what in test.message for test in report.tests), report.tests[0].message


def test_the_student_whose_notebook_was_linked_keeps_their_own_grade(linked_class):
    _, out, _, results = linked_class
    assert results["alice"].report.score == 16
    rows = read_csv(out / "grades.csv")
    assert rows["alice"]["score"] == "16"
    assert {rows[s]["status"] for s in ("bob", "carol", "dave", "erin", "frank", "gina", "hank")} == {"refused"}


def test_nothing_is_read_through_a_link(linked_class):
    """The credentials file's token appears in no result file, no CSV cell and no message."""
    _, out, _, _ = linked_class
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(encoding="utf-8"), path


# ------------------------------------------------------------------------------------------------------------
# Names


def test_names_never_collide_and_every_folder_is_accounted_for(course, tmp_path):
    for student in ("a b", "a?b", "a_b", "grades", "_ta", "feedback"):
        put(course, tmp_path, student, kind="release")
    two = put(course, tmp_path, "twice", kind="release")
    shutil.copyfile(two, two.with_name("copy.ipynb"))
    (tmp_path / "submitted" / "notes.txt").write_text("not a student")
    (tmp_path / "submitted" / "empty").mkdir()
    out = tmp_path / "out"
    found, results = grade(course, tmp_path, out)
    assert sorted(results) == ["_ta", "a b", "a?b", "a_b", "feedback", "grades", "twice"]
    paths = {student: batch.result_path(out, r.item) for student, r in results.items()}
    assert len(set(paths.values())) == len(paths)
    assert all(path.is_file() for student, path in paths.items() if student != "twice")
    assert paths["a_b"].parent.name == "a_b"
    assert "~" in paths["a b"].parent.name
    assert results["twice"].status == "refused"
    assert "copy.ipynb" in results["twice"].report.tests[0].message
    assert f"{ASSIGNMENT}.ipynb" in results["twice"].report.tests[0].message
    assert {s.name: s.reason for s in found.skipped} == {
        "notes.txt": "not a student's folder", "empty": f"holds no folder named {ASSIGNMENT}"}
    text = batch.summary(list(results.values()), found.skipped)
    assert "notes.txt: not a student's folder" in text
    assert "twice:" in text


def test_result_names_are_one_to_one():
    names = ["a b", "a?b", "a_b", "a_b~x", ".hidden", "_hidden", "A", "a", "é", "e", "x" * 200, "x" * 201, ""]
    files = [batch.result_name(name) for name in names]
    assert len(set(files)) == len(names)
    assert all("/" not in name and not name.startswith(".") and name for name in files)


# ------------------------------------------------------------------------------------------------------------
# Re-runs


def course_copy(destination: Path) -> Path:
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info"))
    return destination


def test_a_change_to_the_reference_regrades_the_class(tmp_path):
    root = course_copy(tmp_path / "course")
    copy = load_course(root)
    put(copy, tmp_path / "class", "alice")
    put(copy, tmp_path / "class", "bob", kind="release")
    out = tmp_path / "out"
    _, first = grade(copy, tmp_path / "class", out)
    _, again = grade(copy, tmp_path / "class", out)
    assert [r.skipped for r in first.values()] == [False, False]
    assert [r.skipped for r in again.values()] == [True, True]
    gpt = root / "reference" / "gpt.py"
    gpt.write_text(gpt.read_text(encoding="utf-8") + "\nA_CONSTANT_THAT_CHANGED = 1\n", encoding="utf-8")
    _, after = grade(load_course(root), tmp_path / "class", out)
    assert [r.skipped for r in after.values()] == [False, False]
    fingerprint = json.loads(batch.result_path(out, after["alice"].item).read_text())["course_fingerprint"]
    assert set(fingerprint) >= {"graders", "reference", "checks", "course", "data", "course.yml", "torch", "device"}


# ------------------------------------------------------------------------------------------------------------
# Interrupting and killing


def hanging_class(course, folder: Path, students: int) -> None:
    """Two solutions first, then submissions whose code never returns (each costs a per-test timeout)."""
    put(course, folder, "a-solution")
    put(course, folder, "b-solution")
    assignment = course.assignment(ASSIGNMENT)
    for number in range(students - 2):
        with_edits(course.solution_notebook(assignment),
                   folder / "submitted" / f"hangs{number}" / ASSIGNMENT / assignment.notebook,
                   sources={"simplified_self_attention": "def simplified_self_attention(inputs):\n    while True:\n"
                                                         "        pass\n"})


def start_class_run(folder: Path, out: Path, scratch: Path) -> subprocess.Popen:
    scratch.mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "course", "grade", str(folder), "--jobs", "2", "--out", str(out),
         "--allow-process-isolation", "--isolation", "process", "--device", "cpu"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(scratch)})


def wait_for_a_result(out: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not list(out.glob(f"*/{ASSIGNMENT}.json")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no result was written"
        time.sleep(0.2)


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line or environment mentions `text` (e.g. a run's private temporary folder)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                if text.encode() in Path(f"/proc/{entry}/{part}").read_bytes():
                    found.append(int(entry))
                    break
            except OSError:
                pass
    return found


def all_gone_within(seconds: float, text: str) -> bool:
    """Whether every process that mentions `text` has ended within `seconds`."""
    deadline = time.monotonic() + seconds
    while processes_mentioning(text):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_writes_what_was_graded_and_the_next_run_grades_the_rest(course, tmp_path):
    hanging_class(course, tmp_path / "class", 6)
    out = tmp_path / "out"
    run = start_class_run(tmp_path / "class", out, tmp_path / "scratch")
    wait_for_a_result(out, run)
    run.send_signal(signal.SIGINT)
    started = time.monotonic()
    stdout, stderr = run.communicate(timeout=60)
    assert time.monotonic() - started < 15
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "run the same command again" in stderr
    rows = read_csv(out / "grades.csv")
    assert len(rows) == 6
    assert "not graded" in {row["status"] for row in rows.values()}
    assert any(row["score"] == "16" for row in rows.values())
    assert list((tmp_path / "scratch").iterdir()) == []
    assert all_gone_within(5, str(tmp_path / "scratch"))
    graded = {student for student, row in rows.items() if row["status"] != "not graded"}
    for hanging in (tmp_path / "class" / "submitted").glob("hangs*"):  # fixed by their students meanwhile
        put(course, tmp_path / "class", hanging.name, kind="release")
    graded -= {path.name for path in (tmp_path / "class" / "submitted").glob("hangs*")}
    again = run_cli("grade", str(tmp_path / "class"), "--jobs", "2", "--out", str(out), "--allow-process-isolation",
                    "--isolation", "process", "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert f"{len(graded)} unchanged since the last run" in again.stdout
    assert "not graded" not in {row["status"] for row in read_csv(out / "grades.csv").values()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("isolation", ["bubblewrap", "process"])
def test_a_killed_course_leaves_no_process_behind(course, tmp_path, isolation):
    if isolation == "bubblewrap" and bubblewrap_problem():
        pytest.skip(f"bubblewrap cannot run here: {bubblewrap_problem()}")
    hanging_class(course, tmp_path / "class", 5)
    out = tmp_path / "out"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = subprocess.Popen(
        [sys.executable, "-m", "course", "grade", str(tmp_path / "class"), "--jobs", "2", "--out", str(out),
         "--allow-process-isolation", "--isolation", isolation, "--device", "cpu"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(scratch)})
    wait_for_a_result(out, run)
    assert len(processes_mentioning(str(scratch))) > 2  # the lanes, their templates, a hanging worker
    run.kill()
    run.wait()
    assert all_gone_within(5, str(scratch))


def test_a_change_to_the_checks_changes_the_fingerprint(tmp_path):
    """Each grader imports its INTERFACE from checks/<id>.py: a change there regrades, as one to the grader does."""
    from course.fingerprint import course_parts, differences

    root = tmp_path / "course"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info"))
    before = course_parts(load_course(root), "cpu", "bubblewrap")
    interface = root / "checks" / "ch03_attention.py"
    interface.write_text(interface.read_text(encoding="utf-8") + "\n# a changed line\n", encoding="utf-8")
    assert differences(before, course_parts(load_course(root), "cpu", "bubblewrap")) == ["checks"]
