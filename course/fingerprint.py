"""What a grade depends on, as digests: a result is reused only while every part is the same.

A class run (course/batch.py) keeps each student's result file and skips the student on the next run when nothing
that can change the grade has changed. Besides the notebook itself, that is the course: its graders (a grader may
import helpers of another, so the whole folder counts), the reference and support modules, the data files the
graders read, the public checks (each chapter's INTERFACE lives there), the `course` package (the worker, the
comparisons, the messages), course.yml's settings (points, limits; not deadlines, late policies or the cluster's
address), the torch version, the device and the isolation level. A fix to reference/gpt.py therefore regrades the
class of chapter 4 instead of keeping grades the old reference gave.

`course_parts` is computed once per run; `differences` names the parts that differ, for a message that says
why two fingerprints disagree (e.g. between machines of a cluster).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from course.config import Course

# Folders of the course whose every file can change a grade; caches and editor files are left out. checks/ holds
# each chapter's INTERFACE, which its grader imports.
COURSE_FOLDERS = ("graders", "reference", "checks", "course", "data")
IGNORED_PARTS = {"__pycache__", ".ipynb_checkpoints"}
# Keys of course.yml that do not change what the graders find: deadlines and late policies (applied after grading,
# course/gradebook/) and the cluster's address. Changing them regrades nothing; comments do not count either.
NOT_GRADING = {"cluster": True, "late": True, "assignments": {"__all__": {"deadline", "late"}}}


def digest_files(paths: Iterable[Path], root: Path) -> str:
    """One sha256 over the files' paths (relative to `root`) and bytes, in sorted order."""
    sha = hashlib.sha256()
    for path in sorted(paths):
        sha.update(str(path.relative_to(root)).encode() + b"\0")
        sha.update(hashlib.sha256(path.read_bytes()).digest())
    return sha.hexdigest()


def folder_files(folder: Path) -> list[Path]:
    """The regular files under `folder`, without caches; symbolic links are not followed."""
    if not folder.is_dir():
        return []
    return [path for path in folder.rglob("*")
            if path.is_file() and not path.is_symlink() and not IGNORED_PARTS & set(path.parts)
            and path.suffix not in (".pyc", ".pyo")]


def course_parts(course: Course, device: str, isolation: str) -> dict[str, str]:
    """The course's side of the fingerprint: a digest per part, plus the torch version, device and isolation."""
    parts = {name: digest_files(folder_files(course.root / name), course.root) for name in COURSE_FOLDERS}
    settings = course.config.model_dump(mode="json", exclude=NOT_GRADING)
    parts["course.yml"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    parts["torch"] = str(torch.__version__)
    parts["device"] = device
    parts["isolation"] = isolation
    return parts


def differences(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The names of the parts that differ (or are missing on one side), in a stable order."""
    return sorted(name for name in set(ours) | set(theirs) if ours.get(name) != theirs.get(name))
