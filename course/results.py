"""The one result data model that every reporter renders.

A GradeReport holds the results of `course grade` (kind "grade": the hidden grader's tests) or of
`course check` (kind "check": the public checks, one per grader test, named and weighted like it). The
reporters in course/reporters/ render either: the terminal, JSON, a Markdown job summary, the
classroom-resources autograding payload and Classroom 50's result.json.

Every string is made safe when a result is built (course/safe_text.py): capped, control characters escaped,
lone surrogates replaced. A submission controls many of them (messages, names, grade ids, file names), and
every reporter (the terminal table, JSON, ...) renders only from this model, so none of them has to worry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Literal

from course.safe_text import safe_text

MAX_NOTES = 50


class Status(StrEnum):
    """How a test ended. A `str`: it equals, hashes, prints and serialises (JSON, CSV, nbgrader, GitHub) as its
    value, so `status == "passed"` and `{"passed": ...}[status]` work as they always did."""

    PASSED = "passed"  # the test (or check) ran to its end
    FAILED = "failed"  # a comparison failed: the student's result is wrong
    ERROR = "error"  # the student's code raised, crashed, is missing or returned something unusable; or no result
    TIMEOUT = "timeout"  # the student's code ran past its time limit (the test's, or the whole submission's)
    TODO = "todo"  # a public check found the stub not written yet (NotImplementedError): not started, not a bug


@dataclass
class TestResult:
    name: str
    status: Status  # a plain string is turned into its Status (an unknown one raises ValueError)
    score: float
    max_score: float
    message: str = ""
    duration: float = 0.0
    description: str = ""  # what the test checks (the first line of its docstring)

    __test__ = False  # not a pytest test class

    def __post_init__(self):
        self.status = Status(self.status)
        self.name = safe_text(self.name, 200, single_line=True)
        self.message = safe_text(self.message, 4000)
        self.description = safe_text(self.description, 500, single_line=True)

    @classmethod
    def scored(cls, name: str, status: Status | str, points: float, message: str = "", duration: float = 0.0,
               description: str = "") -> TestResult:
        """A test worth `points`: all of them if it passed, none otherwise."""
        status = Status(status)
        return cls(name=name, status=status, score=points if status == Status.PASSED else 0.0, max_score=points,
                   message=message, duration=max(duration, 0.0), description=description)


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

    def __post_init__(self):
        self.assignment = safe_text(self.assignment, 200, single_line=True)
        self.notebook = safe_text(self.notebook, 1000, single_line=True)
        notes = [safe_text(note, 2000) for note in self.notes[:MAX_NOTES]]
        if len(self.notes) > MAX_NOTES:
            notes.append(f"({len(self.notes) - MAX_NOTES} more notes left out)")
        self.notes = notes

    @property
    def score(self) -> float:
        return sum(t.score for t in self.tests)

    @property
    def max_score(self) -> float:
        return sum(t.max_score for t in self.tests)

    @property
    def passed(self) -> list[TestResult]:
        return [t for t in self.tests if t.status == Status.PASSED]

    @property
    def first_failure(self) -> TestResult | None:
        """The first test, in the grader's order, that did not pass: what to fix next."""
        return next((t for t in self.tests if t.status != Status.PASSED), None)

    def to_dict(self, descriptions: bool = False) -> dict:
        """The JSON of `course grade --json`; with `descriptions`, also what each test checks (for from_dict)."""
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
                {k: (round(v, 3) if k == "duration" else str(v) if k == "status" else v) for k, v in asdict(t).items()
                 if k != "description" or descriptions}
                for t in self.tests
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> GradeReport:
        """The report a to_dict() wrote (a result file of an earlier run, or a report from a grading process)."""
        fields = ("name", "status", "score", "max_score", "message", "duration", "description")
        tests = [TestResult(**{k: t[k] for k in fields if k in t}) for t in data["tests"]]
        return cls(assignment=data["assignment"], tests=tests, notebook=data.get("notebook", ""),
                   device=data.get("device", "cpu"), duration=data.get("duration", 0.0),
                   notes=list(data.get("notes", [])), sandbox=dict(data.get("sandbox", {})),
                   kind=data.get("kind", "grade"))


def describe_test(docstring: str | None) -> str:
    """What a grader test checks, for reports: the first paragraph of its docstring on one line (a sentence that
    runs over two lines is kept whole), "" without a docstring."""
    paragraph = (docstring or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())
