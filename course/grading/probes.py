"""Probes: small functions that a grader sends to the worker to exercise the student's code.

A probe is decorated with @probe. Its SOURCE is sent to the worker and executed there in a namespace holding
only `torch`, `nn`, `F` and `DEVICE` (the device the student's code runs on); its first argument is the
student's module, the other arguments are the (plain) values the test passes. A probe must be self-contained:
it cannot use the grader module's globals, and it never holds expected values. What several probes share (a
compact tokenizer, an optimizer written out, ...) lives once in `probe_kit` (course/worker/runtime/probe_kit/),
which a probe imports inside its body: the worker ships it, and this module registers the same files on the
trusted side.

The decorator checks this when the grader is imported: a probe whose source does not compile, or that uses a
global name the worker does not have, raises ProbeDefinitionError then (the grader cannot be collected, a
course error), never a NameError in the worker that would read as the student's fault.

The generic probes below serve every chapter: call a function of the student's module, run a module with the
reference's weights (outputs, gradients, train vs eval mode). Graders import them; a grader defines its own
probe only for what is specific to its chapter.
"""

from __future__ import annotations

import builtins
import importlib.util
import inspect
import symtable
import sys
import textwrap
from pathlib import Path

import torch  # probes run with the worker's own torch; imported here for readers and linters

from course.grading.contracts import Anything, Fields, ListOf, Spec, check_result

# The names a probe finds in the worker besides the built-ins (see course/worker/runtime/bootstrap.py, op_call).
WORKER_NAMES = frozenset({"torch", "nn", "F", "DEVICE"})


def _register_probe_kit() -> None:
    """Make `import probe_kit` work on the trusted side too, with the very files the worker loads
    (course/worker/runtime/probe_kit/), so that a grader runs a probe with the reference as the worker runs it."""
    if "probe_kit" in sys.modules:
        return
    here = Path(__file__).resolve().parents[1] / "worker" / "runtime" / "probe_kit"
    spec = importlib.util.spec_from_file_location("probe_kit", here / "__init__.py",
                                                  submodule_search_locations=[str(here)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["probe_kit"] = package
    spec.loader.exec_module(package)


_register_probe_kit()


class _WorkerDevice:
    """`DEVICE` for graders to import (so linters know it): inside a probe, the worker's own DEVICE string
    replaces it. On the trusted side it means nothing; use `submission.device` there."""

    def __repr__(self) -> str:
        return "DEVICE (defined inside probes only)"


DEVICE = _WorkerDevice()


class ProbeDefinitionError(Exception):
    """A probe that could not run in the worker: the grader is broken, not the submission."""


def probe(function=None, *, returns: Spec | None = None):
    """Mark a function as a probe; `returns` declares the structure of its result (checked on the trusted side)."""

    def decorate(function):
        source = textwrap.dedent(inspect.getsource(function))
        lines = source.splitlines()
        while lines and not lines[0].lstrip().startswith("def "):
            lines.pop(0)  # the decorator itself (possibly over several lines): the worker has no `probe`
        function.probe_source = "\n".join(lines) + "\n"
        function.probe_returns = returns or Anything()
        _check_source(function.__name__, function.probe_source, inspect.getsourcefile(function))
        return function

    return decorate(function) if function is not None else decorate


def _check_source(name: str, source: str, filename: str | None) -> None:
    where = f"probe {name} ({filename})"
    try:
        table = symtable.symtable(source, f"<probe {name}>", "exec")
    except SyntaxError as exc:
        raise ProbeDefinitionError(f"{where}: its source does not compile on its own: {exc}") from None
    functions = [child for child in table.get_children() if child.get_name() == name]
    if not functions:
        raise ProbeDefinitionError(f"{where}: its source does not define {name}")
    allowed = WORKER_NAMES | set(dir(builtins))
    stray = sorted({symbol for scope in _scopes(functions[0]) for symbol in _globals_used(scope)} - allowed)
    if stray:
        raise ProbeDefinitionError(
            f"{where}: uses {', '.join(stray)}, which the worker does not have (a probe sees only "
            f"{', '.join(sorted(WORKER_NAMES))} and the built-ins): pass values as arguments, or import inside "
            "the probe")


def _scopes(table):
    yield table
    for child in table.get_children():
        yield from _scopes(child)


def _globals_used(table) -> list[str]:
    return [s.get_name() for s in table.get_symbols() if s.is_global() and s.is_referenced()]


# -- generic probes -------------------------------------------------------------------------------------------

@probe(returns=ListOf(length="inputs"))
def call_function(student, name, inputs):
    """The student's function `name` applied to each input."""
    function = getattr(student, name)
    return [function(x) for x in inputs]


@probe(returns=ListOf(length="inputs"))
def run_module(student, class_name, init, state, inputs, train=False, stand_ins=(), kit=None):
    """The student's class built with `init`, loaded with the reference's `state` (strictly), run on each input
    without gradients, in eval mode unless `train`. `stand_ins`: parts built from probe_kit/<kit>.py's correct
    ones instead of the student's (see OnStandIns)."""
    from probe_kit.parts import stand_ins_of

    with stand_ins_of(student, kit, stand_ins):  # while the module is built and run
        module = getattr(student, class_name)(**init).to(DEVICE)
        module.load_state_dict(state)
        module.train(train)
        with torch.no_grad():
            return [module(x) for x in inputs]


@probe(returns=Fields("eval", "train"))
def run_train_and_eval(student, class_name, init, state, x, stand_ins=(), kit=None):
    """The same module on the same input in eval mode, then in train mode (seeded): .eval and .train outputs."""
    from probe_kit.parts import stand_ins_of

    with stand_ins_of(student, kit, stand_ins):
        module = getattr(student, class_name)(**init).to(DEVICE)
        module.load_state_dict(state)
        with torch.no_grad():
            out_eval = module.eval()(x)
            torch.manual_seed(1)
            out_train = module.train()(x)
    return {"eval": out_eval, "train": out_train}


@probe(returns=Fields("first", "second"))
def run_eval_twice(student, class_name, init, state, x, stand_ins=(), kit=None):
    """The same module on the same input twice in eval mode, after two different seeds (.first, .second): eval
    mode must not depend on the random state (dropout off)."""
    from probe_kit.parts import stand_ins_of

    with stand_ins_of(student, kit, stand_ins):
        module = getattr(student, class_name)(**init).to(DEVICE).eval()
        module.load_state_dict(state)
        with torch.no_grad():
            torch.manual_seed(1)
            first = module(x)
            torch.manual_seed(2)
            second = module(x)
    return {"first": first, "second": second}


@probe(returns=Fields("output", "gradients", "input_gradient"))
def run_module_with_gradients(student, class_name, init, state, x, upstream, stand_ins=(), kit=None):
    """Forward and backward through the student's module in eval mode, for the loss (output * upstream).sum():
    .output, .gradients ({parameter name: gradient}) and .input_gradient (None for integer inputs)."""
    from probe_kit.parts import stand_ins_of

    with stand_ins_of(student, kit, stand_ins):
        module = getattr(student, class_name)(**init).to(DEVICE).eval()
        module.load_state_dict(state)
        if x.is_floating_point():
            x = x.clone().requires_grad_(True)
        output = module(x)
        (output * upstream).sum().backward()
    gradients = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    return {"output": output.detach(), "gradients": gradients,
            "input_gradient": x.grad if x.is_floating_point() else None}


@probe(returns=Fields("count", "shapes"))
def count_parameters(student, class_name, init):
    """The student's module built with `init`: .count (its number of parameters) and .shapes ({parameter or
    buffer name: shape})."""
    module = getattr(student, class_name)(**init)
    shapes = {name: list(tensor.shape) for name, tensor in module.state_dict().items()}
    return {"count": sum(p.numel() for p in module.parameters()), "shapes": shapes}


def run_here(probe_function, module, **kwargs):
    """A probe run on this side with `module` in the student's place (the reference, or code with a classic
    mistake), its result checked and read as the worker's is (named values): the expected values of the same
    probe. Gradients are on: a training run may be asked for inside a mistake search, which computes without."""
    with torch.enable_grad():
        return check_result(probe_function.probe_returns, probe_function(module, **kwargs), kwargs)


class OnStandIns:
    """The submission as the shared checks (course/grading/properties.py) use it, with the student's `parts`
    replaced by the correct stand-ins of probe_kit/<kit>.py in every generic probe they run: the check then grades
    the composite's own code (declare the parts with @pytest.mark.stand_ins)."""

    def __init__(self, submission, kit: str, parts):
        self.submission, self.kit, self.parts = submission, kit, tuple(parts)

    def run(self, probe_function, **kwargs):
        return self.submission.run(probe_function, stand_ins=self.parts, kit=self.kit, **kwargs)
