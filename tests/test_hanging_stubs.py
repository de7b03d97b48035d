"""A hanging function costs one timeout, not one per test that reaches it.

The graders declare, test by test, the student's code each one runs (@pytest.mark.runs, course/grading/plugin.py),
and the plugin uses the declarations to block the tests that would run code that already hung. This file proves
the declarations complete and the blocking right, for every assignment in course.yml and every stub of its
solution notebook:

- Complete, without running anything: whatever a declared function or class of the solution names of the
  student's code (its static call graph) is declared too, unless the test runs a correct stand-in for it
  (@pytest.mark.stand_ins). What a probe reaches directly is checked at grading
  time by the plugin (a grader bug otherwise), and every solution is graded by tests/test_graders_catalog.py.
- Blocking, by hanging: the solution is graded with stubs made to hang (an endless loop, asleep, at the top of a
  function, or of each method of a class), and each stub that hangs costs at most one timeout (exactly one when
  it hangs alone), in a test that declares it; every other test that does not pass was not run, with a message
  that names the test where the code hung; and no test that declares a hanging stub passes (it would not really
  run it).

To keep this cheap, stubs hang together in one notebook when the first test that declares each declares none of
the others: the declarations being complete, each one hangs first in that test, alone, and costs that one timeout,
and a later test that runs several of them (a whole model) is blocked by the hangs before it; so each one's hang is
judged as if it hung alone. A class whose methods
the grader declares one by one ("BPETokenizerSimple.train") hangs one method at a time (each method that holds
solution code), alone, since the static check does not see which methods a probe calls. The per-test timeout is
short, so that each hang costs a second or two, asleep, while other grading processes use the cores. A notebook
whose result breaks a rule is graded once more with a longer timeout before it counts as a failure, so that a
test slowed down by a busy machine is not taken for a second hang (a real hang outlasts any timeout).
"""

from __future__ import annotations

import ast
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from course import batch
from course.config import Course, load_course
from course.grading.plugin import GradingPlugin, Submission, overlaps
from course.grading.probes import call_function
from course.grading.runner import run_grader_module
from course.results import GradeReport, TestResult
from course.worker.client import GraderBug
from tests.conftest import REPO

ASSIGNMENTS = [a.id for a in load_course(REPO).assignments]
SHORT_TIMEOUT = 1.5  # seconds per test (and to load the notebook): each hang costs this much, asleep
LONG_TIMEOUT = 6.0  # for a second look at a notebook that broke a rule under the short timeout
JOBS = 3  # grading processes: while one sleeps in a hang, the others use the two cores
HANG = 'while True: __import__("time").sleep(1)  # made to hang by tests/test_hanging_stubs.py'
SOLUTION_MARKER = "### BEGIN SOLUTION"


# -- the solution's stubs and what their code names ------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """What is made to hang: a function, a class (all its methods) or one method ("Class.method")."""

    name: str
    cell: str  # grade_id of the solution cell that defines it
    functions: frozenset[str]  # the functions and methods ("Class.method") that get the endless loop


def solution_cells(notebook: dict):
    """(grade_id, source) of each solution cell."""
    for cell in notebook["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") == "code" and meta.get("solution"):
            yield meta["grade_id"], "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def definitions(notebook: dict):
    """(grade_id, source lines, node) of each function and class a solution cell defines."""
    for grade_id, source in solution_cells(notebook):
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                yield grade_id, source.splitlines(), node


def methods(node: ast.ClassDef) -> list[ast.FunctionDef]:
    return [m for m in node.body if isinstance(m, ast.FunctionDef)]


def units(notebook: dict, declared: set[str]) -> list[Unit]:
    """Every stub; a class that the grader declares by method, one unit per method that holds solution code."""
    found = []
    for grade_id, lines, node in definitions(notebook):
        if isinstance(node, ast.FunctionDef):
            found.append(Unit(node.name, grade_id, frozenset({node.name})))
        elif any(name.startswith(f"{node.name}.") for name in declared):
            for method in methods(node):
                if SOLUTION_MARKER in "\n".join(lines[method.lineno - 1:method.end_lineno]):
                    name = f"{node.name}.{method.name}"
                    found.append(Unit(name, grade_id, frozenset({name})))
        else:
            found.append(Unit(node.name, grade_id, frozenset(f"{node.name}.{m.name}" for m in methods(node))))
    return found


def call_graph(notebook: dict) -> dict[str, set[str]]:
    """Each function, class and "Class.method" of the solution -> the student's code that its code names: other
    stubs, and for a method the methods of its class it calls through `self`."""
    stubs = {node.name for _, _, node in definitions(notebook)}

    def named(tree, own: str) -> set[str]:
        return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in stubs and n.id != own}

    graph: dict[str, set[str]] = {}
    for _, _, node in definitions(notebook):
        if isinstance(node, ast.FunctionDef):
            graph[node.name] = named(node, node.name)
            continue
        own = {m.name for m in methods(node)}
        for method in methods(node):
            graph[f"{node.name}.{method.name}"] = named(method, node.name) | {
                f"{node.name}.{n.attr}" for n in ast.walk(method) if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name) and n.value.id == "self" and n.attr in own}
        graph[node.name] = set().union(*(graph[f"{node.name}.{m.name}"] for m in methods(node))) - {
            f"{node.name}.{m}" for m in own}
    return graph


def hanging(source: str, functions: frozenset[str]) -> str:
    """`source` with an endless loop as the first statement of each of `functions`."""
    lines = source.splitlines(keepends=True)
    inserts = []
    for node in ast.parse(source).body:
        defs = [(node.name, node)] if isinstance(node, ast.FunctionDef) else (
            [(f"{node.name}.{m.name}", m) for m in methods(node)] if isinstance(node, ast.ClassDef) else [])
        for name, function in defs:
            if name in functions:
                first = function.body[0]
                assert first.lineno > function.lineno, f"{name}: its body starts on the line of its def"
                inserts.append((first.lineno - 1, " " * first.col_offset + HANG + "\n"))
    assert len(inserts) == len(functions), f"not all of {sorted(functions)} found"
    for index, line in sorted(inserts, reverse=True):
        lines.insert(index, line)
    return "".join(lines)


def write_hanging(solution: Path, target: Path, group: list[Unit]) -> Path:
    notebook = json.loads(solution.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        functions = frozenset().union(*(unit.functions for unit in group if unit.cell == grade_id))
        if functions:
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = hanging(text, functions)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    return target


# -- the grader's declarations ----------------------------------------------------------------------------------

def collected(course: Course, assignment_id: str) -> GradingPlugin:
    """The grader's tests and markers, read as grading reads them."""
    assignment = course.assignment(assignment_id)
    plugin = GradingPlugin(None, device="cpu", timeout=assignment.timeout)
    run_grader_module(course.grader_path(assignment), plugin, "--collect-only")
    assert not plugin.collection_errors, plugin.collection_errors
    return plugin


def declarations(course: Course, assignment_id: str, marker: str = "runs") -> dict[str, tuple[str, ...]]:
    """Each test of the grader -> what it declares it runs (@pytest.mark.runs), or with marker="stand_ins", the
    parts it replaces with stand-ins."""
    plugin = collected(course, assignment_id)
    return {nodeid.split("::")[-1]: getattr(plugin, marker).get(nodeid, ()) for nodeid in plugin.points}


def declaring(runs: dict[str, tuple[str, ...]], name: str) -> set[str]:
    """The tests that declare code of `name` (the same name, or a class and one of its methods)."""
    return {test for test, names in runs.items() if any(overlaps(name, declared) for declared in names)}


def groups(found: list[Unit], runs: dict[str, tuple[str, ...]]) -> list[list[Unit]]:
    """Units that hang together (first fit, the most declared first); a method alone.

    `runs` is in grading order. Two functions or classes may hang together when the first test that declares
    either declares only it of the two: each then hangs in its own first test, alone, and costs that one timeout;
    a later test that declares both (a test of how the parts fit) is blocked by the hang that came first."""
    order = list(runs)

    def first(name: str) -> str | None:
        return min(declaring(runs, name), key=order.index, default=None)

    def apart(one: str, other: str) -> bool:
        return all(test is None or not any(overlaps(name, declared) for declared in runs[test] for name in (one, other)
                                           if name != own)
                   for own, test in ((one, first(one)), (other, first(other))))

    together: list[list[Unit]] = []
    alone = [[unit] for unit in found if "." in unit.name]
    for unit in sorted((u for u in found if "." not in u.name), key=lambda u: -len(declaring(runs, u.name))):
        for group in together:
            if all(apart(unit.name, other.name) for other in group):
                group.append(unit)
                break
        else:
            together.append([unit])
    return together + alone


def problems(report: GradeReport, group: list[Unit], runs: dict[str, tuple[str, ...]]) -> list[str]:
    """How the result of grading the solution with `group` hanging breaks the rules (see the module's docstring)."""
    tests = {t.name: t for t in report.tests}
    hung = [t for t in report.tests if t.status == "timeout" and "not run" not in t.message]
    found = []
    if not hung and any(declaring(runs, unit.name) for unit in group):
        found.append("no test timed out")
    for unit in group:
        mine = declaring(runs, unit.name)
        met = [t.name for t in hung if t.name in mine]
        if len(met) > 1:
            found.append(f"`{unit.name}` cost {len(met)} timeouts: {', '.join(met)}")
        found += [f"{name} declares `{unit.name}` but passed while it hangs: it does not run it"
                  for name in sorted(mine) if tests[name].status == "passed"]
    for test in hung:
        if not any(test.name in declaring(runs, unit.name) for unit in group):
            found.append(f"{test.name} timed out but declares none of {', '.join(u.name for u in group)}")
    for test in report.tests:
        if test.status == "passed" or test in hung:
            continue
        blocked = test.status == "timeout" and "not run" in test.message and "did not finish in time" in test.message
        if not blocked or not any(h.name in test.message for h in hung):
            found.append(f"{test.name}: {test.status}, not blocked by a hang: {test.message[:300]}")
    return found


def with_timeout(course: Course, seconds: float) -> Course:
    assignments = [a.model_copy(update={"timeout": seconds}) for a in course.config.assignments]
    return Course(course.root, course.config.model_copy(update={"assignments": assignments}))


# -- the tests --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def declared(course):
    return {assignment_id: declarations(course, assignment_id) for assignment_id in ASSIGNMENTS}


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_declarations_include_what_the_declared_code_calls(course, declared, assignment_id):
    """Whatever the solution's code of a declared name names of the student's code is declared by that test too,
    or replaced by a stand-in."""
    graph = call_graph(json.loads(course.solution_notebook(course.assignment(assignment_id)).read_text("utf-8")))
    stand_ins = declarations(course, assignment_id, "stand_ins")
    missing = {}
    for test, names in declared[assignment_id].items():
        called = {callee for name in names for callee in graph.get(name, ())
                  if not any(overlaps(callee, part) for part in stand_ins[test])}
        if lacking := sorted(c for c in called if not any(overlaps(c, name) for name in names)):
            missing[test] = lacking
    assert missing == {}


@pytest.fixture(scope="module")
def graded(course, declared, tmp_path_factory):
    """Every stub of every solution made to hang (in groups), graded: {assignment: [(group, report, problems)]}."""
    folder = tmp_path_factory.mktemp("hanging")
    items, cases = [], []
    for assignment_id in ASSIGNMENTS:
        assignment = course.assignment(assignment_id)
        solution = course.solution_notebook(assignment)
        runs = declared[assignment_id]
        names = {name for names in runs.values() for name in names}
        for index, group in enumerate(groups(units(json.loads(solution.read_text("utf-8")), names), runs)):
            notebook = write_hanging(solution, folder / assignment_id / str(index) / assignment.notebook, group)
            items.append(batch.BatchItem("+".join(unit.name for unit in group), assignment_id, notebook))
            cases.append((assignment_id, group))
    first = batch.grade_batch(with_timeout(course, SHORT_TIMEOUT), items, jobs=JOBS, device="cpu")
    results = [(assignment_id, group, result.report, problems(result.report, group, declared[assignment_id]))
               for (assignment_id, group), result in zip(cases, first)]
    again = [index for index, (_, _, _, found) in enumerate(results) if found]
    if again:  # a second look, with time enough for every test that does not hang
        second = batch.grade_batch(with_timeout(course, LONG_TIMEOUT), [items[i] for i in again], jobs=JOBS,
                                   device="cpu")
        for index, result in zip(again, second):
            assignment_id, group, _, _ = results[index]
            results[index] = (assignment_id, group, result.report,
                              problems(result.report, group, declared[assignment_id]))
    by_assignment: dict[str, list] = {assignment_id: [] for assignment_id in ASSIGNMENTS}
    for assignment_id, group, report, found in results:
        by_assignment[assignment_id].append((group, report, found))
    return by_assignment


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_a_hanging_stub_costs_one_timeout(graded, assignment_id):
    found = {"+".join(unit.name for unit in group): found for group, _, found in graded[assignment_id] if found}
    assert found == {}


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS)
def test_every_stub_was_made_to_hang(course, graded, assignment_id):
    notebook = json.loads(course.solution_notebook(course.assignment(assignment_id)).read_text("utf-8"))
    stubs = {node.name for _, _, node in definitions(notebook)}
    hung = [unit for group, _, _ in graded[assignment_id] for unit in group]
    assert {unit.name.split(".")[0] for unit in hung} == stubs
    assert len({unit.name for unit in hung}) == len(hung), "a stub hung twice"


# -- the helpers above, and the plugin's checks of the declarations ----------------------------------------------

SOURCE = ('class A:\n    """Doc."""\n\n    def __init__(self):\n        self.x = f(1)\n\n'
          '    def forward(self, x):\n        """Doc."""\n        return self.helper(x)\n\n'
          '    def helper(self, x):\n        return x\n\n\ndef f(x):\n    return x\n')


def test_the_hang_is_the_first_statement_of_each_body():
    changed = hanging(SOURCE, frozenset({"A.__init__", "A.forward", "f"}))
    assert changed.count(HANG) == 3
    tree = ast.parse(changed)
    firsts = [tree.body[0].body[1].body[0], tree.body[0].body[2].body[0], tree.body[1].body[0]]
    assert all(isinstance(statement, ast.While) for statement in firsts)


def test_the_call_graph_follows_names_and_self():
    notebook = {"cells": [{"cell_type": "code", "source": SOURCE,
                           "metadata": {"nbgrader": {"solution": True, "grade_id": "a"}}}]}
    graph = call_graph(notebook)
    assert graph["A.__init__"] == {"f"}
    assert graph["A.forward"] == {"A.helper"}
    assert graph["A"] == {"f"}
    assert graph["f"] == set()


GRADER = """
import pytest

from course.grading.interface import Class, Function, Interface

INTERFACE = Interface(Function("f", "(x)"), Class("A", "()", methods={"forward": "(x)"}))
HELPERS = ("g",)

@@TESTS@@
"""


def collection_errors(tmp_path, tests: str) -> tuple[list[str], GradingPlugin]:
    path = tmp_path / f"grader_{tmp_path.name}.py"  # one module name per test: pytest caches modules by name
    path.write_text(GRADER.replace("@@TESTS@@", textwrap.dedent(tests)))
    plugin = GradingPlugin(None, device="cpu", timeout=10)
    run_grader_module(path, plugin, "--collect-only")
    return plugin.collection_errors, plugin


def test_declared_names_are_read_and_checked_at_collection(tmp_path):
    errors, plugin = collection_errors(tmp_path, """
        @pytest.mark.points(1)
        @pytest.mark.runs("f", "A.forward", "A.__init__", "g", "f")
        def test_fine(submission):
            pass
    """)
    assert errors == []
    assert list(plugin.runs.values()) == [("f", "A.forward", "A.__init__", "g")]


@pytest.mark.parametrize(("marker", "problem"), [
    ("", "needs @pytest.mark.runs"),
    ("@pytest.mark.runs()", "needs @pytest.mark.runs"),
    ('@pytest.mark.runs("h")', "names 'h'"),
    ('@pytest.mark.runs("A.backward")', "names 'A.backward'"),
    ('@pytest.mark.runs("f.x")', "names 'f.x'"),
    ("@pytest.mark.runs(3)", "names 3"),
    ('@pytest.mark.runs(name="f")', "names only"),
])
def test_a_grader_with_an_interface_declares_what_each_test_runs(tmp_path, marker, problem):
    errors, _ = collection_errors(tmp_path, f"""
        @pytest.mark.points(1)
        {marker}
        def test_one(submission):
            pass
    """)
    assert len(errors) == 1
    assert "test_one" in errors[0]
    assert problem in errors[0]


class FakeClient:
    last_overhead = 0.0
    load_report = None
    fatal = None

    def call(self, name, source, kwargs, timeout):
        return [0 for _ in kwargs["inputs"]]


def test_a_probe_that_reaches_undeclared_code_is_a_grader_bug():
    submission = Submission(FakeClient(), timeout=10, device="cpu", load_problem=None, runs=("A",),
                            declarable=frozenset({"f", "A", "A.forward"}))
    with pytest.raises(GraderBug, match="runs `f` without declaring it"):
        submission.run(call_function, name="f", inputs=[1])
    assert submission.run(call_function, name="A", inputs=[1]) == [0]  # (call_function only names the code)
    assert Submission(FakeClient(), timeout=10, device="cpu", load_problem=None, runs=("A.forward",),
                      declarable=frozenset({"f", "A", "A.forward"})).run(call_function, name="A", inputs=[]) == []


def test_the_rules_catch_a_second_timeout_an_unblocked_failure_and_a_passing_declaration():
    runs = {"test_a": ("A",), "test_b": ("A", "f"), "test_c": ("f",), "test_d": ("g",)}
    group = [Unit("A", "a", frozenset({"A.forward"}))]

    def report(*results):
        return GradeReport("x", [TestResult(name, status, 0.0, 1.0, message) for name, status, message in results])

    hang = "Your code did not finish in time: stopped after 1.5 s while running your code"
    blocked = "Your code did not finish in time: not run: `A`, which this test runs, did not finish in time in test_a"
    assert problems(report(("test_a", "timeout", hang), ("test_b", "timeout", blocked), ("test_c", "passed", ""),
                           ("test_d", "passed", "")), group, runs) == []
    assert problems(report(("test_a", "timeout", hang), ("test_b", "timeout", hang), ("test_c", "passed", ""),
                           ("test_d", "passed", "")), group, runs) == ["`A` cost 2 timeouts: test_a, test_b"]
    found = problems(report(("test_a", "timeout", hang), ("test_b", "passed", ""), ("test_c", "timeout", hang),
                            ("test_d", "error", "Internal grader error")), group, runs)
    assert found == ["test_b declares `A` but passed while it hangs: it does not run it",
                     "test_c timed out but declares none of A",
                     "test_d: error, not blocked by a hang: Internal grader error"]
    assert problems(report(("test_a", "passed", ""), ("test_b", "passed", ""), ("test_c", "passed", ""),
                           ("test_d", "passed", "")), group, runs)[0] == "no test timed out"
