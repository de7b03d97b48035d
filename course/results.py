"""The one result data model that every reporter renders.

A GradeReport holds the results of `course grade` (kind "grade": the hidden grader's tests) or of
`course check` (kind "check": the public checks, one per grader test, named and weighted like it). The
reporters in course/reporters/ render either: the terminal, JSON, a Markdown job summary, the
classroom-resources autograding payload and Classroom 50's result.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["passed", "failed", "error", "timeout"]
STATUSES: tuple[str, ...] = ("passed", "failed", "error", "timeout")


@dataclass
class TestResult:
    name: str
    status: Status
    score: float
    max_score: float
    message: str = ""
    duration: float = 0.0
    description: str = ""  # what the test checks (the first line of its docstring)

    __test__ = False  # not a pytest test class


@dataclass
class GradeReport:
    assignment: str
    tests: list[TestResult]
    notebook: str = ""
    device: str = "cpu"
    duration: float = 0.0
    notes: list[str] = field(default_factory=list)
    sandbox: dict = field(default_factory=dict)  # {"isolation": "bubblewrap" | "process", "note": "..."}
    kind: Literal["grade", "check"] = "grade"  # the hidden grader's tests, or the public checks

    @property
    def score(self) -> float:
        return sum(t.score for t in self.tests)

    @property
    def max_score(self) -> float:
        return sum(t.max_score for t in self.tests)

    @property
    def passed(self) -> list[TestResult]:
        return [t for t in self.tests if t.status == "passed"]

    @property
    def first_failure(self) -> TestResult | None:
        """The first test, in the grader's order, that did not pass: what to fix next."""
        return next((t for t in self.tests if t.status != "passed"), None)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "assignment": self.assignment,
            "notebook": self.notebook,
            "device": self.device,
            "score": self.score,
            "max_score": self.max_score,
            "duration": round(self.duration, 3),
            "notes": list(self.notes),
            "sandbox": dict(self.sandbox),
            "tests": [
                {k: (round(v, 3) if k == "duration" else v) for k, v in asdict(t).items() if k != "description"}
                for t in self.tests
            ],
        }
