"""A GradeReport as Classroom 50's `result.json` (schema `classroom50/result/v1`).

Classroom 50, the successor of GitHub Classroom, reads one `result.json` per graded submission:

    {"schema": "classroom50/result/v1", "classroom", "assignment", "assignment_type", "owner", "submission",
     "commit", "release", "review", "datetime", "graded_at", "score", "max-score",
     "tests": [{"test-name", "passed", "score", "max-score", ...}]}

`score` and `max-score` are the sums over the tests; extra fields of a test are kept as they are, so each test
also carries its `message`. Its runner provides the identity of the submission in environment variables
(CLASSROOM, ASSIGNMENT, ASSIGNMENT_TYPE, OWNER or USERNAME, SUBMISSION_TAG, COMMIT_URL, RELEASE_URL,
REVIEW_URL); outside it (a plain GitHub workflow, or a laptop) they are filled in from GitHub's own variables
and the repository's last commit.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import subprocess
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from course.results import GradeReport

SCHEMA = "classroom50/result/v1"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _utc(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _commit(root: Path | None) -> tuple[str, float | None]:
    """(hash, committer time) of the repository's HEAD, or ("", None) outside a git repository."""
    if root is None:
        return "", None
    try:
        done = subprocess.run(["git", "-C", str(root), "show", "-s", "--format=%H %ct", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "", None
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) != 2 or not parts[1].isdigit():
        return "", None
    return parts[0], float(parts[1])


def classroom50_result(report: GradeReport, env: Mapping[str, str] | None = None, root: Path | None = None,
                       now: float | None = None) -> dict:
    """The result.json document; `env` defaults to os.environ, `root` is the repository (for its last commit)."""
    env = os.environ if env is None else env
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    sha, committed = _commit(root)
    sha = env.get("GITHUB_SHA") or sha
    server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
    repository = env.get("GITHUB_REPOSITORY", "")
    submission = env.get("SUBMISSION_TAG") or env.get("GITHUB_REF_NAME") or "local"
    commit = env.get("COMMIT_URL") or (f"{server}/{repository}/commit/{sha}" if repository and sha else sha or "local")
    # A release page exists for a tag only (Classroom 50's submission tag, or a workflow run on a pushed tag); on a
    # plain push to a branch, the link points at the commit's files instead of a tag that does not exist.
    tag = env.get("SUBMISSION_TAG") or (env.get("GITHUB_REF_NAME") if env.get("GITHUB_REF_TYPE") == "tag" else None)
    if env.get("RELEASE_URL"):
        release = env["RELEASE_URL"]
    elif repository and tag:
        release = f"{server}/{repository}/releases/tag/{urllib.parse.quote(tag, safe='')}"
    else:
        release = f"{server}/{repository}/tree/{sha}" if repository and sha else commit
    tests = [{"test-name": test.name, "passed": test.status == "passed", "score": _number(test.score),
              "max-score": _number(test.max_score), "message": test.message} for test in report.tests]
    return {
        "schema": SCHEMA,
        "classroom": env.get("CLASSROOM") or env.get("GITHUB_REPOSITORY_OWNER") or "local",
        "assignment": env.get("ASSIGNMENT") or report.assignment,
        "assignment_type": env.get("ASSIGNMENT_TYPE") or "individual",
        "owner": env.get("OWNER") or env.get("USERNAME") or env.get("GITHUB_ACTOR") or _user(),
        "submission": submission,
        "commit": commit,
        "release": release,
        "review": env.get("REVIEW_URL") or commit,
        "datetime": _utc(committed if committed is not None else now),  # the submission instant: the commit's
        "graded_at": _utc(now),
        "score": _number(sum(t["score"] for t in tests)),
        "max-score": _number(sum(t["max-score"] for t in tests)),
        "tests": tests,
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def write_classroom50(report: GradeReport, path: Path, root: Path | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(classroom50_result(report, root=root), indent=2) + "\n", encoding="utf-8")
