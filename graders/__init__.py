"""Hidden graders: one module per assignment, run by `course grade` (never shipped to students).

Each test builds seeded inputs on the CPU, runs a @probe against the student's module in the worker, and
compares what comes back with the reference implementation on the trusted side.
"""
