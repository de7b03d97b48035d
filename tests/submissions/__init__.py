"""Submissions derived from the solution notebooks: realistic bugs (mutants) and correct variants."""
