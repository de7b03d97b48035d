"""Naming the likely cause of an error, from its record: hints that are right because they are conditional.

A grader wraps the calls whose errors it can explain:

    with explain_errors(state_dict_mismatch, mask_not_cut):
        got = submission.run(run_module, ...)

When the student's code ends with an error (a StudentCodeError), each diagnosis is asked in turn, with the
error's record; the first that recognises it gives the hint shown after the message. A diagnosis that does not
recognise the error returns None, so a hint is never given for an error it does not fit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from course.worker.client import StudentCodeError
from course.worker.runtime.records import ErrorKind, ErrorRecord

Diagnosis = Callable[[ErrorRecord], "str | None"]


@contextlib.contextmanager
def explain_errors(*diagnoses: Diagnosis):
    try:
        yield
    except StudentCodeError as exc:
        if exc.hint is None:
            exc.hint = next((hint for diagnose in diagnoses if (hint := diagnose(exc.record))), None)
        raise


def state_dict_mismatch(record: ErrorRecord) -> str | None:
    """The reference's weights did not fit the student's module: renamed layers, or a mask kept as a plain
    attribute instead of a buffer."""
    if record.kind is not ErrorKind.UNUSABLE or "state_dict" not in record.message:
        return None
    if "Unexpected key(s)" in record.message and "mask" in record.message:
        return ("the grader loads weights and buffers into your module, and your module has no `mask` buffer: "
                "create the mask with self.register_buffer('mask', ...) as in the stub, not as a plain attribute "
                "(a buffer moves with the module to the device and is part of its state_dict).")
    return ("the grader loads the reference's weights into your module by name: keep the attribute names and "
            "layer shapes of the stub's __init__ (e.g. W_query, W_key, W_value, out_proj).")


def shape_mismatch(hint: str) -> Diagnosis:
    """`hint` for an error about tensor sizes raised in the student's own code (e.g. a mask not cut to the
    number of tokens)."""

    def diagnose(record: ErrorRecord) -> str | None:
        sizes = "must match the size" in record.message or "shape" in record.message
        return hint if record.kind is ErrorKind.RAISED and sizes else None

    return diagnose


def error_mentions(*phrases: str, hint: str) -> Diagnosis:
    """`hint` for an error raised in the student's code whose text ("Type: message") contains one of `phrases`."""

    def diagnose(record: ErrorRecord) -> str | None:
        raised = record.kind is ErrorKind.RAISED
        return hint if raised and any(p in f"{record.type}: {record.message}" for p in phrases) else None

    return diagnose


def output_shape(shape: tuple[int, ...]) -> Diagnosis:
    """For a probe that computes with the student's output (e.g. (output * upstream).sum() for the gradients)
    and fails on an output of the wrong shape: the shape it must have."""

    def diagnose(record: ErrorRecord) -> str | None:
        if record.kind is ErrorKind.UNUSABLE and "must match the size" in record.message:
            return f"the output must have the shape {shape}, one vector per input position."
        return None

    return diagnose
