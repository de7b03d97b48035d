"""The JSON result file written by `course grade --json FILE`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from course.results import GradeReport


def write_json(report: GradeReport, path: Path, extra: dict | None = None) -> None:
    """Write atomically, so a reader never sees half a file; `extra` keys are added at the top level (a batch
    adds the student and the fingerprints that tell whether the result is still valid)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({**(extra or {}), **report.to_dict()}, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)
