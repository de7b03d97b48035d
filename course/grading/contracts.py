"""What a probe returns, checked on the trusted side before any comparison.

Student code controls the worker, so what comes back is only ever "some plain values": it may have the wrong
type, length or nesting, or odd tensors (sparse, meta, complex, quantized). A probe declares the structure
it builds (`@probe(returns=ListOf(Anything(), length="inputs"))`); `Submission.run` checks every reply against
it, so a grader can index and unpack results without meeting a surprise, and turns a mismatch into a clear
error for the student. Tensors are normalised on the way: dense, on the CPU, a real dtype, plain torch.Tensor.

The checks are about structure, not about answers: the leaves (a student's tensor, list or string) are left
to the expect_* comparisons, whose failure messages teach.
"""

from __future__ import annotations

import types

import torch

# Real dtypes a comparison can handle; anything else (complex, quantized, float8, ...) is refused.
PLAIN_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
                torch.int16, torch.int32, torch.int64, torch.bool}
MAX_DEPTH = 32
MAX_ITEMS = 1_000_000
# Elements a reply's tensors may hold, counted BEFORE any tensor is copied: a forged reply of a few bytes can hold
# a tensor whose stride-0 dimensions expand to gigabytes the moment it is made contiguous.
MAX_TENSOR_ELEMENTS = 2**24
MAX_TOTAL_ELEMENTS = 2**25


class BadResult(Exception):
    """A reply that does not have the declared structure; the message is written for the student."""


def _count(value) -> str:
    return f"{len(value)} item{'s' if len(value) != 1 else ''}"


def _kind(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {_count(value)}"
    return f"a value of type {type(value).__name__}"


def normalise_tensor(value: torch.Tensor, where: str) -> torch.Tensor:
    if value.numel() > MAX_TENSOR_ELEMENTS:
        raise BadResult(f"{where} holds {value.numel()} values, more than the {MAX_TENSOR_ELEMENTS} the grader "
                        "accepts in one tensor")
    if value.layout != torch.strided or value.is_meta or value.is_quantized or value.is_nested:
        raise BadResult(f"{where} is a special tensor ({value.layout}, device {value.device}); return an ordinary "
                        "dense tensor")
    if value.dtype not in PLAIN_DTYPES:
        raise BadResult(f"{where} has dtype {value.dtype}, which the grader cannot compare; return a real-valued "
                        "tensor (e.g. torch.float32)")
    plain = value.detach().as_subclass(torch.Tensor) if type(value) is not torch.Tensor else value.detach()
    return plain.to("cpu").resolve_conj().resolve_neg().contiguous()


class Spec:
    def check(self, value, where: str, kwargs: dict, depth: int = 0):
        """Return `value`, normalised, or raise BadResult naming `where`."""
        raise NotImplementedError


class Anything(Spec):
    """Any nesting of plain values: None, bool, int, float, str, tensors, lists, tuples, dicts of those."""

    def check(self, value, where, kwargs, depth=0):
        budget = [MAX_ITEMS]
        return self._walk(value, where, depth, budget)

    def _walk(self, value, where, depth, budget):
        budget[0] -= 1
        if budget[0] < 0:
            raise BadResult(f"{where} holds more than {MAX_ITEMS} values")
        if depth > MAX_DEPTH:
            raise BadResult(f"{where} is nested more than {MAX_DEPTH} levels deep")
        if value is None or type(value) in (bool, int, float, str):
            return value
        if isinstance(value, torch.Tensor):
            return normalise_tensor(value, where)
        if type(value) in (list, tuple):
            return type(value)(self._walk(item, f"{where}[{i}]", depth + 1, budget) for i, item in enumerate(value))
        if type(value) is dict and all(type(key) in (str, int) for key in value):
            return {key: self._walk(item, f"{where}[{key!r}]", depth + 1, budget) for key, item in value.items()}
        raise BadResult(f"{where} is {_kind(value)}, which the grader cannot use")


class Tensor(Spec):
    """A tensor (any shape and real dtype; the comparison checks those with a teaching message)."""

    def check(self, value, where, kwargs, depth=0):
        if not isinstance(value, torch.Tensor):
            raise BadResult(f"{where} should be a tensor but is {_kind(value)}")
        return normalise_tensor(value, where)


class ListOf(Spec):
    """A list (or tuple) of items; `length` is a number, or the name of an argument of the probe whose length
    it must equal (e.g. one result per input)."""

    def __init__(self, item: Spec | None = None, length: int | str | None = None):
        self.item = item or Anything()
        self.length = length

    def check(self, value, where, kwargs, depth=0):
        if type(value) not in (list, tuple):
            raise BadResult(f"{where} should be a list but is {_kind(value)}")
        expected = len(kwargs[self.length]) if isinstance(self.length, str) else self.length
        if expected is not None and len(value) != expected:
            per = f" (one per item of `{self.length}`)" if isinstance(self.length, str) else ""
            raise BadResult(f"{where} should hold {expected} results{per} but holds {_count(value)}")
        if len(value) > MAX_ITEMS:
            raise BadResult(f"{where} holds more than {MAX_ITEMS} values")
        if depth > MAX_DEPTH:
            raise BadResult(f"{where} is nested more than {MAX_DEPTH} levels deep")
        return type(value)(self.item.check(item, f"{where}[{i}]", kwargs, depth + 1) for i, item in enumerate(value))


class ProbeResult(types.SimpleNamespace):
    """A probe's result with named values, read as attributes: got.output, got.gradients (see Fields)."""


class Fields(Spec):
    """A result of named values: the probe returns a dict with exactly these keys, and the test reads an object
    with these attributes (`got.output`), never positions. Keys given by name alone may hold anything plain;
    keyword arguments give the key's own spec: Fields("gradients", output=Tensor(), losses=ListOf(length=3))."""

    def __init__(self, *names: str, **specs: Spec):
        self.specs = {**{name: Anything() for name in names}, **specs}

    def check(self, value, where, kwargs, depth=0):
        if type(value) is not dict:
            raise BadResult(f"{where} should be a dict of {', '.join(self.specs)} but is {_kind(value)}")
        missing = [name for name in self.specs if name not in value]
        extra = [str(name) for name in value if name not in self.specs]
        if missing or extra:
            raise BadResult(f"{where} should hold exactly {', '.join(self.specs)}"
                            + (f"; {', '.join(missing)} missing" if missing else "")
                            + (f"; {', '.join(extra[:5])} not expected" if extra else ""))
        if depth > MAX_DEPTH:
            raise BadResult(f"{where} is nested more than {MAX_DEPTH} levels deep")
        return ProbeResult(**{name: spec.check(value[name], f"{where}[{name!r}]", kwargs, depth + 1)
                              for name, spec in self.specs.items()})


def check_result(spec: Spec, value, kwargs: dict):
    total = _count_elements(value, 0, [MAX_ITEMS])
    if total > MAX_TOTAL_ELEMENTS:
        raise BadResult(f"the result holds {total} values in its tensors, more than the {MAX_TOTAL_ELEMENTS} the "
                        "grader accepts")
    return spec.check(value, "result", kwargs)


def _count_elements(value, depth: int, budget: list[int]) -> int:
    """Elements of all tensors in a (possibly forged) reply, without copying any; depth and items are bounded."""
    budget[0] -= 1
    if budget[0] < 0:
        raise BadResult(f"the result holds more than {MAX_ITEMS} values")
    if depth > MAX_DEPTH:
        raise BadResult(f"the result is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, torch.Tensor):
        return value.numel()
    if type(value) in (list, tuple):
        return sum(_count_elements(item, depth + 1, budget) for item in value)
    if type(value) is dict:
        return sum(_count_elements(item, depth + 1, budget) for item in value.values())
    return 0
