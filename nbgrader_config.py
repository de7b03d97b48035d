"""nbgrader configuration: the solution notebooks are the source, the student release is assignments/."""

c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file

c.CourseDirectory.root = "."
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"

# A graded cell that writes to stderr scores 0 in nbgrader, and its default per-cell timeout is 30 s.
c.Execute.timeout = 120
