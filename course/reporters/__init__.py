"""Renderers of a GradeReport (course/results.py), for `course grade` and `course check`.

    terminal      the score table of `course grade`, the progress table of `course check`
    json_report   the JSON result file (--json FILE)
    markdown      a GitHub job summary (--summary "$GITHUB_STEP_SUMMARY")
    autograding   the payload of classroom-resources/autograding-grading-reporter (--github-output "$GITHUB_OUTPUT")
    classroom50   Classroom 50's result.json (--classroom50 FILE)
"""
