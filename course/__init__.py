"""The `course` command: configuration, submission loading, isolated grading, reports and releases.

Modules:
    config      course.yml and its schema
    notebook    reading a submission notebook and choosing the cells that grading executes
    submission  finding the notebook of a submission and the assignment it belongs to
    worker/     the separate process that runs student code, and the trusted client that drives it
    grading/    the pytest plugin, the grader-facing API (probes, comparisons) and the runner
    results     the result data model shared by every reporter
    reporters/  terminal table and JSON
    release     generating assignments/ from solutions/ with nbgrader
    cli         the command line
"""
