"""A chapter's student interface: Interface, Function and Class live in the public checks package (checks/__init__.py).

Each chapter's `INTERFACE` is declared once, in `checks/<id>.py`, where the public checks read the signatures;
the grader imports it from there (`from checks.ch04_gpt import INTERFACE`), so the two never drift. These names
are re-exported here for the grading side.
"""

from checks import Class, Function, Interface

__all__ = ["Class", "Function", "Interface"]
