"""Classic mistakes, named when a student's result matches one: a mistake is a value, not a closure.

A grader lists the mistakes students make in a table of `Mistake` values: what the student did, how to fix it,
and `change`, the options with which the grader's own function recomputes the result the mistake gives:

    CLASSIC_MISTAKES = [
        Mistake("unscaled scores", "divide the scores by the square root of the key dimension.", scale=None),
        Mistake("a softmax over the wrong dimension (dim=-2)", "normalise each row: dim=-1.", softmax_dim=-2),
    ]

    expect_close(got, expected, what="output", hint=HINT, mistakes=CLASSIC_MISTAKES,
                 mistaken=lambda **change: attention_with(model, x, **change))

When the comparison fails, each mistake's result is computed in turn (`mistaken(**mistake.change)`); the first
that the student's result equals (within 1e-4, NaN where NaN) names the cause: "your output is exactly what
unscaled scores gives: divide ...". A mistake that cannot even be computed for this input (an error) is skipped.
No mistake matches: the test's own hint is shown. The expected values are never shown.

`name_mistake` is the same search for results that are not one float tensor (token ids, a run's losses): pass
`matches`, which says whether the student's result equals a mistake's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

# Mistaken results are recomputed by the grader; these are the errors that mean "this mistake cannot run here".
CANNOT_COMPUTE = (RuntimeError, IndexError, ValueError, KeyError, TypeError, ZeroDivisionError)


@dataclass(frozen=True, init=False)
class Mistake:
    """What the student did, how to fix it, and the options that make the grader's function compute its result."""

    did: str  # "the unbiased variance": completes "your output is exactly what ... gives"
    fix: str  # "pass unbiased=False to var()."
    change: Mapping[str, Any] = field(default_factory=dict)
    gives: str = "gives"  # "give" after a plural: "sets of words give"

    def __init__(self, did: str, fix: str, *, gives: str = "gives", **change):
        object.__setattr__(self, "did", did)
        object.__setattr__(self, "fix", fix)
        object.__setattr__(self, "gives", gives)
        object.__setattr__(self, "change", dict(change))

    def says(self, yours: str = "your output is") -> str:
        """The hint: "your output is exactly what the unbiased variance gives: pass unbiased=False to var()."."""
        return f"{yours} exactly what {self.did} {self.gives}: {self.fix}"


def same_values(got, mistaken) -> bool:
    """The student's float tensor equals a mistake's result (within 1e-4; NaN where it has NaN)."""
    return (isinstance(got, torch.Tensor) and isinstance(mistaken, torch.Tensor) and got.is_floating_point()
            and got.shape == mistaken.shape
            and torch.allclose(got.double(), mistaken.double(), atol=1e-4, rtol=1e-4, equal_nan=True))


def name_mistake(got, mistakes: Iterable[Mistake], mistaken: Callable[..., Any], *,
                 matches: Callable[[Any, Any], bool] = same_values, yours: str = "your output is") -> str | None:
    """The hint of the first mistake whose result (`mistaken(**mistake.change)`) the student's `got` matches."""
    found = which_mistake(got, mistakes, mistaken, matches=matches)
    return found.says(yours) if found is not None else None


def which_mistake(got, mistakes: Iterable[Mistake], mistaken: Callable[..., Any], *,
                  matches: Callable[[Any, Any], bool] = same_values) -> Mistake | None:
    """The first mistake the student's `got` matches (for graders that word the hint themselves)."""
    for mistake in mistakes:
        try:
            with torch.no_grad():
                result = mistaken(**mistake.change)
        except CANNOT_COMPUTE:
            continue  # this mistake cannot even run on this input
        if matches(got, result):
            return mistake
    return None
