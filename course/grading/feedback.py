"""The messages a student reads when their code raised, crashed, is missing or returned something unusable.

Everything here is formatted from the fields of an ErrorRecord (kind, type, message, cell, line, function,
code, name), never by parsing a sentence: a student's exception text is quoted, it never decides where the
error is reported or who is blamed. What the grader knows besides the record (the cells that failed while the
notebook was loaded, the names that only a demo cell defines) is passed in by the plugin.
"""

from __future__ import annotations

from course.worker.runtime.records import ErrorKind, ErrorRecord


def where(record: ErrorRecord) -> str:
    """"cell 'multi_head_attention', line 12, in forward: `x = ...`", or "" when the record has no location."""
    if record.cell is None:
        return ""
    text = f"cell '{record.cell}'"
    if record.line is not None:
        text += f", line {record.line}"
    if record.function:
        text += f", in {record.function}"
    if record.code:
        text += f": `{record.code}`"
    return text


def exception_text(record: ErrorRecord) -> str:
    """'ValueError: too many values' (or the type alone), as Python prints the last line of a traceback, on one
    line and without a final period (messages of torch's errors span lines and end with one)."""
    message = " ".join(record.message.split()).rstrip(". ")
    if record.type == "SystemExit":
        return f"your code called {message or 'sys.exit()'}"
    if not record.type:
        return message
    return f"{record.type}: {message}" if message else record.type


UNUSABLE_ADVICE = ("This happened in the grader's code that calls yours: check what your code returns (a missing "
                   "`return` gives None; a generator is not a list) and that it does not replace library functions.")


def student_error_message(record: ErrorRecord, *, hint: str | None = None,
                          demo_definitions: dict[str, str] | None = None,
                          cell_errors: list[ErrorRecord] | None = None) -> str:
    """The message of a test that ended with an error caused by the submission.

    hint: what a grader's diagnosis recognised in this error (see course/grading/diagnosis.py), shown last.
    demo_definitions: name -> the demo cell that defines it (demo cells are not run when grading).
    cell_errors: the cells that failed while the notebook was loaded, noted after a missing name or a raise.
    """
    demo_definitions = demo_definitions or {}
    location = where(record)
    in_cell = f" ({location})" if location else ""
    kind = record.kind
    if kind is ErrorKind.NOTEBOOK:
        message = f"Your notebook could not be graded: {record.message}"
    elif kind is ErrorKind.MISSING:
        message = (f"`{record.name}` is not defined in your notebook. Did you rename it, or delete the cell that "
                   "defines it?")
    elif kind is ErrorKind.NOT_IMPLEMENTED:
        message = (f"Not implemented yet: your code still raises NotImplementedError"
                   f"{in_cell or ' (in a function the grader called)'}. "
                   "Replace `raise NotImplementedError()` with your implementation.")
    elif kind is ErrorKind.RAISED:
        message = f"Your code raised {exception_text(record)}{in_cell}."
        if record.type == "SystemExit":
            message = f"Your code ended the process: {exception_text(record)}{in_cell}."
    elif kind is ErrorKind.UNUSABLE:
        message = f"The grader could not use your code: {exception_text(record)}."
        if hint is None:
            message += " " + UNUSABLE_ADVICE
    elif kind is ErrorKind.ENVIRONMENT:
        message = (f"The grader's check could not start in the process running your code "
                   f"({exception_text(record)}): does your notebook replace a built-in or library function?")
    elif kind is ErrorKind.BAD_OUTPUT:
        message = f"Your code's results could not be used: {record.message}."
    else:  # CRASH, and anything the client reports in plain words
        message = f"Your code failed: {record.message}."
    if record.name and record.name in demo_definitions and kind in (ErrorKind.MISSING, ErrorKind.RAISED):
        message += (f" `{record.name}` is defined only in {demo_definitions[record.name]}, a demo cell: demo "
                    "cells are not run when grading, so define it inside your solution cell.")
    name_missing = kind is ErrorKind.MISSING or (kind is ErrorKind.RAISED and record.type == "NameError")
    if cell_errors and name_missing:  # most likely the failed cell would have defined it: the cause comes first
        message = f"{loading_failure(cell_errors)} {message}"
    elif cell_errors and kind in (ErrorKind.RAISED, ErrorKind.UNUSABLE):
        message += f" Note: {loading_failure(cell_errors)[0].lower()}{loading_failure(cell_errors)[1:]}"
    return message + (f" Hint: {hint}" if hint else "")


def loading_failure(cell_errors: list[ErrorRecord]) -> str:
    """What failed while the notebook was loaded, to be fixed first: the first failed cell, and how many more."""
    first = cell_errors[0]
    text = (f"While loading your notebook, cell '{first.cell}' failed: {exception_text(first)} ({where(first)}). "
            "Fix that cell first: what it defines is missing.")
    if len(cell_errors) > 1:
        text += f" ({len(cell_errors) - 1} more cell(s) failed too.)"
    return text
