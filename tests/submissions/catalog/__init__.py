"""The catalogue of derived submissions: one module per assignment, named after its id.

MUTANTS: one realistic bug each, written as exact edits of one solution cell (or whole new cell sources), with
the grader tests it must fail. Every other test must still pass ("loses the points of the tests aimed at its
bug and keeps the others"). `says` is a phrase one failing test's message must contain (the grader names the
mistake, or points at the earlier part to fix first); `not_says` a phrase none may contain (a hint that would
be wrong for this bug).
VARIANTS: correct solutions written differently (einsum, scaled_dot_product_attention, unfold, the book's own
edge-case behaviour, ...), which must score full marks.

Each module defines MUTANTS and VARIANTS for its assignment; this package collects them all, so a new chapter
adds its own file and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from tests.submissions.catalog.base import Mutant, Variant, mutant, rewrite

MUTANTS: list[Mutant] = []
VARIANTS: list[Variant] = []
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"):
    _chapter = importlib.import_module(f"{__name__}.{_module}")
    MUTANTS += _chapter.MUTANTS
    VARIANTS += _chapter.VARIANTS

__all__ = ["MUTANTS", "VARIANTS", "Mutant", "Variant", "mutant", "rewrite"]
