"""course.yml: what the course contains, loaded through a schema.

course.yml is the one place that says which assignments exist, their titles, points, the reference module each
one is graded against, and whatever differs from the defaults. What follows from an assignment's id is not
written there: its notebook is `<id>.ipynb` (in solutions/<id>/ and assignments/<id>/), its grader
`graders/<id>.py`, its per-test timeout 30 seconds; an explicit value still wins. What follows from the files is
computed when the course is loaded:

- `support`, the reference modules its students may import (the worker holds these and no others; a student
  repository ships them): every module of the reference package that the solution notebook's code cells and the
  public checks (checks/__init__.py, checks/<id>.py) import, and, transitively, that those modules import,
  wherever the import statement is (a function body included). The graded module must not be among them.
- `data`, the files of data/ the notebook reads (a student repository gets a copy beside the notebook; in the
  course the notebooks read data/ itself): those whose file name the notebook's code spells out as a string,
  e.g. "sms_spam_sample.tsv". An explicit `data: [corpus/the-lamplighters-apprentice.txt]` wins.

Every problem is reported as a ConfigError that names the file and the key.

A student repository (written by `course release ID --out DIR`) marks itself with a small course.yml of its
own: one `assignment` (singular) instead of the course's `assignments`, holding what `course check` needs (the
notebook, the support modules, the hidden tests' names and points) and nothing about graders or references.
`course` finds either file by walking up from the working folder, so it works from any folder inside.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from course.errors import ConfigError, UsageError

CONFIG_NAME = "course.yml"

DevicePolicy = Literal["auto", "cpu", "cuda", "mps"]
IsolationPolicy = Literal["auto", "bubblewrap", "process"]

# A dotted module name inside the reference package: names only, so it cannot spell a path that leaves reference/.
_REFERENCE_MODULE = re.compile(r"reference(\.[A-Za-z_][A-Za-z0-9_]*)+")


class LatePolicy(BaseModel):
    """What a submission after the deadline costs (course/gradebook/late.py applies it).

    none: nothing (the late days are still shown); penalty: `penalty_per_day` percent of the assignment's points
    for every day or part of a day after the deadline, at most `max_penalty` percent; zero: no points at all.
    A submission less than `grace_minutes` after the deadline is on time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["none", "penalty", "zero"] = Field(default="none", description="none, penalty or zero")
    grace_minutes: float = Field(default=0, ge=0, description="minutes after the deadline that still count as on time")
    penalty_per_day: float | None = Field(default=None, gt=0, le=100, description="percent of the assignment's "
                                          "points per day (or part of a day) late; only with policy: penalty")
    max_penalty: float | None = Field(default=None, gt=0, le=100, description="the most a late submission loses, "
                                      "in percent of the assignment's points; only with policy: penalty")

    @model_validator(mode="after")
    def _penalty_keys(self):
        if self.policy == "penalty" and self.penalty_per_day is None:
            raise ValueError("policy: penalty needs penalty_per_day (percent of the points per day late)")
        if self.policy != "penalty":
            extra = [key for key in ("penalty_per_day", "max_penalty") if getattr(self, key) is not None]
            if extra:
                raise ValueError(f"{' and '.join(extra)} only go with policy: penalty (this policy is "
                                 f"{self.policy})")
        return self


class Assignment(BaseModel):
    """One chapter's assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    title: str
    notebook: str = Field(description="file name of the notebook in solutions/<id>/ and assignments/<id>/ "
                                      "(default: <id>.ipynb)")
    grader: str = Field(description="path of the grader module, relative to the course root (default: "
                                    "graders/<id>.py)")
    reference: str = Field(description="dotted name of the chapter's reference module (never shown to students)")
    support: list[str] = Field(default_factory=list, description="reference modules students may import: never "
                               "written in course.yml, computed from the imports when the course is loaded")
    data: list[str] | None = Field(default=None, description="files of data/ that the notebook reads, relative to "
                                   "data/ (default: computed when the course is loaded)")
    points: int = Field(gt=0)
    timeout: float = Field(default=30.0, gt=0, description="seconds each grader test may spend in student code")
    submission_timeout: float = Field(default=300.0, gt=0, description="seconds of wall time for all the tests of "
                                      "one submission, worker restarts included")
    tiktoken: bool = Field(default=False, description="the worker gets GPT-2's BPE files, so that "
                                                      "tiktoken.get_encoding('gpt2') works offline there")
    deadline: AwareDatetime | None = Field(default=None, description="when submissions are due, with a time zone, "
                                           "e.g. 2026-10-14T23:59:00+02:00 (course/gradebook/late.py)")
    late: LatePolicy | None = Field(default=None, description="this assignment's late policy (default: the "
                                                              "course's `late`)")

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_the_id(cls, data):
        """notebook and grader follow from the id unless course.yml gives them."""
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            data = {"notebook": f"{data['id']}.ipynb", "grader": f"graders/{data['id']}.py", **data}
        return data

    @field_validator("support", mode="before")
    @classmethod
    def _support_is_computed(cls, value):
        raise ValueError("not written in course.yml: the support modules are computed from what the solution "
                         "notebook and the public checks import (remove the key)")


class SandboxConfig(BaseModel):
    """Limits and isolation of the worker process that runs student code (see docs/trust-model.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    isolation: IsolationPolicy = Field(
        default="auto", description="bubblewrap: require Linux namespaces via bwrap; process: limits and audit "
                                    "hook only; auto: bubblewrap where it works, else process")
    memory_mb: int = Field(default=4096, ge=1024, description="address-space limit of the worker (CPU grading)")
    cpu_seconds: int = Field(default=600, ge=10, description="CPU time a worker may use in all (all its tests)")
    file_mb: int = Field(default=64, ge=1, description="largest file the worker may write")


class StudentAssignment(BaseModel):
    """The one assignment of a student repository, as `course release --out` wrote it from the course."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    title: str
    notebook: str = Field(description="file name of the notebook, at the top of the student repository")
    support: list[str] = Field(default_factory=list, description="reference modules the notebook may import")
    points: int = Field(gt=0)
    timeout: float = Field(default=30.0, gt=0, description="seconds each check may spend in student code")
    tiktoken: bool = False
    tests: dict[str, float] = Field(min_length=1, description="the hidden grader's tests and their points, in the "
                                                              "grader's order; each has a public check")


class StudentRepositoryConfig(BaseModel):
    """The course.yml of a student repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    assignment: StudentAssignment


class ClusterConfig(BaseModel):
    """Where `course grade DIR` grades a class when neither --jobs nor --scheduler is given (docs/cluster.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler: str = Field(min_length=1, description="a Dask scheduler's address (tcp://HOST:PORT) or the path "
                                                     "of its scheduler file")


class CourseConfig(BaseModel):
    """The whole course."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    device: DevicePolicy = "auto"
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    late: LatePolicy = Field(default_factory=LatePolicy, description="the late policy of every assignment that "
                                                                     "has no `late` of its own")
    cluster: ClusterConfig | None = Field(default=None, description="the Dask cluster that grades a class by "
                                                                    "default (docs/cluster.md)")
    assignments: list[Assignment] = Field(min_length=1)


class Course:
    """A loaded course: the validated configuration plus the folder it lives in."""

    def __init__(self, root: Path, config: CourseConfig):
        self.root = root
        self.config = config

    @property
    def title(self) -> str:
        return self.config.title

    @property
    def assignments(self) -> list[Assignment]:
        return list(self.config.assignments)

    def assignment(self, assignment_id: str) -> Assignment:
        for assignment in self.config.assignments:
            if assignment.id == assignment_id:
                return assignment
        known = ", ".join(a.id for a in self.config.assignments)
        raise KeyError(f"unknown assignment {assignment_id!r} (course.yml has: {known})")

    def late_policy(self, assignment: Assignment) -> LatePolicy:
        """The assignment's own late policy, else the course's."""
        return assignment.late or self.config.late

    def solution_notebook(self, assignment: Assignment) -> Path:
        return self.root / "solutions" / assignment.id / assignment.notebook

    def release_notebook(self, assignment: Assignment) -> Path:
        return self.root / "assignments" / assignment.id / assignment.notebook

    def grader_path(self, assignment: Assignment) -> Path:
        return self.root / assignment.grader

    def module_path(self, dotted: str) -> Path:
        """File of a reference module named in course.yml, e.g. reference.text_data -> reference/text_data.py."""
        return self.root.joinpath(*dotted.split(".")).with_suffix(".py")

    def checks_paths(self, assignment: Assignment) -> list[Path]:
        """The public checks of an assignment: the package's __init__.py and checks/<id>.py."""
        return [self.root / "checks" / "__init__.py", self.root / "checks" / f"{assignment.id}.py"]

    def data_files(self, assignment: Assignment) -> list[Path]:
        """The files of data/ that the assignment's notebook reads (a student repository gets each beside its
        notebook, under its own name)."""
        return [self.root / "data" / name for name in assignment.data or ()]


class StudentRepository:
    """A loaded student repository: its one assignment, its notebook, public checks and support modules."""

    def __init__(self, root: Path, config: StudentRepositoryConfig):
        self.root = root
        self.config = config

    @property
    def title(self) -> str:
        return self.config.title

    @property
    def assignment(self) -> StudentAssignment:
        return self.config.assignment

    @property
    def notebook(self) -> Path:
        return self.root / self.assignment.notebook

    def module_path(self, dotted: str) -> Path:
        """File of a module named in course.yml, e.g. reference.tiktoken_offline -> reference/tiktoken_offline.py."""
        return self.root.joinpath(*dotted.split(".")).with_suffix(".py")


NOT_FOUND_ADVICE = ("run `course` inside your assignment's repository (the folder with course.yml, your notebook "
                    "and README.md) or inside the course repository, or name that folder with --root FOLDER")


def find_course_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) that holds course.yml."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    raise ConfigError(f"no {CONFIG_NAME} found in {start} or any folder above it: {NOT_FOUND_ADVICE}")


def load_config(root: Path | None = None) -> Course | StudentRepository:
    """Read, validate and cross-check course.yml in `root`: the course's, or a student repository's.

    Without `root`, the nearest folder at or above the working directory that holds course.yml is used. An
    explicit `root` must hold course.yml itself: it never silently falls back to an enclosing folder. A file
    with `assignment` (one) is a student repository; anything else is read as the course's (`assignments`).
    """
    if root is None:
        root = find_course_root()
    else:
        root = Path(root).resolve()
        if not (root / CONFIG_NAME).is_file():
            raise ConfigError(f"{root / CONFIG_NAME}: not found (is {root} the course folder or a student "
                              "repository?)")
    path = root / CONFIG_NAME
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'title' and 'assignments' (the course) or "
                          "'assignment' (a student repository) at the top level")
    if "assignment" in raw and "assignments" not in raw:
        try:
            student_config = StudentRepositoryConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_describe_validation_error(path, raw, exc)) from None
        repository = StudentRepository(root, student_config)
        _check_student_files(path, repository)
        return repository
    try:
        config = CourseConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(path, raw, exc)) from None
    course = Course(root, config)
    _check_files(path, course)
    return _with_computed_parts(path, course)


def load_course(root: Path | None = None) -> Course:
    """The course (see load_config); in a student repository, a UsageError that says what to do instead."""
    loaded = load_config(root)
    if isinstance(loaded, StudentRepository):
        raise UsageError(
            f"{loaded.root} is a student repository of {loaded.assignment.id}: the hidden grader and the "
            "course's other commands are not here. Run `course check` for the public checks; your instructor "
            "grades your work with the hidden tests."
        )
    return loaded


def _describe_validation_error(path: Path, raw: dict, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s):"]
    for error in exc.errors():
        key = _format_key(raw, error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif error["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        elif error["type"] == "timezone_aware":
            lines.append(f"  {key}: a date and time with a time zone is needed, e.g. 2026-10-14T23:59:00+02:00 "
                         f"(got {error.get('input')!s})")
        elif error["type"] == "value_error":
            lines.append(f"  {key}: {error['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def _format_key(raw: dict, loc: tuple) -> str:
    """('assignments', 1, 'grder') -> assignments[1] (ch03_attention).grder"""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and "id" in node:
                    label += f" ({node['id']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _check_files(path: Path, course: Course) -> None:
    """Every file course.yml points to must exist (the public checks too); ids must be unique."""
    problems: list[str] = []
    seen: set[str] = set()
    for index, assignment in enumerate(course.config.assignments):
        where = f"assignments[{index}] ({assignment.id})"
        if assignment.id in seen:
            problems.append(f"  {where}.id: duplicate assignment id")
        seen.add(assignment.id)
        notebook = course.solution_notebook(assignment)
        if Path(assignment.notebook).name != assignment.notebook or assignment.notebook in ("", ".", ".."):
            problems.append(f"  {where}.notebook: {assignment.notebook!r} must be a file name, not a path "
                            "(the notebook is solutions/<id>/<notebook> and assignments/<id>/<notebook>)")
        elif not notebook.is_file():
            problems.append(f"  {where}.notebook: {notebook.relative_to(course.root)} does not exist")
        grader = Path(assignment.grader)
        if grader.is_absolute() or ".." in grader.parts or grader.parts[:1] != ("graders",):
            problems.append(f"  {where}.grader: {assignment.grader!r} must be a path inside graders/, e.g. "
                            f"graders/{assignment.id}.py")
        elif not course.grader_path(assignment).is_file():
            problems.append(f"  {where}.grader: {assignment.grader} does not exist")
        if not _REFERENCE_MODULE.fullmatch(assignment.reference):
            problems.append(f"  {where}.reference: {assignment.reference!r} is not a module of the reference package")
        elif not course.module_path(assignment.reference).is_file():
            missing = course.module_path(assignment.reference).relative_to(course.root)
            problems.append(f"  {where}.reference: {missing} does not exist")
        checks = course.checks_paths(assignment)[-1]
        if not checks.is_file():
            problems.append(f"  {where}.id: the public checks {checks.relative_to(course.root)} do not exist")
        for name in assignment.data or ():
            file = course.root / "data" / name
            if Path(name).is_absolute() or ".." in Path(name).parts or not file.is_file():
                problems.append(f"  {where}.data: {name!r} is not a file of data/")
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(problems))


def _check_student_files(path: Path, repository: StudentRepository) -> None:
    """The public checks and the support modules a student repository's course.yml names exist."""
    assignment = repository.assignment
    problems: list[str] = []
    if Path(assignment.notebook).name != assignment.notebook or assignment.notebook in ("", ".", ".."):
        problems.append(f"  assignment.notebook: {assignment.notebook!r} must be a file name, not a path")
    # A missing notebook is not a configuration error: `course check` reports it on every check.
    checks = repository.module_path(f"checks.{assignment.id}")
    if not checks.is_file():
        problems.append(f"  assignment.id: the public checks {checks.relative_to(repository.root)} do not exist")
    for module in assignment.support:
        if not _REFERENCE_MODULE.fullmatch(module):
            problems.append(f"  assignment.support: {module!r} is not a module of the reference package")
        elif not repository.module_path(module).is_file():
            problems.append(f"  assignment.support: {repository.module_path(module).relative_to(repository.root)} "
                            "does not exist")
    total = sum(assignment.tests.values())
    if total != assignment.points:
        problems.append(f"  assignment.points: {assignment.points}, but assignment.tests are worth {total:g} "
                        "points in all")
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(problems))


# -- what follows from the files: the support modules and the data files ------------------------------------------

def _with_computed_parts(path: Path, course: Course) -> Course:
    """The course with each assignment's `support` computed and its `data` computed unless course.yml gives it."""
    problems: list[str] = []
    data_names = _data_files_by_name(course.root / "data")
    assignments = []
    for index, assignment in enumerate(course.config.assignments):
        where = f"assignments[{index}] ({assignment.id})"
        notebook = course.solution_notebook(assignment)
        label = _relative(course, notebook)
        starts: dict[str, frozenset[str]] = {}  # who imports -> the reference modules it imports
        constants: set[str] = set()  # the strings the notebook's code spells out
        try:
            for cell, source in _notebook_code(notebook):
                imports, strings = _scan(source)
                starts[f"{label} ({cell})"] = imports
                constants |= strings
        except (ValueError, SyntaxError) as exc:
            problems.append(f"  {where}.notebook: {label}: {exc}")
            assignments.append(assignment)
            continue
        for checks in course.checks_paths(assignment):
            try:
                starts[_relative(course, checks)] = _scan(checks.read_text(encoding="utf-8"))[0]
            except (OSError, UnicodeDecodeError, SyntaxError) as exc:
                problems.append(f"  {where}.id: {_relative(course, checks)} cannot be read: {exc}")
        importers, missing = _import_closure(course, starts)
        problems.extend(f"  {where}.notebook: {line}" for line in missing)
        if assignment.reference in importers:
            problems.append(f"  {where}.reference: {assignment.reference} is the graded module, which the student's "
                            f"code must never import, but {_import_chain(importers, assignment.reference)}")
        data = assignment.data
        if data is None:
            named = sorted(name for name in data_names if name in constants)
            for name in (n for n in named if len(data_names[n]) > 1):
                problems.append(f"  {where}.data: {label} names {name}, which data/ holds {len(data_names[name])} "
                                f"times ({', '.join(data_names[name])}): list the one it reads under `data`")
            data = [data_names[name][0] for name in named]
        assignments.append(assignment.model_copy(update={"support": sorted(importers), "data": data}))
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(problems))
    return Course(course.root, course.config.model_copy(update={"assignments": assignments}))


def _relative(course: Course, path: Path) -> str:
    return str(path.relative_to(course.root))


def _notebook_code(path: Path) -> list[tuple[str, str]]:
    """(label, Python source) of each code cell of a notebook; IPython's magics and shell lines become `pass`."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a readable notebook ({exc})") from None
    code = []
    for number, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        if source.lstrip().startswith("%%"):
            continue  # a cell magic (%%bash, %%time, ...): not Python the course can read
        lines = [re.sub(r"^(\s*)[%!].*$", r"\1pass", line) for line in source.splitlines()]
        code.append((f"cell {number}", "\n".join(lines)))
    return code


@functools.lru_cache(maxsize=512)
def _scan(source: str, package: str = "") -> tuple[frozenset[str], frozenset[str]]:
    """The reference modules that Python `source` imports anywhere (a function's body included), and the strings
    it spells out. `package`: the package of a module of the reference package, for its relative imports."""
    tree = ast.parse(source)
    return _imports_in(tree, package), frozenset(node.value for node in ast.walk(tree)
                                                 if isinstance(node, ast.Constant) and isinstance(node.value, str))


# `from P import name` names P.name, which is a module of its own or something P defines: marked with this prefix,
# it counts only where its file exists.
_MAYBE = "?"


def _imports_in(tree: ast.AST, package: str = "") -> frozenset[str]:
    """`import reference.gpt`, `from reference.gpt import X` give reference.gpt; `from reference import gpt` gives
    ?reference.gpt (a module, or a name that reference/__init__.py defines)."""
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only inside the reference package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 and package else package
                module = f"{base}.{node.module}" if base and node.module else base or ""
            else:
                module = node.module or ""
            modules.add(module)
            modules |= {f"{_MAYBE}{module}.{alias.name}" for alias in node.names if alias.name != "*"}
    return frozenset(m for m in modules if _REFERENCE_MODULE.fullmatch(m.removeprefix(_MAYBE)))


def _import_closure(course: Course, starts: dict[str, frozenset[str]]) -> tuple[dict[str, str], list[str]]:
    """The reference modules that `starts` (who -> what it imports) reach, each with who imports it first (a label
    of `starts`, or a module), and the problems: a module that does not exist, one that does not parse."""
    importers: dict[str, str] = {}
    problems: list[str] = []
    todo = [(module, who) for who, modules in starts.items() for module in sorted(modules)]
    while todo:
        module, who = todo.pop(0)
        maybe = module.startswith(_MAYBE)
        module = module.removeprefix(_MAYBE)
        if module in importers:
            continue
        file = course.module_path(module)
        if not file.is_file():
            if not maybe:
                problems.append(f"{who} imports {module}, but {_relative(course, file)} does not exist")
            continue
        importers[module] = who
        try:
            imports = _scan(file.read_text(encoding="utf-8"), module.rpartition(".")[0])[0]
        except (OSError, UnicodeDecodeError, SyntaxError) as exc:
            problems.append(f"{_relative(course, file)} cannot be read: {exc}")
            continue
        todo.extend((imported, module) for imported in sorted(imports))
    return importers, problems


def _import_chain(importers: dict[str, str], module: str) -> str:
    """'solutions/x/x.ipynb (cell 3) imports it through reference.b, which imports reference.a, which imports it'"""
    chain = []
    who = importers[module]
    while who in importers:
        chain.append(who)
        who = importers[who]
    if not chain:
        return f"{who} imports it"
    return f"{who} imports it through " + ", which imports ".join(reversed(chain))


def _data_files_by_name(folder: Path) -> dict[str, list[str]]:
    """The files of data/ by file name (READMEs and dot files aside): name -> paths relative to data/."""
    names: dict[str, list[str]] = {}
    if folder.is_dir():
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.name != "README.md" and not file.name.startswith("."):
                names.setdefault(file.name, []).append(file.relative_to(folder).as_posix())
    return names


def probe_import_problems(course: Course, assignment: Assignment) -> list[str]:
    """The grader's probes that import a reference module the worker does not hold (one line each, naming the grader
    and the probe). A probe runs in the worker beside the student's code, where only `support` can be imported.

    The probes are the functions decorated with @probe in the grader and in the graders it imports from (read, not
    imported). `course validate` and the tests run this; loading the course does not (it reads no grader)."""
    allowed = set(assignment.support)
    problems = []
    for grader in _graders_imported(course, course.grader_path(assignment)):
        try:
            tree = ast.parse(grader.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, SyntaxError) as exc:
            problems.append(f"{_relative(course, grader)} cannot be read: {exc}")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(map(_is_probe, node.decorator_list)):
                for module in sorted({m.removeprefix(_MAYBE) for m in _imports_in(node)} - allowed):
                    if course.module_path(module).is_file():
                        problems.append(
                            f"{_relative(course, grader)}: probe {node.name} imports {module}, which the worker of "
                            f"{assignment.id} does not hold (its support modules are what "
                            f"{_relative(course, course.solution_notebook(assignment))} and checks/{assignment.id}.py "
                            f"import: {', '.join(sorted(allowed)) or 'none'})")
    return problems


def _is_probe(decorator: ast.expr) -> bool:
    """@probe, @probe(returns=...), @grading.probe"""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "probe") or (
        isinstance(target, ast.Attribute) and target.attr == "probe")


def _graders_imported(course: Course, grader: Path) -> list[Path]:
    """The grader and, transitively, the modules of graders/ it imports (e.g. appendix D's, chapter 5's helpers)."""
    found: list[Path] = []
    todo = [grader]
    while todo:
        file = todo.pop(0)
        if file in found or not file.is_file():
            continue
        found.append(file)
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, SyntaxError):
            continue  # reported by the caller
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            todo.extend(course.root.joinpath(*name.split(".")).with_suffix(".py") for name in names
                        if name.startswith("graders."))
    return found
