"""Public checks: quick, visible checks of an assignment's definitions, one per hidden grader test.

Each assignment has one module here, `checks/<assignment id>.py`, whose checks are keyed by the names of the
hidden grader's tests (`test_build_vocab`, ...). They are far weaker than the grader: they look at names,
signatures, shapes and dtypes, run a small worked example taken from the notebook's own text, and look for
NaN. They never see the grader's inputs or the reference implementation. Passing them all does not mean
full marks; a failing one points at something the grader's test of the same name will fail too.

The same check functions run in three places, with the same results:

- in the notebook, where a check cell runs `check("test_build_vocab")` in the student's own kernel against
  the notebook's globals: it prints one PASS line, or raises CheckFailed with what went wrong and a hint;
- `course check NOTEBOOK`, which loads the notebook's setup and solution cells in the sandboxed worker
  exactly as grading does, runs every check there and prints a progress table;
- the student repository's GitHub workflow, which runs `course check`.

A check's verdict is computed where the student's code runs, so that code could forge it: that is accepted,
because nothing is at stake here. The score that counts comes from the hidden grader (`course grade`), which
never trusts the process that runs student code.

Each `checks/<id>.py` declares the chapter's `INTERFACE` (Interface, Function, Class below): the functions and
classes the students write, with the book's signatures, and for classes an example of arguments and the
attributes the grader relies on after `__init__`. It is public (the stubs show all of it). The checks look up
every definition with its signature from it, and the hidden grader imports the same object, so the two cannot
drift; `tests/test_interfaces.py` checks that the reference, the solution and the release all match it.

This package needs only the standard library and torch: it runs in the student's kernel and inside the
grading sandbox, where the course's own packages cannot be imported.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import linecache
import os
import site
import sys
import sysconfig
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["CheckFailed", "Checks", "Class", "Definitions", "Function", "Interface", "expect_close", "expect_equal",
           "expect_finite", "expect_shape", "require"]

_HERE = os.path.dirname(os.path.abspath(__file__))
# Library code (the standard library, site-packages): never "where" a student's error happened.
_LIBRARIES = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, *sysconfig.get_paths().values(),
                                                   site.getusersitepackages())})


class CheckFailed(AssertionError):
    """A public check did not pass. Its text says what was checked and what came out, then a hint."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\nHint: {self.hint}" if self.hint else "")

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback through the checks' own code.
        return [f"CheckFailed: {self}"]


class NotDefined(CheckFailed):
    """A name the check needs is missing from the notebook (counted as an error, like a crash)."""

    def __init__(self, name: str):
        super().__init__(f"`{name}` is not defined: run the cell that defines it first (and keep the name the "
                         "notebook gave it).")
        self.name = name


@dataclass(frozen=True)
class Check:
    name: str  # the hidden grader test this check stands for
    subject: str  # the definition it mainly looks at (the check cell comes after the cell defining it)
    description: str  # one line: what it checks
    function: Callable[[Definitions], None]
    error_hint: str = ""  # shown when the student's code raises (other than NotImplementedError)


class Checks:
    """The checks of one assignment, in the grader's order."""

    def __init__(self, assignment: str, interface: Interface):
        """interface: the chapter's INTERFACE, which the hidden grader imports too."""
        self.assignment = assignment
        self.interface = interface
        self.signatures = interface.signatures
        self._checks: dict[str, Check] = {}

    def register(self, name: str, *, subject: str, description: str, error_hint: str = ""):
        """Decorator: the function is the check standing for grader test `name`; it takes a Definitions."""

        def decorate(function):
            if name in self._checks:
                raise ValueError(f"{self.assignment}: two checks for {name}")
            self._checks[name] = Check(name, subject, description, function, error_hint)
            return function

        return decorate

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    def __getitem__(self, name: str) -> Check:
        return self._checks[name]

    def run(self, name: str, namespace: dict) -> dict:
        """Run one check against `namespace` (a notebook's globals); returns plain data:
        {"name", "status": "passed" | "failed" | "error" | "todo", "message", "description"}."""
        if name not in self._checks:
            return {"name": name, "status": "error", "description": name,
                    "message": f"There is no public check named {name!r} in {self.assignment} (known: "
                               f"{', '.join(self._checks)})."}
        check = self._checks[name]
        status, message, missing = "passed", "", None
        # The checks seed torch themselves; the student's random state is left as it was. Warnings and
        # writes to stderr are kept out of the cell's output (nbgrader scores a test cell with stderr 0).
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                check.function(Definitions(namespace, self.signatures))
            except NotDefined as exc:
                status, message, missing = "error", str(exc), exc.name
            except CheckFailed as exc:
                status, message = "failed", str(exc)
            except NotImplementedError as exc:  # a stub not written yet: to do, not an error
                status, message = "todo", _not_implemented(exc)
            except Exception as exc:  # noqa: BLE001 - the student's code may raise anything
                status, message = "error", _raised(exc, check.error_hint)
                if isinstance(exc, NameError) and isinstance(exc.name, str):
                    missing = exc.name
        # missing_name: a name the notebook lacks, so that `course check` can say when only a demo cell defines it
        return {"name": name, "status": status, "message": message, "description": check.description,
                "missing_name": missing}

    def check(self, name: str, namespace: dict | None = None) -> None:
        """The notebook's check cells call this: print one PASS line, or raise CheckFailed.

        Without `namespace`, the check runs against the globals of the code that called it (the notebook).
        It returns None, so that nbgrader never reads a return value as partial credit.
        """
        if namespace is None:
            namespace = sys._getframe(1).f_globals
        outcome = self.run(name, namespace)
        if outcome["status"] != "passed":
            raise CheckFailed(outcome["message"])
        print(f"PASS {name}: {outcome['description']} (a public check; the hidden grader tests more)")


class Definitions:
    """A notebook's globals, as the checks see them: each definition is looked up with its signature checked."""

    def __init__(self, namespace: dict, signatures: dict):
        self._namespace = namespace
        self._signatures = signatures

    def __getitem__(self, name: str):
        obj = self._namespace.get(name)
        if obj is None:
            raise NotDefined(name)
        expected = self._signatures.get(name)
        if isinstance(expected, dict):
            if not inspect.isclass(obj):
                raise CheckFailed(f"`{name}` is not a class.", hint="keep the class statement of the notebook.")
            for method, parameters in expected.items():
                function = getattr(obj, method, None)
                if function is None:
                    raise CheckFailed(f"`{name}` has no method `{method}`.", hint="keep the methods the notebook "
                                                                                  "gave the class.")
                _expect_signature(f"{name}.{method}", function, parameters, drop_self=True)
        elif expected is not None:
            _expect_signature(name, obj, expected, drop_self=False)
        return obj


# -- the interface: what the students write, with the book's signatures ------------------------------------------


@dataclass(frozen=True)
class Function:
    name: str
    signature: str  # the parameter list as the book writes it, e.g. "(txt, tokenizer, max_length, stride)"


@dataclass(frozen=True)
class Class:
    name: str
    init: str  # the parameters of __init__ without self, e.g. "(d_in, d_out, qkv_bias=False)"
    example: dict = field(default_factory=dict)  # arguments that build one (for attribute checks)
    attributes: tuple[str, ...] = ()  # what the grader reads after __init__ (layers, buffers, values)
    methods: dict[str, str] = field(default_factory=dict)  # name -> parameters without self, e.g. {"forward": "(x)"}


@dataclass(frozen=True)
class Interface:
    items: tuple[Function | Class, ...]

    def __init__(self, *items: Function | Class):
        object.__setattr__(self, "items", items)

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.items]

    @property
    def signatures(self) -> dict[str, str | dict[str, str]]:
        """name -> "(parameters)" for a function; for a class {"__init__": "(...)", method: "(...)"}."""
        return {item.name: item.signature if isinstance(item, Function) else {"__init__": item.init, **item.methods}
                for item in self.items}

    def problems(self, namespace: dict) -> list[str]:
        """What in `namespace` (a module's or a notebook's globals) does not match; [] when all matches."""
        problems = []
        for item in self.items:
            obj = namespace.get(item.name)
            if obj is None:
                problems.append(f"{item.name}: not defined")
                continue
            if isinstance(item, Function):
                problems += _signature_problems(item.name, obj, item.signature, drop_self=False)
                continue
            if not inspect.isclass(obj):
                problems.append(f"{item.name}: not a class")
                continue
            problems += _signature_problems(f"{item.name}.__init__", obj.__init__, item.init, drop_self=True)
            for method, signature in item.methods.items():
                function = getattr(obj, method, None)
                if function is None:
                    problems.append(f"{item.name}.{method}: not defined")
                else:
                    problems += _signature_problems(f"{item.name}.{method}", function, signature, drop_self=True)
            if item.attributes:
                instance = obj(**item.example)
                problems += [f"{item.name}: no attribute {name!r} after __init__" for name in item.attributes
                             if not hasattr(instance, name)]
        return problems


def _parameters(signature: str) -> list[tuple[str, str, str | None]]:
    """"(a, b=2, *args)" -> [(name, kind, default source)] without evaluating anything."""
    function = ast.parse(f"def f{signature}: pass").body[0]
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + [ast.unparse(d) for d in args.defaults]
    result = [(a.arg, "positional", d) for a, d in zip(positional, defaults)]
    if args.vararg:
        result.append((args.vararg.arg, "*", None))
    result += [(a.arg, "keyword", ast.unparse(d) if d is not None else None)
               for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        result.append((args.kwarg.arg, "**", None))
    return result


def _actual(function, drop_self: bool) -> list[tuple[str, str, str | None]]:
    kinds = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**",
             inspect.Parameter.KEYWORD_ONLY: "keyword"}
    parameters = list(inspect.signature(function).parameters.values())
    if drop_self and parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    return [(p.name, kinds.get(p.kind, "positional"),
             None if p.default is inspect.Parameter.empty else ast.unparse(ast.parse(repr(p.default), mode="eval")))
            for p in parameters]


def _signature_problems(label: str, function, signature: str, drop_self: bool) -> list[str]:
    try:
        actual = _actual(function, drop_self)
    except (TypeError, ValueError, SyntaxError):
        return [f"{label}: has no readable signature"]
    expected = [(name, kind, ast.unparse(ast.parse(default, mode="eval")) if default else None)
                for name, kind, default in _parameters(signature)]
    if actual != expected:
        shown = "(" + ", ".join(n + (f"={d}" if d is not None else "") for n, _, d in actual) + ")"
        return [f"{label}: signature {shown}, expected {signature}"]
    return []


# -- comparisons ------------------------------------------------------------------------------------------------

def require(condition: bool, message: str, hint: str = "") -> None:
    """Fail with `message` (what came out) and `hint` unless `condition` holds."""
    if not condition:
        raise CheckFailed(message, hint)


def expect_equal(got, expected, what: str, hint: str = "") -> None:
    """Plain values (lists, dicts, strings, numbers): equal, or a message with both."""
    if got != expected:
        raise CheckFailed(f"{what}: got {_short(got)}, expected {_short(expected)}.", hint)


def expect_shape(tensor, shape: tuple[int, ...], what: str, hint: str = "") -> None:
    """A torch tensor of this shape."""
    if not isinstance(tensor, torch.Tensor):
        raise CheckFailed(f"{what}: expected a tensor, got {type(tensor).__name__}.", hint)
    if tuple(tensor.shape) != tuple(shape):
        raise CheckFailed(f"{what}: shape {tuple(tensor.shape)}, expected {tuple(shape)}.", hint)


def expect_finite(tensor, what: str) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise CheckFailed(f"{what}: contains NaN or infinite values.",
                          "look for a division by zero, or a softmax over a row that is entirely -inf.")


def expect_close(got, expected, what: str, hint: str = "", atol: float = 1e-4) -> None:
    """A float tensor close to `expected` (a nested list of numbers, e.g. a figure printed by the book)."""
    expected = torch.tensor(expected, dtype=torch.float32)
    expect_shape(got, tuple(expected.shape), what, hint)
    expect_finite(got, what)
    got = got.detach().to("cpu", torch.float32)
    difference = (got - expected).abs()
    if float(difference.max()) > atol:
        where = tuple(int(i) for i in torch.unravel_index(difference.argmax(), difference.shape))
        raise CheckFailed(f"{what}: at position {where} got {float(got[where]):.4f}, expected "
                          f"{float(expected[where]):.4f} (largest difference {float(difference.max()):.4f}).", hint)


# -- helpers ----------------------------------------------------------------------------------------------------

def _short(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def _parameters_of(signature: str) -> list[tuple[str, str | None]]:
    """"(a, b=2)" -> [("a", None), ("b", "2")], without evaluating anything."""
    arguments = ast.parse(f"def f{signature}: pass").body[0].args
    positional = arguments.posonlyargs + arguments.args
    defaults = [None] * (len(positional) - len(arguments.defaults)) + [ast.unparse(d) for d in arguments.defaults]
    result = list(zip([a.arg for a in positional], defaults))
    result += [(a.arg, ast.unparse(d) if d is not None else None)
               for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults)]
    return result


def _course_keywords(signature: str) -> set[str]:
    """The keyword-only parameters with a default ("(model, *, progress=False)" -> {"progress"}): the course's
    additions to the book's signatures (a progress bar, ...), which the grader never passes, so the book's
    function without them is accepted."""
    arguments = ast.parse(f"def f{signature}: pass").body[0].args
    return {a.arg for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is not None}


def _expect_signature(label: str, function, expected: str, drop_self: bool) -> None:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return  # a builtin or a C function: nothing to compare
    if drop_self and parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    actual = []
    for parameter in parameters:
        default = None
        if parameter.default is not inspect.Parameter.empty:
            try:
                default = ast.unparse(ast.parse(repr(parameter.default), mode="eval"))
            except SyntaxError:
                default = repr(parameter.default)
        actual.append((parameter.name, default))
    names = {name for name, _ in actual}
    optional = _course_keywords(expected) - names
    if actual != [p for p in _parameters_of(expected) if p[0] not in optional]:
        shown = "(" + ", ".join(n + (f"={d}" if d is not None else "") for n, d in actual) + ")"
        raise CheckFailed(f"`{label}` takes {shown}, but the notebook's stub takes {expected}.",
                          "keep the parameters and default values the notebook gave you: the grader calls your "
                          "code with them.")


def _student_frame(exc: BaseException):
    """The innermost frame of the traceback that is neither the checks' code nor a library: the student's."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        real = os.path.realpath(filename) if os.path.isabs(filename) else filename
        if not real.startswith(_HERE) and not real.startswith(_LIBRARIES):
            found = tb
        tb = tb.tb_next
    return found


def _location(exc: BaseException) -> tuple[str, str]:
    """(function, " (in f, line 3: `code`)") for the student's frame where `exc` was raised, or ("", "")."""
    tb = _student_frame(exc)
    if tb is None:
        return "", ""
    code = tb.tb_frame.f_code
    function = getattr(code, "co_qualname", code.co_name)
    line = linecache.getline(code.co_filename, tb.tb_lineno).strip()
    where = f"in {function}" if function != "<module>" else "in the cell"
    where += f", line {tb.tb_lineno}" + (f": `{line}`" if line else "")
    return function, f" ({where})"


def _not_implemented(exc: NotImplementedError) -> str:
    function, _ = _location(exc)
    name = f"`{function}`" if function and function != "<module>" else "your code"
    return (f"Not implemented yet: {name} still raises NotImplementedError.\n"
            "Hint: replace `raise NotImplementedError()` with your implementation.")


def _raised(exc: BaseException, hint: str) -> str:
    _, where = _location(exc)
    text = " ".join(str(exc).split())
    message = f"Your code raised {type(exc).__name__}" + (f": {text}" if text else "") + where + "."
    return message + (f"\nHint: {hint}" if hint else "")
