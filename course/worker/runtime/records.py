"""Error records: what went wrong in the worker, as fields, never as a sentence to be parsed again.

This file is imported by both sides. The worker (bootstrap.py, which cannot import the `course` package, loads
it from its own folder) turns an exception into a plain dict with `exception_record`; the trusted side checks
that dict with `ErrorRecord.from_reply` before using any field, and formats the message a student sees from the
fields alone (course/grading/feedback.py). A student's exception text is one field among others: it can never
move the reported cell or line, and never change who is blamed.

Who is blamed is decided by the kind, and the worker can only ever report kinds that blame the student
(`WORKER_KINDS`): once student code has run in the worker, anything that goes wrong there may be its doing. A
fault of the course (a broken probe, a grader bug) is only ever found on the trusted side, where student code
never runs.
"""

from __future__ import annotations

import dataclasses
import enum
import traceback

CELL_PREFIX = "<cell "  # file name of a student cell's code: "<cell LABEL>"
MAX_FIELD = 2000  # characters kept of any text field (a student's exception message may be huge)


class ErrorKind(enum.StrEnum):
    """Every way a test can end without a result. The values travel on the channel and into results."""

    MISSING = "missing"  # the notebook does not define a name the grader needs
    NOT_IMPLEMENTED = "not_implemented"  # the stub still raises NotImplementedError
    RAISED = "raised"  # student code raised (one of its frames is on the traceback)
    UNUSABLE = "unusable"  # the grader's probe failed on what student code returned or changed
    ENVIRONMENT = "environment"  # a probe could not even start: student code broke the worker's tools
    BAD_OUTPUT = "bad_output"  # a result that cannot be sent back or does not have the declared structure
    CRASH = "crash"  # the worker process died
    TIMEOUT = "timeout"  # student code ran past its time limit
    NOTEBOOK = "notebook"  # the submission could not be read
    GRADER = "grader"  # a bug of the course (found on the trusted side only)


# The kinds a worker reply may carry; any other kind in a reply is treated as a garbled reply.
WORKER_KINDS = frozenset({ErrorKind.MISSING, ErrorKind.NOT_IMPLEMENTED, ErrorKind.RAISED, ErrorKind.UNUSABLE,
                          ErrorKind.ENVIRONMENT, ErrorKind.BAD_OUTPUT})


def exception_record(exc, memory_mb=None) -> dict:
    """The record of an exception raised in the worker (runs there: standard library only, defensive).

    Student exceptions may be hostile: a `__str__` that raises or returns a non-string gives the type name only.
    The location is the last frame of student code on the traceback (cell label, line, function, source line);
    with such a frame the kind is RAISED. Without one, the exception came from the grader's probe code after
    student code returned (e.g. iterating over a None it returned): UNUSABLE. A NotImplementedError is the stub.
    """
    record = {"kind": ErrorKind.UNUSABLE.value, "type": _safe_type_name(exc), "message": _safe_message(exc),
              "cell": None, "line": None, "function": None, "code": None, "name": None}
    if isinstance(exc, (NameError, AttributeError)):
        name = getattr(exc, "name", None)
        record["name"] = name[:200] if type(name) is str else None
    if isinstance(exc, SyntaxError):
        filename = exc.filename if type(exc.filename) is str else ""
        if filename.startswith(CELL_PREFIX):
            record.update(kind=ErrorKind.RAISED.value, cell=filename[len(CELL_PREFIX):-1][:200],
                          line=_int_or_none(exc.lineno), code=_text(exc.text).strip() or None)
        record["message"] = _text(exc.msg)
        return record
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(CELL_PREFIX)]
    except Exception:  # noqa: BLE001 - a traceback doctored by student code: no location
        frames = []
    if frames:
        frame = frames[-1]
        record.update(kind=ErrorKind.RAISED.value, cell=frame.filename[len(CELL_PREFIX):-1][:200],
                      line=frame.lineno, function=None if frame.name == "<module>" else frame.name[:200],
                      code=(frame.line or "").strip()[:MAX_FIELD] or None)
    if isinstance(exc, NotImplementedError):
        record["kind"] = ErrorKind.NOT_IMPLEMENTED.value
    if memory_mb and (isinstance(exc, MemoryError) or "can't allocate memory" in record["message"]):
        record["message"] += f" (the process running your code may use at most {memory_mb} MB)"
    return record


def _safe_type_name(exc) -> str:
    try:
        name = type(exc).__name__
        return name[:200] if type(name) is str else "an exception"
    except BaseException:  # noqa: BLE001 - a hostile exception type must not break the worker
        return "an exception"


def _safe_message(exc) -> str:
    if isinstance(exc, SystemExit):
        try:
            return f"sys.exit({exc.code!r})"[:MAX_FIELD]
        except BaseException:  # noqa: BLE001
            return "sys.exit()"
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001
        return ""
    return message[:MAX_FIELD] if type(message) is str else ""


def _text(value) -> str:
    return value[:MAX_FIELD] if type(value) is str else ""


def _int_or_none(value):
    return value if type(value) is int else None


# -- the trusted side ---------------------------------------------------------------------------------------------

# Field -> the most characters kept (the worker caps them too, but a reply may be forged).
_TEXT_FIELDS = {"type": 200, "message": MAX_FIELD, "cell": 200, "function": 200, "code": MAX_FIELD, "name": 200}


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
    """A checked error record. Only the trusted side builds these, from a reply (`from_reply`) or directly."""

    kind: ErrorKind
    message: str = ""
    type: str = ""
    cell: str | None = None
    line: int | None = None
    function: str | None = None
    code: str | None = None
    name: str | None = None

    @classmethod
    def from_reply(cls, data) -> ErrorRecord:
        """The record a worker sent, with every field checked; a kind outside WORKER_KINDS, a missing or
        mistyped field, makes it a BAD_OUTPUT record (student code can write to the channel)."""
        if type(data) is not dict or data.get("kind") not in {k.value for k in WORKER_KINDS}:
            return cls(ErrorKind.BAD_OUTPUT, "a garbled error report came back from the process running your code")
        fields = {}
        for key, limit in _TEXT_FIELDS.items():
            value = data.get(key)
            fields[key] = value[:limit] if type(value) is str else None
        line = data.get("line")
        return cls(kind=ErrorKind(data["kind"]), message=fields["message"] or "", type=fields["type"] or "",
                   cell=fields["cell"], line=line if type(line) is int else None, function=fields["function"],
                   code=fields["code"], name=fields["name"])
