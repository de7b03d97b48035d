"""nbgrader configuration: the solution notebooks are the source, the student release is assignments/."""

c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file

c.CourseDirectory.root = "."
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"

# A graded cell that writes to stderr scores 0 in nbgrader, and its default per-cell timeout is 30 s.
c.Execute.timeout = 120

# `nbgrader autograde` grades with the course's graders: the student's code runs only in the course's sandboxed
# worker, never in nbgrader's kernel (course/nbgrader_bridge.py). Every step but the execution is nbgrader's own.
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties,
    CheckCellMetadata,
    IgnorePattern,
    LimitOutput,
    SaveAutoGrades,
)

from course.nbgrader_bridge import GradeInSandbox  # noqa: E402

c.Autograde.autograde_preprocessors = [GradeInSandbox, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
