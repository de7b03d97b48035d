"""Student repositories at work, in a fresh virtual environment made from requirements.txt alone.

`course release --all --out DIR` writes one repository per assignment; the workflow's own install step
(`python -m pip install -r requirements.txt`) builds ONE virtual environment shared by them (pip installs
torch 2.13.0 from the CPU index, here a local file). The step runs once per distinct requirements file: the
repositories whose file is the same as one already installed would only hear "Requirement already satisfied".

For the chapters in RUN_WHOLE (one per kind of dependency), the completed notebook (the release with the
solution's code typed into its stubs) must run top to bottom offline with no error and nothing on stderr in any
cell: nbgrader's Validate (its Validator, all cells) reports success, and the workflow's check step, run as GitHub
would run it, passes every check. For every chapter, whatever its notebook, checks and support code import is
imported in the fresh environment.

For the chapters in BUGS, two more notebooks show that the public checks agree in the three places they run:
the untouched release, on which Validate fails on every check cell, and a partly correct one (some stubs done,
one with a bug, the rest untouched). In each: the notebook's check cells (executed by nbgrader's Validator
through nbclient, in a kernel of the fresh environment), `course check` and the workflow's commands (whose
outputs the reporter and Classroom 50 read) give the same verdict per grader test, the same message, and
payloads that decode and validate. That agreement is the shared machinery's (one checks module per chapter,
one reporter), so two chapters show it; that every chapter's checks fail on its untouched release and pass on
its solution is tested for all of them, faster, in test_public_checks.py.

"Offline": the kernel and `course check` run with an unreachable proxy and an empty tiktoken cache, so the
notebook must find GPT-2's files in the installed packages (the notebook's own tokenizer cell). The kernel
runs with COURSE_QUICK=1, as in test_solution_notebooks.py, so that demos that train stay short.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from nbgrader.validator import Validator
from traitlets.config import Config

from course.config import load_config
from course.reporters.autograding import decode_payload
from course.student_repo import CHECKS_STEP, WORKFLOW
from tests.conftest import REPO, run_cli
from tests.test_reporters import PAYLOAD_KEYS, PAYLOAD_TEST_KEYS, RESULT_KEYS, RESULT_TEST_KEYS

COURSE = load_config(REPO)
ASSIGNMENTS = [a.id for a in COURSE.assignments]
KERNEL = "course-student-venv"
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": ""}
# A bug per chapter for the partly correct notebook: (solution cell, code in it, what replaces that code).
BUGS = {
    "ch02_text_data": ("build_vocab", "sorted(set(tokens))", "list(dict.fromkeys(tokens))"),
    "ch03_attention": ("self_attention_v2", " / keys.shape[-1] ** 0.5", ""),
}
TIMINGS: dict[str, float] = {}


def workflow_steps(root: Path) -> list[dict]:
    return yaml.safe_load((root / WORKFLOW).read_text(encoding="utf-8"))["jobs"]["run-autograding-tests"]["steps"]


def step_command(root: Path, *, step_id: str | None = None, runs: str | None = None) -> str:
    for step in workflow_steps(root):
        if (step_id and step.get("id") == step_id) or (runs and runs in step.get("run", "")):
            return step["run"]
    raise AssertionError(f"no such step in {WORKFLOW}")


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """The released repositories, the shared virtual environment and a kernel that runs in it."""
    base = tmp_path_factory.mktemp("student-venv")
    released = base / "repositories"
    done = run_cli("release", "--all", "--out", str(released))
    assert done.returncode == 0, done.stderr
    venv = base / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    TIMINGS["python -m venv"] = time.monotonic() - started
    path = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
    # PIP_RETRIES=0: this machine reaches PyPI's mirror but not download.pytorch.org; without it pip retries that
    # index for every package. PIP_NO_COMPILE: byte-compiling torch's sources doubles the install time.
    env = {**os.environ, "PATH": path, "PIP_RETRIES": "0", "PIP_NO_COMPILE": "1", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    installed: set[str] = set()
    for assignment_id in ASSIGNMENTS:  # the workflow's install step, once per distinct requirements file
        root = released / assignment_id
        requirements = (root / "requirements.txt").read_text(encoding="utf-8")
        if requirements in installed:
            continue
        installed.add(requirements)
        step_started = time.monotonic()
        done = subprocess.run(["bash", "-c", step_command(root, runs="pip install")], cwd=root, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        TIMINGS[f"install step in {assignment_id}"] = time.monotonic() - step_started
    TIMINGS["fresh virtual environment, in all"] = time.monotonic() - started
    kernels = base / "jupyter" / "kernels" / KERNEL
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "student repository venv", "language": "python"}), encoding="utf-8")
    cache = base / "tiktoken-cache"  # empty: the notebook and `course check` must seed it from the packages
    cache.mkdir()
    run_env = {**OFFLINE, "COURSE_QUICK": "1", "JUPYTER_PATH": str(base / "jupyter"), "TIKTOKEN_CACHE_DIR": str(cache)}
    yield {"root": released, "venv": venv, "path": path, "env": run_env, "base": base}
    print("\n" + "\n".join(f"{what}: {seconds:.1f} s" for what, seconds in TIMINGS.items()))


# -- the notebooks --------------------------------------------------------------------------------------------

def notebook_variant(assignment, variant: str) -> dict:
    """The release notebook, with the solution's code typed into all, some or none of its stubs."""
    release = json.loads(COURSE.release_notebook(assignment).read_text(encoding="utf-8"))
    solution = json.loads(COURSE.solution_notebook(assignment).read_text(encoding="utf-8"))
    code = {}
    for cell in solution["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader") or {}
        if meta.get("solution"):
            lines = "".join(cell["source"]).splitlines(True)
            code[meta["grade_id"]] = "".join(line for line in lines if line.strip() not in
                                             ("### BEGIN SOLUTION", "### END SOLUTION"))
    if variant == "untouched":
        return release
    chosen = list(code) if variant == "complete" else list(code)[: (len(code) + 1) // 2]
    bug = BUGS.get(assignment.id) if variant == "partial" else None
    for cell in release["cells"]:
        grade_id = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
        if grade_id in chosen:
            source = code[grade_id]
            if bug and bug[0] == grade_id:
                assert bug[1] in source, bug
                source = source.replace(bug[1], bug[2])
            cell["source"] = source
    return release


def validate(notebook: Path, env: dict) -> dict:
    """nbgrader's Validate on `notebook`, every code cell included, in the fresh environment's kernel; returns
    nbgrader's result ({} for success; else "failed": [{"source", "raw_error", ...}])."""
    config = Config()
    config.Execute.kernel_name = KERNEL
    config.Execute.timeout = 120
    config.Validator.validate_all = True
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return Validator(config=config).validate(str(notebook))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_variant(students, assignment, variant: str) -> dict:
    """Write the notebook into its repository, then run nbgrader's Validate and the workflow's check step on
    it; returns what each side saw."""
    root = students["root"] / assignment.id
    outputs = students["base"] / f"{assignment.id}-{variant}"
    outputs.mkdir()
    notebook = root / assignment.notebook
    notebook.write_text(json.dumps(notebook_variant(assignment, variant), indent=1), encoding="utf-8")
    for name in ("result.json", "checks.json"):
        (root / name).unlink(missing_ok=True)
    env = {**os.environ, **students["env"], "PATH": students["path"], "GITHUB_OUTPUT": str(outputs / "output"),
           "GITHUB_STEP_SUMMARY": str(outputs / "summary.md")}
    started = time.monotonic()
    # One after the other, not side by side: with the rest of the suite in a second process, the two competed
    # for the cores, and once the workflow's step gave appendix A's completed notebook 13/16 (not reproduced;
    # a check that does not pass now shows its status and message below).
    validated = validate(notebook, students["env"])
    step = subprocess.run(["bash", "-c", step_command(root, step_id=CHECKS_STEP)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    stdout, stderr = step.stdout, step.stderr
    TIMINGS[f"{assignment.id} {variant}: Validate and the workflow's check step"] = time.monotonic() - started
    assert step.returncode == 0, stdout + stderr
    checks = json.loads((root / "checks.json").read_text(encoding="utf-8"))
    TIMINGS[f"{assignment.id} {variant}: course check"] = checks["duration"]
    output = dict(line.split("=", 1) for line in (outputs / "output").read_text(encoding="utf-8").splitlines())
    failed_cells = {}
    for cell in validated.get("failed", []):
        match = re.fullmatch(r'check\("(\w+)"\)', cell["source"])
        if match:
            failed_cells[match.group(1)] = cell["raw_error"]
    return {"validated": validated, "failed_cells": failed_cells, "checks": checks, "stdout": stdout,
            "payload": decode_payload(output["result"]),
            "result": json.loads((root / "result.json").read_text(encoding="utf-8")),
            "summary": (outputs / "summary.md").read_text(encoding="utf-8"),
            "tests": load_config(root).assignment.tests}


VARIANTS = ["complete", "untouched", "partial"]
_RUNS: dict[tuple[str, str], dict] = {}


def run_once(students, assignment_id: str, variant: str) -> dict:
    if (assignment_id, variant) not in _RUNS:
        _RUNS[assignment_id, variant] = run_variant(students, COURSE.assignment(assignment_id), variant)
    return _RUNS[assignment_id, variant]


# The chapters whose completed notebook runs top to bottom in the fresh environment: one per kind of dependency
# and set-up (tiktoken's files offline; pandas and the SMS data; multiprocessing for DDP; the preference data and
# the tokenizer of chapter 7). Every other chapter's solution runs top to bottom in test_solution_notebooks.py,
# its checks pass on its solution in test_public_checks.py, and every module its notebook, its checks and its
# support code import is imported in the fresh environment below.
RUN_WHOLE = ["ch02_text_data", "ch06_classification", "ch07_dpo", "appa_pytorch"]


@pytest.fixture(scope="module", params=RUN_WHOLE)
def completed(request, students):
    return run_once(students, request.param, "complete")


def top_level(tree: ast.Module) -> set[ast.AST]:
    """The statements a module runs when imported: its body, and what `try`, `if` and `with` at the top hold."""
    found, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        found.add(node)
        if isinstance(node, ast.Try | ast.If | ast.With):
            todo += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                     *(item for handler in getattr(node, "handlers", []) for item in handler.body)]
    return found


def optional_imports(tree: ast.AST) -> set[ast.AST]:
    """The imports in the body of a `try` whose handler catches ImportError: the code runs on without them."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
                for handler in node.handlers):
            found |= {n for statement in node.body for n in ast.walk(statement)
                      if isinstance(n, ast.Import | ast.ImportFrom)}
    return found


def third_party_imports(root: Path) -> set[str]:
    """The top-level modules a student repository's notebook, checks and support code import that it does not
    hold itself (torch, tiktoken, pandas, ...). The `course` package is the same in every repository: the
    workflow's check step of the RUN_WHOLE chapters runs it."""
    sources = [path.read_text(encoding="utf-8") for folder in ("checks", "reference") for path in
               (root / folder).rglob("*.py")]
    notebook = json.loads((root / next(p.name for p in root.glob("*.ipynb"))).read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    sources += cells
    found = set()
    for text in sources:
        try:
            tree = ast.parse(text)
        except SyntaxError:  # a cell with IPython syntax
            continue
        # The notebook's code whole; of the modules, what they import when imported (a function's own import
        # runs only when called: e.g. safetensors, for GPT-2's weights, which no notebook loads offline).
        nodes = ast.walk(tree) if text in cells else (n for n in ast.walk(tree) if n in top_level(tree))
        optional = optional_imports(tree)  # e.g. `tokenizers`, for the real Qwen3 weights' tokenizer only
        for node in (n for n in nodes if n not in optional):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    own = {path.name.removesuffix(".py") for path in root.iterdir()}
    return {name for name in found - own if name not in sys.stdlib_module_names and name != "__future__"}


def test_every_module_the_repositories_import_is_installed(students):
    """Every chapter's notebook, checks and support code find what they import in the environment that
    requirements.txt alone builds."""
    names = sorted(set().union(*(third_party_imports(students["root"] / a) for a in ASSIGNMENTS)))
    assert {"torch", "tiktoken", "pandas"} <= set(names)
    done = subprocess.run([str(students["venv"] / "bin" / "python"), "-c", f"import {', '.join(names)}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **students["env"]})
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module", params=list(BUGS))
def runs(request, students):
    return {variant: run_once(students, request.param, variant) for variant in VARIANTS}


# -- the completed notebook runs top to bottom, offline -----------------------------------------------------------

def test_completed_notebook_runs_top_to_bottom_offline_and_validates(completed):
    assert completed["validated"] == {}


def test_completed_notebook_passes_every_check_in_the_workflow(completed):
    not_passed = {t["name"]: (t["status"], t.get("message")) for t in completed["checks"]["tests"]
                  if t["status"] != "passed"}
    assert not_passed == {}


def test_untouched_release_fails_validate_on_every_check_cell(runs):
    assert set(runs["untouched"]["failed_cells"]) == set(runs["untouched"]["tests"])


def test_partly_correct_notebook_mixes_passes_failures_and_stubs_to_do(runs):
    statuses = {t["status"] for t in runs["partial"]["checks"]["tests"]}
    assert statuses == {"passed", "failed", "todo"}


# -- the three places agree --------------------------------------------------------------------------------------

def passed_in_notebook(run) -> dict[str, bool]:
    return {name: name not in run["failed_cells"] for name in run["tests"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_course_check_agrees_with_the_notebooks_check_cells(runs, variant):
    run = runs[variant]
    assert {t["name"]: t["status"] == "passed" for t in run["checks"]["tests"]} == passed_in_notebook(run)


@pytest.mark.parametrize("variant", VARIANTS)
def test_course_check_says_what_the_check_cell_said(runs, variant):
    run = runs[variant]
    messages = {t["name"]: f"CheckFailed: {t['message']}" for t in run["checks"]["tests"] if t["status"] != "passed"}
    assert messages == run["failed_cells"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_autograding_payload_agrees(runs, variant):
    run = runs[variant]
    assert {t["name"]: t["status"] == "pass" for t in run["payload"]["tests"]} == passed_in_notebook(run)


@pytest.mark.parametrize("variant", VARIANTS)
def test_classroom50_result_agrees(runs, variant):
    run = runs[variant]
    assert {t["test-name"]: t["passed"] for t in run["result"]["tests"]} == passed_in_notebook(run)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_job_summary_agrees(runs, variant):
    run = runs[variant]
    rows = re.findall(r"^\| (?:✅|❌|⏱️|⬜) (\w+(?: do)?) \| `(\w+)` \|", run["summary"], re.M)
    assert {name: status == "pass" for status, name in rows} == passed_in_notebook(run)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_progress_table_agrees(runs, variant):
    run = runs[variant]
    rows = re.findall(r"^  (PASS|FAIL|ERROR|TIMEOUT|TO DO) +\S+ +(\w+)$", run["stdout"], re.M)
    assert {name: status == "PASS" for status, name in rows} == passed_in_notebook(run)


# -- the payloads decode and validate ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_autograding_payload_is_what_the_reporter_reads(runs, variant):
    payload = runs[variant]["payload"]
    assert (set(payload), payload["version"]) == (PAYLOAD_KEYS, 1)
    assert all(set(test) == PAYLOAD_TEST_KEYS for test in payload["tests"])
    assert payload["max_score"] == sum(runs[variant]["tests"].values())
    assert payload["status"] == ("pass" if variant == "complete" else "fail")


@pytest.mark.parametrize("variant", VARIANTS)
def test_classroom50_result_follows_the_contract(runs, variant):
    result = runs[variant]["result"]
    assert (set(result), result["schema"]) == (RESULT_KEYS, "classroom50/result/v1")
    assert all(RESULT_TEST_KEYS <= set(test) for test in result["tests"])
    assert result["score"] == sum(t["score"] for t in result["tests"])
    assert result["max-score"] == sum(runs[variant]["tests"].values())


def test_scores_are_the_points_of_the_passing_checks(runs):
    run = runs["partial"]
    expected = sum(points for name, points in run["tests"].items() if passed_in_notebook(run)[name])
    assert (sum(t["score"] for t in run["payload"]["tests"]), run["result"]["score"], run["checks"]["score"]) == \
        (expected, expected, expected)
