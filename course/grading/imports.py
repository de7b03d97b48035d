"""Importing heavy modules from a grader without pytest's assertion rewriting."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def plain_imports():
    """Imports without pytest's assertion rewriting, for a grader's module-level imports.

    A grading run's pytest collects every *.py file (graders/pytest.ini), so it would rewrite the asserts of
    every module imported for the first time while it runs: for tiktoken's `regex`, pandas, matplotlib and the
    reference modules that import them, seconds of every `course grade`. Graders use no bare assert.

        with plain_imports():
            from reference import pretraining as ref
    """
    hooks = [hook for hook in sys.meta_path if type(hook).__name__ == "AssertionRewritingHook"]
    for hook in hooks:
        sys.meta_path.remove(hook)
    try:
        yield
    finally:
        sys.meta_path[:0] = hooks
