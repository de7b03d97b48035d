"""`course release --all --out DIR`: one self-contained student repository per assignment of course.yml.

What a repository holds (and never: solution code, a hidden grader, the reference module of its own chapter),
its course.yml and how `course` finds it from any folder inside, what `course` says where it cannot help, the
requirements file, and the GitHub workflow (linted with actionlint). The repository at work, in a fresh
virtual environment: tests/test_student_venv.py.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from course.config import CONFIG_NAME, StudentRepository, load_config
from course.errors import ConfigError
from course.grading.runner import collect_points
from course.student_repo import (
    CHECKS_STEP,
    REQUIREMENTS,
    TEMPLATES,
    TORCH_INDEX,
    WORKFLOW,
    StudentTemplate,
    fill,
    shipped_modules,
)
from tests.conftest import REPO, load_json, run_cli

COURSE = load_config(REPO)
REPORTER = "classroom-resources/autograding-grading-reporter@"
ASSIGNMENTS = [a.id for a in COURSE.assignments]


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("students") / "repositories"
    done = run_cli("release", "--all", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(params=ASSIGNMENTS)
def repo(request, released) -> tuple:
    return COURSE.assignment(request.param), released / request.param


def text_files(root: Path) -> dict[Path, str]:
    """Every file's text; a binary file (a tiny checkpoint) is searched too, its undecodable bytes replaced."""
    return {path: path.read_bytes().decode("utf-8", errors="replace") for path in root.rglob("*") if path.is_file()}


def code_lines(text: str, minimum: int = 40) -> set[str]:
    """Distinctive lines of code: long enough to be specific; not comments, docstring quotes or imports."""
    return {line.strip() for line in text.splitlines() if len(line.strip()) >= minimum
            and not line.strip().startswith(("#", '"""', "import ", "from "))}


# -- what a student repository holds ------------------------------------------------------------------------------

def test_release_all_writes_one_repository_per_assignment(released):
    assert sorted(p.name for p in released.iterdir()) == sorted(ASSIGNMENTS)


def test_repository_layout(repo):
    assignment, root = repo
    expected = {assignment.notebook, "checks", "reference", "course", CONFIG_NAME, "pyproject.toml",
                "requirements.txt", "README.md", ".github", ".gitignore"}
    # Besides the notebook, whatever its release folder holds (e.g. the text chapter 5's demos train on).
    data = {p.name for p in COURSE.release_notebook(assignment).parent.iterdir()} - {assignment.notebook}
    assert {p.name for p in root.iterdir()} == expected | data


def test_the_templates_of_the_readme_and_workflow_stay_behind(repo):
    _, root = repo
    assert (root / "course").is_dir()
    assert not (root / "course" / TEMPLATES.name).exists()


def test_the_helpers_of_the_graders_probes_stay_behind(repo):
    """probe_kit's modules serve the hidden graders' probes; `course check` loads the package, empty."""
    _, root = repo
    probe_kit = root / "course" / "worker" / "runtime" / "probe_kit"
    assert [p.name for p in probe_kit.iterdir()] == ["__init__.py"]
    assert not (root / "graders").exists()


def test_the_notebook_is_the_committed_release(repo):
    assignment, root = repo
    assert (root / assignment.notebook).read_bytes() == COURSE.release_notebook(assignment).read_bytes()


def test_the_public_checks_are_shipped(repo):
    assignment, root = repo
    assert sorted(p.name for p in (root / "checks").iterdir()) == sorted(["__init__.py", f"{assignment.id}.py"])


def test_the_support_modules_are_shipped_unchanged(repo):
    assignment, root = repo
    for module in shipped_modules(assignment):
        relative = Path(*module.split(".")).with_suffix(".py")
        assert (root / relative).read_bytes() == (REPO / relative).read_bytes(), module


def test_no_solution_markers_anywhere(repo):
    _, root = repo
    assert [p for p, text in text_files(root).items() if "BEGIN SOLUTION" in text or "END SOLUTION" in text] == []


def test_no_line_of_the_solutions_code_anywhere(repo):
    assignment, root = repo
    notebook = json.loads(COURSE.solution_notebook(assignment).read_text(encoding="utf-8"))
    solution = "\n".join(re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION",
                                    "\n".join("".join(c["source"]) for c in notebook["cells"]), re.S))
    lines = code_lines(solution, minimum=24)
    # Lines the support code of earlier chapters already holds are the student's anyway (appendix D's loop
    # repeats chapter 5's, which it ships as support): the leak to look for is of the rest.
    for module in shipped_modules(assignment):
        lines -= code_lines((REPO / Path(*module.split("."))).with_suffix(".py").read_text(encoding="utf-8"), 24)
    assert lines  # the solution has code worth looking for
    assert {str(p): lines & code_lines(text, 24) for p, text in text_files(root).items()
            if lines & code_lines(text, 24)} == {}


def test_no_hidden_grader(repo):
    _, root = repo
    lines = set().union(*(code_lines(COURSE.grader_path(a).read_text(encoding="utf-8")) for a in COURSE.assignments))
    # Lines a grader shares with code that students may see anyway (the course package, the support modules).
    lines -= set().union(*(code_lines(p.read_text(encoding="utf-8")) for folder in ("course", "checks", "reference")
                           for p in (REPO / folder).rglob("*.py")))
    assert not (root / "graders").exists()
    assert {str(p) for p, text in text_files(root).items() if lines & code_lines(text)} == set()


def test_no_reference_module_of_its_own_chapter(repo):
    assignment, root = repo
    own = Path(*assignment.reference.split(".")).with_suffix(".py")
    assert not (root / own).exists()
    lines = code_lines((REPO / own).read_text(encoding="utf-8"))
    # Lines it shares with what is shipped anyway (the course package, the support modules: chapter 5's generate
    # extends chapter 4's generate_text_simple) do not tell it apart.
    shipped = [REPO / Path(*m.split(".")).with_suffix(".py") for m in shipped_modules(assignment)]
    lines -= set().union(*(code_lines(p.read_text(encoding="utf-8")) for p in [*shipped,
                                                                               *(REPO / "course").rglob("*.py")]))
    assert {str(p) for p, text in text_files(root).items() if lines & code_lines(text)} == set()


# -- the README and workflow templates (course/templates/) -----------------------------------------------------------

def test_a_template_fills_lowercase_names_and_leaves_every_other_dollar():
    text = 'python-version: "$python" in ${folder}s, $$python, "$GITHUB_OUTPUT", ${{ steps.$step.outputs.result }}\n'
    assert StudentTemplate(text).substitute(python="3.11", folder="venv", step="checks") == \
        'python-version: "3.11" in venvs, $python, "$GITHUB_OUTPUT", ${{ steps.checks.outputs.result }}\n'


def test_a_placeholder_without_a_value_or_a_value_without_a_placeholder_is_an_error():
    with pytest.raises(KeyError, match="checks_step"):
        fill("student_workflow.yml", python="3.11", checks_results="CHECKS_RESULTS")
    with pytest.raises(KeyError, match="no placeholder for colour"):
        fill("student_workflow.yml", python="3.11", checks_step="checks", checks_results="CHECKS_RESULTS",
             colour="blue")


def test_the_templates_are_package_data():
    """An installed course (pip install .) finds them: pyproject.toml's package-data holds every template."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["course"]
    files = [path.relative_to(REPO / "course").as_posix() for path in TEMPLATES.iterdir()]
    assert files
    assert [f for f in files if not any(fnmatch.fnmatch(f, glob) for glob in globs)] == []


# -- course.yml of a student repository ---------------------------------------------------------------------------

def test_course_finds_the_repository_from_a_subfolder(repo, monkeypatch):
    assignment, root = repo
    monkeypatch.chdir(root / "checks")
    loaded = load_config()
    assert (type(loaded), loaded.root, loaded.assignment.id) == (StudentRepository, root.resolve(), assignment.id)


def test_its_tests_and_points_are_the_graders(repo):
    assignment, root = repo
    loaded = load_config(root)
    assert (loaded.assignment.tests, loaded.assignment.points) == (collect_points(COURSE, assignment),
                                                                   assignment.points)


def broken_copy(root: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("course"))
    config = yaml.safe_load((copy / CONFIG_NAME).read_text(encoding="utf-8"))
    change(config)
    (copy / CONFIG_NAME).write_text(yaml.safe_dump(config), encoding="utf-8")
    return copy


def config_error(root: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(root)
    return str(info.value)


def test_an_unknown_key_is_named(released, tmp_path):
    copy = broken_copy(released / ASSIGNMENTS[0], tmp_path, lambda c: c["assignment"].update(notebok="x.ipynb"))
    assert "assignment.notebok: unknown key" in config_error(copy)


def test_points_that_do_not_add_up_are_named(released, tmp_path):
    copy = broken_copy(released / ASSIGNMENTS[0], tmp_path, lambda c: c["assignment"].update(points=99))
    assert re.search(r"assignment\.points: 99, but assignment\.tests are worth \d+ points", config_error(copy))


def test_missing_checks_are_named(released, tmp_path):
    copy = broken_copy(released / ASSIGNMENTS[0], tmp_path, lambda c: None)
    shutil.rmtree(copy / "checks")
    assert f"the public checks checks/{ASSIGNMENTS[0]}.py do not exist" in config_error(copy)


# -- what `course` says where it cannot help ----------------------------------------------------------------------

def test_grade_in_a_student_repository_points_to_course_check(released):
    done = run_cli("grade", ".", cwd=released / ASSIGNMENTS[0])
    assert (done.returncode, "Run `course check`" in done.stderr) == (2, True)


def test_validate_in_a_student_repository_checks_its_course_yml(released):
    done = run_cli("validate", cwd=released / ASSIGNMENTS[0] / "checks")
    assert (done.returncode, "course.yml of this student repository is valid" in done.stdout) == (0, True)


def test_no_course_yml_says_where_to_run(tmp_path):
    if any((folder / CONFIG_NAME).is_file() for folder in tmp_path.parents):
        pytest.skip(f"a {CONFIG_NAME} exists above {tmp_path}")
    done = run_cli("check", cwd=tmp_path)
    assert (done.returncode, "run `course` inside your assignment's repository" in done.stderr) == (3, True)


def test_release_out_needs_an_assignment(tmp_path):
    done = run_cli("release", "--out", str(tmp_path / "x"))
    assert (done.returncode, "--all" in done.stderr) == (2, True)


def test_release_out_never_writes_into_a_folder_in_use(tmp_path):
    (tmp_path / "work.txt").write_text("a student's work", encoding="utf-8")
    done = run_cli("release", ASSIGNMENTS[0], "--out", str(tmp_path))
    assert (done.returncode, "is not an empty folder" in done.stderr) == (2, True)


# -- requirements and workflow ------------------------------------------------------------------------------------

def test_requirements_take_torch_from_the_cpu_index(repo):
    _, root = repo
    lines = (root / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert {f"--extra-index-url {TORCH_INDEX}", "torch==2.13.0", "-e ."} <= set(lines)


def test_requirements_use_the_courses_own_pins():
    course = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = {re.split(r"[<>=!~]", line, maxsplit=1)[0]: line for line in course}
    shared = [line for line in REQUIREMENTS if re.split(r"[<>=!~]", line, maxsplit=1)[0] in pins]
    assert shared == [pins[re.split(r"[<>=!~]", line, maxsplit=1)[0]] for line in shared]


def test_workflow_passes_actionlint(repo):
    _, root = repo
    actionlint = shutil.which("actionlint")
    assert actionlint, "actionlint comes with the dev extra (pip install -e '.[dev]')"
    done = subprocess.run([actionlint, "-no-color", WORKFLOW], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_hands_the_check_steps_output_to_the_reporter(repo):
    _, root = repo
    steps = yaml.safe_load((root / WORKFLOW).read_text(encoding="utf-8"))["jobs"]["run-autograding-tests"]["steps"]
    reporter = next(s for s in steps if s.get("uses", "").startswith(REPORTER))
    runner = reporter["with"]["runners"]
    # The reporter reads <RUNNER ID IN CAPITALS>_RESULTS; the check step writes the output `result`.
    assert (runner, reporter["env"]) == (CHECKS_STEP, {f"{CHECKS_STEP.upper()}_RESULTS":
                                                       f"${{{{ steps.{CHECKS_STEP}.outputs.result }}}}"})


def test_course_check_runs_from_a_subfolder_of_a_student_repository(released, tmp_path):
    root = released / "ch03_attention" if "ch03_attention" in ASSIGNMENTS else released / ASSIGNMENTS[0]
    done = run_cli("check", "--json", str(tmp_path / "checks.json"), cwd=root / "reference")
    result = load_json(tmp_path / "checks.json")
    assert done.returncode == 0, done.stderr
    assert (result["kind"], result["score"], [t["name"] for t in result["tests"]]) == \
        ("check", 0, list(load_config(root).assignment.tests))


def test_a_later_chapters_repository_names_the_solutions_it_ships():
    """Chapter 7's repository holds chapter 4's GPTModel (its support code): `course release --out` warns."""
    from course.config import load_course
    from course.student_repo import earlier_solutions

    course = load_course(REPO)
    assert earlier_solutions(course, course.assignment("ch07_dpo"))["reference.gpt"] == "ch04_gpt"
    assert earlier_solutions(course, course.assignment("ch02_text_data")) == {}


def test_the_readme_gives_a_way_to_install_when_pytorchs_index_is_unreachable(released):
    """The fallback drops requirements.txt's one index line; everything else in the file stays."""
    readme = (released / "ch03_attention" / "README.md").read_text(encoding="utf-8")
    assert "sed '/extra-index-url/d' requirements.txt > requirements-pypi.txt" in readme
    requirements = (released / "ch03_attention" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert [line for line in requirements if "extra-index-url" in line] == [f"--extra-index-url {TORCH_INDEX}"]
