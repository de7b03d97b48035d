"""Fair grades and hints that teach, proven over every assignment without grading anything.

- **A bug costs the points of its component.** For every mutant of the catalogue, every test it breaks (its
  `breaks`, which tests/test_graders_catalog.py proves by grading) runs the code the mutant changed, as the
  grader declares it (@pytest.mark.runs). A test that runs parts from more than one solution cell is a test of
  a composite: it must run the composite on correct stand-ins of its parts (@pytest.mark.stand_ins), or say in
  its grader's PARTS_FIT why it tests how the student's parts fit together. So a mutant in one cell loses only
  the points of its own cell's tests and of the PARTS_FIT tests that run it (listed in docs/fairness.md).
- **Hints and notebook text never give the solution's code.** No line that the student writes (between
  ### BEGIN SOLUTION and ### END SOLUTION) appears in the notebook's markdown, in the comments of the stubs,
  or in any text of the grader, the graders/shared modules it imports, or the public checks.
"""

from __future__ import annotations

import ast
import importlib
import re

import pytest

from course.config import load_course
from course.grading.plugin import overlaps
from tests.conftest import REPO
from tests.submissions.build import cell_by_id, load, source
from tests.submissions.catalog import MUTANTS
from tests.test_hanging_stubs import collected, methods, solution_cells

ASSIGNMENTS = [a.id for a in load_course(REPO).assignments]


# -- the solution's units: functions, classes and methods, by cell ---------------------------------------------

def units_of(cell_source: str) -> dict[str, str]:
    """Each function, class and "Class.method" a cell defines -> its AST, dumped (a class without its methods)."""
    found = {}
    for node in ast.parse(cell_source).body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = ast.dump(node)
        elif isinstance(node, ast.ClassDef):
            for method in methods(node):
                found[f"{node.name}.{method.name}"] = ast.dump(method)
            rest = [item for item in node.body if not isinstance(item, ast.FunctionDef)]
            found[node.name] = ast.dump(ast.Module(body=rest, type_ignores=[]))
    return found


def changed_units(solution: dict, mutant) -> set[str]:
    """The functions, classes and methods whose code the mutant changes."""
    changed = set()
    edited = {mutant.cell: None} if mutant.cell else dict.fromkeys(mutant.sources)
    for grade_id in edited:
        before = source(cell_by_id(solution, grade_id))
        if mutant.cell:
            after = before
            for old, new in mutant.edits:
                after = after.replace(old, new)
        else:
            after = mutant.sources[grade_id]
        old_units, new_units = units_of(before), units_of(after)
        changed |= {name for name in old_units.keys() | new_units.keys() if old_units.get(name) != new_units.get(name)}
    return changed


def cell_of(solution: dict) -> dict[str, str]:
    """Each function and class of the solution -> the grade_id of the cell that defines it."""
    return {name: grade_id for grade_id, text in solution_cells(solution) for name in units_of(text) if "." not in name}


@pytest.fixture(scope="module")
def graders(course):
    """{assignment: (runs, stand_ins, PARTS_FIT)} as grading reads them."""
    found = {}
    for assignment_id in ASSIGNMENTS:
        plugin = collected(course, assignment_id)
        short = {nodeid: nodeid.split("::")[-1] for nodeid in plugin.points}
        module = importlib.import_module(f"graders.{assignment_id}")
        found[assignment_id] = ({short[n]: plugin.runs.get(n, ()) for n in short},
                                {short[n]: plugin.stand_ins.get(n, ()) for n in short},
                                dict(getattr(module, "PARTS_FIT", {})))
    return found


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_every_broken_test_runs_what_the_mutant_changed(course, graders, assignment_id):
    """A mutant breaks only tests that run the code it changed: the declarations say where each bug costs."""
    solution = load(course.solution_notebook(course.assignment(assignment_id)))
    runs = graders[assignment_id][0]
    outside = {}
    for mutant in (m for m in MUTANTS if m.assignment == assignment_id):
        changed = changed_units(solution, mutant)
        assert changed, f"{mutant.name} changes no function, class or method"
        stray = sorted(test for test in mutant.breaks
                       if not any(overlaps(name, declared) for name in changed for declared in runs[test]))
        if stray:
            outside[mutant.name] = (sorted(changed), stray)
    assert outside == {}, "mutant -> (what it changes, tests it breaks that do not declare running it)"


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_a_composite_runs_on_stand_ins_or_says_why_not(course, graders, assignment_id):
    """A test that runs the student's code of several solution cells replaces the parts with stand-ins, or is a
    test of how the parts fit, with its reason in PARTS_FIT."""
    cells = cell_of(load(course.solution_notebook(course.assignment(assignment_id))))
    runs, _, parts_fit = graders[assignment_id]
    composite = {test: sorted({cells[name.split(".")[0]] for name in names if name.split(".")[0] in cells})
                 for test, names in runs.items()}
    composite = {test: found for test, found in composite.items() if len(found) > 1}
    unexplained = {test: found for test, found in composite.items() if test not in parts_fit}
    assert unexplained == {}, "test -> the solution cells whose code it runs"
    assert sorted(set(parts_fit) - set(composite)) == [], "PARTS_FIT names tests that run one cell's code only"
    assert all(isinstance(why, str) and len(why) > 20 for why in parts_fit.values())


# -- hints and notebook text -----------------------------------------------------------------------------------

SHORTEST = 12  # characters: shorter lines ("return x", "x = x + 1") say nothing a hint should not


def normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def solution_lines(notebook: dict) -> set[str]:
    """The lines the student writes: between ### BEGIN SOLUTION and ### END SOLUTION, comments dropped."""
    lines = set()
    for cell in notebook["cells"]:
        if cell.get("cell_type") != "code":
            continue
        inside = False
        for line in source(cell).splitlines():
            if "### BEGIN SOLUTION" in line or "### END SOLUTION" in line:
                inside = "BEGIN" in line
                continue
            code = normal(line.split(" #")[0] if not line.lstrip().startswith("#") else "")
            if inside and len(code) >= SHORTEST:
                lines.add(code)
    return lines


def texts_of(path) -> list[str]:
    """Every string a Python file holds: literals, f-strings' fixed parts, implicit concatenations joined."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            found.append("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
    return found


def shared_modules(grader) -> list:
    """The graders/shared modules a grader imports."""
    names = set()
    for node in ast.walk(ast.parse(grader.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("graders.shared."):
            names.add(node.module.rsplit(".", 1)[1])
    return [REPO / "graders" / "shared" / f"{name}.py" for name in sorted(names)]


def hint_texts(course, assignment_id: str) -> dict[str, list[str]]:
    """Where students read text about an assignment -> the texts there."""
    assignment = course.assignment(assignment_id)
    grader = course.grader_path(assignment)
    release = load(course.release_notebook(assignment))
    found = {f"{path.relative_to(REPO)}": texts_of(path)
             for path in [grader, *shared_modules(grader), REPO / "checks" / f"{assignment_id}.py"]}
    found["the notebook's markdown"] = [source(c) for c in release["cells"] if c.get("cell_type") == "markdown"]
    found["the stubs' comments"] = [line.split("#", 1)[1] for c in release["cells"] if c.get("cell_type") == "code"
                                    for line in source(c).splitlines() if "#" in line]
    return found


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_no_hint_or_notebook_text_holds_a_line_of_the_solution(course, assignment_id):
    lines = solution_lines(load(course.solution_notebook(course.assignment(assignment_id))))
    assert lines, "the solution notebook has no solution lines"
    given = {}
    for where, texts in hint_texts(course, assignment_id).items():
        for text in map(normal, texts):
            for line in lines:
                if line in text:
                    given.setdefault(where, set()).add(line)
    assert {where: sorted(found) for where, found in given.items()} == {}, "where -> the solution's lines it holds"


def test_the_solution_lines_are_what_the_student_writes():
    notebook = {"cells": [{"cell_type": "code", "source": "def f(x):\n    ### BEGIN SOLUTION\n"
                           "    total = x.sum(dim=-1)  # a comment\n    return total\n    ### END SOLUTION\n"
                           "y = f(torch.ones(3))\n"}]}
    assert solution_lines(notebook) == {"total = x.sum(dim=-1)", "return total"}
