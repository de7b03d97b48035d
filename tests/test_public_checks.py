"""The public checks (checks/<id>.py) and the notebook's check cells, for every assignment of course.yml.

One check per grader test, and one check cell per grader test with that test's points and no other grade cell,
placed after the cell that defines what the check looks at; grading never runs them; the checks pass on the
solution and fail with a message on the untouched release; in a kernel, `check()` prints one PASS line and
nothing on stderr, or raises CheckFailed. (nbgrader's Validate on the notebooks: tests/test_student_venv.py.)
"""

from __future__ import annotations

import ast
import importlib
import json
import linecache
import os
from pathlib import Path

import pytest
import torch

from checks import CheckFailed
from course.config import load_course
from course.grading.runner import collect_points
from course.notebook import CHECKS_IMPORT_ID, grading_cells, read_notebook
from reference.tiktoken_offline import seed_tiktoken_cache
from tests.conftest import REPO

COURSE = load_course(REPO)
ASSIGNMENTS = [a.id for a in COURSE.assignments]


def code_cells(path: Path) -> list[dict]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader") or {}


def namespace_of(path: Path) -> dict:
    """The globals a notebook's graded cells define (the course's own notebooks: trusted code)."""
    namespace = {"__name__": "__main__"}
    for cell in grading_cells(read_notebook(path)).cells:
        exec(compile(cell.source, f"<{path.name} {cell.label}>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def chapter(request):
    assignment = COURSE.assignment(request.param)
    return {
        "assignment": assignment,
        "points": collect_points(COURSE, assignment),
        "checks": importlib.import_module(f"checks.{assignment.id}"),
        "grader": importlib.import_module(f"graders.{COURSE.grader_path(assignment).stem}"),
        "notebooks": {"solution": COURSE.solution_notebook(assignment), "release": COURSE.release_notebook(assignment)},
    }


# -- one check per grader test, one check cell each ---------------------------------------------------------------

def test_every_grader_test_has_a_public_check_in_the_graders_order(chapter):
    assert chapter["checks"].CHECKS.names == list(chapter["points"])


@pytest.mark.parametrize("side", ["solution", "release"])
def test_one_check_cell_per_grader_test_with_its_points(chapter, side):
    grade_cells = [nbgrader(c) for c in code_cells(chapter["notebooks"][side]) if nbgrader(c).get("grade")]
    assert {meta["grade_id"]: meta["points"] for meta in grade_cells} == chapter["points"]


@pytest.mark.parametrize("side", ["solution", "release"])
def test_no_test_has_two_check_cells(chapter, side):
    ids = [nbgrader(c)["grade_id"] for c in code_cells(chapter["notebooks"][side]) if nbgrader(c).get("grade")]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("side", ["solution", "release"])
def test_every_grade_cell_is_a_locked_call_of_its_check(chapter, side):
    for cell in code_cells(chapter["notebooks"][side]):
        meta = nbgrader(cell)
        if meta.get("grade"):
            assert ("".join(cell["source"]), meta["locked"], meta["solution"]) == \
                (f'check("{meta["grade_id"]}")', True, False)


def test_each_check_cell_follows_the_cell_defining_what_it_checks(chapter):
    checks = chapter["checks"].CHECKS
    defined: set[str] = set()
    for cell in code_cells(chapter["notebooks"]["solution"]):
        meta = nbgrader(cell)
        if meta.get("solution"):
            tree = ast.parse("".join(cell["source"]))
            defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        elif meta.get("grade"):
            assert checks[meta["grade_id"]].subject in defined, meta["grade_id"]


def test_the_checks_are_imported_by_a_locked_cell_before_the_first_check(chapter):
    cells = code_cells(chapter["notebooks"]["release"])
    ids = [nbgrader(c).get("grade_id") for c in cells]
    importer = cells[ids.index(CHECKS_IMPORT_ID)]
    first_check = min(i for i, c in enumerate(cells) if nbgrader(c).get("grade"))
    assert ids.index(CHECKS_IMPORT_ID) < first_check
    assert nbgrader(importer)["locked"]
    assert f"from checks.{chapter['assignment'].id} import check" in "".join(importer["source"])


@pytest.mark.parametrize("side", ["solution", "release"])
def test_grading_never_runs_the_check_cells_or_their_import(chapter, side):
    labels = {cell.label for cell in grading_cells(read_notebook(chapter["notebooks"][side])).cells}
    assert not labels & (set(chapter["points"]) | {CHECKS_IMPORT_ID})


def test_the_grader_uses_the_checks_interface(chapter):
    """One INTERFACE per chapter, in checks/<id>.py: the checks' signatures are read from it, and the grader
    imports the very same object."""
    assert chapter["grader"].INTERFACE is chapter["checks"].INTERFACE
    assert chapter["checks"].CHECKS.signatures == chapter["checks"].INTERFACE.signatures


def test_checks_import_neither_the_course_nor_graders_nor_the_chapters_reference(chapter):
    tree = ast.parse(Path(chapter["checks"].__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    allowed_reference = set(chapter["assignment"].support)
    assert {m for m in imported if m.split(".")[0] in ("course", "graders")} == set()
    assert {m for m in imported if m.split(".")[0] == "reference"} <= allowed_reference


# -- what the checks say --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory):
    cache = seed_tiktoken_cache(tmp_path_factory.mktemp("tiktoken"))
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        del os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = previous


def test_the_solution_passes_every_check(chapter, tiktoken_cache, capfd):
    """Every check passes on the solution, as its check cell runs it: one PASS line each, nothing on stderr, None
    returned (nbgrader would read a number as partial credit), and the student's random state left alone. (One run
    of the checks proves all four: they are the suite's most repeated work.)"""
    namespace = namespace_of(chapter["notebooks"]["solution"])
    checks = chapter["checks"].CHECKS
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    for name in checks.names:
        assert checks.check(name, namespace) is None
    assert torch.equal(torch.get_rng_state(), before)
    out, err = capfd.readouterr()
    assert [line.split()[:2] for line in out.splitlines()] == [["PASS", f"{name}:"] for name in checks.names]
    assert err == ""


def test_the_untouched_release_shows_every_check_to_do(chapter, tiktoken_cache):
    """A stub not written yet is "to do" (not a red error) on a student's first push."""
    namespace = namespace_of(chapter["notebooks"]["release"])
    checks = chapter["checks"].CHECKS
    for name in checks.names:
        outcome = checks.run(name, namespace)
        assert (outcome["status"], outcome["message"].split(":")[0]) == ("todo", "Not implemented yet"), name


def test_check_raises_checkfailed_with_the_message_and_hint(chapter, tiktoken_cache):
    checks = chapter["checks"].CHECKS
    name = checks.names[0]
    with pytest.raises(CheckFailed, match=r"Not implemented yet.*\nHint: "):
        checks.check(name, namespace_of(chapter["notebooks"]["release"]))


def test_check_reads_the_globals_of_its_caller(chapter, tiktoken_cache):
    namespace = namespace_of(chapter["notebooks"]["solution"])
    namespace["check"] = chapter["checks"].check
    name = chapter["checks"].CHECKS.names[0]
    exec(f'check("{name}")', namespace)  # the way a check cell runs in the notebook's kernel


def test_an_unknown_check_name_is_an_error_that_names_the_known_ones(chapter):
    outcome = chapter["checks"].CHECKS.run("test_nothing", {})
    assert (outcome["status"], chapter["checks"].CHECKS.names[0] in outcome["message"]) == ("error", True)


# -- messages of the ch02 checks on a few mistakes ----------------------------------------------------------------

def ch02_namespace(**sources) -> dict:
    """The ch02 solution's namespace with cells run after it; like Jupyter, their source is kept for tracebacks."""
    namespace = namespace_of(COURSE.solution_notebook(COURSE.assignment("ch02_text_data")))
    for label, source in sources.items():
        filename = f"<cell {label}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)
    return namespace


def run_ch02(name: str, namespace: dict) -> dict:
    return importlib.import_module("checks.ch02_text_data").CHECKS.run(name, namespace)


def test_a_wrong_result_fails_with_what_came_out_and_a_hint():
    unsorted = "def build_vocab(tokens, special_tokens=()):\n" \
               "    return {t: i for i, t in enumerate(dict.fromkeys([*tokens, *special_tokens]))}\n"
    namespace = ch02_namespace(bug=unsorted)
    outcome = run_ch02("test_build_vocab", namespace)
    assert outcome["status"] == "failed"
    assert "build_vocab(['b', 'a', 'b']): got {'b': 0, 'a': 1}, expected {'a': 0, 'b': 1}" in outcome["message"]
    assert "\nHint: every distinct token once, in sorted order" in outcome["message"]


def test_an_exception_names_the_students_function_and_line():
    namespace = ch02_namespace(bug="def simple_tokenize(text):\n    x = 1\n    raise ValueError('no tokens')\n")
    outcome = run_ch02("test_simple_tokenize", namespace)
    assert outcome["status"] == "error"
    assert "Your code raised ValueError: no tokens (in simple_tokenize, line 3: `raise ValueError('no tokens')`)" \
        in outcome["message"]


def test_a_changed_signature_is_named():
    namespace = ch02_namespace(bug="def build_vocab(tokens, specials=None):\n    return {}\n")
    outcome = run_ch02("test_build_vocab", namespace)
    assert "`build_vocab` takes (tokens, specials=None), but the notebook's stub takes (tokens, special_tokens=())" \
        in outcome["message"]


def test_the_books_signature_without_the_courses_keyword_only_additions_is_accepted():
    from checks import _expect_signature

    def train_model_simple(model, train_loader, num_epochs):  # the book's: no `progress`
        return model

    _expect_signature("train_model_simple", train_model_simple, "(model, train_loader, num_epochs, *, progress=False)",
                      drop_self=False)


def test_a_missing_positional_parameter_with_a_default_is_still_named():
    from checks import CheckFailed, _expect_signature

    def build_vocab(tokens):
        return {}

    with pytest.raises(CheckFailed, match="takes \\(tokens\\), but the notebook's stub takes"):
        _expect_signature("build_vocab", build_vocab, "(tokens, special_tokens=())", drop_self=False)


def test_a_missing_definition_is_an_error_that_names_it():
    namespace = ch02_namespace()
    del namespace["GPTDatasetV1"]
    outcome = run_ch02("test_dataset_windows", namespace)
    assert (outcome["status"], outcome["missing_name"]) == ("error", "GPTDatasetV1")


def test_warnings_and_stderr_of_student_code_stay_out_of_the_cell(capfd):
    namespace = ch02_namespace(noisy="import sys, warnings\n_tokenize = simple_tokenize\n"
                                     "def simple_tokenize(text):\n"
                                     "    warnings.warn('careful')\n    print('debug', file=sys.stderr)\n"
                                     "    return _tokenize(text)\n")
    importlib.import_module("checks.ch02_text_data").check("test_simple_tokenize", namespace)
    assert capfd.readouterr().err == ""
