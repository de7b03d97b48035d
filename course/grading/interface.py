"""A chapter's student interface, written down once: what the graders rely on in a student's notebook.

Each grader module declares `INTERFACE = Interface(...)` at its top: the functions and classes the students
write, with their signatures (the book's), and for classes an example of arguments and the attributes the
grader relies on after `__init__` (the layers whose weights it loads, the values it reads). A newcomer reads
that block to know what a chapter promises; `tests/test_interfaces.py` checks that the reference module, the
solution notebook and the student release all match it, so a stub can never drift from what is graded.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field


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
