"""Regrading a part of a class into the existing results (course/gradebook/regrade.py), without grading: the
class run is replaced by a stand-in that returns prepared reports, as course/batch.py's grade_batch would."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from course import batch
from course.gradebook import regrade as regrade_module
from course.gradebook.regrade import REGRADED, merge_test, regrade
from course.reporters.json_report import write_json
from course.results import GradeReport, TestResult

ASSIGNMENT = "ch03_attention"


def report(points: dict[str, float], note: str = "") -> GradeReport:
    return GradeReport(ASSIGNMENT, [TestResult(name, "passed" if score else "failed", score, 1.0,
                                               "" if score else f"{name} is off")
                                    for name, score in points.items()], notes=[note] if note else [])


OLD = {"test_a": 1.0, "test_b": 0.0, "test_c[1]": 0.0, "test_c[2]": 1.0}
NEW = {"test_a": 0.0, "test_b": 1.0, "test_c[1]": 1.0, "test_c[2]": 0.0}


def test_merging_takes_one_test_and_its_cases_and_says_so():
    merged = merge_test(report(OLD), report(NEW), "test_c", today=dt.date(2026, 11, 2))
    assert {t.name: t.score for t in merged.tests} == {"test_a": 1.0, "test_b": 0.0, "test_c[1]": 1.0,
                                                       "test_c[2]": 0.0}
    assert merged.notes == [f"test_c {REGRADED} 2026-11-02; the other tests keep their earlier results."]
    again = merge_test(merged, report(NEW), "test_c", today=dt.date(2026, 11, 3))
    assert len(again.notes) == 1
    assert "2026-11-03" in again.notes[0]
    added = merge_test(report({"test_a": 1.0}), report({"test_a": 0.0, "test_new": 1.0}), "test_new")
    assert [t.name for t in added.tests] == ["test_a", "test_new"]


@pytest.fixture
def class_run(tmp_path, monkeypatch):
    """Items ann, bob, cid and dan with earlier results (notebook "n1"), and a stand-in class run."""
    out = tmp_path / "out"
    items = [batch.BatchItem(student, ASSIGNMENT, tmp_path / student / f"{ASSIGNMENT}.ipynb")
             for student in ("ann", "bob", "cid", "dan")]
    for item in items:
        write_json(report(OLD), batch.result_path(out, item), extra={"student": item.student, "notebook_sha256": "n1"})
    plans: dict[str, tuple[GradeReport | None, str, bool]] = {}
    calls = []

    def fake_grade_batch(course, targets, *, jobs, out, force, device, isolation, on_result, dispatcher=None):
        calls.append(([t.student for t in targets], force))
        results = []
        for item in targets:
            new, notebook, course_problem = plans[item.student]
            if new is not None and not course_problem:
                write_json(new, batch.result_path(out, item), extra={"student": item.student,
                                                                     "notebook_sha256": notebook})
            results.append(batch.BatchResult(item, new, course_problem=course_problem))
        return results

    monkeypatch.setattr(regrade_module, "grade_batch", fake_grade_batch)
    return out, items, plans, calls


def saved(out: Path, item) -> dict:
    return json.loads(batch.result_path(out, item).read_text(encoding="utf-8"))


def test_one_test_for_the_class(class_run):
    out, items, plans, calls = class_run
    plans.update(ann=(report(NEW), "n1", False),  # same notebook: only test_b changes
                 bob=(report(NEW), "n2", False),  # resubmitted since: the whole new result
                 cid=(report(NEW), "n1", True),  # the course could not grade it: the earlier result stays
                 dan=(None, "n1", False))  # not graded (Ctrl-C): the earlier result stays
    before = {item.student: batch.result_path(out, item).read_bytes() for item in items}
    results, interrupted = regrade(None, items, items, test="test_b", out=out, jobs=1, device=None, isolation=None)
    assert calls == [(["ann", "bob", "cid", "dan"], True)]
    assert interrupted
    scores = {r.item.student: {t.name: t.score for t in r.report.tests} for r in results}
    assert scores["ann"] == {**OLD, "test_b": 1.0}
    assert scores["bob"] == NEW
    assert scores["cid"] == scores["dan"] == OLD
    assert {t["name"]: t["score"] for t in saved(out, items[0])["tests"]} == {**OLD, "test_b": 1.0}
    assert saved(out, items[0])["notebook_sha256"] == "n1"
    assert REGRADED in saved(out, items[0])["notes"][0]
    assert saved(out, items[1])["notebook_sha256"] == "n2"
    assert not saved(out, items[1])["notes"]
    for student in ("cid", "dan"):
        assert batch.result_path(out, items[["ann", "bob", "cid", "dan"].index(student)]).read_bytes() == \
            before[student]
    assert not [path for path in out.iterdir() if path.name.startswith(".regrade-")]  # the scratch folder is gone


def test_one_student_and_the_others_as_they_are(class_run):
    out, items, plans, calls = class_run
    plans["bob"] = (report(NEW), "n1", False)
    batch.result_path(out, items[3]).unlink()  # dan has no result yet: he stays not graded
    results, interrupted = regrade(None, items, [items[1]], test=None, out=out, jobs=1, device=None, isolation=None)
    assert calls == [(["bob"], True)]
    assert not interrupted
    assert [(r.item.student, r.report is not None, r.skipped) for r in results] == [
        ("ann", True, True), ("bob", True, False), ("cid", True, True), ("dan", False, False)]
    assert results[3].status == batch.NOT_GRADED
    assert {t["name"]: t["score"] for t in saved(out, items[1])["tests"]} == NEW


def test_a_student_or_a_test_the_class_does_not_have_is_refused(course, tmp_path):
    from course.errors import UsageError
    from course.gradebook.regrade import choose

    items = [batch.BatchItem("ann", ASSIGNMENT, tmp_path / "ann.ipynb")]
    with pytest.raises(UsageError, match=r"--student 'zed': no such submission in the class folder \(its students "
                                         r"include: ann\)"):
        choose(course, items, "zed", None)
    with pytest.raises(UsageError, match=r"--test 'test_nothing': not a test of ch03_attention \(its tests: "
                                         r"test_simplified_self_attention, "):
        choose(course, items, None, "test_nothing")
    assert choose(course, items, "ann", "test_mha_output") == items
