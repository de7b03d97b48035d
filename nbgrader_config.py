"""nbgrader configuration: the solution notebooks are the source, the student release is assignments/.

nbgrader reads this file from the folder it runs in: run every nbgrader command in the course folder (this file's
folder). See docs/instructors.md for the commands.
"""

import os
import warnings

c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file

# An absolute root (nbgrader warns "root '.' is not absolute" about a relative one): the folder of this file.
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"

# A graded cell that writes to stderr scores 0 in nbgrader, and its default per-cell timeout is 30 s.
c.Execute.timeout = 120

# `nbgrader autograde` grades with the course's graders: the student's code runs only in the course's sandboxed
# worker, never in nbgrader's kernel (course/nbgrader_bridge.py). Every step but the execution is nbgrader's own.
# SubmissionReader reads each submission as `course grade` does: an unreadable notebook scores 0 with a message
# in its feedback that says what is wrong with the file, instead of stopping autograde with no feedback.
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties,
    CheckCellMetadata,
    IgnorePattern,
    LimitOutput,
    SaveAutoGrades,
)

from course.nbgrader_bridge import GradeInSandbox, SubmissionReader  # noqa: E402
from course.nbgrader_export import SpreadsheetCsvExport  # noqa: E402

c.Autograde.exporter_class = SubmissionReader
c.Autograde.autograde_preprocessors = [GradeInSandbox, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]

# `nbgrader export` writes grades.csv through course/nbgrader_export.py: nbgrader's columns and values, CSV-quoted,
# with any cell that a spreadsheet would run as a formula (e.g. a student id "=HYPERLINK(...)") written with one
# single quote in front: the id is the cell without that quote (course/spreadsheet.py).
c.ExportApp.plugin_class = SpreadsheetCsvExport

# nbgrader 0.9 with SQLAlchemy 2 warns "Object of type <SubmittedAssignment> not in session, add operation along
# ... will not proceed" for every new submission autograde records. The warning is harmless: the submissions are
# recorded all the same (tests/test_nbgrader_bridge.py compares the gradebook with `course grade`, test by test).
warnings.filterwarnings("ignore", message=r"Object of type <Submitted\w+> not in session", module="nbgrader")
