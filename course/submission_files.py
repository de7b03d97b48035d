"""A submission's files as the grader may read them: regular files inside the submission's own folder.

A student controls every byte of their repository, names and file types included, and `git clone` keeps
symbolic links. A notebook that is a link to a classmate's notebook, to the course's solution or to a file of
the grader's machine must not be graded as the student's, and nothing may be read through it. So, for a class:

- `inspect_entry` refuses (with a message for the student and the instructor) a submission whose folder or
  notebook is a symbolic link, a hard link (a file that is also elsewhere on the disk), a fifo or a device;
- `read_notebook_bytes` reads the notebook once, opening every folder on the way with O_NOFOLLOW relative to
  the one before (so a link anywhere on the path fails instead of being followed), and refuses anything but a
  regular file with one link. The class run grades a private copy of those bytes.

Messages name the entry and what it is; they never quote what a refused file holds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from course.notebook import MAX_NOTEBOOK_BYTES


class SubmissionRefused(Exception):
    """The submission is not regular files inside its own folder; the message says what was found."""


def describe(mode: int) -> str:
    """What kind of file a mode is, in words (for messages)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a fifo (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def refusal(name: str, what: str) -> str:
    return (f"{name} is {what}: a submission must be the regular files inside its own folder (no links, pipes or "
            "devices), so it was not graded. Commit the notebook itself.")


def inspect_entry(path: Path, *, want_folder: bool) -> str | None:
    """Why `path` (a student's folder or notebook, not followed if it is a link) is refused, or None."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or exc})"
    if want_folder and stat.S_ISDIR(info.st_mode):
        return None
    if not want_folder and stat.S_ISREG(info.st_mode):
        if info.st_nlink > 1:
            return refusal(path.name, f"a hard link (the same file is in {info.st_nlink} places on the disk)")
        return None
    return refusal(path.name, describe(info.st_mode))


def read_notebook_bytes(top: Path, relative: Path) -> bytes:
    """The bytes of `top / relative`, where no component of `relative` may be a link and the file must be a
    regular file with a single link, at most MAX_NOTEBOOK_BYTES long. SubmissionRefused otherwise."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    folder_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in relative.parts[:-1]:
            try:
                inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=folder_fd)
            except OSError as exc:
                raise SubmissionRefused(_open_problem(part, folder_fd, exc)) from None
            os.close(folder_fd)
            folder_fd = inner
        name = relative.parts[-1]
        try:
            # O_NONBLOCK: opening a fifo must not wait for a writer.
            file_fd = os.open(name, flags | os.O_NONBLOCK, dir_fd=folder_fd)
        except OSError as exc:
            raise SubmissionRefused(_open_problem(name, folder_fd, exc)) from None
    finally:
        os.close(folder_fd)
    try:
        info = os.fstat(file_fd)
        if not stat.S_ISREG(info.st_mode):
            raise SubmissionRefused(refusal(name, describe(info.st_mode)))
        if info.st_nlink > 1:
            raise SubmissionRefused(refusal(name, f"a hard link (the same file is in {info.st_nlink} places on "
                                                  "the disk)"))
        if info.st_size > MAX_NOTEBOOK_BYTES:
            raise SubmissionRefused(f"{name} is {info.st_size / 2**20:.0f} MB, more than the "
                                    f"{MAX_NOTEBOOK_BYTES // 2**20} MB limit for a notebook, so it was not read; "
                                    "clear the outputs (Edit > Clear Outputs of All Cells) and save again")
        chunks, size = [], 0
        while size <= MAX_NOTEBOOK_BYTES:
            chunk = os.read(file_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(file_fd)


def _open_problem(name: str, folder_fd: int, exc: OSError) -> str:
    try:
        mode = os.lstat(name, dir_fd=folder_fd).st_mode
    except OSError:
        return f"{name} cannot be read ({exc.strerror or exc})"
    return refusal(name, describe(mode))
