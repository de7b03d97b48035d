"""A GradeReport as the payload of GitHub Classroom's autograding actions.

`classroom-resources/autograding-grading-reporter` reads, for every runner id it is given, the environment
variable `<ID IN CAPITALS>_RESULTS` holding base64 of

    {"version": 1, "status": "pass" | "fail" | "error", "max_score": N,
     "tests": [{"name", "status", "score", "message", "test_code", "filename", "line_no", "duration"}]}

prints each test, and adds up `tests[].score` (over runners with a max_score) into "Points X/Y". It reads
`status` to fail the job. The workflow passes the payload from a step output: `course check --github-output
"$GITHUB_OUTPUT"` appends `result=<base64>` to that file, and the reporter step gets
`CHECKS_RESULTS: ${{ steps.checks.outputs.result }}`.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from course.results import GradeReport

# Our statuses -> the reporter's: a test that ran and did not pass "fails"; one that ran out of time "errors".
TEST_STATUS = {"passed": "pass", "failed": "fail", "error": "fail", "timeout": "error", "todo": "fail"}
OUTPUT_NAME = "result"  # the step output the workflow hands to the reporter


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def autograding_payload(report: GradeReport) -> dict:
    tests = []
    for test in report.tests:
        tests.append({
            "name": test.name,
            "status": TEST_STATUS[test.status],
            "score": _number(test.score),
            "message": test.message or None,
            "test_code": f'check("{test.name}")' if report.kind == "check" else test.name,
            "filename": Path(report.notebook).name,
            "line_no": 0,
            "duration": round(test.duration, 3),
        })
    statuses = {test["status"] for test in tests}
    status = "pass" if statuses <= {"pass"} else "fail" if "fail" in statuses else "error"
    return {"version": 1, "status": status, "max_score": _number(report.max_score), "tests": tests}


def encode_payload(payload: dict) -> str:
    """Base64 of the payload's JSON, on one line (a step output is one `name=value` line)."""
    return base64.b64encode(json.dumps(payload).encode("utf-8")).decode("ascii")


def decode_payload(text: str) -> dict:
    return json.loads(base64.b64decode(text.strip()).decode("utf-8"))


def append_step_output(report: GradeReport, path: Path, name: str = OUTPUT_NAME) -> None:
    """Append `name=<base64 payload>` to a GitHub step output file ($GITHUB_OUTPUT)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{name}={encode_payload(autograding_payload(report))}\n")
