"""Errors that the command line turns into a clear message and a non-zero exit status."""


class CourseError(Exception):
    """Base class: a problem with the command line, the course configuration or the repository."""

    exit_code = 1


class ConfigError(CourseError):
    """course.yml (or something it points to) is wrong; the message names the file and the key."""

    exit_code = 3


class UsageError(CourseError):
    """A bad command line: a missing submission, an unknown assignment, ..."""

    exit_code = 2
