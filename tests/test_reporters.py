"""One result model, rendered several ways: the progress table, the Markdown job summary, the payload of GitHub
Classroom's autograding reporter and Classroom 50's result.json, on a report made here (no worker)."""

from __future__ import annotations

import json
import re

import pytest

from course.reporters.autograding import append_step_output, autograding_payload, decode_payload, encode_payload
from course.reporters.classroom50 import classroom50_result
from course.reporters.markdown import render_markdown
from course.reporters.terminal import render_progress
from course.results import GradeReport, TestResult

# What autograding-grading-reporter reads of a test, and of the payload (classroom-resources, FACTS.md).
PAYLOAD_KEYS = {"version", "status", "max_score", "tests"}
PAYLOAD_TEST_KEYS = {"name", "status", "score", "message", "test_code", "filename", "line_no", "duration"}
# Classroom 50's result.json contract (schema classroom50/result/v1).
RESULT_KEYS = {"schema", "classroom", "assignment", "assignment_type", "owner", "submission", "commit", "release",
               "review", "datetime", "graded_at", "score", "max-score", "tests"}
RESULT_TEST_KEYS = {"test-name", "passed", "score", "max-score"}
UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def report(*statuses: str) -> GradeReport:
    tests = []
    for index, status in enumerate(statuses):
        points = float(index + 1)
        message = "" if status == "passed" else f"check {index} | <b>went</b> `wrong`.\nHint: look at `line {index}`."
        tests.append(TestResult(name=f"test_{index}", status=status, score=points if status == "passed" else 0.0,
                                max_score=points, message=message, duration=0.5, description=f"what {index} checks"))
    return GradeReport(assignment="ch09_demo", tests=tests, notebook="/x/ch09_demo.ipynb", kind="check", duration=1.0)


# -- the autograding payload ----------------------------------------------------------------------------------

def test_payload_has_the_reporters_keys():
    payload = autograding_payload(report("passed", "failed"))
    assert set(payload) == PAYLOAD_KEYS
    assert all(set(test) == PAYLOAD_TEST_KEYS for test in payload["tests"])


@pytest.mark.parametrize(("statuses", "expected"), [
    (("passed", "passed"), "pass"), (("passed", "failed"), "fail"), (("error", "passed"), "fail"),
    (("timeout", "passed"), "error"), (("timeout", "failed"), "fail"),
])
def test_payload_status(statuses, expected):
    assert autograding_payload(report(*statuses))["status"] == expected


def test_payload_points_add_up_as_the_reporter_adds_them():
    payload = autograding_payload(report("passed", "failed", "passed"))
    assert (sum(t["score"] for t in payload["tests"]), payload["max_score"]) == (4, 6)


def test_payload_test_statuses():
    payload = autograding_payload(report("passed", "failed", "error", "timeout"))
    assert [t["status"] for t in payload["tests"]] == ["pass", "fail", "fail", "error"]


def test_payload_survives_base64_on_one_line():
    encoded = encode_payload(autograding_payload(report("passed", "failed")))
    assert ("\n" not in encoded, decode_payload(encoded)) == (True, autograding_payload(report("passed", "failed")))


def test_step_output_is_one_result_line(tmp_path):
    output = tmp_path / "github_output"
    output.write_text("earlier=1\n", encoding="utf-8")
    append_step_output(report("passed"), output)
    lines = output.read_text(encoding="utf-8").splitlines()
    assert (lines[0], lines[1].split("=", 1)[0], len(lines)) == ("earlier=1", "result", 2)


# -- Classroom 50's result.json ----------------------------------------------------------------------------------

GITHUB_ENV = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "course-org/ch09-alice",
              "GITHUB_SHA": "abc123", "GITHUB_REF_NAME": "main", "GITHUB_REPOSITORY_OWNER": "course-org",
              "GITHUB_ACTOR": "alice"}


def test_result_json_has_the_contracts_keys():
    result = classroom50_result(report("passed", "failed"), env=GITHUB_ENV, now=0)
    assert set(result) == RESULT_KEYS
    assert all(RESULT_TEST_KEYS <= set(test) for test in result["tests"])


def test_result_json_schema_and_totals():
    result = classroom50_result(report("passed", "failed", "passed"), env=GITHUB_ENV, now=0)
    assert (result["schema"], result["score"], result["max-score"]) == ("classroom50/result/v1", 4, 6)
    assert (type(result["score"]), type(result["max-score"])) == (int, int)


def test_result_json_tests():
    result = classroom50_result(report("passed", "failed"), env=GITHUB_ENV, now=0)
    assert [(t["test-name"], t["passed"], t["score"], t["max-score"]) for t in result["tests"]] == \
        [("test_0", True, 1, 1), ("test_1", False, 0, 2)]


def test_result_json_identity_from_github_outside_classroom50():
    result = classroom50_result(report("passed"), env=GITHUB_ENV, now=0)
    assert (result["classroom"], result["assignment"], result["owner"], result["submission"], result["commit"]) == \
        ("course-org", "ch09_demo", "alice", "main", "https://github.com/course-org/ch09-alice/commit/abc123")


def test_result_json_release_link_exists_on_a_plain_push():
    """On a push to a branch no release tag exists: the link shows the commit's files; on a pushed tag, its release."""
    pushed = classroom50_result(report("passed"), env={**GITHUB_ENV, "GITHUB_REF_TYPE": "branch"}, now=0)
    assert pushed["release"] == "https://github.com/course-org/ch09-alice/tree/abc123"
    tagged = classroom50_result(report("passed"), env={**GITHUB_ENV, "GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": "v1"},
                                now=0)
    assert tagged["release"] == "https://github.com/course-org/ch09-alice/releases/tag/v1"


def test_untouched_stubs_are_to_do_not_errors_in_every_report():
    """A first push with nothing written shows "to do" rows, not red errors."""
    untouched = report("todo", "todo")
    summary, progress = render_markdown(untouched), render_progress(untouched)
    assert ("⬜ to do" in summary, "❌" in summary) == (True, False)
    assert ("TO DO" in progress, "ERROR" in progress) == (True, False)


def test_result_json_identity_from_classroom50s_runner():
    env = {**GITHUB_ENV, "CLASSROOM": "llm-2027", "ASSIGNMENT": "attention", "OWNER": "bob", "ASSIGNMENT_TYPE": "group",
           "SUBMISSION_TAG": "submit/1", "COMMIT_URL": "c", "RELEASE_URL": "r", "REVIEW_URL": "v"}
    result = classroom50_result(report("passed"), env=env, now=0)
    assert [result[key] for key in ("classroom", "assignment", "owner", "assignment_type", "submission", "commit",
                                    "release", "review")] == ["llm-2027", "attention", "bob", "group", "submit/1",
                                                              "c", "r", "v"]


def test_result_json_times_are_utc():
    result = classroom50_result(report("passed"), env=GITHUB_ENV, now=0)
    assert (UTC.fullmatch(result["datetime"]) is not None, result["graded_at"]) == (True, "1970-01-01T00:00:00Z")


def test_result_json_is_json():
    result = classroom50_result(report("passed", "error"), env=GITHUB_ENV, now=0)
    assert json.loads(json.dumps(result)) == result


# -- the Markdown job summary and the progress table -------------------------------------------------------------

def test_summary_has_a_row_per_check_and_the_total():
    text = render_markdown(report("passed", "failed", "error"))
    assert len(re.findall(r"^\| (✅|❌) ", text, re.M)) == 3
    assert "## Public checks: ch09\\_demo: 1/6 points" in text


def test_summary_shows_the_first_failure_with_its_hint():
    text = render_markdown(report("passed", "failed", "error"))
    assert "### Next to fix: `test_1`" in text
    assert "> **Hint:** look at `line 1`." in text


def test_summary_escapes_the_students_text():
    text = render_markdown(report("failed"))
    assert "<b>" not in text
    assert "check 0 \\| &lt;b&gt;went&lt;/b&gt; `wrong`." in text


def test_summary_when_everything_passes():
    text = render_markdown(report("passed", "passed"))
    assert ("2 of 2 checks pass, all done." in text, "Next to fix" in text) == (True, False)


def test_progress_table_says_what_is_left_and_what_to_fix_first():
    text = render_progress(report("passed", "failed", "error"), width=100)
    assert "1 of 3 checks pass (1 of 6 points); 2 left." in text
    assert "Next to fix: test_1: what 1 checks." in text
    assert "    Hint: look at `line 1`." in text


def test_a_tests_description_is_its_docstrings_first_paragraph_whole():
    """A first sentence that runs over two lines was cut at the line's end ("... tokens seen, and")."""
    from course.results import describe_test

    doc = """train_model_dpo_simple: gives the reference's losses, rewards and tokens seen, and
    leaves the reference model as it was.

    Details that reports leave out."""
    assert describe_test(doc) == ("train_model_dpo_simple: gives the reference's losses, rewards and tokens seen, "
                                  "and leaves the reference model as it was.")
    assert describe_test(None) == ""
    assert describe_test("   ") == ""


@pytest.mark.parametrize("message", ["```<img src=x onerror=alert(1)>`", "a\\`<img src=x>` b", "``<script>x</script>``",
                                     "`a``<img src=x>`", "ok `x.sum()` then <b>bold</b> `y`"])
def test_no_markup_from_a_message_survives_a_commonmark_reader(message):
    """Code spans stay code spans, or the whole text is escaped: no student text becomes an HTML tag."""
    markdown_it = pytest.importorskip("markdown_it")
    from course.reporters.markdown import inline

    html = markdown_it.MarkdownIt("commonmark").render(inline(message))
    assert [tag for tag in ("<img", "<script", "<b>") if tag in html] == [], html
