"""Each chapter's student interface (its INTERFACE in checks/<id>.py, which the grader imports) is met by the reference
module, by the solution notebook and by the student release, so the stubs never drift from what is graded.
The chapters come from course.yml."""

from __future__ import annotations

import importlib

import pytest
import torch

from course.config import load_course
from course.grading.interface import Class, Interface
from course.notebook import grading_cells, read_notebook
from tests.conftest import REPO

ASSIGNMENTS = [a.id for a in load_course(REPO).assignments]


def grader_module(course, assignment):
    return importlib.import_module(f"graders.{course.grader_path(assignment).stem}")


def notebook_namespace(path) -> dict:
    """The globals a notebook's setup and solution cells define (the course's own notebooks: trusted code)."""
    namespace = {"__name__": "submission"}
    for cell in grading_cells(read_notebook(path)).cells:
        exec(compile(cell.source, f"<{path.name} {cell.label}>", "exec"), namespace)
    return namespace


def module_layout(obj, example) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in obj(**example).state_dict().items()}


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def chapter(request, course):
    assignment = course.assignment(request.param)
    interface = getattr(grader_module(course, assignment), "INTERFACE", None)
    reference = vars(importlib.import_module(assignment.reference))
    return assignment, interface, reference


def test_every_grader_declares_its_interface(chapter):
    _, interface, _ = chapter
    assert isinstance(interface, Interface)
    assert interface.names


def test_reference_matches_the_interface(chapter):
    _, interface, reference = chapter
    assert interface.problems(reference) == []


@pytest.mark.parametrize("side", ["solution", "release"])
def test_notebook_matches_the_interface(course, chapter, side):
    assignment, interface, reference = chapter
    path = course.solution_notebook(assignment) if side == "solution" else course.release_notebook(assignment)
    namespace = notebook_namespace(path)
    assert interface.problems(namespace) == []
    for item in interface.items:
        if isinstance(item, Class) and item.example and issubclass(reference[item.name], torch.nn.Module):
            # The grader loads the reference's state_dict into the student's module: same names and shapes.
            assert module_layout(namespace[item.name], item.example) == \
                module_layout(reference[item.name], item.example), item.name
