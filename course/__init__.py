"""The `course` command: configuration, submission loading, isolated grading, reports and releases.

Modules:
    config        course.yml and its schema (the course's, or a student repository's)
    notebook      reading a submission notebook and choosing the cells that grading executes
    submission    finding the notebook of a submission and the assignment it belongs to
    worker/       the separate process that runs student code, and the trusted client that drives it
    grading/      the pytest plugin, the grader-facing API (probes, comparisons) and the runner
    checking      `course check`: the public checks (checks/<id>.py) run in the worker
    results       the result data model shared by every reporter
    reporters/    terminal tables, JSON, Markdown job summary, autograding payload, Classroom 50's result.json
    release       generating assignments/ from solutions/ with nbgrader
    student_repo  a self-contained student repository of one assignment (`course release --out`)
    cli           the command line
"""
