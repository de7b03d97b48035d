"""What course.yml no longer says by hand: the support modules (computed from the imports) and the data files.

An assignment's support modules are the reference modules that its solution notebook and its public checks import,
and what those import in turn: the worker holds them and no others, a student repository ships them. Its data files
are the files of data/ that its notebook names; in the course the notebooks read data/ itself, so no copy of them is
committed under solutions/ or assignments/ (a student repository gets its own, written by `course release --out`).
A grader's probes run in the worker: `course validate` checks they import nothing the worker does not hold.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from course.checking import CheckTarget
from course.config import CONFIG_NAME, _scan, load_course, probe_import_problems
from course.errors import ConfigError
from course.grading.runner import worker_spec
from tests.conftest import REPO

COURSE_PARTS = ("course.yml", "solutions", "assignments", "graders", "reference", "checks", "data")


def overlay(tmp_path: Path, files: dict[str, str], config=None) -> Path:
    """A course root linking REPO's files, except `files` (relative path -> text), written in place of (or beside)
    them; `config` replaces course.yml."""
    root = tmp_path / "course"

    def link(source: Path, target: Path) -> None:
        relative = target.relative_to(root).parts
        if not any(Path(name).parts[:len(relative)] == relative for name in files):
            target.symlink_to(source)
        elif source.is_dir():  # a folder that holds a file of `files`: its other entries are linked one by one
            target.mkdir(parents=True)
            for child in sorted(source.iterdir()):
                link(child, target / child.name)

    root.mkdir()
    for name in COURSE_PARTS:
        link(REPO / name, root / name)
    for name, text in files.items():
        (root / name).unlink(missing_ok=True)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    if config is not None:
        (root / CONFIG_NAME).unlink()
        (root / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return root


def with_cell(assignment_id: str, code: str) -> dict[str, str]:
    """The solution notebook of `assignment_id` with one more code cell, as an overlay's file."""
    path = f"solutions/{assignment_id}/{assignment_id}.ipynb"
    notebook = json.loads((REPO / path).read_text(encoding="utf-8"))
    notebook["cells"].append({"cell_type": "code", "metadata": {}, "source": code, "outputs": [],
                              "execution_count": None})
    return {path: json.dumps(notebook)}


def config_error(root: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_course(root)
    assert str(root / CONFIG_NAME) in str(info.value)
    return str(info.value)


def one_assignment(assignment_id: str, **changes) -> dict:
    config = yaml.safe_load((REPO / CONFIG_NAME).read_text(encoding="utf-8"))
    entry = next(a for a in config["assignments"] if a["id"] == assignment_id)
    config["assignments"] = [entry | changes]
    return config


def code_of(course, assignment) -> list[str]:
    """The sources whose imports count: the solution notebook's code cells and the public checks."""
    notebook = json.loads(course.solution_notebook(assignment).read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    return cells + [path.read_text(encoding="utf-8") for path in course.checks_paths(assignment)]


def modules(names: set[str] | frozenset[str]) -> set[str]:
    """The names that are modules of the reference package (`from reference.gpt import GPTModel` also gives
    ?reference.gpt.GPTModel, which is not: the question mark says it may be a name)."""
    names = {name.removeprefix("?") for name in names}
    return {name for name in names if (REPO / Path(*name.split("."))).with_suffix(".py").is_file()}


# -- the support modules -----------------------------------------------------------------------------------------

def test_support_examples(course):
    support = {a.id: [m.removeprefix("reference.") for m in a.support] for a in course.assignments}
    assert support["ch03_attention"] == []
    assert support["ch04_gpt"] == ["attention", "tiktoken_offline"]
    assert support["ch05_pretraining"] == ["attention", "gpt", "text_data", "tiktoken_offline"]
    # Appendix E's notebook imports neither chapter 5 nor chapter 2's text_data: gpt2_weights imports the first in a
    # function's body, which imports the second in one of its own.
    assert {"pretraining", "text_data"} <= set(support["appe_lora"])


@pytest.mark.parametrize("assignment_id", [a["id"] for a in yaml.safe_load(
    (REPO / CONFIG_NAME).read_text(encoding="utf-8"))["assignments"]])
def test_support_is_exactly_what_the_notebook_and_checks_import(course, assignment_id):
    assignment = course.assignment(assignment_id)
    support = set(assignment.support)
    direct = set().union(*(modules(_scan(code)[0]) for code in code_of(course, assignment)))
    assert direct <= support  # everything they import ...
    for module in support:  # ... and what those modules import in turn, wherever in the module ...
        assert modules(_scan(course.module_path(module).read_text(encoding="utf-8"), "reference")[0]) <= support
    reached = direct | set().union(*(modules(_scan(course.module_path(m).read_text(encoding="utf-8"))[0])
                                     for m in support))
    assert support <= reached  # ... and nothing else
    assert assignment.reference not in support


@pytest.mark.parametrize("assignment_id", ["ch03_attention", "ch06_classification"])
def test_the_worker_holds_the_support_modules_and_no_other(course, assignment_id):
    assignment = course.assignment(assignment_id)
    expected = {f"reference/{m.removeprefix('reference.')}.py" for m in assignment.support}
    assert set(worker_spec(course, assignment, device="cpu", isolation="process").support_files) == expected
    checks = {"checks/__init__.py", f"checks/{assignment_id}.py"}
    assert set(CheckTarget.from_course(course, assignment).support_files()) == expected | checks


def test_support_is_not_written_in_course_yml(tmp_path):
    root = overlay(tmp_path, {}, one_assignment("ch03_attention", support=["reference.text_data"]))
    message = config_error(root)
    assert "assignments[0] (ch03_attention).support: not written in course.yml" in message


def test_a_notebook_that_imports_the_graded_module(tmp_path):
    root = overlay(tmp_path, with_cell("ch03_attention", "from reference.attention import MultiHeadAttention"))
    message = config_error(root)
    assert "(ch03_attention).reference: reference.attention is the graded module" in message
    assert "solutions/ch03_attention/ch03_attention.ipynb (cell " in message


def test_a_notebook_that_imports_the_graded_module_through_another(tmp_path):
    root = overlay(tmp_path, with_cell("ch04_gpt", "def later():\n    from reference import kv_cache\n"))
    message = config_error(root)
    assert "(ch04_gpt).reference: reference.gpt is the graded module" in message
    assert "imports it through reference.kv_cache" in message


def test_public_checks_that_import_the_graded_module(tmp_path):
    checks = (REPO / "checks" / "ch04_gpt.py").read_text(encoding="utf-8") + "\nfrom reference.gpt import GPTModel\n"
    message = config_error(overlay(tmp_path, {"checks/ch04_gpt.py": checks}))
    assert "(ch04_gpt).reference: reference.gpt is the graded module" in message
    assert "checks/ch04_gpt.py imports it" in message


def test_a_notebook_that_imports_a_module_that_does_not_exist(tmp_path):
    root = overlay(tmp_path, with_cell("ch03_attention", "import reference.no_such_chapter"))
    message = config_error(root)
    assert "(ch03_attention).notebook: solutions/ch03_attention/ch03_attention.ipynb (cell " in message
    assert "imports reference.no_such_chapter, but reference/no_such_chapter.py does not exist" in message


def test_a_name_imported_from_a_module_is_not_a_module(tmp_path):
    root = overlay(tmp_path, with_cell("ch04_gpt", "%matplotlib inline\nfrom reference.attention import nothing\n"
                                                   "!ls\nfrom reference import tiktoken_offline, __doc__"))
    assert load_course(root).assignment("ch04_gpt").support == ["reference.attention", "reference.tiktoken_offline"]


def test_a_notebook_that_is_not_json(tmp_path):
    root = overlay(tmp_path, {"solutions/ch03_attention/ch03_attention.ipynb": "{not json"})
    assert "(ch03_attention).notebook: solutions/ch03_attention/ch03_attention.ipynb: not a readable notebook" in (
        config_error(root))


def test_checks_that_do_not_exist(tmp_path):
    root = overlay(tmp_path, {}, one_assignment("ch03_attention", id="ch03_other"))
    message = config_error(root)
    assert "(ch03_other).id: the public checks checks/ch03_other.py do not exist" in message


# -- the probes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("assignment_id", [a["id"] for a in yaml.safe_load(
    (REPO / CONFIG_NAME).read_text(encoding="utf-8"))["assignments"]])
def test_the_probes_import_only_support_modules(course, assignment_id):
    assignment = course.assignment(assignment_id)
    assert probe_import_problems(course, assignment) == []
    # The same, from the probes the grader really has (imported ones included), not from reading its source.
    grader = importlib.import_module(f"graders.{assignment_id}")
    probes = [value for value in vars(grader).values() if hasattr(value, "probe_source")]
    imported = set().union(*(modules(_scan(p.probe_source)[0]) for p in probes))
    assert imported <= set(assignment.support)


def test_a_probe_that_imports_a_module_the_worker_does_not_hold(tmp_path):
    helper = ("from course.grading import probe\n\n\n@probe\ndef adapt(student):\n"
              "    from reference.lora import LoRALayer\n    return LoRALayer\n")
    grader = (REPO / "graders" / "ch03_attention.py").read_text(encoding="utf-8") + (
        "\nfrom graders.helper import adapt  # noqa: E402,F401\n")
    root = overlay(tmp_path, {"graders/helper.py": helper, "graders/ch03_attention.py": grader})
    course = load_course(root)
    problems = probe_import_problems(course, course.assignment("ch03_attention"))
    assert problems == ["graders/helper.py: probe adapt imports reference.lora, which the worker of ch03_attention "
                        "does not hold (its support modules are what solutions/ch03_attention/ch03_attention.ipynb "
                        "and checks/ch03_attention.py import: none)"]


# -- the data files ------------------------------------------------------------------------------------------------

def test_data_files_are_those_the_notebook_names(course):
    data = {a.id: a.data for a in course.assignments if a.data}
    assert data == {
        "ch05_pretraining": ["corpus/the-lamplighters-apprentice.txt", "tiny-gpt2-logits.safetensors",
                             "tiny-gpt2.safetensors"],
        "appd_training_loop": ["corpus/the-lamplighters-apprentice.txt"],
        "ch06_classification": ["sms_spam_sample.tsv"],
        "appe_lora": ["sms_spam_sample.tsv"],
        "ch07_instruction": ["instruction_data.json"],
        "ch07_dpo": ["instruction_data.json", "preference_data.json"],
        "ch05_llama": ["tiny-llama32-logits.safetensors", "tiny-llama32.safetensors"],
        "ch05_qwen3": ["tiny-qwen3-logits.safetensors", "tiny-qwen3.safetensors"],
    }
    ch05 = course.assignment("ch05_pretraining")
    assert course.data_files(ch05) == [REPO / "data" / "corpus" / "the-lamplighters-apprentice.txt",
                                       REPO / "data" / "tiny-gpt2-logits.safetensors",
                                       REPO / "data" / "tiny-gpt2.safetensors"]


def test_an_explicit_data_list_wins(tmp_path):
    root = overlay(tmp_path, {}, one_assignment("ch03_attention", data=["bpe/mixed_text.txt"]))
    assert load_course(root).assignment("ch03_attention").data == ["bpe/mixed_text.txt"]


@pytest.mark.parametrize("name", ["no_such_file.txt", "../course.yml", "corpus", "/etc/hostname"])
def test_an_explicit_data_file_that_is_not_in_data(tmp_path, name):
    message = config_error(overlay(tmp_path, {}, one_assignment("ch03_attention", data=[name])))
    assert f"assignments[0] (ch03_attention).data: {name!r} is not a file of data/" in message


def test_a_data_file_name_that_data_holds_twice(tmp_path):
    root = overlay(tmp_path, {"data/extra/sms_spam_sample.tsv": "ham\tHello\n"})
    message = config_error(root)
    assert ("(ch06_classification).data: solutions/ch06_classification/ch06_classification.ipynb names "
            "sms_spam_sample.tsv, which data/ holds 2 times (extra/sms_spam_sample.tsv, sms_spam_sample.tsv)"
            ) in message


def test_no_copy_of_a_data_file_is_kept_beside_a_solution_notebook():
    """data/ is the one source: the solution notebooks read it; the release (generated, checked by
    `course release --check`) and a student repository get copies."""
    data = {path.read_bytes(): path for path in (REPO / "data").rglob("*") if path.is_file()}
    names = {path.name for path in (REPO / "data").rglob("*") if path.is_file()} - {"README.md"}
    for path in (REPO / "solutions").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and ".ipynb_checkpoints" not in path.parts:
            assert path.name not in names, path
            assert path.read_bytes() not in data, path


def test_the_release_holds_each_data_file_of_its_assignment(course):
    for assignment in course.assignments:
        release = course.root / "assignments" / assignment.id
        for data in course.data_files(assignment):
            assert (release / data.name).read_bytes() == data.read_bytes(), (assignment.id, data.name)


def test_every_data_file_named_is_read_by_a_demo_cell_only(course):
    """Grading runs the setup and solution cells, never the demos: it needs no data file beside the notebook."""
    for assignment in course.assignments:
        notebook = json.loads(course.solution_notebook(assignment).read_text(encoding="utf-8"))
        graded = ["".join(c["source"]) for c in notebook["cells"]
                  if c["cell_type"] == "code" and c.get("metadata", {}).get("nbgrader")]
        names = {Path(name).name for name in assignment.data}
        strings = set().union(*(_scan(code)[1] for code in graded), set())
        assert names & strings == set(), assignment.id
