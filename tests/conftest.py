"""Shared fixtures of the repository's own tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from course.config import load_course
from course.grading.plugin import MARKERS
from course.grading.runner import grade_notebook

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Some tests import graders, whose tests carry the grading plugin's markers."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)


@pytest.fixture(scope="session")
def course():
    return load_course(REPO)


@pytest.fixture(scope="session")
def grade(course):
    """grade(notebook_path, assignment_id) -> {test name: TestResult}, graded in this process (a worker per call)."""

    def run(notebook: Path, assignment_id: str):
        report = grade_notebook(course, course.assignment(assignment_id), notebook, device="cpu")
        return report

    return run


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The `course` command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "course", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
