"""When a submission was handed in: nbgrader's `timestamp.txt`, else the student repository's last commit.

`submission_time(top, relative)` looks at the folders from `top / relative` (the submission's own folder, e.g.
nbgrader's submitted/<student>/<assignment>/) up to, but not including, `top` (the class folder), innermost
first:

1. `timestamp.txt`, as nbgrader writes it when a student submits (`2026-10-14 21:03:12.123456 UTC`; also ISO 8601,
   a numeric offset or an IANA zone name; without a zone the time is read as UTC, as nbgrader reads it);
2. else the committer time of the last commit of a git repository there (`.git`), read without running git
   (course/gradebook/gitcommit.py says why).

Every folder is opened relative to the one before it without following links, and only small regular files are
read: a student's folder is the student's. The result says which source gave the time (`source`), or why there is
none (`detail`), for grades.csv and the feedback.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

from course.gradebook.gitcommit import GitTimeError, last_commit_time
from course.safe_text import safe_text

TIMESTAMP_FILE = "timestamp.txt"
MAX_TIMESTAMP_BYTES = 200
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

SOURCES = ("timestamp.txt", "git commit", "nbgrader gradebook", "none")
_NBGRADER = re.compile(r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)(?: +(\S+))?")
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")


@dataclass
class SubmissionTime:
    when: dt.datetime | None = None  # timezone-aware
    source: str = "none"  # one of SOURCES
    detail: str = ""  # why there is no time, or what was assumed

    def describe(self) -> str:
        """The source in a few words, for grades.csv: `git commit`, or `none: why`."""
        return f"{self.source}: {self.detail}" if self.detail else self.source


def submission_time(top: Path, relative: Path) -> SubmissionTime:
    """The time of the submission in `top / relative` (see the module), or a SubmissionTime without one."""
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return SubmissionTime(detail="a notebook per student: no submission folder to take a time from")
    try:
        folders = _open_folders(top, relative)
    except OSError as exc:
        return SubmissionTime(detail=f"the submission's folder cannot be opened ({_why(exc)})")
    problems = []
    try:
        for _, fd in reversed(folders):
            found = _timestamp_file(fd)
            if isinstance(found, SubmissionTime):
                return found
            if found:
                problems.append(found)
        for name, fd in reversed(folders):
            try:
                return SubmissionTime(last_commit_time(fd), "git commit")
            except GitTimeError as exc:
                if not str(exc).startswith("no git repository"):
                    problems.append(f"{name}: {exc}")
    finally:
        for _, fd in folders:
            os.close(fd)
    reason = "; ".join(problems) if problems else f"no {TIMESTAMP_FILE} and no git repository"
    return SubmissionTime(detail=safe_text(reason, 300, single_line=True))


def _open_folders(top: Path, relative: Path) -> list[tuple[str, int]]:
    """Each folder from top/<first part> to top/relative, opened without following a link."""
    folders: list[tuple[str, int]] = []
    top_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        parent = top_fd
        for part in relative.parts:
            fd = os.open(part, _FLAGS | os.O_DIRECTORY, dir_fd=parent)
            folders.append((part, fd))
            parent = fd
    except OSError:
        for _, fd in folders:
            os.close(fd)
        raise
    finally:
        os.close(top_fd)
    return folders


def _why(exc: OSError) -> str:
    import errno

    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "a link or not a folder"
    return exc.strerror or str(exc)


def _timestamp_file(folder_fd: int) -> SubmissionTime | str | None:
    """The time in the folder's timestamp.txt; a problem with it (a string); None when there is none."""
    try:
        fd = os.open(TIMESTAMP_FILE, _FLAGS | os.O_NONBLOCK, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{TIMESTAMP_FILE} cannot be read ({_why(exc)})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"{TIMESTAMP_FILE} is not a regular file"
        data = os.read(fd, MAX_TIMESTAMP_BYTES + 1)
    except OSError as exc:
        return f"{TIMESTAMP_FILE} cannot be read ({_why(exc)})"
    finally:
        os.close(fd)
    if len(data) > MAX_TIMESTAMP_BYTES:
        return f"{TIMESTAMP_FILE} is longer than a time"
    try:
        when, assumed = parse_timestamp(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        return f"{TIMESTAMP_FILE}: {safe_text(str(exc), 200, single_line=True)}"
    return SubmissionTime(when, "timestamp.txt", assumed)


def parse_timestamp(text: str) -> tuple[dt.datetime, str]:
    """A time as nbgrader writes it ("%Y-%m-%d %H:%M:%S.%f %Z") or in ISO 8601, and what was assumed ("" or
    "no time zone: read as UTC"). ValueError for anything else."""
    if not text:
        raise ValueError("empty")
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        match = _NBGRADER.fullmatch(text)
        if not match:
            raise ValueError(f"not a time: {text[:60]!r}") from None
        when = dt.datetime.fromisoformat(match.group(1).replace(" ", "T"))
        zone = match.group(2)
        if zone is not None:
            return when.replace(tzinfo=_zone(zone)), ""
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC), "no time zone: read as UTC"
    return when, ""


def _zone(name: str) -> dt.tzinfo:
    if name.upper() in ("UTC", "GMT", "Z"):
        return dt.UTC
    offset = _OFFSET.fullmatch(name)
    if offset:
        sign, hours, minutes = offset.groups()
        delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
        return dt.timezone(-delta if sign == "-" else delta)
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"time zone {name[:40]!r} not understood (write UTC, an offset such as +02:00, or a "
                         "zone name such as Europe/Paris)") from None
