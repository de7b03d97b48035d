"""Comparisons with teaching failure messages.

A failure says what was checked, how far off the result is (shape, largest difference and where) and a hint
at the likely cause. It never shows the expected values: students see their own values and the size of the
error, not the answer.
"""

from __future__ import annotations

import math

import torch

from course.grading.mistakes import Mistake, name_mistake, same_values
from course.worker.client import StudentCodeError, StudentTimeout

# (atol, rtol) for float32 results by device: CPU is tight; GPUs may use TF32 matmuls.
TOLERANCES = {"cpu": (1e-5, 1e-5), "cuda": (2e-3, 2e-3), "mps": (1e-3, 1e-3)}
_device = "cpu"


class GradingFailure(AssertionError):
    """A check failed; the message is shown to the student as is."""


def set_device(device: str) -> None:
    """Called by the grading plugin: the device the student's code runs on sets the default tolerance."""
    global _device
    _device = device.split(":")[0]


def _fail(what: str, problem: str, hint) -> None:
    """`hint` is a string, or a function returning one: computed only on failure (e.g. a costly diagnosis, which
    may run the student's code again: if that ends in an error, the failure is reported without a hint)."""
    if callable(hint):
        try:
            hint = hint()
        except (StudentCodeError, StudentTimeout, GradingFailure):
            hint = None
    message = f"{what}: {problem}"
    if hint:
        message += f" Hint: {hint}"
    raise GradingFailure(message)


def _shape(shape) -> str:
    """(2, 3) for a tensor or a shape; (4,) for one dimension, as Python writes a tuple."""
    return str(tuple(int(d) for d in (shape.shape if isinstance(shape, torch.Tensor) else shape)))


def _position(index: int, shape: torch.Size) -> str:
    coords = []
    for size in reversed(shape):
        coords.append(index % size)
        index //= size
    return "(" + ", ".join(str(c) for c in reversed(coords)) + ")"


def expect_count(got, expected: int, *, what: str, hint: str | None = None) -> None:
    """A count (of windows, batches, items) must match; counts are not answers, so both are shown."""
    if type(got) is not int:
        _fail(what, f"expected a whole number, got {type(got).__name__}.", hint)
    if got != expected:
        _fail(what, f"is {got}, expected {expected}.", hint)


def expect_tensor(got, *, what: str, shape: tuple[int, ...] | torch.Size, hint: str | None = None) -> torch.Tensor:
    """`got` must be a tensor of the given shape; returns it (use before slicing a student's result)."""
    if not isinstance(got, torch.Tensor):
        _fail(what, f"expected a tensor, got {type(got).__name__}.", hint)
    if tuple(got.shape) != tuple(shape):
        _fail(what, f"shape {_shape(got)} is wrong: expected {_shape(shape)}.", hint)
    return got


def with_mistakes(got, mistakes, mistaken, *, hint, matches=same_values, yours: str = "your output is"):
    """The hint of a failed check: the mistake `got` matches (course/grading/mistakes.py; `matches` compares the
    student's result with a mistake's), else `hint`; computed only if the check fails."""
    if not mistakes:
        return hint

    def named():
        return (name_mistake(got, mistakes, mistaken, matches=matches, yours=yours)
                or (hint() if callable(hint) else hint))

    return named


def expect_close(got, expected: torch.Tensor, *, what: str, hint: str | None = None,
                 atol: float | None = None, rtol: float | None = None, mistakes: tuple[Mistake, ...] | list = (),
                 mistaken=None, matches=same_values, yours: str = "your output is") -> None:
    """`got` must be a float tensor of `expected`'s shape with values within atol + rtol * |expected|.

    Where `expected` is not finite, `got` must hold the same value (NaN where NaN, an infinity of the same sign);
    where `expected` is finite, so must `got` be. On failure, the first of `mistakes` whose result
    (`mistaken(**mistake.change)`) equals `got` is named in place of `hint`.
    """
    hint = with_mistakes(got, mistakes, mistaken, hint=hint, matches=matches, yours=yours)
    default_atol, default_rtol = TOLERANCES.get(_device, TOLERANCES["cuda"])
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    if not isinstance(got, torch.Tensor):
        _fail(what, f"expected a tensor, got {type(got).__name__}.", hint)
    if got.shape != expected.shape:
        _fail(what, f"shape {_shape(got)} is wrong: expected {_shape(expected)}.", hint)
    if not got.is_floating_point():
        _fail(what, f"dtype {got.dtype} is wrong: expected a floating-point tensor ({expected.dtype}).", hint)
    got64, exp64 = got.double(), expected.double()
    bad_values = ~torch.isfinite(got64) & torch.isfinite(exp64)
    if bad_values.any():
        index = int(bad_values.flatten().nonzero()[0])
        _fail(what, f"contains {got64.flatten()[index].item()} at position {_position(index, got.shape)} "
                    f"({int(bad_values.sum())} non-finite values).", hint)
    finite = torch.isfinite(exp64)
    same_special = (torch.isnan(got64) & torch.isnan(exp64)) | (got64 == exp64)
    wrong_special = ~finite & ~same_special
    if wrong_special.any():
        index = int(wrong_special.flatten().nonzero()[0])
        _fail(what, f"value at position {_position(index, got.shape)} is wrong (your value there: "
                    f"{got64.flatten()[index].item()}); {int(wrong_special.sum())} such values.", hint)
    diff = torch.where(finite, (got64 - exp64).abs(), torch.zeros_like(exp64))
    allowed = atol + rtol * exp64.abs()
    if (diff > torch.where(finite, allowed, torch.full_like(allowed, math.inf))).any():
        index = int(diff.flatten().argmax())
        _fail(what, f"values differ: largest difference {diff.flatten()[index].item():.3g} at position "
                    f"{_position(index, got.shape)} (your value there: {got64.flatten()[index].item():.6g}; "
                    f"tolerance {atol:g} + {rtol:g}*|expected|); {int((diff > allowed).sum())} of "
                    f"{diff.numel()} values are off.", hint)


def expect_finite(got: torch.Tensor, *, what: str, hint: str | None = None) -> None:
    """Every value of a floating-point tensor is finite (for checks that compare the student's outputs with
    each other, where NaN == NaN would otherwise pass unnoticed)."""
    if isinstance(got, torch.Tensor) and got.is_floating_point():
        bad = ~torch.isfinite(got)
        if bad.any():
            index = int(bad.flatten().nonzero()[0])
            _fail(what, f"contains {got.flatten()[index].item()} at position {_position(index, got.shape)} "
                        f"({int(bad.sum())} non-finite values).", hint)


def expect_equal(got, expected, *, what: str, hint: str | None = None) -> None:
    """Exact equality of tensors (shape, dtype kind and values), lists, strings, numbers and dicts."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            _fail(what, f"expected a tensor, got {type(got).__name__}.", hint)
        if got.shape != expected.shape:
            _fail(what, f"shape {_shape(got)} is wrong: expected {_shape(expected)}.", hint)
        same_kind = got.is_floating_point() == expected.is_floating_point()
        if not same_kind or (got.dtype == torch.bool) != (expected.dtype == torch.bool):
            _fail(what, f"dtype {got.dtype} is wrong: expected {expected.dtype}.", hint)
        unequal = (got != expected).flatten()
        if unequal.any():
            index = int(unequal.nonzero()[0])
            _fail(what, f"{int(unequal.sum())} of {unequal.numel()} values differ; the first at position "
                        f"{_position(index, got.shape)} (your value there: {got.flatten()[index].item()}).", hint)
        return
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            _fail(what, f"expected a list, got {type(got).__name__}.", hint)
        if len(got) != len(expected):
            _fail(what, f"has {len(got)} items, expected {len(expected)}.", hint)
        for index, (g, e) in enumerate(zip(got, expected)):
            if isinstance(e, (torch.Tensor, list, tuple, dict)):
                expect_equal(g, e, what=f"{what}[{index}]", hint=hint)
            elif type(g) is not type(e) or g != e:
                _fail(what, f"item {index} is wrong (yours: {g!r}).", hint)
        return
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            _fail(what, f"expected a dict, got {type(got).__name__}.", hint)
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} expected key(s) missing, e.g. {missing[0]!r}")
            if extra:
                parts.append(f"{len(extra)} unexpected key(s), e.g. {extra[0]!r}")
            _fail(what, "; ".join(parts) + ".", hint)
        for key in expected:
            if isinstance(expected[key], (torch.Tensor, list, tuple, dict)):
                expect_equal(got[key], expected[key], what=f"{what}[{key!r}]", hint=hint)
            elif type(got[key]) is not type(expected[key]) or got[key] != expected[key]:
                _fail(what, f"the value for key {key!r} is wrong (yours: {got[key]!r}).", hint)
        return
    if isinstance(expected, str):
        if not isinstance(got, str):
            _fail(what, f"expected a string, got {type(got).__name__}.", hint)
        if got != expected:
            first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            _fail(what, f"differs from character {first} on (yours: {got[max(first - 10, 0):first + 20]!r}...; "
                        f"length {len(got)}, expected length {len(expected)}).", hint)
        return
    if type(got) is not type(expected) or got != expected:
        _fail(what, f"is {got!r}, which is wrong.", hint)


def expect_true(condition: bool, *, what: str, problem: str, hint: str | None = None) -> None:
    """A property check computed on the trusted side, e.g. 'earlier outputs did not change'."""
    if condition is not True:
        _fail(what, problem, hint)


def as_number(value, *, what: str, type_hint: str | None = None,
              shape_hint: str | None = "return a single number, e.g. loss.item().") -> torch.Tensor:
    """A student's number (a loss, an accuracy) as a float64 tensor of shape (): Python numbers and one-element
    tensors are accepted, a bool is not."""
    if isinstance(value, torch.Tensor):
        expect_true(value.numel() == 1, what=what, problem=f"expected one number, got a tensor of shape "
                    f"{tuple(value.shape)}.", hint=shape_hint)
        return value.detach().reshape(()).double()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(what, f"expected a number, got {type(value).__name__}.", type_hint)
    return torch.tensor(float(value), dtype=torch.float64)
