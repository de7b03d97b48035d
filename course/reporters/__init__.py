"""Renderers of a GradeReport: a terminal table and JSON."""
