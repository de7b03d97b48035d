"""The types of the catalogue of derived submissions (see tests/submissions/catalog/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mutant:
    name: str
    assignment: str
    cell: str  # grade_id of the edited cell
    edits: tuple[tuple[str, str], ...]
    breaks: frozenset[str]
    says: str = ""  # a phrase that at least one failing test's message contains: the grader names the mistake
    not_says: str = ""  # a phrase that no failing test's message may contain (a hint that does not fit)
    sources: dict[str, str] = field(default_factory=dict)  # grade_id -> whole new cell source (instead of edits)


@dataclass(frozen=True)
class Variant:
    name: str
    assignment: str
    sources: dict[str, str] = field(default_factory=dict)  # grade_id -> whole new cell source


def mutant(name, assignment, cell, edits, breaks, says="", not_says=""):
    return Mutant(name, assignment, cell, tuple(edits), frozenset(breaks), says, not_says)


def rewrite(name, assignment, sources, breaks, says="", not_says=""):
    """A mutant that replaces whole cells (a different, wrong implementation rather than a one-line slip)."""
    return Mutant(name, assignment, "", (), frozenset(breaks), says, not_says, dict(sources))
