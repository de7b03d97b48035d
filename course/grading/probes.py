"""Probes: small functions that a grader sends to the worker to exercise the student's code.

A probe is written in the grader module, next to its test, and decorated with @probe. Its SOURCE is sent to the
worker and executed there in a namespace holding only `torch`, `nn`, `F` and `DEVICE`; its first argument is
the student's module, the other arguments are the (plain) values the test passes. A probe must be
self-contained: it cannot use the grader module's globals, and it never holds expected values.
"""

from __future__ import annotations

import inspect
import textwrap

from course.grading.contracts import Anything, Spec


def probe(function=None, *, returns: Spec | None = None):
    def decorate(function):
        source = textwrap.dedent(inspect.getsource(function))
        lines = source.splitlines()
        while lines and not lines[0].lstrip().startswith("def "):
            lines.pop(0)  # the decorator itself (possibly over several lines): the worker has no `probe`
        function.probe_source = "\n".join(lines) + "\n"
        function.probe_returns = returns or Anything()
        return function

    return decorate(function) if function is not None else decorate
